#!/usr/bin/env python3
"""Decode speed of our `stream_generate` against mlx-lm's `stream_generate`, in one run.

Both generate from the same model module, tokenizer and prompt token ids, greedily, for the
same number of tokens; the tokenizer's end-of-turn set is emptied so that neither stops
early (and neither needs a logits processor). Runs alternate (ours then mlx-lm, then
mlx-lm then ours, ...) after a warm-up of each. Decode speed is timed the same way for
both, from outside: from the first token (the prompt-progress callback both fire once it
is computed) to the end of the stream, over the tokens after the first, on the wall clock
and per CPU-second of this process (steadier on a shared machine).
Target: ours / mlx-lm >= 0.97.

The model is random and Qwen3-4B-shaped at a quarter of its width (hidden 640, 8 query
heads and 2 KV heads of 128, MLP 3.8x hidden, 4 layers by default). On this project's
2-core CPU a decode step then takes ~25 ms, about what Qwen3-4B's takes on a Mac, so
per-token Python overhead shows at the scale it would there; the absolute difference per
token is printed too. bf16 on a CPU (MLX's CPU quantized matmuls are ~10x slower than bf16
ones), 4-bit with Metal.

    python scripts/bench_overhead.py [--prompt-tokens N] [--max-tokens N] [--rounds N]
                                     [--layers N] [--json FILE] [--smoke]

(`--pairs` is the former name of `--rounds`.)
"""

from __future__ import annotations

import statistics
import sys

from _bench import (
    BenchParser,
    Column,
    Report,
    alternate,
    describe,
    quarter_model,
    time_decode,
    workspace,
)


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=128)
    p.rounds(7, "measured runs of each, alternating; the median counts", "--pairs")
    p.add_argument("--layers", type=int, default=4)
    p.smoke(prompt_tokens=16, max_tokens=8, rounds=2, layers=1)
    args = p.parse_args(argv)

    from mlx_lm.generate import stream_generate as mlx_lm_stream_generate

    from qwen_mlx import SamplingParams, stream_generate
    from qwen_mlx.runtime.bench import synthetic_prompt

    with workspace() as work:
        model = quarter_model(work, args.layers)
        prompt = synthetic_prompt(model, args.prompt_tokens)
        n = args.max_tokens
        params = SamplingParams(temperature=0.0, max_tokens=n)
        # Neither loop may stop early: with no end-of-turn token both run to max_tokens,
        # and neither pays for a logits processor.
        model.tokenizer.eos_token_ids = set()

        def ours():
            return time_decode(
                lambda progress: stream_generate(model, prompt, params, prompt_progress=progress),
                n,
            )

        def theirs():
            return time_decode(
                lambda progress: mlx_lm_stream_generate(
                    model.model,
                    model.tokenizer,
                    prompt,
                    max_tokens=n,
                    prompt_progress_callback=progress,
                ),
                n,
            )

        print(f"prompt {len(prompt)} tokens, {n} generated, greedy", file=sys.stderr)
        runs = alternate(
            {"ours": ours, "mlx-lm": theirs},
            args.rounds,
            say=lambda i, r: (
                f"round {i}: ours {r['ours'].tps:.1f}, mlx-lm {r['mlx-lm'].tps:.1f} tokens/s"
            ),
        )
        label = describe(model)

    report = Report(args.json)
    rows = []
    for name, rates in runs.items():
        wall = [r.tps for r in rates]
        mid = statistics.median(wall)
        cpu = statistics.median(r.cpu_tps for r in rates)
        rows.append((name, mid, min(wall), max(wall), 1000 / mid, cpu))
    report.table(
        [
            Column("decoder", "{}", left=True),
            Column("tokens/s", vs="vs mlx-lm", vs_fmt="{:.3f}"),
            Column("min"),
            Column("max"),
            Column("ms/token", "{:.2f}"),
            Column("per CPU-s", vs="CPU vs mlx-lm", vs_fmt="{:.3f}"),
        ],
        rows,
        peer="mlx-lm",
        title=f"decode tokens/s, median of {args.rounds} runs each, alternating; {label}",
    )
    ours_tps, theirs_tps = rows[0][1], rows[1][1]
    pairs = [a.tps / b.tps for a, b in zip(runs["ours"], runs["mlx-lm"], strict=True)]
    same = len({r.text for rates in runs.values() for r in rates}) == 1
    report.line(
        f"ours / mlx-lm: {ours_tps / theirs_tps:.3f} (target >= 0.97); per round "
        f"{min(pairs):.3f} to {max(pairs):.3f}; "
        f"ours costs {(1 / ours_tps - 1 / theirs_tps) * 1e6:+.0f} us per token; "
        f"same text: {'yes' if same else 'NO'}"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
