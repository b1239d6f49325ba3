"""`qwen-mlx chat`: the terminal chat app (tui/)."""

from __future__ import annotations

from .common import guarded


@guarded
def main(argv: list[str] | None = None) -> int:
    from tui.app import build_parser
    from tui.app import main as run

    build_parser().parse_args(argv)  # --help and bad flags before the app starts
    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
