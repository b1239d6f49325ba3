"""GGUF agreement with llama.cpp, measured in one run: our GGUF exports (through
`qwen-mlx models export`) loaded by llama.cpp itself (llama-cpp-python), their logits on a
fixed prompt against ours (MLX on the original weights), beside llama.cpp's own
quantization of the same f16 file; then GGUF imports (`models import`) run by MLX against
llama.cpp on the same file.

    python scripts/bench_gguf.py [--model ../shared/models/qwen3-tiny-trained/target]

Prints a table; `measure()` returns the figures (tests/test_gguf_interop.py asserts on them).
Columns: rel err = ||theirs - ours|| / ||ours|| over all logits; top-1 = share of positions
whose argmax agrees; KL = mean KL(ours || theirs) in nats.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "shared/models/qwen3-tiny-trained/target"
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
    """Everything the table shows; `work` is an empty folder (the store goes there)."""
    old = os.environ.get("QWEN_MLX_HOME")
    os.environ["QWEN_MLX_HOME"] = str(work / "home")
    try:
        return _measure(model, work)
    finally:
        if old is None:
            os.environ.pop("QWEN_MLX_HOME", None)
        else:
            os.environ["QWEN_MLX_HOME"] = old


def _measure(model: Path, work: Path) -> Figures:
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
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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


def print_table(figures: Figures) -> None:
    header = ("what", "compared with", "rel err", "top-1", "KL", "made in", "size")
    rows = [header]
    for r in figures.rows:
        rows.append(
            (
                r.what,
                r.against,
                f"{r.rel_err:.2e}",
                f"{r.top1:.1%}",
                f"{r.kl:.2e}",
                f"{r.seconds:.1f} s" if r.seconds is not None else "",
                f"{r.size / 1e6:.2f} MB" if r.size else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    ours = figures.row("ours q4_0 in llama.cpp").top1
    theirs = figures.row("llama.cpp's own q4_0 in llama.cpp").top1
    print(f"\nq4_0 top-1: ours / llama.cpp's own = {ours / theirs:.3f}")
    same = figures.tokens_ours == figures.tokens_llama
    n = len(figures.tokens_ours)
    print(f"tokenizer: llama.cpp's tokens {'==' if same else '!='} ours ({n} tokens)")
    same_template = figures.template_llama == figures.template_ours
    print(f"chat template in the GGUF == the model's: {same_template}")
    for label, notes in figures.import_notes.items():
        for note in notes:
            print(f"import of {label}: {note}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a Qwen3 HF folder")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as work:
        figures = measure(args.model, Path(work))
    print(f"model: {args.model} ({len(figures.tokens_ours)} prompt tokens)\n")
    print_table(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
