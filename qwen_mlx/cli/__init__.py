"""The `qwen-mlx` command line: `main.py` dispatches to one module per subcommand, each
with `main(argv) -> int` and runnable as `python -m qwen_mlx.cli.<command>`."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The `qwen-mlx` console script (see main.py); imports nothing heavy."""
    from .main import main as run

    return run(argv)
