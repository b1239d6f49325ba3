"""`qwen-mlx summarize FILE`: summarize a text, Markdown or PDF file of any length."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import ProgressBar, add_model_arg, command_parser, guarded, model_ref


def add_document_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="a .txt, .md or .pdf file")
    add_model_arg(p)
    p.add_argument(
        "--max-context",
        type=int,
        metavar="TOKENS",
        help="tokens one model call may use (default: what the model and memory allow); "
        "longer documents are split and summarized part by part",
    )
    p.add_argument(
        "--reply-tokens",
        type=int,
        default=384,
        metavar="N",
        help="length limit of each partial summary and of the result (default 384)",
    )
    p.add_argument("--temperature", "--temp", type=float, help="sampling temperature")
    p.add_argument("--seed", type=int)


def document_params(model, args):
    return model.default_params.replace(temperature=args.temperature, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "summarize",
        (
            "Summarize a document. One that fits in the context goes in one prompt; a longer "
            "one is split on its headings, paragraphs and sentences, summarized part by part "
            "and combined. Paragraphs marked [IMPORTANT] are kept word for word. Exit status 1 "
            "when the model gives no summary (the parts' summaries are printed, if any)."
        ),
        raw=False,
    )
    add_document_args(p)
    return p


def run_on_document(args: argparse.Namespace, action):
    """Read the document, load the model, and run `action` (summarize or ask) with a
    progress bar; return its result."""
    from ..chat.documents import read_document
    from ..runtime import load

    text = read_document(args.file)
    model = load(model_ref(args))
    bar = ProgressBar(unit="tokens")  # tokens read and written, with the time left
    try:
        return action(
            model,
            text,
            params=document_params(model, args),
            max_context=args.max_context,
            reply_tokens=args.reply_tokens,
            progress=lambda stage, done, total: bar.update(stage, done, total),
        )
    finally:
        bar.finish()


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..chat.documents import summarize

    summary = run_on_document(args, summarize)
    print(summary.text)
    if summary.chunks == 1:
        how = "one prompt"
    else:
        how = f"{summary.chunks} parts, {summary.levels} combining pass(es)"
    print(
        f"\n[{how}, {summary.calls} model calls, "
        f"{len(summary.important)} [IMPORTANT] passages kept]",
        file=sys.stderr,
    )
    if summary.empty_calls and summary.complete:
        print(
            f"warning: {summary.empty_calls} of {summary.calls} model calls gave an empty "
            "summary; what they read is missing from this one.",
            file=sys.stderr,
        )
    if not summary.complete:
        print(
            "error: the model's final summary came out empty, so what was printed is the "
            "summaries it was to combine, not one summary "
            f"({summary.empty_calls} of {summary.calls} model calls gave no text). "
            "Try another --temperature or --seed, or a larger --max-context.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
