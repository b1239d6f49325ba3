"""The conversion quality report: source versus converted model on held-out texts.

A few hundred tokens of public-domain prose and code (shipped with the package as
`calibration.txt`, a name it had before learned methods came; they calibrate on
`quant_calibration.txt` instead, so the report measures text they never saw), or the
user's own texts (`--heldout`, once per text), go through both models; for each text we
record the mean KL divergence of the converted model's next-token distribution from the
source's, how often their top-1 tokens agree, and each model's perplexity. Several texts
show whether a method's gain holds beyond one text. NaN logits, or agreement near
chance, mean the weights are broken.

Texts run in windows of `WINDOW` tokens, so a long text costs linear time and bounded
memory; on the CPU backend quantized layers are dequantized to float32 first (mlx's CPU
quantized matmul is tens of times slower than a float one, for the same numbers).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import QualityGateError
from ..fileio import read_utf8
from ..store.manifest import QualityReport

# Healthy 4-bit conversions of real models agree with the source on 85-95% of top-1
# tokens; broken ones sit at chance (1/vocab). Perplexity a hundredfold the source's
# also means the weights no longer model language at all.
CHANCE_MULTIPLE = 3
PERPLEXITY_BLOWUP = 100
WINDOW = 1024  # tokens run through a model at once


def calibration_text() -> str:
    """The packaged held-out text of the quality report."""
    return resources.files("qwen_mlx.data").joinpath("calibration.txt").read_text()


@dataclass(frozen=True)
class HeldOut:
    """The text of a quality report and where it came from."""

    text: str
    source: str  # "packaged" or the file's name
    sha256: str


def read_heldout(path: str | Path | None = None) -> HeldOut:
    """The packaged held-out text, or a text file's."""
    if path is None:
        data = resources.files("qwen_mlx.data").joinpath("calibration.txt").read_bytes()
        return HeldOut(data.decode(), "packaged", hashlib.sha256(data).hexdigest())
    file, data, text = read_utf8(path, "held-out text", "pass a text file")
    if len(text.strip()) < 200:
        raise ValueError(f"{file} is too short for a quality report; pass a few KB of text.")
    return HeldOut(text, file.name, hashlib.sha256(data).hexdigest())


def read_heldouts(paths: Sequence[str | Path] | str | Path | None) -> list[HeldOut]:
    """The held-out texts of a report: each file once (the packaged text when none);
    the same text twice is refused, as it would be counted twice."""
    if paths is None or isinstance(paths, (str, Path)):
        paths = [] if paths is None else [paths]
    texts = [read_heldout(p) for p in paths] or [read_heldout()]
    seen: dict[str, str] = {}
    for held in texts:
        if held.sha256 in seen:
            raise ValueError(
                f"{held.source} and {seen[held.sha256]} are the same text; pass each "
                "held-out text once."
            )
        seen[held.sha256] = held.source
    return texts


def load_for_scoring(folder: Path) -> Any:
    """The model in `folder` as the report runs it: float32 on the CPU backend, where
    quantized layers are dequantized first (the same weights; mlx's CPU quantized matmul
    is tens of times slower than a float one)."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(folder)
    if not mx.metal.is_available():
        _dequantize(model)
        model.set_dtype(mx.float32)
    return model


def _dequantize(model: Any) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten

    plain = []
    for path, module in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
        if not isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            continue
        biases = module.get("biases")
        weight = mx.dequantize(  # in float32: bf16 scales would round the weights again
            module.weight,
            module.scales.astype(mx.float32) if biases is not None else module.scales,
            biases.astype(mx.float32) if biases is not None else None,
            group_size=module.group_size,
            bits=module.bits,
            mode=getattr(module, "mode", "affine"),
            dtype=mx.float32,
        )
        rows, cols = weight.shape
        if isinstance(module, nn.QuantizedEmbedding):
            layer = nn.Embedding(rows, cols)
        else:
            layer = nn.Linear(cols, rows, bias="bias" in module)
            if "bias" in module:
                layer.bias = module.bias
        layer.weight = weight
        plain.append((path, layer))
    if plain:
        model.update_modules(tree_unflatten(plain))


def model_logits(model: Any, tokens: list[int]) -> Any:
    """The model's float32 logits at every position of `tokens`, run in windows of
    `WINDOW` tokens (each window starts a fresh context)."""
    import mlx.core as mx

    out = []
    for start in range(0, len(tokens), WINDOW):
        window = model(mx.array(tokens[start : start + WINDOW])[None])[0].astype(mx.float32)
        mx.eval(window)
        out.append(window)
    return mx.concatenate(out) if len(out) > 1 else out[0]


def logits(folder: Path, tokens: list[int]) -> Any:
    """The float32 logits of the model in `folder` at every position of `tokens`."""
    model = load_for_scoring(folder)
    out = model_logits(model, tokens)
    del model
    return out


def evaluate(
    source: str | Path, converted: str | Path, text: str | HeldOut | None = None
) -> QualityReport:
    """Compare `converted` with `source` (both model folders) on a held-out text (the
    packaged one by default)."""
    if text is None or isinstance(text, HeldOut):
        held = text or read_heldout()
    else:
        held = HeldOut(text, "given", hashlib.sha256(text.encode()).hexdigest())
    return evaluate_texts(source, converted, [held])[0]


def evaluate_texts(
    source: str | Path, converted: str | Path, texts: Sequence[HeldOut]
) -> list[QualityReport]:
    """One report per held-out text, each model loaded once: the source's logits on every
    text first, then the converted model's, compared text by text."""
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tokenizer = load_tokenizer(Path(converted))
    token_lists = [list(tokenizer.encode(t.text, add_special_tokens=False)) for t in texts]
    model = load_for_scoring(Path(source))
    refs = [model_logits(model, tokens) for tokens in token_lists]
    del model
    model = load_for_scoring(Path(converted))
    reports = []
    for held, tokens, ref in zip(texts, token_lists, refs, strict=True):
        report = report_from_logits(ref, model_logits(model, tokens), tokens)
        reports.append(replace(report, text=held.source, text_sha256=held.sha256))
    return reports


def report_from_logits(ref, out, tokens: list[int]) -> QualityReport:
    """The report from both models' logits on `tokens` (a benchmark computes the
    source's once and compares many conversions with them)."""
    import mlx.core as mx

    ref_lp = ref - mx.logsumexp(ref, axis=-1, keepdims=True)
    out_lp = out - mx.logsumexp(out, axis=-1, keepdims=True)
    kl = mx.mean(mx.sum(mx.exp(ref_lp) * (ref_lp - out_lp), axis=-1)).item()
    agree = mx.mean(mx.argmax(ref, axis=-1) == mx.argmax(out, axis=-1)).item()
    targets = mx.array(tokens[1:])

    def perplexity(lp: mx.array) -> float:
        nll = -mx.take_along_axis(lp[:-1], targets[:, None], axis=-1).mean().item()
        return math.exp(nll) if math.isfinite(nll) else math.inf

    ppl_ref, ppl_out = perplexity(ref_lp), perplexity(out_lp)
    finite = all(math.isfinite(v) for v in (kl, ppl_ref, ppl_out))
    chance = CHANCE_MULTIPLE / int(ref.shape[-1])
    broken = not finite or agree <= chance or ppl_out > PERPLEXITY_BLOWUP * ppl_ref
    return QualityReport(
        tokens=len(tokens),
        kl_divergence=round(kl, 6) if math.isfinite(kl) else kl,
        top1_agreement=round(agree, 4),
        perplexity_source=round(ppl_ref, 4) if math.isfinite(ppl_ref) else ppl_ref,
        perplexity_converted=round(ppl_out, 4) if math.isfinite(ppl_out) else ppl_out,
        verdict="broken" if broken else "ok",
    )


def check_quality(report: QualityReport) -> None:
    """Raise QualityGateError when the report says the weights are broken."""
    if report.verdict == "broken":
        raise QualityGateError(
            "The converted weights look broken: "
            f"KL divergence {report.kl_divergence}, top-1 agreement "
            f"{report.top1_agreement:.1%}, perplexity {report.perplexity_source} -> "
            f"{report.perplexity_converted}. Nothing was written. Check the source files "
            "(`qwen-mlx models verify` or a fresh download) and try again."
        )
