"""`models compare`: conversions of one model side by side, so a user can pick one.

For each model: size on disk, bits per weight, the quality report against the source (KL
divergence, top-1 agreement, perplexity of both on the held-out text) and decode speed
from a short greedy run. What a manifest records is used as it is; what it lacks (a
model converted elsewhere, or converted without a report) is computed, given the source:
`source=`, or the local folder the manifest names.
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
class ModelComparison:
    """One row of `models compare`; None where a figure could not be had (see `note`)."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_models(
    refs: Sequence[str | Path],
    *,
    source: str | Path | None = None,
    heldout: str | Path | None = None,
    bench: bool = True,
    generation_tokens: int = GENERATION_TOKENS,
    home: str | Path | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> list[ModelComparison]:
    """Compare models (store names, family ids, folders). `source` is the unquantized
    checkpoint quality is measured against when a manifest has no report for the
    held-out text (`heldout`, by default the packaged one); `progress(stage, name)`."""
    from ..convert.quality import read_heldout

    if not refs:
        raise ValueError("Name at least one model to compare.")
    if generation_tokens < 2:
        raise ValueError("Generate at least 2 tokens: decode speed is timed between tokens.")
    held = read_heldout(heldout)
    source_folder = resolve(source, home=home) if source is not None else None
    say = progress or (lambda _stage, _name: None)
    rows = []
    for ref in refs:
        folder = resolve(ref, home=home)
        say("load", str(ref))
        rows.append(
            _compare_one(folder, str(ref), source_folder, held, bench, generation_tokens, say)
        )
    return rows


def _compare_one(
    folder: Path,
    ref: str,
    source: Path | None,
    held: Any,
    bench: bool,
    generation_tokens: int,
    say: Callable[[str, str], None],
) -> ModelComparison:
    from mlx_lm.utils import compute_bits_per_weight

    from . import load

    manifest = read_manifest(folder)
    model = load(folder)
    name = manifest.name if manifest else folder.name
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    bpw = manifest.quantization.bits_per_weight if manifest else None
    if bpw is None:
        bpw = round(compute_bits_per_weight(model.model), 3)
    quality, quality_from, note = None, "", ""
    recorded = manifest.quality if manifest else None
    if (
        recorded is not None
        and recorded.text_sha256 in (None, held.sha256)
        and (source is None or _same_folder(source, manifest.source.path))
    ):
        quality, quality_from = recorded, "manifest"
    else:
        against = source or _local_source(manifest)
        if against is None:
            note = "no quality figures: pass --source, the unquantized checkpoint"
        else:
            from ..convert.quality import evaluate

            say("quality", name)
            quality, quality_from = evaluate(against, folder, held), "computed"
    tps = None
    if bench:
        from .bench import measure_run, synthetic_prompt

        say("bench", name)
        prompt = synthetic_prompt(model, PROMPT_TOKENS)
        measure_run(model, prompt[:16], 2)  # compile and allocate once
        tps = round(measure_run(model, prompt, generation_tokens).decode_tps, 1)
    return ModelComparison(
        name=name,
        path=str(folder),
        quantization=manifest.quantization.label if manifest else model.quantization_label,
        size_bytes=size,
        bits_per_weight=bpw,
        kl_divergence=quality.kl_divergence if quality else None,
        top1_agreement=quality.top1_agreement if quality else None,
        perplexity=quality.perplexity_converted if quality else None,
        perplexity_source=quality.perplexity_source if quality else None,
        decode_tps=tps,
        quality_from=quality_from,
        note=note,
    )


def _same_folder(a: Path, b: str | None) -> bool:
    return b is not None and Path(b).expanduser().resolve() == a.expanduser().resolve()


def _local_source(manifest: Any) -> Path | None:
    """The source folder a manifest names, when it is still on this machine."""
    if manifest is None or not manifest.source.path:
        return None
    path = Path(manifest.source.path)
    return path if (path / "config.json").is_file() else None
