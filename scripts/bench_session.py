#!/usr/bin/env python3
"""ChatSession against the stateless way, on small Qwen3-shaped models, in one run.

(a) A 20-turn chat: time to first token of each turn with our session (prefix reuse) and
    with a stateless client that re-prefills the whole history every turn.
    Target: ours turn 20 / turn 1 <= 1.3.
(b) Resuming a saved ~8K-token conversation (load + first token) versus re-prefilling it.
    Target: resume <= 0.1 x re-prefill.
(c) Peak memory of a long prefill with a 4-bit KV cache versus bf16 at the same length.
    Target: 4-bit below bf16.

The models are random, bf16 on a CPU (MLX's CPU quantized matmuls are ~10x slower than
bf16 ones) and 4-bit with Metal. (a) uses Qwen3-4B's proportions scaled down to hidden
640 (attention 1.6x hidden, MLP 3.8x hidden, 4:1 grouped-query attention): how much
attention over the history adds to a turn depends on context / hidden, so the chat is
sized to match Qwen3-4B at ~4K tokens. (b) and (c) use a narrow model with a KV cache as
heavy per token as its weights are light, so that the cache, not the matmuls, shows.

    python scripts/bench_session.py [--turns 20] [--resume-tokens 8192] [--long-tokens 4096]
                                    [--chunk 512] [--layers 4] [--only a|b|c] [--json FILE]
                                    [--smoke]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from _bench import BenchParser, Column, Report, quarter_model, tiny_model, workspace

CONTEXT = {"max_position_embeddings": 65536}
CACHE_SHAPE = {  # light weights, heavy KV: 16 KiB of bf16 KV per token
    "hidden_size": 256,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "intermediate_size": 512,
}
SYSTEM = (
    "You are a planning assistant for a small software team. Answer briefly, name owners "
    "and dates, and say when something is a guess."
)


def drain(stream) -> None:
    for _ in stream:
        pass


def last(stream):
    *_, final = stream
    return final


def bench_turns(model, turns: int) -> list[tuple[int, int, float, float]]:
    from qwen_mlx import ChatSession, stream_generate

    # Warm both paths up (first calls pay one-off setup) before measuring anything.
    drain(stream_generate(model, [{"role": "user", "content": "warm up"}], max_tokens=2))
    drain(ChatSession(model, system=SYSTEM).send("warm up", max_tokens=2))
    session = ChatSession(model, system=SYSTEM)
    rows = []
    for i in range(1, turns + 1):
        text = f"Item {i}: who owns the next step for task {i}, and by when?"
        drain(session.send(text, max_tokens=48, temperature=0))
        # Time to the first sampled token, as each path measures it (the first chunk of
        # text can come later: a token may hold half a UTF-8 character).
        ours = session.last_stats.time_to_first_token
        history = session.messages[:-1]  # the same conversation, for the stateless client
        theirs = last(stream_generate(model, history, max_tokens=1, temperature=0))
        theirs = theirs.time_to_first_token
        rows.append((i, session.last_stats.prompt_tokens, ours, theirs))
        print(
            f"  turn {i}: {rows[-1][1]} tokens, ours {ours * 1000:.0f} ms, "
            f"stateless {theirs * 1000:.0f} ms",
            file=sys.stderr,
            flush=True,
        )
    return rows


def bench_resume(model, tokens: int, root: Path) -> dict[str, float]:
    from qwen_mlx import ChatSession

    words = "The quick brown fox studies unified memory on a laptop. "
    per = len(model.encode(words))
    session = ChatSession(model, system="Summarize when asked.")
    drain(session.send(words * (tokens // per), max_tokens=16, temperature=0))
    path = session.save(root / "long.json")
    size = session.last_stats.prompt_tokens

    start = time.perf_counter()
    resumed = ChatSession.load(path, model)
    loaded = time.perf_counter() - start
    drain(resumed.send("Now summarize.", max_tokens=1, temperature=0))
    resume_ttft = resumed.last_stats.time_to_first_token

    fresh = ChatSession(model, system="Summarize when asked.")
    for m in session.messages[1:]:
        fresh.add_message(m)
    drain(fresh.send("Now summarize.", max_tokens=1, temperature=0))
    reprefill = fresh.last_stats.time_to_first_token
    return {"tokens": size, "load": loaded, "resume_ttft": resume_ttft, "reprefill": reprefill}


def bench_peak(model, tokens: int, chunk: int) -> dict[int | None, tuple[float, float]]:
    import mlx.core as mx

    from qwen_mlx import ChatSession

    per = len(model.encode("Long documents fill the context window quickly. "))
    text = "Long documents fill the context window quickly. " * (tokens // per)
    peaks = {}
    for bits in (None, 4):
        session = ChatSession(model, kv_bits=bits)
        session.prefill_chunk = chunk
        mx.clear_cache()
        mx.reset_peak_memory()
        start = time.perf_counter()
        drain(session.send(text, max_tokens=1, temperature=0))
        peaks[bits] = (mx.get_peak_memory(), time.perf_counter() - start)
        print(f"  {bits or 16}-bit KV: peak {peaks[bits][0] / 1e6:.0f} MB", file=sys.stderr)
        del session
        mx.clear_cache()
    return peaks


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__)
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--resume-tokens", type=int, default=8192)
    p.add_argument("--long-tokens", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=512, help="prefill chunk for (c), both runs")
    p.add_argument("--layers", type=int, default=4, help="layers of (a)'s model")
    p.add_argument("--only", choices=("a", "b", "c"), help="run one part")
    p.smoke(turns=3, resume_tokens=256, long_tokens=256, chunk=64, layers=1)
    args = p.parse_args(argv)
    report = Report(args.json)
    with workspace() as root:
        if args.only in (None, "a"):
            model = quarter_model(root, args.layers, **CONTEXT)
            rows = bench_turns(model, args.turns)
            report.table(
                [
                    Column("turn", "{}"),
                    Column("context", "{}"),
                    Column("ours ms", vs="ours vs turn 1"),
                    Column("stateless ms", vs="stateless vs turn 1"),
                ],
                [(i, ctx, ours * 1000, theirs * 1000) for i, ctx, ours, theirs in rows],
                peer=1,
                title="(a) time to first token per turn; stateless = re-prefill the whole history",
            )
            last, first = rows[-1], rows[0]
            report.line(
                f"turn {last[0]} / turn 1: ours {last[2] / first[2]:.2f} (target <= 1.3), "
                f"stateless {last[3] / first[3]:.2f}"
            )
        if args.only in (None, "b", "c"):
            model = tiny_model(root, "Qwen3-1M-Cache-2507", {**CACHE_SHAPE, **CONTEXT},
                               tokenizer_vocab_size=1024)  # fmt: skip
        if args.only in (None, "b"):
            r = bench_resume(model, args.resume_tokens, root)
            resume = r["load"] + r["resume_ttft"]
            report.line()
            report.line(f"(b) resume a saved {r['tokens']:,}-token conversation")
            report.line(
                f"load {r['load'] * 1000:.0f} ms + first token {r['resume_ttft'] * 1000:.0f} ms"
                f" = {resume * 1000:.0f} ms; re-prefill {r['reprefill'] * 1000:.0f} ms"
            )
            report.line(f"resume / re-prefill: {resume / r['reprefill']:.3f} (target <= 0.1)")
        if args.only in (None, "c"):
            peaks = bench_peak(model, args.long_tokens, args.chunk)
            (bf16, t16), (q4, t4) = peaks[None], peaks[4]
            report.line()
            report.line(
                f"(c) peak memory of a {args.long_tokens:,}-token prefill (chunks of {args.chunk})"
            )
            report.line(
                f"bf16 KV {bf16 / 1e6:.0f} MB ({t16:.0f} s), 4-bit KV {q4 / 1e6:.0f} MB "
                f"({t4:.0f} s): 4-bit / bf16 = {q4 / bf16:.2f} (target < 1)"
            )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
