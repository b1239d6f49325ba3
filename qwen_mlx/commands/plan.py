"""`qwen-mlx plan`: what context fits in this machine's memory, for each KV precision."""

from __future__ import annotations

import argparse
import json

from ._common import add_model_arg, guarded, human_bytes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="qwen-mlx plan",
        description=(
            "Show the memory a context needs (weights + KV cache + attention working space) "
            "with bf16, 8-bit and 4-bit KV caches, and the longest context each allows on "
            "this machine. The weights are not read: only their sizes."
        ),
    )
    add_model_arg(p)
    p.add_argument(
        "--context", "-c", type=int, help="context length to plan for (default: the model's)"
    )
    p.add_argument("--context-extension", type=float, help="YaRN factor, as in `generate`")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..memory import KV_BITS, MemoryPlanner, kv_label
    from ..runtime import load

    model = load(args.model, lazy=True, context_extension=args.context_extension)
    planner = MemoryPlanner.for_model(model)
    context = args.context or model.context_length
    if context <= 0:
        raise ValueError("--context must be positive.")
    rows = []
    for bits in KV_BITS:
        plan = planner.plan(context, bits)
        rows.append(
            {
                "kv": kv_label(bits),
                "kv_bytes_per_token": planner.kv_per_token(bits),
                "kv_cache_bytes": plan.kv_cache,
                "workspace_bytes": plan.workspace,
                "prefill_chunk": plan.chunk,
                "total_bytes": plan.total,
                "fits": plan.fits,
                "max_context": planner.max_context(bits),
            }
        )
    budget = planner.budget
    if args.json:
        print(
            json.dumps(
                {
                    "model": model.name,
                    "weights_bytes": planner.weights,
                    "model_context": model.context_length,
                    "context": context,
                    "budget_bytes": budget.bytes,
                    "memory_bytes": budget.total,
                    "budget_source": budget.source,
                    "rows": rows,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"model    {model.name}: weights {human_bytes(planner.weights)}, "
        f"context up to {model.context_length:,} tokens"
    )
    print(
        f"budget   {human_bytes(budget.bytes)} of {human_bytes(budget.total)} "
        f"({budget.source.replace('-', ' ')})"
    )
    print(f"plan for {context:,} tokens\n")
    header = ("KV", "PER TOKEN", "KV CACHE", "WORKSPACE", "TOTAL", "FITS", "MAX CONTEXT")
    table = [header] + [
        (
            r["kv"],
            _kib(r["kv_bytes_per_token"]),
            human_bytes(r["kv_cache_bytes"]),
            human_bytes(r["workspace_bytes"]),
            human_bytes(r["total_bytes"]),
            "yes" if r["fits"] else "no",
            f"{r['max_context']:,}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(
        "\nworkspace: attention scores of one prefill chunk "
        f"({rows[0]['prefill_chunk']} tokens with bf16 KV), the planner shrinks chunks to fit."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
