"""`qwen-mlx ask FILE "question"`: answer a question about a document."""

from __future__ import annotations

import argparse
import functools
import sys

from .common import command_parser, guarded
from .summarize import add_document_args, run_on_document


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "ask",
        (
            "Answer a question about a .txt, .md or .pdf document. A document that does not "
            "fit in the context is read part by part for notes, then answered from the notes."
        ),
        raw=False,
    )
    add_document_args(p)
    p.add_argument("question", help="the question")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..chat.documents import ask

    answer = run_on_document(args, functools.partial(ask, question=args.question))
    print(answer.text)
    print(f"\n[{answer.mode}, {answer.calls} model calls]", file=sys.stderr)
    if not answer.text:
        print(
            "error: the model's answer was empty. Try another --temperature or --seed, "
            "or rephrase the question.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
