#!/usr/bin/env python3
"""Every quantization recipe qwen-mlx offers against mlx-lm's default `-q`, same run.

On the small Qwen3 trained on real text (../shared/models/qwen3-tiny-trained/target), each
recipe is converted (ours through `qwen_mlx.convert.convert`, the peer through
`mlx_lm.convert.convert(quantize=True)` with its defaults: affine 4-bit, group 64) and
measured the same way: bits per weight, KL divergence from the bf16 source and top-1
agreement with it, perplexity on a held-out text (never the calibration text), convert
time, and decode tokens/s of a short greedy run. The last column is each recipe's KL
over mlx-lm 4-bit's. Target: the best recipe at <= 4.6 bits per weight has <= 0.7x the KL
of mlx-lm's default 4-bit.

The held-out text is the package's held-out text plus Python source the model was not
trained on (mlx-lm's `sample_utils.py`, read from the installed package at run time).

    python scripts/bench_quant.py [--source DIR] [--only gptq,awq] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE = ROOT.parent / "shared" / "models" / "qwen3-tiny-trained" / "target"

# name -> convert() keywords; ~4 bpw first, then 3 and 8 bits for reference.
RECIPES: dict[str, dict] = {
    "affine q4 g64 (ours, RTN)": {},
    "mxfp4": {"q_mode": "mxfp4"},
    "nvfp4": {"q_mode": "nvfp4"},
    "gptq q4 g64": {"method": "gptq"},
    "awq q4 g64": {"method": "awq"},
    "dwq q4 g64": {"method": "dwq"},
    "dynamic 4.6 bpw (4/5-bit)": {"method": "dynamic", "target_bpw": 4.6},
    "dynamic-gptq 4.6 bpw (4/5-bit)": {"method": "dynamic-gptq", "target_bpw": 4.6},
    "affine q3 g64 (RTN)": {"q_bits": 3},
    "affine q8 g64 (RTN)": {"q_bits": 8},
    "mxfp8": {"q_mode": "mxfp8"},
}
PEER = "mlx-lm convert -q (4-bit g64)"


def heldout_text() -> str:
    import mlx_lm

    from qwen_mlx.convert.quality import read_heldout

    code = (Path(mlx_lm.__file__).parent / "sample_utils.py").read_text()
    return read_heldout().text + "\n\n" + code[:4000]


def decode_tps(folder: Path, tokens: int = 32) -> float:
    from qwen_mlx import load
    from qwen_mlx.runtime.bench import measure_run, synthetic_prompt

    model = load(folder)
    prompt = synthetic_prompt(model, 64)
    measure_run(model, prompt[:16], 2)
    return measure_run(model, prompt, tokens).decode_tps


class Reference:
    """The bf16 source's logits on the held-out tokens, computed once."""

    def __init__(self, source: Path, text: str) -> None:
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        from qwen_mlx.convert.quality import logits

        self.tokens = list(load_tokenizer(source).encode(text, add_special_tokens=False))
        self.logits = logits(source, self.tokens)


def measure(ref: Reference, folder: Path, seconds: float) -> dict:
    from mlx_lm.utils import compute_bits_per_weight, load_model

    from qwen_mlx.convert.quality import logits, report_from_logits

    report = report_from_logits(ref.logits, logits(folder, ref.tokens), ref.tokens)
    model, _ = load_model(folder)
    return {
        "bpw": round(compute_bits_per_weight(model), 3),
        "kl": report.kl_divergence,
        "top1": report.top1_agreement,
        "ppl": report.perplexity_converted,
        "ppl_source": report.perplexity_source,
        "tokens": report.tokens,
        "convert_s": round(seconds, 1),
        "decode_tps": round(decode_tps(folder), 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=SOURCE)
    p.add_argument("--only", help="comma-separated substrings of recipe names to run")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    if not (args.source / "config.json").is_file():
        print(f"No checkpoint at {args.source}; pass --source.", file=sys.stderr)
        return 2
    from mlx_lm.convert import convert as mlx_lm_convert

    from qwen_mlx.convert import convert

    ref = Reference(args.source, heldout_text())
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer"
        start = time.perf_counter()
        mlx_lm_convert(str(args.source), mlx_path=str(out), quantize=True)
        rows[PEER] = measure(ref, out, time.perf_counter() - start)
        print(f"{PEER}: {rows[PEER]}", file=sys.stderr, flush=True)
        wanted = [w.strip() for w in args.only.split(",")] if args.only else None
        for name, kwargs in RECIPES.items():
            if wanted and not any(w in name for w in wanted):
                continue
            out = Path(tmp) / f"r{len(rows)}"
            start = time.perf_counter()
            try:
                convert(str(args.source), mlx_path=out, home=Path(tmp) / "home", **kwargs)
            except Exception as e:  # report a recipe that fails, keep measuring the rest
                rows[name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{name}: FAILED {e}", file=sys.stderr, flush=True)
                continue
            rows[name] = measure(ref, out, time.perf_counter() - start)
            print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    peer_kl = rows[PEER]["kl"]
    header = (
        "recipe",
        "bpw",
        "KL vs bf16",
        "top-1",
        "ppl",
        "convert s",
        "decode tok/s",
        "KL / mlx-lm q4",
    )
    table = [header]
    for name, r in rows.items():
        if "error" in r:
            table.append((name, "-", "-", "-", "-", "-", "-", r["error"][:60]))
            continue
        ratio = r["kl"] / peer_kl if peer_kl else math.nan
        table.append(
            (
                name,
                f"{r['bpw']:.2f}",
                f"{r['kl']:.4f}",
                f"{r['top1']:.1%}",
                f"{r['ppl']:.2f}",
                f"{r['convert_s']:.1f}",
                f"{r['decode_tps']:.0f}",
                f"{ratio:.2f}x",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(
        f"source: {args.source.name}, held-out: {rows[PEER]['tokens']} tokens, "
        f"bf16 perplexity {rows[PEER]['ppl_source']:.2f}"
    )
    for row in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    best = min(
        ((n, r) for n, r in rows.items() if n != PEER and "error" not in r and r["bpw"] <= 4.6),
        key=lambda item: item[1]["kl"],
        default=None,
    )
    if best is not None:
        ratio = best[1]["kl"] / peer_kl
        verdict = "met" if ratio <= 0.7 else "NOT met"
        print(
            f"\nbest at <= 4.6 bpw: {best[0]}, {best[1]['bpw']:.2f} bpw, KL {ratio:.2f}x "
            f"mlx-lm's 4-bit (target <= 0.70x: {verdict})"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
