#!/usr/bin/env python3
"""Quantization recipes against mlx-lm's default `convert -q`, on two held-out texts.

On the small Qwen3 trained on real text (../shared/models/qwen3-tiny-trained/target,
trained on CPython 3.11's top-level standard-library modules), each recipe is converted
(ours through `qwen_mlx.convert.convert`, the peer through `mlx_lm.convert.convert(
quantize=True)`: affine 4-bit, group 64) and measured the same way against the bf16
source: KL divergence and top-1 agreement on each of two held-out texts, bits per weight
counted from the written files both ways (every byte of the weight matrices: weights,
scales, biases; with the token embedding and without it), and convert time. Ratios are
each recipe's KL over mlx-lm's on the same text.

The texts are built at run time from the Python standard library this script runs on
(never committed), from packages the model never trained on (its training text was the
top-level modules only), disjoint from each other:
  held-out A: the `asyncio` package;  held-out B: the `email` package;
  calibration (in-domain): other packages (json, logging, importlib, http, ...).
The learned methods calibrate on that in-domain text; the best recipe also runs on the
packaged calibration text (prose, code and dialogue) to show what the domain is worth.

Target: the best recipe at <= 4.6 bits per weight, counted both ways, has <= 0.7x
mlx-lm's KL on both held-out texts.

    python scripts/bench_quant.py [--model DIR] [--only gptq,awq] [--json FILE]
    python scripts/bench_quant.py --smoke    # a tiny random model, seconds: CI's check

(`--source` is the former name of `--model`; `--json` writes each recipe's measurements
under "recipes".)
"""

from __future__ import annotations

import sys
import sysconfig
import time
from pathlib import Path

from _bench import TRAINED, BenchParser, Column, Report, need_model, tiny_checkpoint, workspace

HELDOUT = {"A": ("asyncio",), "B": ("email",)}
CALIBRATION = (
    "json",
    "logging",
    "importlib",
    "http",
    "urllib",
    "collections",
    "concurrent/futures",
    "tomllib",
    "xml/etree",
    "unittest",
    "multiprocessing",
    "sqlite3",
    "wsgiref",
    "html",
    "zoneinfo",
    "xmlrpc",
)
HELDOUT_TOKENS = 4096
TARGET_BPW = 4.6
TARGET_RATIO = 0.7

# name -> (convert() keywords, calibration: "domain", "packaged" or None for none)
RECIPES: dict[str, tuple[dict, str | None]] = {
    "affine q4 g64 (ours, round-to-nearest)": ({}, None),
    "--method awq": ({"method": "awq"}, "domain"),
    "--method dwq": ({"method": "dwq"}, "domain"),
    "--method gptq": ({"method": "gptq"}, "domain"),
    "--method gptq (packaged calibration)": ({"method": "gptq"}, "packaged"),
    "--method dynamic --target-bpw 4.6": ({"method": "dynamic", "target_bpw": 4.6}, "domain"),
    "--method dynamic-gptq --target-bpw 4.6": (
        {"method": "dynamic-gptq", "target_bpw": 4.6},
        "domain",
    ),
    "--method dynamic-gptq --target-bpw 4.6 (packaged calibration)": (
        {"method": "dynamic-gptq", "target_bpw": 4.6},
        "packaged",
    ),
}
SMOKE = ("affine q4 g64 (ours, round-to-nearest)", "--method gptq")
PEER = "mlx-lm convert -q (4-bit g64)"


def package_text(packages: tuple[str, ...], stdlib: Path) -> tuple[str, list[str]]:
    """The `*.py` files of standard-library packages, joined, and the files' names."""
    files = [f for p in packages for f in sorted((stdlib / p).glob("*.py"))]
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files), [
        str(f.relative_to(stdlib)) for f in files
    ]


def build_texts(folder: Path, tokenizer, heldout_tokens: int, calibration_tokens: int) -> dict:
    """Write held-out A, held-out B and the in-domain calibration text into `folder`,
    each cut at a line end near its token budget; check they share no file and no line
    of 80 characters or more. Returns {name: path}."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out, used = {}, {}
    parts = {**{f"heldout-{k}": (v, heldout_tokens) for k, v in HELDOUT.items()}}
    parts["calibration"] = (CALIBRATION, calibration_tokens)
    for name, (packages, budget) in parts.items():
        text, files = package_text(packages, stdlib)
        if not text:
            raise SystemExit(f"No Python sources under {stdlib} for {', '.join(packages)}.")
        ids = tokenizer.encode(text, add_special_tokens=False)[:budget]
        cut = tokenizer.decode(ids)
        cut = cut[: cut.rfind("\n") + 1] or cut
        used[name] = set(files)
        path = folder / f"{name}.txt"
        path.write_text(cut, encoding="utf-8")
        out[name] = path
    names = list(used)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not used[a] & used[b], f"{a} and {b} share files"
            lines_a = {ln for ln in out[a].read_text().splitlines() if len(ln.strip()) >= 80}
            lines_b = {ln for ln in out[b].read_text().splitlines() if len(ln.strip()) >= 80}
            shared = lines_a & lines_b
            assert len(shared) <= 2, f"{a} and {b} share {len(shared)} long lines"
    return out


class Reference:
    """The source's logits on each held-out text, computed once."""

    def __init__(self, source: Path, texts: dict[str, Path]) -> None:
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        from qwen_mlx.convert.quality import load_for_scoring, model_logits

        tokenizer = load_tokenizer(source)
        self.tokens = {
            k: list(tokenizer.encode(p.read_text(), add_special_tokens=False))
            for k, p in texts.items()
        }
        model = load_for_scoring(source)
        self.logits = {k: model_logits(model, t) for k, t in self.tokens.items()}


def measure(ref: Reference, folder: Path, seconds: float) -> dict:
    from qwen_mlx.convert.quality import load_for_scoring, model_logits, report_from_logits
    from qwen_mlx.convert.weights import count_bits

    model = load_for_scoring(folder)
    bits = count_bits(folder)
    row = {
        "bpw": round(bits.per_weight, 4),
        "bpw_linear": round(bits.per_weight_linear, 4),
        "convert_s": round(seconds, 1),
    }
    for k, tokens in ref.tokens.items():
        r = report_from_logits(ref.logits[k], model_logits(model, tokens), tokens)
        row[k] = {
            "kl": r.kl_divergence,
            "top1": r.top1_agreement,
            "ppl": r.perplexity_converted,
            "ppl_source": r.perplexity_source,
            "tokens": r.tokens,
        }
    return row


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__)
    p.model(TRAINED / "target", "the bf16 Hugging Face checkpoint to quantize", "--source")
    p.add_argument("--only", help="comma-separated substrings of recipe names to run")
    args = p.parse_args(argv)
    from mlx_lm.convert import convert as mlx_lm_convert
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from qwen_mlx.convert import convert
    from qwen_mlx.convert.quant import MAX_TOKENS

    with workspace() as work:
        heldout_tokens, calibration_tokens = HELDOUT_TOKENS, MAX_TOKENS
        recipes = dict(RECIPES)
        if args.smoke:
            source = tiny_checkpoint(work / "Qwen3-1M-Tiny-2507")
            heldout_tokens, calibration_tokens = 300, 1200
            recipes = {k: v for k, v in RECIPES.items() if k in SMOKE}
        else:
            source = need_model(args.model)
        texts = build_texts(work, load_tokenizer(source), heldout_tokens, calibration_tokens)
        heldout = {k.removeprefix("heldout-"): v for k, v in texts.items() if k != "calibration"}
        ref = Reference(source, heldout)
        rows: dict[str, dict] = {}
        out = work / "peer"
        start = time.perf_counter()
        mlx_lm_convert(str(source), mlx_path=str(out), quantize=True)
        rows[PEER] = {**measure(ref, out, time.perf_counter() - start), "calibration": "-"}
        print(f"{PEER}: {rows[PEER]}", file=sys.stderr, flush=True)
        wanted = [w.strip() for w in args.only.split(",")] if args.only else None
        for name, (kwargs, calibration) in recipes.items():
            if wanted and not any(w in name for w in wanted):
                continue
            out = work / f"r{len(rows)}"
            calib = texts["calibration"] if calibration == "domain" else None
            start = time.perf_counter()
            try:
                convert(str(source), mlx_path=out, home=work / "home", calibration=calib, **kwargs)
            except Exception as e:  # report a recipe that fails, keep measuring the rest
                rows[name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{name}: FAILED {e}", file=sys.stderr, flush=True)
                continue
            row = measure(ref, out, time.perf_counter() - start)
            rows[name] = {**row, "calibration": calibration or "-"}
            print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    report = Report(args.json)
    print_table(report, rows, ref)
    report.save(recipes=rows)
    return 0


def print_table(report: Report, rows: dict[str, dict], ref: Reference) -> None:
    texts = list(ref.tokens)
    peer = rows[PEER]
    columns = [
        Column("recipe", "{}", left=True),
        Column("calibration", "{}", left=True),
        Column("bpw", "{:.3f}"),
        Column("bpw w/o embedding", "{:.3f}"),
    ]
    for k in texts:
        columns += [
            Column(f"top-1 {k}", "{:.1%}"),
            Column(f"KL {k}", "{:.4f}", vs=f"KL {k} / mlx-lm"),
        ]
    columns.append(Column("convert s"))
    table = []
    for name, r in rows.items():
        if "error" in r:
            table.append([name, r["error"][:70]] + [None] * (len(columns) - 2))
            continue
        line = [name, r["calibration"], r["bpw"], r["bpw_linear"]]
        for k in texts:
            line += [r[k]["top1"], r[k]["kl"]]
        table.append([*line, r["convert_s"]])
    tokens = ", ".join(f"{k}: {len(t)} tokens" for k, t in ref.tokens.items())
    report.line(
        f"held-out texts ({tokens}); bf16 perplexity "
        + ", ".join(f"{k}: {peer[k]['ppl_source']:.2f}" for k in texts)
    )
    report.table(columns, table, peer=PEER, markdown=True)
    fits = [
        (n, r)
        for n, r in rows.items()
        if n != PEER and "error" not in r and max(r["bpw"], r["bpw_linear"]) <= TARGET_BPW + 1e-9
    ]
    if fits:
        name, best = min(
            fits, key=lambda item: max(item[1][k]["kl"] / peer[k]["kl"] for k in texts)
        )
        ratios = [best[k]["kl"] / peer[k]["kl"] for k in texts]
        verdict = "met" if max(ratios) <= TARGET_RATIO else "NOT met"
        report.line()
        report.line(
            f"best at <= {TARGET_BPW} bits per weight (both counts): {name}, "
            f"{best['bpw']:.3f} / {best['bpw_linear']:.3f} bpw, KL "
            + ", ".join(f"{k} {x:.2f}x" for k, x in zip(texts, ratios, strict=True))
            + f" mlx-lm's (target <= {TARGET_RATIO:.2f}x on both: {verdict})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
