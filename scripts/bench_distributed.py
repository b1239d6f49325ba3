#!/usr/bin/env python3
"""One model split across 1, 2 and 4 local ranks over mx.distributed's ring, in one run.

Measured, on a model built here (a scaled random Qwen3, bf16; `--smoke`: a tiny one), for
each rank count and the one-process peer (1 rank) measured in the same run: decode and
prefill tokens/s through the runtime's token loop (greedy, end of turn masked, every rank
running the same program as `mlx.launch` would start it), each rank's share of the
weights and the most memory it held while loading and while generating, and the latency
of one all_sum of a hidden state over the ring. A tensor-parallel decode step makes two
such all_sums per layer (attention and MLP outputs) and one more for the sampled token,
so `collective ms/token` = that latency x (2 x layers + 1): the price of splitting, per
token, that faster links (Thunderbolt, JACCL's RDMA) lower and more Macs do not raise.

On one machine the ranks share its cores and memory bandwidth: expect no speedup here,
only the overhead. What splitting buys shows in the second table: Qwen3-4B-Instruct-2507
(4-bit weights) planned per rank for Macs of 16, 24, 32 and 64 GB (the memory planner's
arithmetic: each rank holds the embedding and head, 1/N of the layers and 1/N of every
token's KV cache), printed beside the planner's estimate and the measured share of the
scaled model built here, to show the arithmetic matches what ranks really hold.

    python scripts/bench_distributed.py [--ranks 1,2,4] [--tokens 64] [--pipeline] [--json FILE]
                                        [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _bench import (
    REAL_QWEN3,
    ROOT,
    BenchParser,
    Column,
    Report,
    need_model,
    tiny_checkpoint,
    workspace,
)

MAC_GB = (16, 24, 32, 64)
COLLECTIVE_REPEATS = 200


# The model measured: hidden, layers, heads, KV heads, head dim, MLP.
_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
_SIZES += ("head_dim", "intermediate_size")
SMOKE_SHAPE = dict(zip(_SIZES, (128, 4, 8, 8, 16, 256), strict=True))  # 8 heads: splits 4 ways
# Qwen3-4B's proportions at a size this machine decodes in seconds.
SCALED_SHAPE = dict(zip(_SIZES, (1024, 8, 16, 8, 64, 3072), strict=True))


# -- one rank (every rank runs this) -----------------------------------------------------------


def worker(out: Path, model_dir: str, tokens: int, prompt_tokens: int, pipeline: bool) -> None:
    import mlx.core as mx

    from qwen_mlx.runtime import load
    from qwen_mlx.runtime.bench import measure_run, synthetic_prompt
    from qwen_mlx.runtime.distributed import exchange, join_group

    ranks = int(os.environ.get("BENCH_RANKS", "1"))
    group = join_group() if ranks > 1 else None
    rank = group.rank() if group is not None else 0
    mx.reset_peak_memory()
    model = load(model_dir, group=group, pipeline=pipeline)
    load_peak = mx.get_peak_memory()
    from mlx.utils import tree_flatten

    share = sum(v.nbytes for _, v in tree_flatten(model.model.parameters()))
    prompt = synthetic_prompt(model, prompt_tokens)
    measure_run(model, prompt, 4)  # warm-up
    mx.reset_peak_memory()
    runs = [measure_run(model, prompt, tokens) for _ in range(2)]
    best = max(runs, key=lambda r: r.decode_tps)
    latency = 0.0
    if group is not None:
        repeats = int(os.environ.get("BENCH_REPEATS", COLLECTIVE_REPEATS))
        hidden = mx.zeros((1, model.config["hidden_size"]), mx.bfloat16)
        mx.eval(mx.distributed.all_sum(hidden, group=group))
        start = time.perf_counter()
        for _ in range(repeats):
            mx.eval(mx.distributed.all_sum(hidden, group=group))
        latency = (time.perf_counter() - start) / repeats
    mine = {
        "decode_tps": best.decode_tps,
        "prefill_tps": best.prefill_tps,
        "share": share,
        "load_peak": int(load_peak),
        "run_peak": int(mx.get_peak_memory()),
        "all_sum_s": latency,
        "layers": int(model.config["num_hidden_layers"]),
    }
    facts = exchange(group, mine) if group is not None else [mine]
    if rank == 0:
        out.write_text(json.dumps(facts))


# -- the driver ---------------------------------------------------------------------------------


def run_ranks(n: int, model_dir: Path, args: argparse.Namespace, scratch: Path) -> list[dict]:
    """Start `n` local ranks of this script's worker and return each one's figures."""
    from qwen_mlx.runtime.launch import free_ports

    out = scratch / f"ranks{n}.json"
    ring = scratch / f"ring{n}.json"
    ring.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(n)]))
    env = os.environ | {"PYTHONPATH": str(ROOT), "BENCH_RANKS": str(n)}
    env["BENCH_REPEATS"] = str(20 if args.smoke else COLLECTIVE_REPEATS)
    command = [sys.executable, __file__, "--worker", str(out), str(model_dir)]
    command += ["--tokens", str(args.tokens), "--prompt-tokens", str(args.prompt_tokens)]
    command += ["--pipeline"] if args.pipeline else []
    procs = [
        subprocess.Popen(
            command,
            env=env | {"MLX_RANK": str(r), "MLX_HOSTFILE": str(ring)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(n)
    ]
    errors = [p.communicate(timeout=1800)[1] for p in procs]
    for r, (p, err) in enumerate(zip(procs, errors, strict=True)):
        if p.returncode != 0:
            raise SystemExit(f"rank {r} of {n} failed:\n{err[-2000:]}")
    return json.loads(out.read_text())


MIB = "{:,.1f} MiB"


def measured_table(report: Report, results: dict[int, list[dict]], mode: str) -> None:
    rows = []
    for n, ranks in sorted(results.items()):
        r0 = ranks[0]
        split = n > 1 and mode == "tensor"
        rows.append(
            (
                n,
                r0["decode_tps"],
                r0["prefill_tps"],
                max(r["share"] for r in ranks) / (1 << 20),
                max(r["load_peak"] for r in ranks) / (1 << 20),
                max(r["run_peak"] for r in ranks) / (1 << 20),
                r0["all_sum_s"] * 1e6 if n > 1 else None,
                r0["all_sum_s"] * (2 * r0["layers"] + 1) * 1e3 if split else None,
            )
        )
    report.table(
        [
            Column("RANKS", "{}"),
            Column("DECODE TOK/S", vs="VS 1 RANK"),
            Column("PREFILL TOK/S"),
            Column("SHARE/RANK", MIB),
            Column("LOAD PEAK/RANK", MIB),
            Column("RUN PEAK/RANK", MIB),
            Column("ALL_SUM", "{:.0f} us"),
            Column("COLLECTIVE MS/TOKEN", "{:.2f}"),
        ],
        rows,
        peer=min(results),
    )


def planned_table(
    report: Report, model_dir: Path, results: dict[int, list[dict]], mode: str
) -> None:
    from qwen_mlx.runtime.memory import (
        MemoryPlanner,
        ModelShape,
        estimate_weights_parts,
        mac_budget,
        rank_weights_bytes,
        weights_parts_on_disk,
    )
    from qwen_mlx.runtime.split import rank_shape

    # Qwen3-4B-Instruct-2507's own config.json (its shape; no weights needed)
    config = json.loads((need_model(REAL_QWEN3, "Qwen3-4B config") / "config.json").read_text())
    outside, layer = estimate_weights_parts(config, bits=4)
    shape = ModelShape.from_config(config)
    parts = weights_parts_on_disk(model_dir)
    rows = []
    for n in sorted(results):
        if mode == "tensor" and config["num_key_value_heads"] % n:
            continue
        weights = rank_weights_bytes(outside, [layer] * config["num_hidden_layers"], n, mode)
        planned = rank_weights_bytes(*parts, n, mode) if parts else 0
        measured = max(r["share"] for r in results[n])
        for gb in MAC_GB:
            planner = MemoryPlanner(rank_shape(shape, n, mode), weights, mac_budget(gb))
            rows.append(
                (
                    n,
                    gb,
                    weights / 1e9,
                    planner.max_context(),
                    planner.max_context(4),
                    planner.max_sequences(4096),
                    planned / (1 << 20),
                    measured / (1 << 20),
                )
            )
    report.table(
        [
            Column("RANKS", "{}"),
            Column("MAC", "{} GB"),
            Column("QWEN3-4B WEIGHTS/RANK", "{:.2f} GB"),
            Column("MAX CONTEXT BF16 KV", "{:,}"),
            Column("MAX CONTEXT 4-BIT KV", "{:,}"),
            Column("4K-TOKEN SEQUENCES", "{:,}"),
            Column("SCALED: PLANNED/RANK", MIB),
            Column("MEASURED/RANK", MIB),
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__)
    p.add_argument("--ranks", default="1,2,4", help="rank counts to measure (default 1,2,4)")
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per run")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length")
    p.add_argument("--pipeline", action="store_true", help="split by layers, not heads")
    p.add_argument("--worker", nargs=2, metavar=("OUT", "MODEL"), help=argparse.SUPPRESS)
    p.smoke(tokens=8, prompt_tokens=16)
    args = p.parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1], args.tokens, args.prompt_tokens, args.pipeline)
        return 0
    counts = sorted({int(n) for n in args.ranks.split(",")} | {1})
    mode = "pipeline" if args.pipeline else "tensor"
    report = Report(args.json)
    with workspace(prefix="bench-distributed-") as scratch:
        shape = SMOKE_SHAPE if args.smoke else SCALED_SHAPE
        model_dir = tiny_checkpoint(scratch / "Qwen3-Scaled", shape, shards=2)
        results = {}
        for n in counts:
            print(f"{n} rank{'s' if n > 1 else ''} ...", file=sys.stderr, flush=True)
            results[n] = run_ranks(n, model_dir, args, scratch)
        report.line()
        report.line(
            f"measured on this machine: a {'tiny' if args.smoke else 'scaled'} random Qwen3, "
            f"{mode} parallel over the ring on 127.0.0.1, {args.tokens} tokens after "
            f"{args.prompt_tokens}; the peer is 1 rank (one process)"
        )
        report.line()
        measured_table(report, results, mode)
        report.line()
        report.line(
            "planned for Qwen3-4B-Instruct-2507 at 4 bits on Macs of each size (Metal's "
            "working set: 2/3 of memory below 64 GB, 3/4 from 64 GB), beside the planner's "
            "estimate and the measured share of the model above"
        )
        report.line()
        planned_table(report, model_dir, results, mode)
        report.line()
        report.line(
            "One machine: the ranks share its cores, so no speedup is expected here; across "
            "Macs each rank reads 1/N of the weights per token, less the collectives' cost."
        )
        cores = os.cpu_count() or 1
        if max(counts) > cores:
            report.line(
                f"This machine has {cores} cores: a rank waiting in a collective polls a core, "
                f"so beyond {cores} ranks the figures measure that contention, not the ring."
            )
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
