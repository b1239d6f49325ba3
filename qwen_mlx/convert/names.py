"""The store name of a conversion or an import: the source's own name when it has one,
else one made from what the checkpoint says; and the check that no model from another
source already holds it."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from ..errors import DamagedModelError, OutputExistsError
from ..store import Store, hub, naming
from ..store.manifest import Quantization, SourceInfo, read_manifest
from .checkpoint import Checkpoint


def fallback_release(source: hub.FetchedSource, ckpt: Checkpoint) -> tuple[str, str]:
    """The release for a source whose name has none, and what it is: the source's commit
    (short), or the date its weights were written, so converting the same folder again
    finds the same name."""
    if source.revision and re.fullmatch(r"[0-9a-f]{40}", source.revision):
        short = next(
            (source.revision[:n] for n in range(7, 41) if re.search("[0-9]", source.revision[:n])),
            None,
        )
        if short:
            return short, "the source's commit"
    stamp = max((ckpt.path / f).stat().st_mtime for f in ckpt.weight_files)
    return datetime.fromtimestamp(stamp).strftime("%Y%m%d"), "the date its weights were written"


def with_quant(base: naming.ModelName, quantization: Quantization) -> naming.ModelName:
    if base.format:
        return base
    tag = naming.quant_tag(
        bits=quantization.bits,
        group_size=quantization.group_size,
        recipe=quantization.recipe,
        dtype=quantization.dtype,
        mode=quantization.mode,
        method=quantization.method,
        target_bpw=quantization.target_bpw,
    )
    return base.with_format("mlx", tag)


def output_name(
    source: hub.FetchedSource,
    name: str | None,
    quantization: Quantization,
    ckpt: Checkpoint,
    *,
    label: str | None = None,
    parameters: int | None = None,
) -> tuple[naming.ModelName, str]:
    """The store name of a converted or imported model (the source's name plus
    `-mlx-<quant>`) and a sentence saying how it was chosen ("" when the name or the
    source's name was one). `label` replaces the source's own name (the folder's, the
    repo's); `parameters` the checkpoint's count (a quantized one counts differently).
    A local trainer's checkpoint folder (`runs/exp7/checkpoint-1200`) is named after its
    run folder, with the step as the release."""
    release, release_from = fallback_release(source, ckpt)
    label = label or source.label
    checkpoint = None
    if source.repo_id is None and naming.checkpoint_release(label) is not None:
        checkpoint, label = label, source.path.resolve().parent.name
    base, note = naming.name_for(
        name,
        label,
        family=ckpt.model_type,
        parameters=parameters or ckpt.parameters,
        release=release,
        release_from=release_from,
        hint=ckpt.config.get("_name_or_path"),
        checkpoint=checkpoint,
    )
    return with_quant(base, quantization), note


def claimed_name(
    store: Store, name: naming.ModelName, parameters: int, *, requested: str | None
) -> tuple[naming.ModelName, list[str], bool | None]:
    """Check a name an import read off the source itself (a GGUF's metadata, a folder's
    own manifest or name): a file may call itself anything, `qwen3-4b-instruct-2507` say.
    Its size must fit its parameter count, else the size is made from the count; and it
    never takes over a family that already has a latest: it is added beside it. Returns
    the name, notes saying what was done, and `set_latest` for `Store.register` (False,
    or None for the usual rule). A `requested` name (--name) is the user's: kept as is."""
    if requested:
        return name, [], None
    notes = []
    if not naming.size_fits(name.size, parameters):
        fitted = replace(name, size=naming.size_tag(parameters))
        notes.append(
            f"the source calls itself {name}, but it has {naming.parameters_text(parameters)} "
            f"parameters, not {name.size}: imported as {fitted} (--name chooses another)"
        )
        name = fitted
    latest = store.latest(name.family_id)
    if latest is None or latest == name:
        return name, notes, None
    notes.append(
        f"{name.family_id} already has a latest ({latest}); a name read from the source "
        f"does not replace it, so {name} is added beside it "
        f"(`qwen-mlx models set-latest {name}` switches)"
    )
    return name, notes, False


def known_name(hf_path: str, name: str | None, quantization: Quantization):
    """The output's name when it is known before the checkpoint is (a name or repo name
    that follows the convention), else None."""
    text = name or hf_path.rstrip("/").rsplit("/", 1)[-1]
    return with_quant(naming.parse(text), quantization) if naming.is_name(text) else None


def _same_source(info: SourceInfo, repo: str | None, path: str | None) -> bool:
    if info.repo or repo:
        return info.repo == repo
    return info.path is None or path is None or Path(info.path) == Path(path)


def check_name_free(
    store: Store,
    name: naming.ModelName,
    *,
    repo: str | None,
    path: str | None,
    force: bool,
) -> None:
    """Refuse to put a model into the store under a name that a model from another
    source holds, naming both and suggesting a name that is free. The same source again
    is `_check_output`'s "already exists"."""
    final = store.path_for(name)
    if force or not final.is_dir():
        return
    try:
        existing = read_manifest(final)
    except DamagedModelError:
        return  # its source is unknown; _check_output refuses it as an existing output
    if existing is None or _same_source(existing.source, repo, path):
        return
    word = repo.split("/")[0] if repo else "local"
    free = naming.distinct(
        naming.ModelName(name.family, name.size, name.variant, name.release),
        word,
        lambda n: store.path_for(n.with_format(name.format, name.quant, name.revision)).exists(),
    )
    theirs = existing.source.repo or existing.source.path
    raise OutputExistsError(
        f"{name} is already in the store, from {theirs}; {repo or path} would get the same "
        f"name. Pass --name {free} to keep both, or --force to replace it."
    )
