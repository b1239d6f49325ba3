#!/usr/bin/env python3
"""Per-token cost of JSON-schema constrained decoding, against free decoding, same run.

A small random Qwen3 with the real Qwen3-4B-Instruct-2507 tokenizer (152K tokens, from
../shared; the packaged tiny tokenizer is used without it) generates with and without a
schema. We report decode tokens/s of each, the overhead per token in milliseconds, and
the time of the mask step alone (llguidance's mask plus applying it with MLX).

    python scripts/bench_structured.py [--tokens 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "qwen3-4b-instruct-2507"
SCHEMA = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 16},
                    "qty": {"type": "integer", "minimum": 0, "maximum": 999},
                    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}},
                },
                "required": ["name", "qty", "tags"],
            },
        }
    },
    "required": ["items"],
}
SCHEMA["properties"]["items"]["minItems"] = 6  # long enough replies to time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    import mlx.core as mx
    import numpy as np

    from qwen_mlx import load, stream_generate
    from qwen_mlx.convert import convert
    from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint
    from qwen_mlx.runtime.structured import JsonSchemaProcessor

    real = (SHARED / "tokenizer.json").is_file()
    with tempfile.TemporaryDirectory() as tmp:
        source = build_tiny_checkpoint(
            Path(tmp) / "Qwen3-10M-Json-2507",
            TinyConfig(hidden_size=128, num_hidden_layers=2),
            tokenizer_from=SHARED if real else None,
        )
        model = load(convert(str(source), mlx_path=Path(tmp) / "m", quantize=False).path)
        vocab = model.config["vocab_size"]
        print(
            f"vocabulary: {vocab:,} ({'real Qwen3' if real else 'tiny'} tokenizer)", file=sys.stderr
        )
        messages = [{"role": "user", "content": "List some items as JSON."}]
        JsonSchemaProcessor(model, SCHEMA)  # builds and caches the tokenizer view (~1 s)

        def decode_rate(schema) -> tuple[float, int]:
            best, count = 0.0, 0
            for seed in range(args.repeat):
                chunks = list(
                    stream_generate(
                        model,
                        messages,
                        json_schema=schema,
                        seed=seed,
                        temperature=1.0,
                        max_tokens=args.tokens,
                    )
                )
                if chunks[-1].generation_tps > best:
                    best, count = chunks[-1].generation_tps, chunks[-1].generation_tokens
            return best, count

        free, n_free = decode_rate(None)
        constrained, n_json = decode_rate(SCHEMA)

        # The mask step alone: random allowed tokens, until the JSON is complete.
        processor = JsonSchemaProcessor(model, SCHEMA)
        rng = np.random.default_rng(0)
        logits, tokens = mx.zeros((1, vocab)), mx.array([0])
        spent, steps = 0.0, 0
        while steps < 200 and not processor.matcher.is_stopped():
            start = time.perf_counter()
            masked = processor(tokens, logits)
            mx.eval(masked)
            spent += time.perf_counter() - start
            allowed = np.flatnonzero(np.array(mx.isfinite(masked)[0]))
            tokens = mx.array([int(rng.choice(allowed))])
            steps += 1
        mask_ms = spent / max(steps, 1) * 1000

    overhead = (1 / constrained - 1 / free) * 1000
    step_ms = 1000 / free
    print(f"\n{'decoding':<12} {'tokens/s':>9} {'tokens':>7}")
    print(f"{'free':<12} {free:>9.1f} {n_free:>7}")
    print(f"{'json schema':<12} {constrained:>9.1f} {n_json:>7}")
    print(f"\nratio constrained / free: {constrained / free:.3f}")
    print(
        f"overhead per token: {overhead:.2f} ms from the decode rates; the mask step alone "
        f"takes {mask_ms:.2f} ms = {mask_ms / step_ms:.1%} of a free decode step "
        f"({step_ms:.1f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
