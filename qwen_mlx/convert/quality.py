"""The conversion quality report: source versus converted model on a held-out text.

A few hundred tokens of public-domain prose and code (shipped with the package as
`calibration.txt`, a name it had before learned methods came; they calibrate on
`quant_calibration.txt` instead, so the report measures text they never saw) go through
both models; we record the mean KL divergence of the converted model's next-token
distribution from the source's, how often their top-1 tokens agree, and each model's
perplexity. NaN logits, or agreement near chance, mean the weights are broken.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from ..errors import QualityGateError
from ..fileio import read_utf8
from ..store.manifest import QualityReport

# Healthy 4-bit conversions of real models agree with the source on 85-95% of top-1
# tokens; broken ones sit at chance (1/vocab). Perplexity a hundredfold the source's
# also means the weights no longer model language at all.
CHANCE_MULTIPLE = 3
PERPLEXITY_BLOWUP = 100


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


def logits(folder: Path, tokens: list[int]):
    """The model's float32 logits at every position of `tokens`."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(folder)
    if not mx.metal.is_available():
        # mlx's CPU backend has no fast bfloat16 kernels (a quantized matmul in bf16 is
        # ~5x slower than in float32); float32 activations measure the same weights.
        model.set_dtype(mx.float32)
    out = model(mx.array(tokens)[None])[0].astype(mx.float32)
    mx.eval(out)
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
    report = _evaluate(Path(source), Path(converted), held.text)
    return replace(report, text=held.source, text_sha256=held.sha256)


def _evaluate(source: Path, converted: Path, text: str) -> QualityReport:
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tokenizer = load_tokenizer(Path(converted))
    tokens = list(tokenizer.encode(text, add_special_tokens=False))
    return report_from_logits(logits(source, tokens), logits(converted, tokens), tokens)


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
