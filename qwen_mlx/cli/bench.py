"""`qwen-mlx bench`: prefill and decode speed, first-token time, peak memory, and decode as
a share of what the machine's memory bandwidth allows."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .common import (
    add_draft_args,
    add_group_args,
    add_model_arg,
    command_parser,
    format_table,
    group_load_args,
    guarded,
    human_bytes,
    model_ref,
    ranks_from_args,
)

if TYPE_CHECKING:
    from ..runtime.bench import BenchResult


DESCRIPTION = """\
Measure one model on this machine: a synthetic prompt of exactly -p tokens, then exactly
-g greedy tokens (end of turn masked, so no run stops early), through the same token loop
as `generate`. After one warm-up, --repeat runs are measured and their medians reported.

Decoding reads every weight and the KV cache once per token, so memory bandwidth sets a
ceiling: bandwidth / (weights + KV cache bytes). The bandwidth is Apple's published figure
for the chip when known, otherwise a copy measured here (reported as measured).
"""

EXAMPLES = """\
examples:
  qwen-mlx bench
  qwen-mlx bench --model qwen3-4b-instruct-2507-mlx-q8-g64 -p 2048 -g 256
  qwen-mlx bench --json > bench.json
  qwen-mlx bench --draft lookup
  qwen-mlx bench --ranks 2      # the cost of splitting the model (on one Mac: no speedup)
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("bench", DESCRIPTION, EXAMPLES)
    add_model_arg(p)
    p.add_argument(
        "--prompt-tokens",
        "-p",
        type=int,
        default=512,
        metavar="N",
        help="prompt length (default 512)",
    )
    p.add_argument(
        "--generation-tokens",
        "-g",
        type=int,
        default=128,
        metavar="N",
        help="tokens to generate (default 128)",
    )
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="measured runs (default 3)")
    p.add_argument(
        "--bandwidth",
        type=float,
        metavar="GB/S",
        help="memory bandwidth to use instead of the published or measured one",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_draft_args(p)
    add_group_args(p)
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..runtime.bench import check_lengths

    check_lengths(args.prompt_tokens, args.generation_tokens, args.repeat)
    if args.bandwidth is not None and args.bandwidth <= 0:
        raise ValueError("--bandwidth must be positive (GB/s).")

    with ranks_from_args(args) as ranks:
        return _bench(args, ranks)


def _bench(args: argparse.Namespace, ranks) -> int:
    from ..runtime import load
    from ..runtime.bench import Bandwidth, run_bench

    model = load(model_ref(args), **group_load_args(args, ranks))
    from .common import draft_from_args

    drafter = draft_from_args(model, args)
    bandwidth = None
    if args.bandwidth is not None:
        bandwidth = Bandwidth(args.bandwidth * 1e9, "given", "--bandwidth")
    result = run_bench(
        model,
        prompt_tokens=args.prompt_tokens,
        generation_tokens=args.generation_tokens,
        repeat=args.repeat,
        bandwidth=bandwidth,
        progress=lambda i, n: print(f"run {i + 1}/{n}", file=sys.stderr, flush=True),
        draft=drafter,
        num_draft_tokens=args.num_draft_tokens,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_result(result))
    return 0


def format_result(r: BenchResult) -> str:
    """The runs as a table, then the medians against the bandwidth ceiling."""
    header = ("RUN", "PREFILL TOK/S", "DECODE TOK/S", "FIRST TOKEN", "PEAK MEMORY")
    rows = [header] + [
        (
            str(i),
            f"{run.prefill_tps:.1f}",
            f"{run.decode_tps:.1f}",
            f"{run.time_to_first_token * 1000:.0f} ms",
            human_bytes(run.peak_memory),
        )
        for i, run in enumerate(r.runs, 1)
    ]
    rows.append(
        (
            "median",
            f"{r.prefill_tps:.1f}",
            f"{r.decode_tps:.1f}",
            f"{r.time_to_first_token * 1000:.0f} ms",
            human_bytes(r.peak_memory) + " (max)",
        )
    )
    table = format_table(rows, right_align=range(1, len(header)))
    bw = r.bandwidth
    source = f"{bw.source}, {bw.device}" + (f", {bw.note}" if bw.note else "")
    lines = [
        f"model      {r.model} ({r.quantization})",
        f"workload   {r.prompt_tokens} prompt tokens, {r.generation_tokens} generated "
        "(greedy, end of turn masked)",
        "",
        *table,
        "",
        f"bandwidth  {bw.gb_per_second:.1f} GB/s ({source})",
        f"per token  {human_bytes(r.bytes_per_token)} read: weights "
        f"{human_bytes(r.weights_bytes)} + KV cache {human_bytes(r.kv_bytes_per_token)} x "
        f"{r.decode_context:,.0f} tokens",
        f"ceiling    {r.ceiling_tps:.1f} tokens/s",
        f"decode     {r.decode_tps:.1f} tokens/s = {r.bandwidth_share:.1%} of the ceiling",
    ]
    if r.draft is not None:
        drafted = sum(run.drafted for run in r.runs)
        accepted = sum(run.accepted for run in r.runs)
        lines.append(
            f"draft      {r.draft}: {accepted}/{drafted} drafted tokens accepted "
            f"({r.acceptance_rate:.0%}); the ceiling is for one token per weight read"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
