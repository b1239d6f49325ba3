"""`qwen-mlx generate`: one reply, streamed to stdout; stats on stderr."""

from __future__ import annotations

import argparse
import sys

from ._common import add_sampling_args, format_stats, guarded, sampling_overrides

DEFAULT_MODEL = "qwen3-4b-instruct"

EXAMPLES = """\
examples:
  qwen-mlx generate --prompt "Write a haiku about unified memory"
  qwen-mlx generate --model qwen3-4b-instruct-2507-mlx-q8-g64 --prompt - < question.txt
  qwen-mlx generate --prompt "List three primes" --temperature 0 --max-tokens 32
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwen-mlx generate",
        description="Generate a reply with the model's chat template and sampling defaults.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        help=f"store name, family (its latest), folder or repo id (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--prompt", "-p", required=True, help="the user message; '-' reads stdin")
    p.add_argument("--system", "-s", help="system prompt")
    p.add_argument(
        "--raw", action="store_true", help="send the prompt as-is, without the chat template"
    )
    p.add_argument("--verify", action="store_true", help="check every file's sha256 before loading")
    add_sampling_args(p)
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    from ..runtime import load, stream_generate

    model = load(args.model, verify=args.verify)
    if args.raw:
        request: str | list[dict[str, str]] = prompt
    else:
        request = [{"role": "system", "content": args.system}] if args.system else []
        request.append({"role": "user", "content": prompt})
    last = None
    for last in stream_generate(model, request, **sampling_overrides(args)):
        sys.stdout.write(last.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if last is not None:
        print(format_stats(last), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
