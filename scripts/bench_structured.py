#!/usr/bin/env python3
"""Per-token cost of JSON-schema constrained decoding, against free decoding, same run.

A small random Qwen3 with the real Qwen3-4B-Instruct-2507 tokenizer (152K tokens, from
../shared; the packaged tiny tokenizer is used without it) generates with and without a
schema. We report decode tokens/s of each, the overhead per token in milliseconds, and
the time of the mask step alone (llguidance's mask plus applying it with MLX). Each
way runs `--rounds` times (seeds 0, 1, ...), taking turns; the fastest run counts.

    python scripts/bench_structured.py [--tokens 200] [--rounds 3] [--json FILE] [--smoke]

(`--repeat` is the former name of `--rounds`.)
"""

from __future__ import annotations

import itertools
import sys
import time

from _bench import REAL_QWEN3, BenchParser, Column, Report, alternate, tiny_model, workspace

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
    p = BenchParser(__doc__)
    p.add_argument("--tokens", type=int, default=200, help="the most tokens of a reply")
    p.rounds(3, "runs of each way, taking turns (the fastest counts)", "--repeat")
    p.add_argument("--mask-steps", type=int, default=200, help="mask steps timed alone")
    p.smoke(tokens=24, rounds=1, mask_steps=20)
    args = p.parse_args(argv)

    import mlx.core as mx
    import numpy as np

    from qwen_mlx import stream_generate
    from qwen_mlx.runtime.structured import JsonSchemaProcessor

    real = (REAL_QWEN3 / "tokenizer.json").is_file()
    with workspace() as work:
        model = tiny_model(
            work,
            "Qwen3-10M-Json-2507",
            {"hidden_size": 128, "num_hidden_layers": 2},
            quantize=False,
            tokenizer_from=REAL_QWEN3 if real else None,
        )
        vocab = model.config["vocab_size"]
        print(
            f"vocabulary: {vocab:,} ({'real Qwen3' if real else 'tiny'} tokenizer)", file=sys.stderr
        )
        messages = [{"role": "user", "content": "List some items as JSON."}]
        JsonSchemaProcessor(model, SCHEMA)  # builds and caches the tokenizer view (~1 s)
        seeds = {"free": itertools.count(), "json schema": itertools.count()}

        def reply(way, schema):  # each way's replies take seeds 0, 1, ...
            *_, last = stream_generate(
                model,
                messages,
                json_schema=schema,
                seed=next(seeds[way]),
                temperature=1.0,
                max_tokens=args.tokens,
            )
            return last.generation_tps, last.generation_tokens

        runs = alternate(
            {
                "free": lambda: reply("free", None),
                "json schema": lambda: reply("json schema", SCHEMA),
            },
            args.rounds,
            warm_up=False,
        )

        # The mask step alone: random allowed tokens, until the JSON is complete.
        processor = JsonSchemaProcessor(model, SCHEMA)
        rng = np.random.default_rng(0)
        logits, tokens = mx.zeros((1, vocab)), mx.array([0])
        spent, steps = 0.0, 0
        while steps < args.mask_steps and not processor.matcher.is_stopped():
            start = time.perf_counter()
            masked = processor(tokens, logits)
            mx.eval(masked)
            spent += time.perf_counter() - start
            allowed = np.flatnonzero(np.array(mx.isfinite(masked)[0]))
            tokens = mx.array([int(rng.choice(allowed))])
            steps += 1
        mask_ms = spent / max(steps, 1) * 1000

    best = {way: max(got) for way, got in runs.items()}
    free, constrained = best["free"][0], best["json schema"][0]
    report = Report(args.json)
    report.table(
        [
            Column("decoding", "{}", left=True),
            Column("tokens/s", vs="vs free", vs_fmt="{:.3f}"),
            Column("tokens", "{}"),
        ],
        [(way, tps, n) for way, (tps, n) in best.items()],
        peer="free",
        title=f"the fastest of {args.rounds} replies each, {vocab:,}-token vocabulary",
    )
    overhead = (1 / constrained - 1 / free) * 1000
    step_ms = 1000 / free
    report.line()
    report.line(f"ratio constrained / free: {constrained / free:.3f}")
    report.line(
        f"overhead per token: {overhead:.2f} ms from the decode rates; the mask step alone "
        f"takes {mask_ms:.2f} ms = {mask_ms / step_ms:.1%} of a free decode step "
        f"({step_ms:.1f} ms)"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
