#!/usr/bin/env python3
"""`qwen-mlx serve` against `mlx_lm server` under concurrent streaming clients, in one run.

Both servers serve the same converted folder (the trained tiny Qwen3 from
../shared/models/qwen3-tiny-trained/target, converted with our `convert` into a temp
folder: bf16 on a CPU, where MLX's quantized matmuls are slow, 4-bit with Metal). Both run
at once but are measured in turns (the CPU is shared): after a warm-up request each, for
each concurrency C, C official `openai` clients each stream one chat completion (greedy,
the same max_tokens) at the same moment, against one server then the other, `--rounds`
times; the round with the best aggregate counts (load from other programs only slows a
round down). Then a short request is sent while a long prompt is being read, and again
while `--beside` (8) long prompts are being read at once, to show its time to first token
stays bounded: mlx_lm's batch reads up to 8 prompts together, each to its end, so a short
request behind 8 long ones waits for whole prefills; ours reads long prompts a chunk per
step and starts a short one at once. That TTFT is printed for both, and as a ratio.

Printed per server and concurrency: aggregate generated tokens/s (all tokens / wall
time), p50 and p95 time to first token, mean per-client tokens/s (after its first
token); then ours / mlx_lm. Targets: ours >= 1.0x mlx_lm at every concurrency, ours at 8
clients >= 3x ours at 1.

    python scripts/bench_server.py [--model DIR] [--clients 1,4,8,16] [--max-tokens 32]
                                   [--rounds 2] [--long-words 1500] [--beside 8] [--json FILE]
                                   [--smoke]

`--workload agent`: replies that copy from their prompts, as an agent's code edits do
(prompts of CPython source with "Repeat the text above." or "Rewrite the code above with
X renamed"; the trained pair was trained on such turns), and, apart, questions whose
replies do not. Seven servers: ours with `--draft lookup --kv-bits 8` (speculation and
8-bit KV inside the batch), ours with each alone, ours with the trained draft model
(`--draft-model`, converted beside the target; it drafts inside the batch too), ours
plain, `mlx_lm server`, and `mlx_lm server --draft-model` with the same draft (which
decodes one request at a time); at 1, 4 and 8 clients (`--clients`), each client
streaming one reply per round, the servers taking turns; medians of `--rounds`. Printed:
aggregate tokens/s (wall clock) and tokens per CPU-second of each server process (the
machine is shared: CPU time moves less with other load), our draft acceptance (from
/health), and the ratios. Targets: lookup+kv8 on the copying workload >= 1.5x mlx_lm; on
the other, every speculative mode >= 0.95x ours plain; kv8 >= 0.9x ours plain at 8
clients.

    python scripts/bench_server.py --workload agent [--clients 1,4,8] [--max-tokens 64]

(`--source` is the former name of `--model`.)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _bench import (
    TRAINED,
    BenchParser,
    Column,
    Report,
    free_port,
    need_model,
    ratio,
    start_server,
    stdlib_texts,
    workspace,
)

QUESTIONS = [
    "Continue:\nimport os",
    "What does the with statement do?",
    "Continue:\ndef main(argv):",
    "Explain list comprehensions.",
    "Continue:\nclass Path:",
    "What is a generator?",
    "Continue:\nfor line in open(path):",
    "How do decorators work?",
]


def agent_prompts(copying: bool) -> list[str]:
    """Chat prompts whose replies copy from them (CPython source to repeat or rename in)
    or, with `copying` False, questions whose replies do not."""
    if not copying:
        return [q for q in QUESTIONS if not q.startswith("Continue")] * 2
    out = []
    for chunk, code, word in stdlib_texts():
        out.append(f"{chunk}\n\nRepeat the text above.")
        out.append(f"{code}\n\nRewrite the code above with `{word}` renamed to `{word}_new`.")
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_request(url: str, model: str, prompt: str, max_tokens: int) -> dict:
    """Stream one chat completion; time its first token and count its tokens."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    start = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    tokens = usage.completion_tokens if usage is not None else chunks
    first = first or end
    return {
        "ttft": first - start,
        "tokens": tokens,
        "start": start,
        "end": end,
        "tps": (tokens - 1) / (end - first) if end > first and tokens > 1 else 0.0,
    }


def concurrent(
    url: str, model: str, clients: int, max_tokens: int, questions: list[str] = QUESTIONS
) -> dict:
    results: list[dict] = [{}] * clients
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait()
        prompt = questions[i % len(questions)]
        results[i] = one_request(url, model, prompt, max_tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    return {
        "wall": wall,
        "tps": sum(r["tokens"] for r in results) / wall,
        "p50": statistics.median(ttfts),
        "p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
        "client_tps": statistics.mean(r["tps"] for r in results),
    }


def behind_long(url: str, model: str, long_words: int) -> tuple[float, float, float]:
    """(TTFT of a short request alone, TTFT of the same request sent while a long prompt
    of `long_words` words is being read, TTFT of the long one)."""
    alone = one_request(url, model, "What is a generator?", 4)["ttft"]
    long_prompt = "Continue:\n" + " ".join(["import os, sys"] * (long_words // 3))
    long: dict = {}
    reader = threading.Thread(target=lambda: long.update(one_request(url, model, long_prompt, 4)))
    reader.start()
    time.sleep(0.3)  # the long prompt is being read
    behind = one_request(url, model, "What is a generator?", 4)["ttft"]
    reader.join()
    return alone, behind, long["ttft"]


def beside_long(url: str, model: str, long_words: int, n: int) -> tuple[float, float]:
    """(TTFT of a short request sent while `n` long prompts of `long_words` words are
    being read at once, the median TTFT of the long ones)."""
    long_prompt = " ".join(["import os, sys"] * (long_words // 3))
    longs: list[dict] = [{}] * n

    def read(i: int) -> None:
        longs[i] = one_request(url, model, f"Continue {i}:\n{long_prompt}", 4)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(n)]
    for t in readers:
        t.start()
    time.sleep(0.3)  # the long prompts are being read
    short = one_request(url, model, "What is a generator?", 4)["ttft"]
    for t in readers:
        t.join()
    return short, statistics.median(r["ttft"] for r in longs)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def say_round(name: str, c: int, r: dict) -> None:
    print(
        f"  {name:<14} {c:>3} clients: {r['tps']:7.1f} tokens/s, TTFT p50 "
        f"{r['p50'] * 1000:6.0f} ms p95 {r['p95'] * 1000:6.0f} ms, "
        f"{r['client_tps']:6.1f} tokens/s per client",
        file=sys.stderr,
        flush=True,
    )


AGENT_SERVERS = (
    "lookup+kv8",
    "lookup",
    "draft model",
    "kv8",
    "ours plain",
    "mlx_lm",
    "mlx_lm draft",
)
AGENT_PAIRS = (
    ("lookup+kv8", "mlx_lm"),
    ("lookup+kv8", "ours plain"),
    ("lookup", "ours plain"),
    ("draft model", "ours plain"),
    ("draft model", "mlx_lm draft"),
    ("kv8", "ours plain"),
    ("ours plain", "mlx_lm"),
)


def agent(args, source: Path) -> int:
    """The agent workload (see the module docstring)."""
    import httpx
    import mlx.core as mx

    from qwen_mlx.convert import convert

    clients = args.clients or [1, 4, 8]
    max_tokens = args.max_tokens or 64
    draft_source = args.draft_model
    if not (draft_source / "config.json").is_file():
        raise SystemExit(f"No draft model checkpoint at {draft_source}: pass --draft-model DIR.")
    workloads = {"copying": agent_prompts(True), "other": agent_prompts(False)}
    with workspace() as tmp:
        quantize = mx.metal.is_available()
        print(f"converting {source.name} ({'4-bit' if quantize else 'bf16'}) ...", file=sys.stderr)
        folder = convert(str(source), mlx_path=tmp / "model", quantize=quantize).path
        draft = convert(str(draft_source), mlx_path=tmp / "draft", quantize=quantize).path
        python = sys.executable
        ours = [python, "-m", "qwen_mlx", "serve", "--model", str(folder), "--log-level", "warning"]
        commands = {
            "lookup+kv8": [*ours, "--draft", "lookup", "--kv-bits", "8"],
            "lookup": [*ours, "--draft", "lookup"],
            "draft model": [*ours, "--draft", str(draft)],
            "kv8": [*ours, "--kv-bits", "8"],
            "ours plain": ours,
            "mlx_lm": [python, "-m", "mlx_lm", "server", "--model", str(folder),
                       "--log-level", "WARNING"],
            # Its speculative decoding: the same draft, its CLI's default of 3 drafted
            # tokens; mlx-lm then decodes one request at a time (not batchable).
            "mlx_lm draft": [python, "-m", "mlx_lm", "server", "--model", str(folder),
                             "--draft-model", str(draft), "--num-draft-tokens", "3",
                             "--log-level", "WARNING"],
        }  # fmt: skip
        procs, urls = {}, {}
        results: dict = {}
        try:
            for name in AGENT_SERVERS:
                port = free_port()
                procs[name] = start_server(
                    [*commands[name], "--port", str(port)], port, tmp / f"{port}.log"
                )
                urls[name] = f"http://127.0.0.1:{port}/v1"
                one_request(urls[name], str(folder), "warm up", 8)
            for kind, questions in workloads.items():
                for c in clients:
                    runs: dict[str, list] = {name: [] for name in AGENT_SERVERS}
                    for _ in range(args.rounds):  # the servers take turns: load drift hits all
                        for name, url in urls.items():
                            before = cpu_seconds(procs[name].pid)
                            r = concurrent(url, str(folder), c, max_tokens, questions)
                            after = cpu_seconds(procs[name].pid)
                            spent = (after - before) if before is not None else 0.0
                            r["cpu_tps"] = r["tps"] * r["wall"] / spent if spent > 0 else 0.0
                            say_round(f"{name} ({kind})", c, r)
                            runs[name].append(r)
                    results[kind, c] = {
                        name: {k: statistics.median(r[k] for r in rs) for k in ("tps", "cpu_tps")}
                        for name, rs in runs.items()
                    }
            healths = {
                name: httpx.get(urls[name].removesuffix("/v1") + "/health").json()
                for name in ("lookup+kv8", "draft model")
            }
        finally:
            for proc in procs.values():
                stop(proc)
    report = Report(args.json)
    for name, health in healths.items():
        spec = health.get("speculative") or {}
        report.line(
            f"{name} over the run: {spec.get('accepted_tokens', 0)} of "
            f"{spec.get('drafted_tokens', 0)} drafted tokens accepted "
            f"({spec.get('acceptance_rate', 0.0):.0%}); batched {spec.get('batched')}, "
            f"batches of up to {health.get('max_batch')}, kv_bits {health.get('kv_bits')}"
        )
    report.table(
        [Column("workload", "{}", left=True), Column("clients", "{}")]
        + [Column(name, "{}") for name in AGENT_SERVERS],
        [
            (kind, c, *(f"{row[n]['tps']:.1f} ({row[n]['cpu_tps']:.1f})" for n in AGENT_SERVERS))
            for (kind, c), row in results.items()
        ],
        title=f"aggregate tokens/s, wall clock (per CPU-second of the server), median of "
        f"{args.rounds} rounds",
        sep=" | ",
    )

    def both(a: dict, b: dict) -> str:
        wall, cpu = ratio(a["tps"], b["tps"]), ratio(a["cpu_tps"], b["cpu_tps"])
        return f"{wall or 0:.2f}x ({cpu or 0:.2f}x)"

    report.table(
        [Column("workload", "{}", left=True), Column("clients", "{}")]
        + [Column(f"{a}/{b}", "{}") for a, b in AGENT_PAIRS],
        [
            (kind, c, *(both(row[a], row[b]) for a, b in AGENT_PAIRS))
            for (kind, c), row in results.items()
        ],
        title="ratios, wall clock (per CPU-second)",
        sep=" | ",
    )
    report.line(
        "Targets: copying lookup+kv8/mlx_lm >= 1.5x; other: every speculative mode / ours "
        "plain >= 0.95x; kv8 / ours plain >= 0.9x at 8 clients."
    )
    report.save()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__)
    p.model(TRAINED / "target", "the Hugging Face checkpoint both servers serve", "--source")
    p.add_argument(
        "--workload",
        choices=("chat", "agent"),
        default="chat",
        help="chat: questions and continuations against mlx_lm, and TTFT beside long "
        "prompts; agent: replies that copy their prompts, ours with --draft lookup "
        "--kv-bits 8 (see above)",
    )
    p.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        metavar="N,N,...",
        help="concurrencies to measure (default 1,4,8,16; agent 1,4,8)",
    )
    p.add_argument("--max-tokens", type=int, default=None, help="default 32; agent 64")
    p.add_argument(
        "--draft-model",
        type=Path,
        default=TRAINED / "draft",
        metavar="DIR",
        help="agent: the draft model's Hugging Face checkpoint (default: the trained pair's)",
    )
    p.rounds(2, "runs per concurrency; the best counts")
    p.add_argument("--long-words", type=int, default=1500, help="the long prompt's size")
    p.add_argument(
        "--beside", type=int, default=8, help="long prompts read at once beside a short one"
    )
    p.smoke(clients=[1, 2], max_tokens=4, rounds=1, long_words=60, beside=2)
    args = p.parse_args(argv)
    source = need_model(args.model)
    if args.workload == "agent":
        return agent(args, source)
    args.clients = args.clients or [1, 4, 8, 16]
    args.max_tokens = args.max_tokens or 32

    import mlx.core as mx

    from qwen_mlx.convert import convert

    with workspace() as tmp:
        quantize = mx.metal.is_available()
        print(f"converting {source.name} ({'4-bit' if quantize else 'bf16'}) ...", file=sys.stderr)
        folder = convert(str(source), mlx_path=tmp / "model", quantize=quantize).path
        python = sys.executable
        ours_port, theirs_port = free_port(), free_port()
        servers = {
            "qwen-mlx serve": (
                [python, "-m", "qwen_mlx", "serve", "--model", str(folder), "--port",
                 str(ours_port), "--log-level", "warning"],
                ours_port,
            ),
            "mlx_lm server": (
                [python, "-m", "mlx_lm", "server", "--model", str(folder), "--port",
                 str(theirs_port), "--log-level", "WARNING"],
                theirs_port,
            ),
        }  # fmt: skip
        procs = []
        try:
            for command, port in servers.values():
                procs.append(start_server(command, port, tmp / f"{port}.log"))
            # both answer to the --model path as the request's model name
            urls = {name: f"http://127.0.0.1:{port}/v1" for name, (_, port) in servers.items()}
            for url in urls.values():
                one_request(url, str(folder), "warm up", 8)
            results: dict[str, dict] = {name: {} for name in servers}
            for c in args.clients:  # the servers take turns, so load drift hits both
                for _ in range(args.rounds):
                    for name, url in urls.items():
                        r = concurrent(url, str(folder), c, args.max_tokens)
                        say_round(name, c, r)
                        if c not in results[name] or r["tps"] > results[name][c]["tps"]:
                            results[name][c] = r
            for name, url in urls.items():
                results[name]["long"] = behind_long(url, str(folder), args.long_words)
            for name, url in urls.items():
                results[name]["beside"] = beside_long(
                    url, str(folder), args.long_words, args.beside
                )
        finally:
            for proc in procs:
                stop(proc)

    ours, theirs = results["qwen-mlx serve"], results["mlx_lm server"]
    report = Report(args.json)
    report.table(
        [
            Column("clients", "{}"),
            Column("ours tok/s"),
            Column("mlx_lm tok/s"),
            Column("ratio", "{:.2f}x"),
            Column("ours TTFT p50/p95 ms", "{}"),
            Column("mlx_lm TTFT p50/p95 ms", "{}"),
            Column("per-client tok/s ours/mlx_lm", "{}"),
        ],
        [
            (
                c,
                ours[c]["tps"],
                theirs[c]["tps"],
                ratio(ours[c]["tps"], theirs[c]["tps"]),
                f"{ours[c]['p50'] * 1000:.0f}/{ours[c]['p95'] * 1000:.0f}",
                f"{theirs[c]['p50'] * 1000:.0f}/{theirs[c]['p95'] * 1000:.0f}",
                f"{ours[c]['client_tps']:.1f}/{theirs[c]['client_tps']:.1f}",
            )
            for c in args.clients
        ],
        title=f"aggregate tokens/s, the best of {args.rounds} rounds at each concurrency",
        sep=" | ",
    )
    if 1 in ours and 8 in ours:
        report.line()
        report.line(
            f"ours at 8 clients / ours at 1: {ours[8]['tps'] / ours[1]['tps']:.2f}x (target 3x)"
        )
    for name, rows in results.items():
        alone, behind, long = rows["long"]
        report.line(
            f"{name}: a short request's TTFT {alone * 1000:.0f} ms alone, {behind * 1000:.0f} ms "
            f"sent 0.3 s after a {args.long_words}-word prompt (whose own TTFT: "
            f"{long * 1000:.0f} ms)"
        )
    for name, rows in results.items():
        short, longs = rows["beside"]
        report.line(
            f"{name}: a short request's TTFT {short * 1000:.0f} ms beside {args.beside} "
            f"{args.long_words}-word prompts being read (their median TTFT: "
            f"{longs * 1000:.0f} ms)"
        )
    sooner = theirs["beside"][0] / max(ours["beside"][0], 1e-9)
    report.line(
        f"short request beside {args.beside} long prompts, TTFT mlx_lm / ours: {sooner:.1f}x "
        "(above 1: ours answers sooner)"
    )
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
