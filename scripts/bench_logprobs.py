#!/usr/bin/env python3
"""What `logprobs` costs a decode step: `stream_tokens` with logprobs off, with the
chosen token's only (0), and with 5 and 20 alternatives, in one run, alternating.

Two measurements. (1) Decode tokens/s of the Qwen3-4B-shaped model of
`bench_overhead.py` (a quarter of its width, ~25 ms a step on this project's CPU, about
what Qwen3-4B takes on a Mac) with each setting. Its vocabulary is small (1,024), so
(2) times the scoring step itself, `_score`, on a log-softmax over Qwen3's real vocabulary
(151,936), which is what the step costs per token on the real model. Target: logprobs
on, with 20 alternatives, costs at most 5% of decode speed.

    python scripts/bench_logprobs.py [--prompt-tokens N] [--max-tokens N] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_overhead import build_model, timed

QWEN3_VOCAB = 151_936
SETTINGS = (None, 0, 5, 20)


def score_ms(top: int | None, repeat: int = 200) -> float:
    """Milliseconds `_score` takes on a real-size vocabulary (0 when logprobs are off)."""
    if top is None:
        return 0.0
    import mlx.core as mx

    from qwen_mlx.runtime.generation import _score

    logits = mx.random.normal((QWEN3_VOCAB,))
    distribution = logits - mx.logsumexp(logits)
    mx.eval(distribution)
    _score(7, distribution, top)  # warm-up
    start = time.perf_counter()
    for i in range(repeat):
        _score(i, distribution, top)
    return (time.perf_counter() - start) / repeat * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="measured runs of each setting")
    p.add_argument("--layers", type=int, default=4)
    args = p.parse_args(argv)

    from qwen_mlx import SamplingParams
    from qwen_mlx.runtime import stream_tokens
    from qwen_mlx.runtime.bench import synthetic_prompt

    with tempfile.TemporaryDirectory() as tmp:
        model, label = build_model(Path(tmp), args.layers)
        prompt = synthetic_prompt(model, args.prompt_tokens)
        n = args.max_tokens
        params = SamplingParams(temperature=0.0, max_tokens=n)
        model.tokenizer.eos_token_ids = set()  # run to max_tokens every time

        def run(top):
            return lambda progress: stream_tokens(
                model, prompt, params, prompt_progress=progress, logprobs=top
            )

        for top in SETTINGS:
            timed(run(top), n)
        rates: dict[int | None, list[float]] = {top: [] for top in SETTINGS}
        for i in range(args.rounds):
            order = SETTINGS if i % 2 == 0 else SETTINGS[::-1]
            for top in order:
                rates[top].append(timed(run(top), n)[0])
            print(f"  round {i + 1} done", file=sys.stderr, flush=True)
    base = statistics.median(rates[None])
    print(f"\ndecode with logprobs, {args.rounds} runs each, alternating; {label}")
    print(
        f"{'logprobs':>9} {'tokens/s':>9} {'vs off':>7} {'ms/token':>9} {'score, 152k vocab':>18}"
    )
    for top in SETTINGS:
        mid = statistics.median(rates[top])
        name = "off" if top is None else str(top)
        print(f"{name:>9} {mid:9.1f} {mid / base:7.3f} {1000 / mid:9.2f} {score_ms(top):15.3f} ms")
    worst = 1000 / base + score_ms(20)
    print(
        f"20 alternatives on Qwen3's vocabulary at this step time: "
        f"{(1000 / base) / worst:.3f} of decode speed (target >= 0.95)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
