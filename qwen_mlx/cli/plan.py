"""`qwen-mlx plan`: what context fits in this machine's memory, for each KV precision."""

from __future__ import annotations

import argparse
import json

from .common import add_model_arg, command_parser, guarded, human_bytes, print_table


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "plan",
        (
            "Show the memory a context needs (weights + KV cache + attention working space) "
            "with bf16, 8-bit and 4-bit KV caches, the longest context each allows, and how "
            "many sequences fit at once (a server's batch, `serve --kv-bits`), on this "
            "machine or on a Mac of a given memory. Nothing is loaded: the weights' size "
            "comes from the safetensors headers, or from config.json alone for a folder "
            "without weights."
        ),
        epilog="examples:\n"
        "  qwen-mlx plan --context 131072\n"
        "  qwen-mlx plan --memory 16 --per-sequence 8192   # a 16 GB Mac serving 8k chats\n"
        "  qwen-mlx plan --model ./Qwen3-4B-Instruct-2507 --q-bits 4   # before converting\n",
    )
    add_model_arg(p)
    p.add_argument(
        "--context", "-c", type=int, help="context length to plan for (default: the model's)"
    )
    p.add_argument("--context-extension", type=float, help="YaRN factor, as in `generate`")
    p.add_argument(
        "--q-bits",
        type=int,
        choices=(2, 3, 4, 5, 6, 8),
        help="plan for the model converted at this many bits (a Hugging Face source or config)",
    )
    p.add_argument(
        "--memory",
        type=float,
        metavar="GB",
        help="plan for a Mac with this much unified memory instead of this machine "
        "(its Metal working set: about 2/3 of memory below 36 GB, 3/4 from 36 GB)",
    )
    p.add_argument(
        "--per-sequence",
        type=int,
        metavar="TOKENS",
        help="tokens each concurrent sequence holds, prompt and reply, for the SEQUENCES "
        "column (default: 4096, or --context if smaller)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def why_not(plan) -> str:
    """'yes', or which limit a context breaks: the model's own, memory, or both."""
    reasons = []
    if not plan.fits_context:
        reasons.append(f"over the model's {plan.context_limit:,}-token limit")
    if not plan.fits_memory:
        reasons.append(f"needs {human_bytes(plan.total)} of {human_bytes(plan.budget)}")
    return "yes" if not reasons else "no: " + "; ".join(reasons)


def _planner(args: argparse.Namespace):
    """The planner for --model, from its folder's files alone; and the model's label."""
    import json

    from ..runtime import yarn_overrides
    from ..runtime.memory import (
        MemoryPlanner,
        ModelShape,
        estimate_weights_bytes,
        mac_budget,
        machine_budget,
        weights_bytes_on_disk,
    )
    from ..store import resolve

    folder = resolve(args.model)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a model folder.")
    try:
        config = json.loads(config_file.read_text())
        weights = None if args.q_bits else weights_bytes_on_disk(folder)
        source = "weights" if weights is not None else "config"
        if weights is None:
            weights = estimate_weights_bytes(config, bits=args.q_bits)
        if args.context_extension:
            config |= yarn_overrides(folder, args.context_extension)
        shape = ModelShape.from_config(config)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{config_file} is not a usable Qwen3 config ({e}).") from e
    budget = mac_budget(args.memory) if args.memory else machine_budget()
    return MemoryPlanner(shape, weights, budget), _label(folder), source


def _label(folder) -> str:
    """A stored model's name, else the folder's."""
    from ..errors import DamagedModelError
    from ..store.manifest import read_manifest

    try:
        manifest = read_manifest(folder)
    except DamagedModelError:
        manifest = None
    return manifest.name if manifest else folder.resolve().name


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.context is not None and args.context <= 0:
        raise ValueError("--context must be a positive number of tokens.")
    if args.per_sequence is not None and args.per_sequence <= 0:
        raise ValueError("--per-sequence must be a positive number of tokens.")
    if args.memory is not None and args.memory <= 0:
        raise ValueError("--memory must be a positive number of GB.")
    from ..runtime.memory import KV_BITS, SEQUENCE_TOKENS, kv_label

    planner, name, weights_from = _planner(args)
    model_context = planner.shape.context_length
    context = args.context or model_context
    per_sequence = args.per_sequence or min(SEQUENCE_TOKENS, context)
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
                "fits_memory": plan.fits_memory,
                "fits_model_context": plan.fits_context,
                "why": why_not(plan),
                "max_context": planner.max_context(bits),
                "max_sequences": planner.max_sequences(per_sequence, bits),
            }
        )
    budget = planner.budget
    if args.json:
        print(
            json.dumps(
                {
                    "model": name,
                    "weights_bytes": planner.weights,
                    "weights_from": weights_from,
                    "model_context": model_context,
                    "context": context,
                    "per_sequence": per_sequence,
                    "budget_bytes": budget.bytes,
                    "memory_bytes": budget.total,
                    "budget_source": budget.source,
                    "rows": rows,
                },
                indent=2,
            )
        )
        return 0
    estimated = " (estimated from config.json)" if weights_from == "config" else ""
    if args.q_bits:
        estimated = f" (converted at {args.q_bits} bits, estimated from config.json)"
    print(
        f"model    {name}: weights {human_bytes(planner.weights)}{estimated}, "
        f"context up to {model_context:,} tokens"
    )
    print(
        f"budget   {human_bytes(budget.bytes)} of {human_bytes(budget.total)} "
        f"({budget.source.replace('-', ' ')})"
    )
    print(f"plan for {context:,} tokens\n")
    header = (
        "KV",
        "PER TOKEN",
        "KV CACHE",
        "WORKSPACE",
        "TOTAL",
        "MAX CONTEXT",
        f"SEQUENCES x {per_sequence:,}",
        "FITS",
    )
    table = [header] + [
        (
            r["kv"],
            _kib(r["kv_bytes_per_token"]),
            human_bytes(r["kv_cache_bytes"]),
            human_bytes(r["workspace_bytes"]),
            human_bytes(r["total_bytes"]),
            f"{r['max_context']:,}",
            f"{r['max_sequences']:,}",
            r["why"],
        )
        for r in rows
    ]
    print_table(table, right_align=range(1, 7))
    print(
        "\nworkspace: attention scores of one prefill chunk "
        f"({rows[0]['prefill_chunk']} tokens with bf16 KV), the planner shrinks chunks to fit."
    )
    print(
        f"sequences: how many of {per_sequence:,} tokens each (prompt and reply) have their "
        "KV in memory at once, as a server's batch or its warm conversations do; "
        "`serve --kv-bits 8|4` stores them quantized."
    )
    if context > model_context:
        print(
            f"{context:,} tokens is more than this model attends to ({model_context:,}); "
            "--context-extension F applies YaRN rope scaling to reach F times that."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
