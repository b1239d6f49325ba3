"""`qwen-mlx demo`: the whole path on a tiny random Qwen3, no download needed.

It builds a Hugging Face-format Qwen3 with random weights and a freshly trained tokenizer,
converts it to 4-bit MLX into the store exactly as `qwen-mlx convert` does (manifest,
registry, latest), then loads it by name and streams a reply. The weights are random, so
the reply is gibberish; everything around it is the real thing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .common import ProgressBar, format_stats, guarded

DEMO_SOURCE = "qwen3-3m-demo-0000"
DEMO_MODEL = f"{DEMO_SOURCE}-mlx-q4-g64"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="qwen-mlx demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--prompt", "-p", default="Tell me about Apple Silicon.", help="the user message"
    )
    p.add_argument("--max-tokens", "-n", type=int, default=48, help="reply length (default 48)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--rebuild", action="store_true", help="build and convert the demo model again")
    return p


def demo_config():
    from ..convert.tiny import TinyConfig

    # ~3M parameters: big enough to look like a model, small enough for any CPU.
    return TinyConfig(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        intermediate_size=768,
    )


def ensure_demo_model(*, rebuild: bool = False, progress=None) -> str:
    """Build and convert the demo model into the store unless it is there; return its name."""
    from ..convert import convert
    from ..convert.tiny import build_tiny_checkpoint
    from ..store import Store, naming

    store = Store()
    if store.path_for(naming.parse(DEMO_MODEL)).is_dir() and not rebuild:
        return DEMO_MODEL
    with tempfile.TemporaryDirectory(prefix="qwen-mlx-demo-") as tmp:
        source = build_tiny_checkpoint(
            Path(tmp) / DEMO_SOURCE, demo_config(), tokenizer_vocab_size=1024
        )
        convert(str(source), force=rebuild, progress=progress)
    return DEMO_MODEL


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..runtime import load, stream_generate

    bar = ProgressBar()
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
    print(
        "\nNext: `qwen-mlx models list`, or on a Mac "
        "`python -m qwen_mlx.convert --hf-path Qwen/Qwen3-4B-Instruct-2507`.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
