"""`qwen-mlx`: one console script, one module per subcommand.

Each subcommand lives in `qwen_mlx/cli/<name>.py` with `main(argv) -> int` and is
imported only when chosen, so `qwen-mlx --help` never loads MLX.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib import import_module

COMMANDS: dict[str, str] = {
    "demo": "Build a tiny random Qwen3 locally and run convert + generate (no download).",
    "chat": "Chat in the terminal app: streaming markdown, saved chats that resume instantly.",
    "convert": "Convert a Hugging Face Qwen3 checkpoint to MLX (4-bit by default) into the store.",
    "generate": "Generate a reply to a prompt, streaming to stdout.",
    "summarize": "Summarize a text, Markdown or PDF file of any length.",
    "ask": "Answer a question about a text, Markdown or PDF file.",
    "plan": "Show which context fits in memory with bf16, 8-bit and 4-bit KV caches.",
    "models": "Manage stored versions: list, show, verify, import, export, set-latest, rm, ...",
    "serve": "Serve the model over an OpenAI-compatible HTTP API.",
    "bench": "Measure prefill and decode speed, and decode against memory bandwidth.",
    "replay": "Send a recorded session (serve --record) to a server: prefill and TTFT per turn.",
}

USAGE = """usage: qwen-mlx <command> [options]

Run Qwen3-4B-Instruct-2507 on Apple Silicon with MLX.

commands:
{commands}

Run `qwen-mlx <command> --help` for a command's options.
Models live in $QWEN_MLX_HOME (default ~/.qwen_mlx).
"""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = "\n".join(f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items())
    return USAGE.format(commands=lines)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` Did you mean 'x'?` for the closest of `choices`, or an empty string."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage(), end="")
        return 0 if argv else 2
    if argv[0] in {"-V", "--version"}:
        from .._version import __version__

        print(f"qwen-mlx {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = did_you_mean(command, COMMANDS)
        print(f"qwen-mlx: unknown command {command!r}.{hint}\n", file=sys.stderr)
        print(usage(), end="", file=sys.stderr)
        return 2
    module = import_module(f"qwen_mlx.cli.{command}")
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
