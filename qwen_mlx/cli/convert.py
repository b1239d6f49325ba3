"""`qwen-mlx convert` / `python -m qwen_mlx.convert`: Hugging Face -> MLX, into the store."""

from __future__ import annotations

import argparse
import sys

from ..convert import DTYPES, METHODS, Q_BITS, Q_GROUP_SIZES, Q_MODES, RECIPES
from .common import CPU_QUANT_NOTE, ProgressBar, command_parser, guarded, human_bytes

DESCRIPTION = """\
Convert a Hugging Face Qwen3 checkpoint to MLX, 4-bit quantized by default.

The source is a local folder or a Hub repo id (downloaded with huggingface_hub into the
shared HF cache). The output goes into the store under $QWEN_MLX_HOME, named
<family>-<size>-<variant>-<release>-mlx-<quant>, with a manifest.json holding the sha256
of every file. It is written to a temporary folder and renamed into place only when
complete.

The name is the folder's or repo's when it follows that form; otherwise it is made from
what the checkpoint says (family from its config, size from its parameter count, variant
from the folder or repo name, release from the name, the source's commit or the date its
weights were written) and printed. --name chooses it. Into the store, a name another
source's model holds is refused before any work.

It becomes the family's latest when it is the family's first version, or a newer release
in the same quantization as the latest; a fine-tune, another quantization or an older
release is added beside it (switch with `qwen-mlx models set-latest NAME`, or pass
--set-latest). A pinned or frozen family keeps its latest.

Quantization: --q-mode picks mlx's format (affine: 2-8 bits, group 32/64/128; mxfp4: 4 bits,
group 32; nvfp4: 4 bits, group 16; mxfp8: 8 bits, group 32). --method runs a learned method
on a calibration text (the packaged one, or --calibration FILE: text like what the model
will see works best) instead of rounding to nearest: gptq (ours: error-correcting, the tied
embedding included, 2/4/8 bits; the least error at uniform 4-bit's size in
scripts/bench_quant.py), awq (mlx-lm's activation-aware scales and clipping), dwq
(mlx-lm's scales and biases distilled from the source), dynamic (more bits for the layers
the output is most sensitive to, within --target-bpw), dynamic-gptq (dynamic's choice of
layers, GPTQ for the rest). A method holds the whole model in memory and is refused when
that would not fit. Its quality report (KL divergence and top-1 agreement against the
source, perplexity of both, on each --heldout text) goes into the
manifest; compare conversions with `qwen-mlx models compare NAME NAME...`.

On Linux (MLX's CPU backend, no Metal) a 4-bit model reads prompts about 30x slower than
a bf16 one: there, --no-quantize makes the model to use.
"""

EXAMPLES = """\
examples:
  python -m qwen_mlx.convert --hf-path Qwen/Qwen3-4B-Instruct-2507
  qwen-mlx convert --hf-path ./Qwen3-4B-Instruct-2507 --q-bits 8
  qwen-mlx convert --hf-path Qwen/Qwen3-4B-Instruct-2507 --no-quantize   # on Linux
  qwen-mlx convert --hf-path ./runs/exp7/checkpoint-500   # qwen3-4b-exp7-step500
  qwen-mlx convert --hf-path ./my-finetune --mlx-path ./out
  qwen-mlx convert --hf-path ./my-finetune --name qwen3-4b-myft-v1
  qwen-mlx convert --hf-path Qwen/Qwen3-4B-Instruct-2507 --method gptq
  qwen-mlx convert --hf-path Qwen/Qwen3-4B-Instruct-2507 --method dynamic --target-bpw 4.6
  qwen-mlx convert --hf-path Qwen/Qwen3-4B-Instruct-2507 --q-mode mxfp4
  qwen-mlx convert --hf-path ./checkpoint-500 --method awq --calibration my-data.jsonl
  qwen-mlx convert --hf-path ./checkpoint-500 --method gptq --calibration my-code.txt \\
      --heldout held-out-1.txt --heldout held-out-2.txt
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("convert", DESCRIPTION, EXAMPLES)
    p.add_argument("--hf-path", required=True, help="local folder or Hugging Face repo id")
    p.add_argument("--revision", help="branch, tag or commit of the Hub repo (default: main)")
    p.add_argument("--mlx-path", help="output folder (default: the store place for the name)")
    p.add_argument(
        "--name",
        help="the source's name, e.g. qwen3-4b-myft-v1 (default: the folder's or repo's, "
        "or one made from the checkpoint)",
    )
    p.add_argument(
        "--q-mode",
        default="affine",
        choices=Q_MODES,
        help="quantization format (default affine)",
    )
    p.add_argument(
        "--q-bits",
        type=int,
        choices=Q_BITS,
        help="bits per weight (default: the mode's, 4; 8 for mxfp8)",
    )
    p.add_argument(
        "--q-group-size",
        type=int,
        choices=Q_GROUP_SIZES,
        help="weights sharing one scale (default: the mode's, 64 for affine)",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        help="a learned quantization method from mlx-lm (default: round to nearest)",
    )
    p.add_argument(
        "--target-bpw",
        type=float,
        help="bits per weight --method dynamic or dynamic-gptq stays within, counting every "
        "byte of the weight matrices (weights, scales, biases), with the embedding and "
        "without it (default: halfway between --q-bits and the next bits up)",
    )
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="text (or .jsonl with text/messages/prompt+completion) the method calibrates "
        "on, ideally text like what the model will see (default: the packaged calibration "
        "text); read up to 128 windows of 512 tokens",
    )
    p.add_argument(
        "--heldout",
        metavar="FILE",
        action="append",
        help="a text of the quality report, never the calibration text; repeat it for "
        "several texts, one report each (default: the packaged held-out text)",
    )
    p.add_argument("--recipe", choices=RECIPES, help="mlx-lm mixed-precision recipe")
    p.add_argument(
        "--no-quantize",
        dest="quantize",
        action="store_false",
        help="write an unquantized copy (see --dtype)",
    )
    p.add_argument(
        "--dtype", choices=DTYPES, help="float type of unquantized tensors (default: the source's)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--set-latest",
        action="store_true",
        default=None,
        help="make it the family's latest even when it is a fine-tune, another "
        "quantization or an older release",
    )
    p.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run a held-out text through source and output and record KL divergence, "
        "top-1 agreement and perplexity in the manifest (default: on with Metal or "
        "--method, off otherwise on CPU)",
    )
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..convert import Progress, convert, default_report, quantized_prefill_is_slow

    # Said once the checkpoint is read and named, before the long work (not before a
    # refusal of bad flags).
    slow_note = args.quantize and quantized_prefill_is_slow()

    report = args.report
    if report is None:
        report = args.method is not None or bool(args.heldout) or default_report()
    memory_budget = None
    if args.method is not None:
        from ..runtime.memory import machine_budget

        memory_budget = machine_budget().bytes
    bar = ProgressBar(unit="bytes")

    def progress(p: Progress) -> None:
        nonlocal slow_note
        if p.stage == "done":  # the summary below says where it went
            bar.finish()
            return
        if p.stage in ("name", "warning"):
            bar.finish()
            print(f"{p.stage}: {p.detail}", file=sys.stderr, flush=True)
            if slow_note:
                print(CPU_QUANT_NOTE, file=sys.stderr, flush=True)
                slow_note = False
            return
        bar.update(p.stage, p.done, p.total, p.detail)

    try:
        result = convert(
            args.hf_path,
            mlx_path=args.mlx_path,
            revision=args.revision,
            quantize=args.quantize,
            q_bits=args.q_bits,
            q_group_size=args.q_group_size,
            q_mode=args.q_mode,
            method=args.method,
            target_bpw=args.target_bpw,
            calibration=args.calibration,
            heldout=args.heldout,
            memory_budget=memory_budget,
            recipe=args.recipe,
            dtype=args.dtype,
            name=args.name,
            force=args.force,
            set_latest=args.set_latest,
            report=report,
            progress=progress,
        )
    finally:
        bar.finish()
    m = result.manifest
    print(
        f"Converted {m.name}: {m.quantization.label}, {_bits(m.quantization)}, "
        f"{human_bytes(m.size)}"
    )
    print(f"  folder: {result.path}")
    if result.name_note:
        print(f"  name: {result.name_note}; --name chooses another")
    for q in m.quality_reports:
        print(
            f"  quality: KL {q.kl_divergence:.4f}, top-1 agreement {q.top1_agreement:.1%}, "
            f"perplexity {q.perplexity_source:.2f} -> {q.perplexity_converted:.2f} "
            f"({q.tokens} held-out tokens of {q.text or 'the packaged text'})"
        )
    if m.quantization.layers:
        print(f"  layers: {_layer_summary(m.quantization.layers)}")
    if result.registered and result.became_latest:
        print(f"  store: now the latest of {m.family}")
    elif result.registered and result.frozen:
        print(
            f"  store: registered; {m.family} is pinned or frozen, so its latest stays "
            f"(switch with `qwen-mlx models set-latest {m.name}`)"
        )
    elif result.registered:
        print(
            f"  store: registered beside {result.latest}, which stays the latest of "
            f"{m.family}, as {result.kept_because}"
        )
        print(
            f"  make it the latest with `qwen-mlx models set-latest {m.name}` "
            "(or convert with --set-latest)"
        )
    else:
        import shlex

        print(
            "  store: not in the store (written to --mlx-path); load it by its folder, or "
            f"add it with `qwen-mlx models import {shlex.quote(str(result.path))}`"
        )
    print(f"  took {result.seconds:.1f} s", file=sys.stderr)
    return 0


def _bits(q) -> str:
    """`4.594 bits per weight (4.625 without the embedding)`: both counts, when they differ."""
    text = f"{q.bits_per_weight} bits per weight"
    linear = q.bits_per_weight_linear
    if linear is not None and linear != q.bits_per_weight:
        text += f" ({linear} without the embedding)"
    return text


def _layer_summary(layers: dict) -> str:
    """`12 layers at 5 bits g64, 1 layer unquantized`: the layers that differ from the rest."""
    from collections import Counter

    counts = Counter(
        "unquantized" if q is False else f"at {q['bits']} bits g{q['group_size']}"
        for q in layers.values()
    )
    return ", ".join(f"{n} {'layer' if n == 1 else 'layers'} {what}" for what, n in counts.items())


if __name__ == "__main__":
    raise SystemExit(main())
