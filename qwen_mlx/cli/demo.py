"""`qwen-mlx demo`: the whole path on a tiny random Qwen3, no download needed.

It builds a Hugging Face-format Qwen3 with random weights and a freshly trained tokenizer,
converts it to 4-bit MLX into the store exactly as `qwen-mlx convert` does (manifest,
registry, latest), then loads it by name and streams a reply. The weights are random, so
the reply is gibberish; everything around it is the real thing.
"""

from __future__ import annotations

import argparse
import sys

from .common import CPU_QUANT_NOTE, ProgressBar, command_parser, format_stats, guarded


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("demo", __doc__)
    p.add_argument(
        "--prompt", "-p", default="Tell me about Apple Silicon.", help="the user message"
    )
    p.add_argument("--max-tokens", "-n", type=int, default=48, help="reply length (default 48)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--rebuild", action="store_true", help="build and convert the demo model again")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..convert.demo import ensure_demo_model
    from ..runtime import load, stream_generate

    bar = ProgressBar(unit="bytes")
    print(
        "[1/3] Building a tiny random Qwen3 and converting it to 4-bit MLX "
        "(skipped when already in the store)...",
        file=sys.stderr,
    )
    try:
        name = ensure_demo_model(
            rebuild=args.rebuild, progress=lambda p: bar.update(p.stage, p.done, p.total)
        )
    finally:
        bar.finish()
    print(f"[2/3] Loading {name} from the store...", file=sys.stderr)
    model = load(name)
    print(
        f"[3/3] Generating (random weights: expect gibberish)\n\n> {args.prompt}\n", file=sys.stderr
    )
    messages = [{"role": "user", "content": args.prompt}]
    last = None
    for last in stream_generate(model, messages, max_tokens=args.max_tokens, seed=args.seed):
        sys.stdout.write(last.text)
        sys.stdout.flush()
    sys.stdout.write("\n\n")
    if last is not None:
        print(format_stats(last), file=sys.stderr)
    from ..convert import quantized_prefill_is_slow

    convert = "python -m qwen_mlx.convert --hf-path Qwen/Qwen3-4B-Instruct-2507"
    if quantized_prefill_is_slow():
        print(f"\nNext: `qwen-mlx models list`, or `{convert} --no-quantize`.", file=sys.stderr)
        print(CPU_QUANT_NOTE, file=sys.stderr)
    else:
        print(f"\nNext: `qwen-mlx models list`, or `{convert}`.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
