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

Speeds are decode tokens per CPU-second of this process (first token to last, the median
of --repeat runs): on a shared machine wall-clock rates swing by 2-3x with other load,
CPU time much less. Wall-clock ratios of the same runs are printed too. (On a Mac with
Metal the GPU does the work and only wall-clock time means anything.)

Targets: lookup >= 1.5x plain where coverage >= 0.6; no mode below 0.95x plain where
coverage < 0.3; our draft >= 1.0x mlx-lm's draft on every prompt.

    python scripts/bench_speculative.py [--max-tokens 96] [--prompts 12] [--repeat 2] [--smoke]
"""

from __future__ import annotations

import inspect
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench import TRAINED, BenchParser

MODULES = ("textwrap", "shlex", "fnmatch", "bisect", "colorsys", "glob", "heapq", "queue")


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
    for name in MODULES:
        source = inspect.getsource(__import__(name))
        lines = [line for line in source.splitlines() if line.strip()][20:]
        chunk = "\n".join(lines[:18])
        func = next((i for i, line in enumerate(lines) if line.startswith("def ")), 0)
        code = "\n".join(lines[func : func + 14])
        word = next((w for w in code.replace("(", " ").split() if w.isidentifier()), "x")
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


def main(argv: list[str] | None = None) -> int:
    ap = BenchParser(__doc__, json=False)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--prompts", type=int, default=12, help="prompts for bf16")
    ap.add_argument("--q4-prompts", type=int, default=4, help="prompts for 4-bit (slow on CPU)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; the median is kept")
    ap.smoke(max_tokens=8, prompts=2, q4_prompts=1, repeat=1)
    args = ap.parse_args(argv)
    if not (TRAINED / "target" / "config.json").is_file():
        print(f"The trained pair is not at {TRAINED}.", file=sys.stderr)
        return 2

    from qwen_mlx import load
    from qwen_mlx.convert import convert
    from qwen_mlx.runtime import make_drafter

    work = Path(tempfile.mkdtemp(prefix="bench-spec-"))
    print(
        f"{'kind':9} {'q':4} {'cov':>5} {'plain':>7} {'lookup':>7} {'draft':>7} {'mlx-lm':>7} "
        f"{'acc-lk':>6} {'acc-dr':>6} {'acc-ml':>6} {'lk/pl':>6} {'dr/pl':>6} {'dr/ml':>6} same"
        "  wall: plain lk/pl dr/pl dr/ml"
    )
    rows = []
    for quant in ("bf16", "q4"):
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
        for kind, prompt in prompts(args.prompts if quant == "bf16" else args.q4_prompts):
            tokens = target.prompt_tokens(prompt)
            runs: dict[str, list] = {}
            for _ in range(args.repeat):
                for mode in ("plain", "lookup", "draft", "mlx-lm"):
                    if mode == "mlx-lm":
                        run = theirs(target, draft, tokens, args.max_tokens)
                    else:
                        if mode == "draft":
                            drafter.reset()  # no head start from an earlier run's cache
                        d = {"plain": None, "lookup": "lookup", "draft": drafter}[mode]
                        run = ours(target, tokens, args.max_tokens, d)
                    runs.setdefault(mode, []).append(run)
            # The median run of each mode, by tokens per CPU-second.
            best = {m: sorted(rs, key=lambda r: r[1])[len(rs) // 2] for m, rs in runs.items()}
            plain = best["plain"][0]
            cov = coverage(tokens, plain)
            same = all(best[m][0] == plain for m in ("lookup", "draft", "mlx-lm"))
            tps = {m: best[m][1] for m in best}
            wall = {m: best[m][3] for m in best}
            row = (kind, quant, cov, tps, best, same)
            rows.append(row)
            print(
                f"{kind:9} {quant:4} {cov:5.2f} {tps['plain']:7.1f} {tps['lookup']:7.1f} "
                f"{tps['draft']:7.1f} {tps['mlx-lm']:7.1f} {best['lookup'][2]:6.2f} "
                f"{best['draft'][2]:6.2f} {best['mlx-lm'][2]:6.2f} "
                f"{tps['lookup'] / tps['plain']:6.2f} {tps['draft'] / tps['plain']:6.2f} "
                f"{tps['draft'] / tps['mlx-lm']:6.2f} {'yes ' if same else 'NO  '}"
                f"        {wall['plain']:5.1f} {wall['lookup'] / wall['plain']:5.2f} "
                f"{wall['draft'] / wall['plain']:5.2f} {wall['draft'] / wall['mlx-lm']:5.2f}",
                flush=True,
            )
    print()
    high = [r for r in rows if r[2] >= 0.6]
    low = [r for r in rows if r[2] < 0.3]

    def ratio(rs, a, b):
        return statistics.median(r[3][a] / r[3][b] for r in rs) if rs else float("nan")

    lowest = min((r[3]["lookup"] / r[3]["plain"] for r in high), default=float("nan"))
    print(
        f"coverage >= 0.6: {len(high)} replies, lookup/plain median "
        f"{ratio(high, 'lookup', 'plain'):.2f}, min {lowest:.2f} (target >= 1.5)"
    )
    if low:
        worst = min(min(r[3][m] / r[3]["plain"] for m in ("lookup", "draft")) for r in low)
        print(
            f"coverage < 0.3: {len(low)} replies, worst of ours/plain {worst:.2f} (target >= 0.95)"
        )
    print(
        f"draft/mlx-lm: median {ratio(rows, 'draft', 'mlx-lm'):.2f}, min "
        f"{min(r[3]['draft'] / r[3]['mlx-lm'] for r in rows):.2f} (target >= 1.0 on every prompt)"
    )
    print(f"identical to plain greedy: {sum(r[5] for r in rows)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
