"""`models compare`: conversions of one model side by side, so a user can pick one.

For each model: size on disk, bits per weight (counted from its files: every byte of the
weight matrices, with the token embedding and without it), the quality report against
the source on each held-out text (KL divergence, top-1 agreement, perplexity of both) and
decode speed from a short greedy run. Several held-out texts show whether a recipe's
gain holds beyond one text. What a manifest records for a text is used as it is; what it
lacks (a model converted elsewhere, converted without a report, or another text) is
computed, given the source: `source=`, or the local folder the manifest names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..store import resolve
from ..store.manifest import read_manifest

PROMPT_TOKENS = 64
GENERATION_TOKENS = 32


@dataclass(frozen=True)
class TextQuality:
    """A model's quality report on one held-out text."""

    text: str  # "packaged" or the file's name
    kl_divergence: float
    top1_agreement: float
    perplexity: float
    perplexity_source: float
    tokens: int
    quality_from: str  # "manifest" or "computed"


@dataclass(frozen=True)
class ModelComparison:
    """One model of `models compare`; None where a figure could not be had (see `note`).
    The top-level quality figures are the first held-out text's; `reports` has each."""

    name: str
    path: str
    quantization: str
    size_bytes: int
    bits_per_weight: float | None
    kl_divergence: float | None
    top1_agreement: float | None
    perplexity: float | None
    perplexity_source: float | None
    decode_tps: float | None
    quality_from: str  # "manifest", "computed", or "" when there is no report
    note: str = ""
    bits_per_weight_linear: float | None = None  # the embedding left out
    reports: tuple[TextQuality, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_models(
    refs: Sequence[str | Path],
    *,
    source: str | Path | None = None,
    heldout: str | Path | Sequence[str | Path] | None = None,
    bench: bool = True,
    generation_tokens: int = GENERATION_TOKENS,
    home: str | Path | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> list[ModelComparison]:
    """Compare models (store names, family ids, folders). `source` is the unquantized
    checkpoint quality is measured against when a manifest has no report for a held-out
    text (`heldout`: one file or several, by default the packaged text);
    `progress(stage, name)`."""
    from ..convert.quality import read_heldouts

    if not refs:
        raise ValueError("Name at least one model to compare.")
    if generation_tokens < 2:
        raise ValueError("Generate at least 2 tokens: decode speed is timed between tokens.")
    texts = read_heldouts(heldout)
    source_folder = resolve(source, home=home) if source is not None else None
    say = progress or (lambda _stage, _name: None)
    rows = []
    for ref in refs:
        folder = resolve(ref, home=home)
        say("load", str(ref))
        rows.append(
            _compare_one(folder, str(ref), source_folder, texts, bench, generation_tokens, say)
        )
    return rows


def _compare_one(
    folder: Path,
    ref: str,
    source: Path | None,
    texts: Sequence[Any],
    bench: bool,
    generation_tokens: int,
    say: Callable[[str, str], None],
) -> ModelComparison:
    from ..convert.weights import count_bits
    from . import load

    manifest = read_manifest(folder)
    model = load(folder)
    name = manifest.name if manifest else folder.name
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    bits = count_bits(folder)
    same_source = manifest is not None and (
        source is None or _same_folder(source, manifest.source.path)
    )
    recorded = {
        r.text_sha256: r
        for r in (manifest.quality_reports if manifest and same_source else ())
        if r.text_sha256 is not None
    }
    if manifest and same_source and manifest.quality and manifest.quality.text_sha256 is None:
        # An older manifest's report names no text: it was on the packaged one.
        for held in texts:
            if held.source == "packaged":
                recorded.setdefault(held.sha256, manifest.quality)
    found = {h.sha256: (recorded[h.sha256], "manifest") for h in texts if h.sha256 in recorded}
    missing = [held for held in texts if held.sha256 not in found]
    note = ""
    if missing:
        against = source or _local_source(manifest)
        if against is None:
            note = "no quality figures: pass --source, the unquantized checkpoint"
        else:
            from ..convert.quality import evaluate_texts

            say("quality", name)
            for held, report in zip(missing, evaluate_texts(against, folder, missing), strict=True):
                found[held.sha256] = (report, "computed")
    reports = tuple(
        TextQuality(
            text=held.source,
            kl_divergence=r.kl_divergence,
            top1_agreement=r.top1_agreement,
            perplexity=r.perplexity_converted,
            perplexity_source=r.perplexity_source,
            tokens=r.tokens,
            quality_from=origin,
        )
        for held in texts
        if held.sha256 in found
        for r, origin in [found[held.sha256]]
    )
    tps = None
    if bench:
        from .bench import measure_run, synthetic_prompt

        say("bench", name)
        prompt = synthetic_prompt(model, PROMPT_TOKENS)
        measure_run(model, prompt[:16], 2)  # compile and allocate once
        tps = round(measure_run(model, prompt, generation_tokens).decode_tps, 1)
    first = reports[0] if reports and reports[0].text == texts[0].source else None
    return ModelComparison(
        name=name,
        path=str(folder),
        quantization=manifest.quantization.label if manifest else model.quantization_label,
        size_bytes=size,
        bits_per_weight=round(bits.per_weight, 3),
        bits_per_weight_linear=round(bits.per_weight_linear, 3),
        kl_divergence=first.kl_divergence if first else None,
        top1_agreement=first.top1_agreement if first else None,
        perplexity=first.perplexity if first else None,
        perplexity_source=first.perplexity_source if first else None,
        decode_tps=tps,
        quality_from=first.quality_from if first else "",
        note=note,
        reports=reports,
    )


def _same_folder(a: Path, b: str | None) -> bool:
    return b is not None and Path(b).expanduser().resolve() == a.expanduser().resolve()


def _local_source(manifest: Any) -> Path | None:
    """The source folder a manifest names, when it is still on this machine."""
    if manifest is None or not manifest.source.path:
        return None
    path = Path(manifest.source.path)
    return path if (path / "config.json").is_file() else None
