#!/usr/bin/env python3
"""Decode speed of our `stream_generate` against mlx-lm's `stream_generate`, in one run.

Both generate from the same model module, tokenizer and prompt token ids, greedily, for the
same number of tokens; the tokenizer's end-of-turn set is emptied so that neither stops
early (and neither needs a logits processor). Runs alternate (ours then mlx-lm, then
mlx-lm then ours, ...) after a warm-up of each. Decode speed is timed the same way for
both, from outside: from the first token (the prompt-progress callback both fire once it
is computed) to the end of the stream, over the tokens after the first.
Target: ours / mlx-lm >= 0.97.

The model is random and Qwen3-4B-shaped at a quarter of its width (hidden 640, 8 query
heads and 2 KV heads of 128, MLP 3.8x hidden, 4 layers by default). On this project's
2-core CPU a decode step then takes ~25 ms, about what Qwen3-4B's takes on a Mac, so
per-token Python overhead shows at the scale it would there; the absolute difference per
token is printed too. bf16 on a CPU (MLX's CPU quantized matmuls are ~10x slower than bf16
ones), 4-bit with Metal.

    python scripts/bench_overhead.py [--prompt-tokens N] [--max-tokens N] [--pairs N] [--layers N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

SHAPE = {  # Qwen3-4B proportions at a quarter of its width
    "hidden_size": 640,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "intermediate_size": 2432,
}


def build_model(root: Path, layers: int):
    import mlx.core as mx

    from qwen_mlx import load
    from qwen_mlx.convert import convert
    from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint

    config = TinyConfig(**SHAPE, num_hidden_layers=layers)
    source = build_tiny_checkpoint(
        root / "Qwen3-1M-Overhead-2507", config, tokenizer_vocab_size=1024
    )
    quantize = mx.metal.is_available()
    model = load(convert(str(source), mlx_path=root / "mlx", quantize=quantize).path)
    return model, ("4-bit (Metal)" if quantize else "bf16, unquantized (CPU backend)")


def timed(stream: Callable[[Callable[[int, int], None]], Iterator], max_tokens: int):
    """(decode tokens/s, text) of one stream, timed from its first token to its end."""
    first: list[float] = []

    def on_progress(done: int, total: int) -> None:
        if done == total and not first:
            first.append(time.perf_counter())

    text = []
    for chunk in stream(on_progress):
        text.append(chunk.text)
    end = time.perf_counter()
    return (max_tokens - 1) / (end - first[0]), "".join(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--pairs", type=int, default=7, help="measured runs of each")
    p.add_argument("--layers", type=int, default=4)
    args = p.parse_args(argv)

    from mlx_lm.generate import stream_generate as mlx_lm_stream_generate

    from qwen_mlx import SamplingParams, stream_generate
    from qwen_mlx.runtime.bench import synthetic_prompt

    with tempfile.TemporaryDirectory() as tmp:
        model, label = build_model(Path(tmp), args.layers)
        prompt = synthetic_prompt(model, args.prompt_tokens)
        n = args.max_tokens
        params = SamplingParams(temperature=0.0, max_tokens=n)
        # Neither loop may stop early: with no end-of-turn token both run to max_tokens,
        # and neither pays for a logits processor.
        model.tokenizer.eos_token_ids = set()

        def ours(progress):
            return stream_generate(model, prompt, params, prompt_progress=progress)

        def theirs(progress):
            return mlx_lm_stream_generate(
                model.model,
                model.tokenizer,
                prompt,
                max_tokens=n,
                prompt_progress_callback=progress,
            )

        print(
            f"model: {model.manifest.parameters / 1e6:.0f}M parameters, {label}; "
            f"prompt {len(prompt)} tokens, {n} generated, greedy",
            file=sys.stderr,
        )
        timed(ours, n)
        timed(theirs, n)
        rates: dict[str, list[float]] = {"ours": [], "mlx-lm": []}
        texts: dict[str, set[str]] = {"ours": set(), "mlx-lm": set()}
        for i in range(args.pairs):
            order = [("ours", ours), ("mlx-lm", theirs)]
            for name, stream in order if i % 2 == 0 else order[::-1]:
                rate, text = timed(stream, n)
                rates[name].append(rate)
                texts[name].add(text)
            print(
                f"  pair {i + 1}: ours {rates['ours'][-1]:.1f}, "
                f"mlx-lm {rates['mlx-lm'][-1]:.1f} tokens/s",
                file=sys.stderr,
                flush=True,
            )
    same = texts["ours"] == texts["mlx-lm"] and len(texts["ours"]) == 1
    print(f"\ndecode tokens/s, {args.pairs} runs each, alternating; {label}")
    print(f"{'':8} {'median':>8} {'min':>8} {'max':>8} {'ms/token':>9}")
    for name, values in rates.items():
        mid = statistics.median(values)
        print(f"{name:8} {mid:8.1f} {min(values):8.1f} {max(values):8.1f} {1000 / mid:9.2f}")
    ours_tps, theirs_tps = (statistics.median(rates[k]) for k in ("ours", "mlx-lm"))
    pairs = [a / b for a, b in zip(rates["ours"], rates["mlx-lm"], strict=True)]
    print(
        f"ours / mlx-lm: {ours_tps / theirs_tps:.3f} (target >= 0.97); per pair "
        f"{min(pairs):.3f} to {max(pairs):.3f}; "
        f"ours costs {(1 / ours_tps - 1 / theirs_tps) * 1e6:+.0f} us per token; "
        f"same text: {'yes' if same else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
