#!/usr/bin/env python3
"""Speculative decoding against plain decoding and mlx-lm's own, same run, same prompts.

The trained Qwen3 pair in ../shared/models/qwen3-tiny-trained (`target`, and `draft`
sharing its tokenizer), converted by our convert to bf16 and 4-bit. Prompts of three
kinds built from CPython's standard library (what the pair was trained on): raw
continuation, "Repeat/Quote ... the text above" chat turns, and code with one change
asked for. For each prompt and quantization, greedy:

- coverage: the share of the plain reply's tokens that a lookup of the two tokens before
  each (in the prompt and the reply so far) would have predicted;
- tokens/s of plain decoding (ours), ours with lookup, ours with the draft model, and
  mlx-lm's `stream_generate(..., draft_model=...)` with the same draft (its default
  num_draft_tokens of its CLI, 3), acceptance rates, and ratios;
- whether each speculative reply is token for token the plain one.

Speeds are decode tokens per CPU-second of this process (first token to last): on a
shared machine wall-clock rates swing by 2-3x with other load, CPU time much less. Each
repeat runs every mode back to back; a mode's ratio is the median over repeats of its
rate over plain's in the same repeat. Wall-clock ratios of the same runs are printed too.
(On a Mac with Metal the GPU does the work and only wall-clock time means anything.)

Targets: lookup >= 1.5x plain where coverage >= 0.6; no mode below 0.95x plain where
coverage < 0.3; our draft >= 1.0x mlx-lm's draft.

`--profile` shows where a round's time goes instead: the forward pass of 1 + k tokens in
plain steps, a draft step, and how much of a generation waits on evaluation.

    python scripts/bench_speculative.py [--max-tokens 96] [--prompts 12] [--repeat 3] [--smoke]
    python scripts/bench_speculative.py --profile
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench import TRAINED, BenchParser, stdlib_texts


def coverage(prompt: list[int], reply: list[int]) -> float:
    """Share of `reply` tokens that the token after the last earlier occurrence of the two
    tokens before it predicts."""
    if not reply:
        return 0.0
    h = list(prompt)
    last: dict[tuple[int, int], int] = {}
    for i in range(1, len(h) - 1):
        last[(h[i - 1], h[i])] = i
    hits = 0
    for t in reply:
        key = (h[-2], h[-1]) if len(h) >= 2 else None
        pos = last.get(key) if key else None
        if pos is not None and h[pos + 1] == t:
            hits += 1
        if len(h) >= 2:
            last[(h[-2], h[-1])] = len(h) - 1
        h.append(t)
    return hits / len(reply)


def prompts(n: int) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for chunk, code, word in stdlib_texts():
        out.append(("continue", chunk + "\n"))
        out.append(("repeat", [{"role": "user", "content": f"{chunk}\n\nRepeat the text above."}]))
        quote = f"{chunk}\n\nQuote line 3 of the text above."
        edit = f"{code}\n\nRewrite the code above with `{word}` renamed to `{word}_new`."
        out.append(("quote", [{"role": "user", "content": quote}]))
        out.append(("code-edit", [{"role": "user", "content": edit}]))
    # Interleave the kinds so a short run still has each.
    kinds = ("continue", "repeat", "quote", "code-edit")
    by_kind = [[p for p in out if p[0] == k] for k in kinds]
    mixed = [p for group in zip(*by_kind, strict=False) for p in group]
    return mixed[:n]


def ours(model, tokens, max_tokens, draft=None):
    from qwen_mlx.runtime import SamplingParams, stream_tokens

    taken: list[int] = []
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    first = 0.0
    chunks = stream_tokens(model, tokens, params, draft=draft, on_token=taken.append)
    for chunk in chunks:  # noqa: B007 (the last one has the stats)
        if not first and taken:
            first = time.perf_counter()
            cpu = time.process_time()
    end, cpu_end = time.perf_counter(), time.process_time()
    n = len(taken)
    tps = (n - 1) / (end - first) if n > 1 and end > first else 0.0
    cpu_tps = (n - 1) / (cpu_end - cpu) if n > 1 and cpu_end > cpu else 0.0
    return taken, cpu_tps, chunk.acceptance_rate, tps


def theirs(model, draft_model, tokens, max_tokens):
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    taken: list[int] = []
    from_draft = drafted = 0
    first = 0.0
    round_start = True
    for r in stream_generate(
        model.model,
        model.tokenizer,
        tokens,
        max_tokens=max_tokens,
        draft_model=draft_model.model,
        num_draft_tokens=3,
        sampler=make_sampler(temp=0.0),
    ):
        if not first:
            first = time.perf_counter()
            cpu = time.process_time()
        if round_start:  # each of its rounds drafts min(3, tokens left)
            drafted += min(3, max_tokens - len(taken))
        taken.append(r.token)
        from_draft += bool(r.from_draft)
        round_start = not r.from_draft
        if r.finish_reason:
            break
    end, cpu_end = time.perf_counter(), time.process_time()
    n = len(taken)
    tps = (n - 1) / (end - first) if n > 1 and end > first else 0.0
    cpu_tps = (n - 1) / (cpu_end - cpu) if n > 1 and cpu_end > cpu else 0.0
    return taken, cpu_tps, from_draft / max(drafted, 1), tps


MODES = ("plain", "lookup", "draft", "mlx-lm")


def paired(runs: list, plain: list, col: int) -> float:
    """Each mode ran right after plain in the same repeat: the median over repeats of the
    pair's ratio (it cancels slow drifts in the machine's load)."""
    ratios = [r[col] / p[col] for r, p in zip(runs, plain, strict=True) if p[col]]
    return statistics.median(ratios) if ratios else float("nan")


MIN_TOKENS = 16  # shorter replies are listed but left out of the summary (too few to time)


def profile(target, draft, drafter, tokens, max_tokens) -> None:
    """Where a round's time goes: the model's forward pass of 1 + k tokens timed with
    explicit evaluation (CPU time), a draft model's step, and a profile of a lookup
    generation split into evaluation and Python."""
    import cProfile
    import pstats

    import mlx.core as mx

    from qwen_mlx.runtime import make_cache, trim_cache

    def forward_ms(model, n, repeat=30):
        cache = make_cache(model)
        model.model(mx.array(tokens)[None], cache=cache)
        mx.eval([c.state for c in cache])
        times = []
        for _ in range(repeat):
            start = time.process_time()
            out = model.model(mx.array(tokens[:n])[None], cache=cache)
            mx.eval(mx.argmax(out[0], axis=-1))
            times.append(time.process_time() - start)
            trim_cache(cache, n)
        return 1e3 * statistics.median(times)

    print(f"forward pass of 1 + k tokens after a {len(tokens)}-token prompt (CPU ms, median):")
    for k in (0, 1, 2, 4, 8, 16):
        one, ms = forward_ms(target, 1), forward_ms(target, k + 1)  # side by side: load drifts
        print(f"  k={k:2}: {ms:6.2f} ms = {ms / one:4.2f} plain steps")
    one, ms = forward_ms(target, 1), forward_ms(draft, 1)
    print(f"  a draft model's step: {ms:6.2f} ms = {ms / one:4.2f} plain steps")
    # The rounds of one lookup generation (the controller sees each), and its CPU time.
    from qwen_mlx.runtime import speculative

    rounds: list[int] = []
    observe = speculative._Controller.observe

    def record(self, choice, proposed, accepted):
        rounds.append(proposed)
        return observe(self, choice, proposed, accepted)

    speculative._Controller.observe = record
    prof = cProfile.Profile()
    try:
        prof.enable()
        taken, cpu_tps = ours(target, tokens, max_tokens, "lookup")[:2]
        prof.disable()
    finally:
        speculative._Controller.observe = observe
    spent = 1e3 * (len(taken) - 1) / cpu_tps  # first token to last, as the rates are timed
    cost = {m: forward_ms(target, m + 1, 5) for m in sorted(set(rounds))}
    passes = sum(cost[m] for m in rounds)
    print(
        f"lookup, {len(taken)} tokens in {len(rounds) + 2} rounds: {spent:.0f} CPU ms after the "
        f"first token, of which the model's forward passes (timed alone) {passes:.0f} ms "
        f"({passes / spent:.0%}); the rest: graph building, lookup, verification, the stream"
    )
    pstats.Stats(prof).sort_stats("tottime").print_stats(8)


def main(argv: list[str] | None = None) -> int:
    ap = BenchParser(__doc__, json=False)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--prompts", type=int, default=12, help="prompts for bf16")
    ap.add_argument("--q4-prompts", type=int, default=4, help="prompts for 4-bit (slow on CPU)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; the median is kept")
    ap.add_argument("--profile", action="store_true", help="profile one prompt's rounds, then exit")
    ap.smoke(max_tokens=8, prompts=2, q4_prompts=1, repeat=1)
    args = ap.parse_args(argv)
    if not (TRAINED / "target" / "config.json").is_file():
        print(f"The trained pair is not at {TRAINED}.", file=sys.stderr)
        return 2

    from qwen_mlx import load
    from qwen_mlx.convert import convert
    from qwen_mlx.runtime import make_drafter

    work = Path(tempfile.mkdtemp(prefix="bench-spec-"))
    rows = []
    for quant in ("bf16", "q4"):
        n_prompts = args.prompts if quant == "bf16" else args.q4_prompts
        if not n_prompts:
            continue
        pair = []
        for name in ("target", "draft"):
            out = work / f"{name}-{quant}"
            convert(str(TRAINED / name), mlx_path=out, quantize=quant == "q4")
            pair.append(load(out))
        target, draft = pair
        drafter = make_drafter(target, draft)
        warm = target.encode("def f(x):\n    return x\n")
        ours(target, warm, 8), ours(target, warm, 8, "lookup"), ours(target, warm, 8, drafter)
        theirs(target, draft, warm, 8)
        if args.profile:
            kind, prompt = prompts(2)[1]
            profile(target, draft, drafter, target.prompt_tokens(prompt), args.max_tokens)
            return 0
        print(
            f"{'kind':9} {'q':4} {'cov':>5} {'n':>3} {'plain':>6} {'acc-lk':>6} {'acc-dr':>6} "
            f"{'acc-ml':>6} {'lk/pl':>6} {'dr/pl':>6} {'ml/pl':>6} {'dr/ml':>6} same"
            "   wall: lk/pl dr/pl ml/pl"
        )
        for kind, prompt in prompts(n_prompts):
            tokens = target.prompt_tokens(prompt)
            runs: dict[str, list] = {m: [] for m in MODES}
            for _ in range(args.repeat):
                for mode in MODES:
                    if mode == "mlx-lm":
                        run = theirs(target, draft, tokens, args.max_tokens)
                    else:
                        if mode == "draft":
                            drafter.reset()  # no head start from an earlier run's cache
                        d = {"plain": None, "lookup": "lookup", "draft": drafter}[mode]
                        run = ours(target, tokens, args.max_tokens, d)
                    runs[mode].append(run)
            plain = runs["plain"][0][0]
            n = len(plain)
            cov = coverage(tokens, plain)
            same = all(r[0] == plain for m in MODES for r in runs[m])

            cpu = {m: paired(runs[m], runs["plain"], 1) for m in MODES}
            wall = {m: paired(runs[m], runs["plain"], 3) for m in MODES}
            acc = {m: statistics.median(r[2] for r in runs[m]) for m in MODES}
            plain_tps = statistics.median(r[1] for r in runs["plain"])
            rows.append((kind, quant, cov, n, cpu, wall, same))
            print(
                f"{kind:9} {quant:4} {cov:5.2f} {n:3} {plain_tps:6.1f} {acc['lookup']:6.2f} "
                f"{acc['draft']:6.2f} {acc['mlx-lm']:6.2f} {cpu['lookup']:6.2f} "
                f"{cpu['draft']:6.2f} {cpu['mlx-lm']:6.2f} {cpu['draft'] / cpu['mlx-lm']:6.2f} "
                f"{'yes ' if same else 'NO  '}        {wall['lookup']:5.2f} {wall['draft']:5.2f} "
                f"{wall['mlx-lm']:5.2f}",
                flush=True,
            )
    print(
        "\nratios: tokens per CPU-second (wall-clock in the last columns) over plain's in the "
        f"same repeat, median of {args.repeat}; n: reply tokens (plain greedy)"
    )
    timed = [r for r in rows if r[3] >= MIN_TOKENS]

    def summary(label, sel, modes):
        if not sel:
            return
        for m in modes:
            vals = [r[4][m] for r in sel]
            walls = [r[5][m] for r in sel]
            print(
                f"{label}: {len(sel)} replies, {m}/plain median {statistics.median(vals):.2f} "
                f"min {min(vals):.2f} (wall median {statistics.median(walls):.2f})"
            )

    summary("coverage >= 0.6", [r for r in timed if r[2] >= 0.6], ("lookup", "draft"))
    print("  target: lookup >= 1.5x plain")
    summary("coverage < 0.3", [r for r in timed if r[2] < 0.3], ("lookup", "draft"))
    print("  target: no mode below 0.95x plain")
    if timed:
        vs = [r[4]["draft"] / r[4]["mlx-lm"] for r in timed]
        print(f"draft/mlx-lm's draft: median {statistics.median(vs):.2f}, min {min(vs):.2f}")
    print(f"identical to plain greedy: {sum(r[6] for r in rows)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
