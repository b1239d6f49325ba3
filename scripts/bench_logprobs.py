#!/usr/bin/env python3
"""What `logprobs` costs a decode step: `stream_tokens` with logprobs off, with the
chosen token's only (0), and with 5 and 20 alternatives, in one run, alternating.

Two measurements. (1) Decode tokens/s of the Qwen3-4B-shaped model of
`bench_overhead.py` (a quarter of its width, ~25 ms a step on this project's CPU, about
what Qwen3-4B takes on a Mac) with each setting. Its vocabulary is small (1,024), so
(2) times the scoring step itself, `score_token`, on a log-softmax over Qwen3's real
vocabulary (151,936), which is what the step costs per token on the real model. Target:
logprobs on, with 20 alternatives, costs at most 5% of decode speed.

    python scripts/bench_logprobs.py [--prompt-tokens N] [--max-tokens N] [--rounds N]
                                     [--layers N] [--json FILE] [--smoke]
"""

from __future__ import annotations

import statistics
import sys
import time

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

QWEN3_VOCAB = 151_936
SETTINGS = {"off": None, "0": 0, "5": 5, "20": 20}


def score_ms(top: int | None, repeat: int) -> float:
    """Milliseconds `score_token` takes on a real-size vocabulary (0 when logprobs are off)."""
    if top is None:
        return 0.0
    import mlx.core as mx

    from qwen_mlx.runtime.generation import score_token

    logits = mx.random.normal((QWEN3_VOCAB,))
    distribution = logits - mx.logsumexp(logits)
    mx.eval(distribution)
    score_token(7, distribution, top)  # warm-up
    start = time.perf_counter()
    for i in range(repeat):
        score_token(i, distribution, top)
    return (time.perf_counter() - start) / repeat * 1000


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64)
    p.rounds(5, "measured runs of each setting, alternating; the median counts")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--score-repeat", type=int, default=200, help="scoring steps timed per setting")
    p.smoke(prompt_tokens=16, max_tokens=8, rounds=1, layers=1, score_repeat=10)
    args = p.parse_args(argv)

    from qwen_mlx import SamplingParams
    from qwen_mlx.runtime import stream_tokens
    from qwen_mlx.runtime.bench import synthetic_prompt

    with workspace() as work:
        model = quarter_model(work, args.layers)
        prompt = synthetic_prompt(model, args.prompt_tokens)
        n = args.max_tokens
        params = SamplingParams(temperature=0.0, max_tokens=n)
        model.tokenizer.eos_token_ids = set()  # run to max_tokens every time

        def run(top):
            return lambda: time_decode(
                lambda progress: stream_tokens(
                    model, prompt, params, prompt_progress=progress, logprobs=top
                ),
                n,
            )

        runs = alternate({name: run(top) for name, top in SETTINGS.items()}, args.rounds)
        label = describe(model)

    report = Report(args.json)
    rows = []
    for name, top in SETTINGS.items():
        mid = statistics.median(r.tps for r in runs[name])
        rows.append((name, mid, 1000 / mid, score_ms(top, args.score_repeat)))
    report.table(
        [
            Column("logprobs", "{}"),
            Column("tokens/s", vs="vs off", vs_fmt="{:.3f}"),
            Column("ms/token", "{:.2f}"),
            Column("score, 152k vocab", "{:.3f} ms"),
        ],
        rows,
        peer="off",
        title=f"decode with logprobs, {args.rounds} runs each, alternating; {label}",
    )
    step = rows[0][2]
    worst = step + rows[-1][3]
    report.line(
        f"20 alternatives on Qwen3's vocabulary at this step time: "
        f"{step / worst:.3f} of decode speed (target >= 0.95)"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
