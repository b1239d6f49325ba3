"""`qwen-mlx chat`: the terminal chat app (tui/), or with `--web` the web chat in a browser."""

from __future__ import annotations

import argparse

from .common import (
    GROUP_FLAGS,
    ArgumentParser,
    add_group_args,
    group_load_args,
    guarded,
    ranks_from_args,
)

WEB_FLAGS = ("--host", "--port")


def build_parser() -> argparse.ArgumentParser:
    """The terminal app's flags, and `--web` with where to serve the page."""
    from tui.app import build_parser as app_parser

    p = app_parser(ArgumentParser)
    p.description = (
        f"{p.description} With --web, open the same chats in the browser instead (the web "
        "chat of `qwen-mlx serve`, started here unless one is running already)."
    )
    web = p.add_argument_group("web chat")
    web.add_argument(
        "--web",
        action="store_true",
        help="open the web chat in the browser; starts `qwen-mlx serve` on --host/--port "
        "unless it is running there already (Ctrl-C stops it)",
    )
    web.add_argument("--host", default="127.0.0.1", help="with --web: address (default: 127.0.0.1)")
    web.add_argument("--port", type=int, default=8080, help="with --web: port (default: 8080)")
    add_group_args(p)
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # --help and bad flags before the app starts
    if args.web and (args.ranks or args.hosts):
        raise ValueError(
            "--web opens the web chat of `qwen-mlx serve`: start that with --ranks or --hosts "
            "(`qwen-mlx serve --ranks 2`), then open its page."
        )
    if args.web:
        from .web import open_web_chat

        return open_web_chat(host=args.host, port=args.port, model=args.model, chat_id=args.session)
    given = [f for f in WEB_FLAGS if any(a == f or a.startswith(f + "=") for a in argv)]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise ValueError(f"{' and '.join(given)} only {verb} with --web.")
    from tui.app import main as run

    with ranks_from_args(args, echo=False) as ranks:  # the app has the terminal
        return run(_without(argv, GROUP_FLAGS), load_options=group_load_args(args, ranks))


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """`argv` less `flags` and their values (the app's own parser does not know them)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg and name != "--pipeline"
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
