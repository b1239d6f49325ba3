#!/usr/bin/env python3
"""KV cache precision: what 8-bit and 4-bit KV change in the trained target's predictions
against bf16 KV, and the bytes they save.

The trained Qwen3 target in ../shared/models/qwen3-tiny-trained (converted by our convert,
bf16 weights, head_dim 64 so the KV groups are 64 values as for Qwen3-4B's 128), on
held-out text: by default Python source from standard-library subpackages (the pair was
trained on CPython's top-level modules only: the same kind of text, never seen), or the
packaged text of the quality report (`--text packaged`, prose the model hardly knows), or
a file:

- teacher-forced: the text is read in chunks of --chunk tokens, each attending to the
  cached keys and values of all before it (quantized from the first token at 8 or 4
  bits); mean KL(bf16 KV || quantized KV) of the next-token distribution, top-1
  agreement, and perplexity of each;
- greedy: a continuation of --max-tokens from each of --prompts cuts of the text, with
  each KV; the share of replies identical to bf16 KV's and of tokens before the first
  difference;
- bytes per token of KV, measured on the caches (spare capacity excluded) and as the
  memory planner counts them, over bf16's;
- for scale, float32 activations against bf16 (nothing quantized), and each KV setting
  with float32 activations against float32: the error of the quantization alone. With
  bf16 activations mlx-lm's quantized attention (not fused: bf16 scores before the
  softmax) adds most of the 8-bit error, and does the same on Metal.

Targets (issue 24): 8-bit KV at most 0.55x bf16's bytes per token; quality reported.
A quantized KV cache changes numbers the same way on Metal: the figures here carry over
(the speed does not: on Metal the quantized attention kernels read fewer bytes).

    python scripts/bench_kv.py [--text FILE|packaged] [--chunk 128] [--prompts 8]
    python scripts/bench_kv.py --smoke     # a quick run for CI
"""

from __future__ import annotations

import math
import statistics
import sys

from _bench import TRAINED, BenchParser, workspace

SETTINGS = (None, 8, 4)
HELD_OUT = ("json.decoder", "email.utils", "concurrent.futures.thread", "logging.handlers")


def held_out(choice: str | None) -> tuple[str, str]:
    """(text, where it came from)."""
    if choice is None:
        import importlib
        import inspect

        parts = [inspect.getsource(importlib.import_module(name)) for name in HELD_OUT]
        return "\n\n".join(parts), "stdlib " + ", ".join(HELD_OUT)
    from qwen_mlx.convert.quality import read_heldout

    held = read_heldout(None if choice == "packaged" else choice)
    return held.text, held.source


def label(bits: int | None) -> str:
    return "bf16" if bits is None else f"{bits}-bit"


def forced_logits(model, tokens: list[int], bits: int | None, chunk: int):
    """float32 logits at every position, the text read chunk by chunk into a KV cache."""
    import mlx.core as mx

    from qwen_mlx.runtime import make_cache

    cache = make_cache(model, bits)
    out = []
    for start in range(0, len(tokens), chunk):
        piece = mx.array(tokens[start : start + chunk])[None]
        logits = model.model(piece, cache=cache)[0].astype(mx.float32)
        mx.eval(logits)
        out.append(logits)
    return mx.concatenate(out), cache


def cache_bytes_per_token(cache) -> float:
    """Bytes the cache's filled positions take, per token."""
    import mlx.core as mx

    total = 0
    for layer in cache:
        keys, values = layer.keys, layer.values
        parts = (*keys, *values) if isinstance(keys, tuple) else (keys, values)
        n = layer.offset
        total += sum(p[..., :n, :].nbytes for p in parts if isinstance(p, mx.array))
    return total / max(cache[0].offset, 1)


def compare(ref, out, tokens: list[int]) -> dict[str, float]:
    import mlx.core as mx

    ref_lp = ref - mx.logsumexp(ref, axis=-1, keepdims=True)
    out_lp = out - mx.logsumexp(out, axis=-1, keepdims=True)
    kl = mx.mean(mx.sum(mx.exp(ref_lp) * (ref_lp - out_lp), axis=-1)).item()
    top1 = mx.mean(mx.argmax(ref, axis=-1) == mx.argmax(out, axis=-1)).item()
    targets = mx.array(tokens[1:])[:, None]
    nll = -mx.take_along_axis(out_lp[:-1], targets, axis=-1).mean().item()
    return {"kl": kl, "top1": top1, "ppl": math.exp(nll)}


def greedy(model, tokens: list[int], bits: int | None, max_tokens: int) -> list[int]:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    from qwen_mlx.runtime import make_cache

    steps = generate_step(
        mx.array(tokens),
        model.model,
        max_tokens=max_tokens,
        sampler=make_sampler(0.0),
        prompt_cache=make_cache(model, bits),
    )
    return [t for t, _ in steps]


def main(argv: list[str] | None = None) -> int:
    ap = BenchParser(__doc__, json=False)
    ap.add_argument(
        "--text", help="held-out text: a file, or 'packaged' (default: stdlib subpackages)"
    )
    ap.add_argument("--tokens", type=int, default=2048, help="tokens of it to read (at most)")
    ap.add_argument("--chunk", type=int, default=128, help="prefill chunk (tokens)")
    ap.add_argument("--prompts", type=int, default=8, help="greedy continuations per setting")
    ap.add_argument("--max-tokens", type=int, default=48, help="tokens per continuation")
    ap.smoke(prompts=2, max_tokens=8, tokens=256)
    args = ap.parse_args(argv)
    if args.chunk < 1 or args.prompts < 0 or args.max_tokens < 1:
        print("--chunk and --max-tokens must be positive, --prompts not negative.", file=sys.stderr)
        return 2
    if not (TRAINED / "target" / "config.json").is_file():
        print(f"The trained pair is not at {TRAINED}.", file=sys.stderr)
        return 2
    with workspace("bench-kv-") as work:
        return measure(args, work)


def measure(args, work) -> int:
    """Print the table: each KV setting against bf16 KV (the model converted into `work`)."""
    from qwen_mlx import load
    from qwen_mlx.convert import convert
    from qwen_mlx.runtime.memory import MemoryPlanner

    text, source = held_out(args.text)
    model = load(convert(str(TRAINED / "target"), mlx_path=work / "t", quantize=False).path)
    tokens = model.encode(text)[: args.tokens]
    planner = MemoryPlanner.for_model(model)
    print(
        f"{model.name}: {len(tokens)} tokens of held-out text ({source}), chunks of "
        f"{args.chunk}; greedy: {args.prompts} prompts x {args.max_tokens} tokens"
    )
    ref, ref_cache = forced_logits(model, tokens, None, args.chunk)
    base_bytes = cache_bytes_per_token(ref_cache)
    cuts = [
        tokens[: len(tokens) * (i + 1) // (args.prompts + 1)]
        for i in range(args.prompts)
        if len(tokens) * (i + 1) // (args.prompts + 1) > 1
    ]
    base_replies = [greedy(model, c, None, args.max_tokens) for c in cuts]
    header = (
        f"{'KV':6} {'KL':>9} {'top-1':>7} {'ppl':>8} {'same':>6} {'agree':>6} "
        f"{'B/token':>8} {'x bf16':>7} {'planner':>8}"
    )
    print(header)
    # A scale for the KL: the same bf16 weights with float32 activations and KV differ
    # from bf16 ones by this much with nothing quantized.
    import mlx.core as mx

    wide = load(work / "t")
    wide.model.set_dtype(mx.float32)
    wide_ref = forced_logits(wide, tokens, None, args.chunk)[0]
    m = compare(ref, wide_ref, tokens)
    print(f"{'f32':6} {m['kl']:9.2e} {m['top1']:7.2%} {m['ppl']:8.3f}   (float32 activations)")
    for bits in SETTINGS[1:]:
        # The quantization alone: float32 activations, keys and values quantized from
        # float32, against float32 with a float32 KV.
        m = compare(wide_ref, forced_logits(wide, tokens, bits, args.chunk)[0], tokens)
        print(
            f"{label(bits) + '*':6} {m['kl']:9.2e} {m['top1']:7.2%} {m['ppl']:8.3f}   "
            "(float32 activations, against f32)"
        )
    del wide
    for bits in SETTINGS:
        out, cache = forced_logits(model, tokens, bits, args.chunk)
        m = compare(ref, out, tokens)
        replies = [greedy(model, c, bits, args.max_tokens) for c in cuts]
        same = sum(r == b for r, b in zip(replies, base_replies, strict=True))
        prefix = []
        for r, b in zip(replies, base_replies, strict=True):
            n = next((i for i, (x, y) in enumerate(zip(r, b, strict=False)) if x != y), len(b))
            prefix.append(n / max(len(b), 1))
        per_token = cache_bytes_per_token(cache)
        print(
            f"{label(bits):6} {m['kl']:9.2e} {m['top1']:7.2%} {m['ppl']:8.3f} "
            f"{same:>3}/{len(cuts):<2} {statistics.fmean(prefix) if prefix else 1:6.2%} "
            f"{per_token:8.0f} {per_token / base_bytes:7.3f} "
            f"{planner.kv_per_token(bits) / planner.kv_per_token(None):8.3f}",
            flush=True,
        )
    print(
        "\nKL, top-1: against bf16 KV, teacher-forced (f32: float32 activations and KV, "
        "nothing quantized, for scale; 8-bit*, 4-bit*: the quantization alone, with float32 "
        "activations, against f32); same: greedy replies identical to bf16 "
        "KV's; agree: share of each reply before its first difference (mean); B/token: KV "
        "bytes per token, measured; x bf16 and planner: over bf16's, measured and counted."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
