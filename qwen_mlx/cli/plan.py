"""`qwen-mlx plan`: what context fits in this machine's memory, for each KV precision."""

from __future__ import annotations

import argparse
import json
import textwrap

from .common import add_model_arg, command_parser, guarded, human_bytes, model_ref, print_table


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "plan",
        (
            "Show the memory a context needs (weights + KV cache + attention working space) "
            "with bf16, 8-bit and 4-bit KV caches, the longest context each allows and how "
            "many sequences fit at once (a server's batch, `serve --kv-bits`), on this "
            "machine or (--memory) on a Mac of that size; with --ranks, per rank of a model "
            "split across several. Nothing is loaded: the weights' size comes from the "
            "safetensors headers, or from config.json alone for a folder without weights."
        ),
        epilog="examples:\n"
        "  qwen-mlx plan --context 131072\n"
        "  qwen-mlx plan --memory 16 --per-sequence 8192   # a 16 GB Mac serving 8k chats\n"
        "  qwen-mlx plan --model ./Qwen3-4B-Instruct-2507 --q-bits 4   # before converting\n"
        "  qwen-mlx plan --ranks 2 --memory 16 --context 262144   # two 16 GB Macs\n",
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
    split = p.add_argument_group("a model split across several Macs (see `serve --hosts`)")
    split.add_argument("--ranks", type=int, metavar="N", help="plan each of N ranks (Macs)")
    split.add_argument(
        "--hosts",
        metavar="N|FILE",
        help="the same, N or the number of hosts in a host file",
    )
    split.add_argument(
        "--pipeline",
        action="store_true",
        help="split by layers instead of by attention heads (tensor parallel, the default)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _rank_count(args: argparse.Namespace) -> int:
    """--ranks, or --hosts as a number or a host file's length; 1 without either."""
    if args.ranks is not None and args.hosts is not None:
        raise ValueError("--ranks and --hosts say the same thing: give one.")
    if args.hosts is not None:
        if args.hosts.isdigit():
            count = int(args.hosts)
        else:
            from ..runtime.launch import HostFile

            count = len(HostFile.read(args.hosts))
    else:
        count = args.ranks if args.ranks is not None else 1
    if count < 1:
        raise ValueError("--ranks must be at least 1.")
    if args.pipeline and count < 2:
        raise ValueError("--pipeline plans a model split across ranks: add --ranks N.")
    return count


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
        estimate_weights_parts,
        mac_budget,
        machine_budget,
        rank_weights_bytes,
        weights_parts_on_disk,
    )
    from ..runtime.split import check_split, rank_shape
    from ..store import resolve

    ranks = _rank_count(args)
    mode = "pipeline" if args.pipeline else "tensor"
    if args.memory is not None and args.memory <= 0:
        raise ValueError("--memory must be a positive number of GB.")
    folder = resolve(model_ref(args))
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a model folder.")
    try:
        config = json.loads(config_file.read_text())
        if ranks > 1:
            check_split(config, ranks, mode)
        parts = None if args.q_bits else weights_parts_on_disk(folder)
        source = "weights" if parts is not None else "config"
        if parts is None:
            outside, layer = estimate_weights_parts(config, bits=args.q_bits)
            parts = (outside, [layer] * int(config["num_hidden_layers"]))
        weights = rank_weights_bytes(*parts, ranks, mode)
        if args.context_extension:
            config |= yarn_overrides(folder, args.context_extension)
        shape = rank_shape(ModelShape.from_config(config), ranks, mode)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{config_file} is not a usable Qwen3 config ({e}).") from e
    budget = mac_budget(args.memory) if args.memory is not None else machine_budget()
    args.rank_count, args.split = ranks, mode
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
    from ..runtime.memory import KV_BITS, MAX_CHUNK, SEQUENCE_TOKENS, kv_label

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
                    "ranks": args.rank_count,
                    "split": args.split if args.rank_count > 1 else None,
                    "rows": rows,
                },
                indent=2,
            )
        )
        return 0
    estimated = " (estimated from config.json)" if weights_from == "config" else ""
    if args.q_bits:
        estimated = f" (converted at {args.q_bits} bits, estimated from config.json)"
    each = " per rank" if args.rank_count > 1 else ""
    print(
        f"model    {name}: weights {human_bytes(planner.weights)}{each}{estimated}, "
        f"context up to {model_context:,} tokens"
    )
    if args.rank_count > 1:
        how = "by layers (pipeline)" if args.split == "pipeline" else "by attention heads"
        print(
            f"split    {args.rank_count} ranks, {how}: each holds the embedding and the head, "
            "its share of the layers and of every sequence's KV cache; every figure below "
            "is one rank's"
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
        "CHUNK",
        "WORKSPACE",
        "TOTAL",
        "MAX CONTEXT",
        f"SEQUENCES x {per_sequence:,}",
        "FITS",
    )
    table = [header] + [
        (
            r["kv"],
            human_bytes(r["kv_bytes_per_token"]),
            human_bytes(r["kv_cache_bytes"]),
            f"{r['prefill_chunk']:,}",
            human_bytes(r["workspace_bytes"]),
            human_bytes(r["total_bytes"]),
            f"{r['max_context']:,}",
            f"{r['max_sequences']:,}",
            r["why"],
        )
        for r in rows
    ]
    print_table(table, right_align=range(1, 8))
    note = (
        "WORKSPACE is the attention scores of one prefill CHUNK (tokens read per step): the "
        f"planner takes the largest chunk, up to {MAX_CHUNK:,}, that fits beside the weights "
        "and the KV cache, so a smaller KV cache leaves room for a larger chunk (faster "
        f"prefill, more workspace). SEQUENCES is how many sequences of {per_sequence:,} "
        "tokens each (prompt and reply) have their KV in memory at once, as a server's batch "
        "or its warm conversations do; `serve --kv-bits 8|4` stores them quantized. Sizes in "
        "decimal units (1 GB = 10^9 bytes)."
    )
    print("\n" + textwrap.fill(note, width=88))
    if context > model_context:
        print(
            f"{context:,} tokens is more than this model attends to ({model_context:,}); "
            "--context-extension F applies YaRN rope scaling to reach F times that."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
