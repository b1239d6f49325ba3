"""GGUF agreement with llama.cpp, measured in one run: our GGUF exports (through
`qwen-mlx models export`) loaded by llama.cpp itself (llama-cpp-python), their logits on a
fixed prompt against ours (MLX on the original weights), beside llama.cpp's own
quantization of the same f16 file; then GGUF imports (`models import`) run by MLX against
llama.cpp on the same file.

    python scripts/bench_gguf.py [--model ../shared/models/qwen3-tiny-trained/target]
                                 [--json FILE]

Prints a table; `--json FILE` writes the figures as well, under "figures" (what
tests/test_gguf_interop.py asserts on, after running this script). On the trained tiny
model the whole run takes about a minute, so it has no `--smoke`.
Columns: rel err = ||theirs - ours|| / ||ours|| over all logits; top-1 = share of positions
whose argmax agrees; KL = mean KL(ours || theirs) in nats.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from _bench import TRAINED, BenchParser, Column, Report, cell, need_model, ratio, workspace

NAME = "qwen3-4m-trained-2507"
PROMPT = '''def parse_args(argv=None):
    """Parse the command line and return the options."""
    import argparse

    parser = argparse.ArgumentParser(description="Copy files from one folder to another.")
    parser.add_argument("source", help="the folder to copy from")
    parser.add_argument("target", help="the folder to copy to")
    parser.add_argument("--dry-run", action="store_true", help="only print what would be done")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.source):
        parser.error(f"{args.source} is not a directory")
    return args
'''


@dataclass(frozen=True)
class Row:
    what: str  # e.g. "ours q4_0 in llama.cpp"
    against: str  # what it is compared with
    rel_err: float
    top1: float
    kl: float
    seconds: float | None = None  # time to produce the file, when it was produced here
    size: int | None = None


def compare(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, float]:
    rel = float(np.linalg.norm(theirs - ours) / np.linalg.norm(ours))
    top1 = float((theirs.argmax(-1) == ours.argmax(-1)).mean())
    p = _log_softmax(ours)
    q = _log_softmax(theirs)
    kl = float((np.exp(p) * (p - q)).sum(-1).mean())
    return rel, top1, kl


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def mlx_logits(folder: Path, ids: list[int], *, float32: bool = False) -> np.ndarray:
    import mlx.core as mx

    from qwen_mlx import load

    model = load(folder).model
    if float32:
        model.set_dtype(mx.float32)
    return np.array(model(mx.array([ids])).astype(mx.float32))[0]


def llama_logits(file: Path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(file),
        n_ctx=max(256, len(ids) + 8),
        logits_all=True,
        verbose=False,
        n_threads=os.cpu_count() or 1,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def llama_tokens(file: Path, text: str) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(file), vocab_only=True, verbose=False)
    try:
        return llm.tokenize(text.encode(), add_bos=False, special=True)
    finally:
        llm.close()


@dataclass(frozen=True)
class Figures:
    rows: list[Row]
    tokens_ours: list[int]
    tokens_llama: list[int]
    template_ours: str
    template_llama: str | None
    import_notes: dict[str, tuple[str, ...]]

    def row(self, what: str) -> Row:
        return next(r for r in self.rows if r.what == what)


def measure(model: Path, work: Path) -> Figures:
    """Everything the table shows; `work` is the empty folder of `_bench.workspace` (the
    store, `work / "home"`, goes there)."""
    import json

    from llama_cpp import Llama
    from tokenizers import Tokenizer

    from qwen_mlx.cli import main
    from qwen_mlx.convert import convert
    from qwen_mlx.convert.gguf_export import llama_quantize

    home = work / "home"
    convert(str(model), name=NAME)  # the MLX q4-g64 version the exports start from
    mlx_name = f"{NAME}-mlx-q4-g64"
    release = home / "models/qwen3-4m-trained/2507"
    files, seconds = {}, {}
    for quant in ("f16", "q8_0", "q4_0", "q4_k_m"):
        started = time.perf_counter()
        code = main(["models", "export", mlx_name, "--format", "gguf", "--quant", quant])
        if code != 0:
            raise SystemExit(f"models export --quant {quant} failed ({code})")
        seconds[quant] = time.perf_counter() - started
        files[quant] = release / f"gguf-{quant}" / f"{NAME}-gguf-{quant}.gguf"
    theirs = {}
    for quant in ("q8_0", "q4_0"):  # llama.cpp's own quantization of our f16 file
        theirs[quant] = work / f"llama-{quant}.gguf"
        started = time.perf_counter()
        llama_quantize(files["f16"], theirs[quant], quant)
        seconds[f"llama {quant}"] = time.perf_counter() - started

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    ids = tok.encode(PROMPT).ids
    ref32 = mlx_logits(model, ids, float32=True)  # ours, in float32, on the original weights
    rows = []
    ref16 = mlx_logits(model, ids)
    rows.append(Row("ours MLX bf16 (the runtime)", "ours f32", *compare(ref32, ref16)))
    ours_q4 = mlx_logits(release / "mlx-q4-g64", ids)
    rows.append(Row("ours MLX q4-g64", "ours f32", *compare(ref32, ours_q4)))
    for quant, file in files.items():
        got = llama_logits(file, ids)
        row = Row(f"ours {quant} in llama.cpp", "ours f32", *compare(ref32, got))
        rows.append(Row(**{**row.__dict__, "seconds": seconds[quant], "size": file.stat().st_size}))
    for quant, file in theirs.items():
        got = llama_logits(file, ids)
        row = Row(f"llama.cpp's own {quant} in llama.cpp", "ours f32", *compare(ref32, got))
        rows.append(
            Row(
                **{
                    **row.__dict__,
                    "seconds": seconds[f"llama {quant}"],
                    "size": file.stat().st_size,
                }
            )
        )

    # Imports: MLX on the imported model against llama.cpp on the same file.
    from qwen_mlx.convert.gguf_export import pre_tokenizer
    from tests.gguf_builder import write_llama_style_gguf

    built = write_llama_style_gguf(
        model, work / "Qwen3-4M-Built-2507-F16.gguf", pre=pre_tokenizer(model)
    )
    llama_k = work / "Qwen3-4M-Llama-2507-Q4_K_M.gguf"
    llama_quantize(built, llama_k, "q4_k_m")
    imports = {
        "a llama.cpp-style f16 GGUF": (built, "qwen3-4m-built-2507-mlx-f16"),
        "our q4_0 GGUF": (files["q4_0"], f"{NAME}-mlx-q4-g32"),
        "our q8_0 GGUF": (files["q8_0"], f"{NAME}-mlx-q8-g32"),
        "llama.cpp's q4_k_m": (llama_k, "qwen3-4m-llama-2507-mlx-q4-g32"),
    }
    notes = {}
    from qwen_mlx.convert.gguf_import import import_gguf

    for label, (file, name) in imports.items():
        result = import_gguf(file, force=True)
        assert result.manifest.name == name, (result.manifest.name, name)
        notes[label] = result.notes
        got = mlx_logits(result.path, ids)
        rows.append(
            Row(f"import of {label}, in MLX", "llama.cpp, same file", *compare(
                llama_logits(file, ids), got
            ))
        )  # fmt: skip

    llm = Llama(model_path=str(files["f16"]), vocab_only=True, verbose=False)
    template = llm.metadata.get("tokenizer.chat_template")
    llm.close()
    return Figures(
        rows,
        ids,
        llama_tokens(files["f16"], PROMPT),
        json.loads((model / "tokenizer_config.json").read_text()).get("chat_template", ""),
        template,
        notes,
    )


def print_table(report: Report, figures: Figures) -> None:
    report.table(
        [
            Column("what", "{}", left=True),
            Column("compared with", "{}", left=True),
            Column("rel err", "{:.2e}"),
            Column("top-1", "{:.1%}"),
            Column("KL", "{:.2e}"),
            Column("made in", "{:.1f} s"),
            Column("size MB", "{:.2f}"),
        ],
        [
            (r.what, r.against, r.rel_err, r.top1, r.kl, r.seconds, r.size and r.size / 1e6)
            for r in figures.rows
        ],
    )
    ours = figures.row("ours q4_0 in llama.cpp").top1
    theirs = figures.row("llama.cpp's own q4_0 in llama.cpp").top1
    report.line()
    report.line(f"q4_0 top-1: ours / llama.cpp's own = {cell(ratio(ours, theirs), '{:.3f}')}")
    same = figures.tokens_ours == figures.tokens_llama
    n = len(figures.tokens_ours)
    report.line(f"tokenizer: llama.cpp's tokens {'==' if same else '!='} ours ({n} tokens)")
    same_template = figures.template_llama == figures.template_ours
    report.line(f"chat template in the GGUF == the model's: {same_template}")
    for label, notes in figures.import_notes.items():
        for note in notes:
            report.line(f"import of {label}: {note}")


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__, smoke=False)
    p.model(TRAINED / "target", "a Qwen3 Hugging Face folder")
    args = p.parse_args(argv)
    model = need_model(args.model)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with workspace() as work:
        figures = measure(model, work)
    report = Report(args.json)
    report.line(f"model: {model} ({len(figures.tokens_ours)} prompt tokens)")
    report.line()
    print_table(report, figures)
    report.save(figures=asdict(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
