"""The `qwen-mlx` command line: `main.py` dispatches to one module per subcommand, each
with `main(argv) -> int` and runnable as `python -m qwen_mlx.cli.<command>`."""

from __future__ import annotations

# The console script (`qwen_mlx.cli:main`). Imported here, not wrapped: the submodule
# `main` would otherwise replace a wrapper of the same name on this package as soon as
# anything imports `qwen_mlx.cli.main`. main.py itself imports nothing heavy.
from .main import main

__all__ = ["main"]
