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

    python scripts/bench_distributed.py [--ranks 1,2,4] [--tokens 64] [--pipeline] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Qwen3-4B-Instruct-2507's shape (config.json), for the planner's table.
QWEN3_4B = {
    "model_type": "qwen3",
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 262144,
}
MAC_GB = (16, 24, 32, 64)
COLLECTIVE_REPEATS = 200


def build_model(folder: Path, smoke: bool) -> Path:
    from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint

    if smoke:  # 8 heads and KV heads: splits 4 ways
        config = TinyConfig(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=8,
            head_dim=16,
            intermediate_size=256,
        )
    else:  # Qwen3-4B's proportions at a size this machine decodes in seconds
        config = TinyConfig(
            hidden_size=1024,
            num_hidden_layers=8,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=64,
            intermediate_size=3072,
        )
    return build_tiny_checkpoint(folder, config, shards=2)


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


def mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))


def measured_table(results: dict[int, list[dict]], mode: str) -> None:
    base = results[min(results)][0]["decode_tps"]
    rows = [
        (
            "RANKS",
            "DECODE TOK/S",
            "VS 1 RANK",
            "PREFILL TOK/S",
            "SHARE/RANK",
            "LOAD PEAK/RANK",
            "RUN PEAK/RANK",
            "ALL_SUM",
            "COLLECTIVE MS/TOKEN",
        )
    ]
    for n, ranks in sorted(results.items()):
        r0 = ranks[0]
        per_token = r0["all_sum_s"] * (2 * r0["layers"] + 1) if mode == "tensor" else 0.0
        rows.append(
            (
                n,
                f"{r0['decode_tps']:.1f}",
                f"{r0['decode_tps'] / base:.2f}x",
                f"{r0['prefill_tps']:.1f}",
                mib(max(r["share"] for r in ranks)),
                mib(max(r["load_peak"] for r in ranks)),
                mib(max(r["run_peak"] for r in ranks)),
                f"{r0['all_sum_s'] * 1e6:.0f} us" if n > 1 else "-",
                f"{per_token * 1e3:.2f}" if n > 1 and mode == "tensor" else "-",
            )
        )
    print_table(rows)


def planned_table(model_dir: Path, results: dict[int, list[dict]], mode: str) -> None:
    from qwen_mlx.runtime.memory import (
        MemoryPlanner,
        ModelShape,
        estimate_weights_parts,
        mac_budget,
        rank_weights_bytes,
        weights_parts_on_disk,
    )
    from qwen_mlx.runtime.split import rank_shape

    outside, layer = estimate_weights_parts(QWEN3_4B, bits=4)
    shape = ModelShape.from_config(QWEN3_4B)
    parts = weights_parts_on_disk(model_dir)
    rows = [
        (
            "RANKS",
            "MAC",
            "QWEN3-4B WEIGHTS/RANK",
            "MAX CONTEXT BF16 KV",
            "MAX CONTEXT 4-BIT KV",
            "4K-TOKEN SEQUENCES",
            "SCALED: PLANNED/RANK",
            "MEASURED/RANK",
        )
    ]
    for n in sorted(results):
        if mode == "tensor" and QWEN3_4B["num_key_value_heads"] % n:
            continue
        weights = rank_weights_bytes(outside, [layer] * 36, n, mode)
        planned = rank_weights_bytes(*parts, n, mode) if parts else 0
        measured = max(r["share"] for r in results[n])
        for gb in MAC_GB:
            planner = MemoryPlanner(rank_shape(shape, n, mode), weights, mac_budget(gb))
            rows.append(
                (
                    n,
                    f"{gb} GB",
                    f"{weights / 1e9:.2f} GB",
                    f"{planner.max_context():,}",
                    f"{planner.max_context(4):,}",
                    f"{planner.max_sequences(4096):,}",
                    mib(planned),
                    mib(measured),
                )
            )
    print_table(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ranks", default="1,2,4", help="rank counts to measure (default 1,2,4)")
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per run")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length")
    p.add_argument("--pipeline", action="store_true", help="split by layers, not heads")
    p.add_argument("--smoke", action="store_true", help="a tiny model and few tokens (CI)")
    p.add_argument("--worker", nargs=2, metavar=("OUT", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1], args.tokens, args.prompt_tokens, args.pipeline)
        return 0
    if args.smoke:
        args.tokens, args.prompt_tokens = 8, 16
    counts = sorted({int(n) for n in args.ranks.split(",")} | {1})
    mode = "pipeline" if args.pipeline else "tensor"
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        scratch = Path(tmp)
        os.environ.setdefault("QWEN_MLX_HOME", str(scratch / "home"))
        model_dir = build_model(scratch / "Qwen3-Scaled", args.smoke)
        results = {}
        for n in counts:
            print(f"{n} rank{'s' if n > 1 else ''} ...", file=sys.stderr, flush=True)
            results[n] = run_ranks(n, model_dir, args, scratch)
        print(
            f"\nmeasured on this machine: a {'tiny' if args.smoke else 'scaled'} random Qwen3, "
            f"{mode} parallel over the ring on 127.0.0.1, {args.tokens} tokens after "
            f"{args.prompt_tokens}; the peer is 1 rank (one process)\n"
        )
        measured_table(results, mode)
        print(
            "\nplanned for Qwen3-4B-Instruct-2507 at 4 bits on Macs of each size (Metal's "
            "working set: 2/3 of memory below 64 GB, 3/4 from 64 GB), beside the planner's "
            "estimate and the measured share of the model above\n"
        )
        planned_table(model_dir, results, mode)
        print(
            "\nOne machine: the ranks share its cores, so no speedup is expected here; across "
            "Macs each rank reads 1/N of the weights per token, less the collectives' cost."
        )
        cores = os.cpu_count() or 1
        if max(counts) > cores:
            print(
                f"This machine has {cores} cores: a rank waiting in a collective polls a core, "
                f"so beyond {cores} ranks the figures measure that contention, not the ring."
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
