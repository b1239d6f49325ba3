"""`models import`: copy an existing MLX model folder (an mlx-community download, say)
into the store, write its manifest and register it.

The name is `--name`, else the one in the folder's own manifest.json (a folder that
`qwen-mlx convert --mlx-path` wrote), else one read off the folder name or made from the
checkpoint, as `convert` does."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import DamagedModelError, OutputExistsError
from ..store import Store, install, naming
from ..store.hub import FetchedSource, snapshot_repo, snapshot_revision
from ..store.manifest import (
    Manifest,
    Quantization,
    SourceInfo,
    hash_files,
    read_manifest,
)
from .checkpoint import Checkpoint, inspect_checkpoint
from .names import check_name_free, claimed_name, output_name
from .weights import count_bits

# mlx-community style suffixes: Qwen3-4B-Instruct-2507-4bit, ...-8bit, ...-bf16, ...-MLX
_SUFFIX = re.compile(r"-(?:mlx-)?(?:\d+bit|bf16|fp16|mlx)(?:-.*)?$", re.IGNORECASE)


@dataclass(frozen=True)
class FolderImport:
    """What `import_folder` did."""

    path: Path
    manifest: Manifest
    became_latest: bool
    notes: tuple[str, ...] = ()  # what was decided about its name, for the user


def _quant(ckpt: Checkpoint) -> tuple[Quantization, dict]:
    q = ckpt.config.get("quantization") or {}
    dtype = str(ckpt.config.get("torch_dtype") or ckpt.config.get("dtype") or "bfloat16")
    if not q:
        return Quantization(dtype=dtype), q
    return Quantization(dtype, q.get("bits"), q.get("group_size"), q.get("mode", "affine")), q


def parameter_count(ckpt: Checkpoint) -> int:
    """Parameters, reading quantized weights through their scales (in = groups x group)."""
    _, q = _quant(ckpt)
    total = 0
    for name, spec in ckpt.tensors.items():
        module, _, param = name.rpartition(".")
        if param in ("scales", "biases") or (ckpt.tied_embeddings and module == "lm_head"):
            continue
        scales = ckpt.tensors.get(f"{module}.scales")
        if param == "weight" and scales is not None:
            group = (q.get(module) or {}).get("group_size") or q.get("group_size", 64)
            total += spec.shape[0] * scales.shape[-1] * group
        else:
            n = 1
            for d in spec.shape:
                n *= d
            total += n
    return total


def import_name(
    folder: Path,
    name: str | None,
    quantization: Quantization,
    ckpt: Checkpoint,
    own: Manifest | None = None,
) -> tuple[naming.ModelName, str]:
    """The store name for an imported folder and how it was chosen ("" when given or
    read whole): `name`, else the name in its own manifest `own`, else the folder name
    (without mlx-community suffixes like `-4bit`), else one made from the checkpoint."""
    if not name and own is not None and naming.is_name(own.name):
        return naming.parse(own.name), ""
    label = folder.name
    if not (naming.is_name(label) and naming.parse(label).format):
        label = _SUFFIX.sub("", label) or label
    source = FetchedSource(folder, snapshot_repo(folder), snapshot_revision(folder))
    return output_name(
        source, name, quantization, ckpt, label=label, parameters=parameter_count(ckpt)
    )


def _own_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest.json, if it has a readable one (a damaged one is ignored:
    the import writes a new one from the files)."""
    try:
        return read_manifest(folder)
    except DamagedModelError:
        return None


def import_folder(
    path: str | Path,
    *,
    name: str | None = None,
    force: bool = False,
    home: str | Path | None = None,
) -> FolderImport:
    """Copy `path` into the store.

    When the folder holds our own manifest and its files still match it, the new
    manifest keeps what that one knows: the original source, quantization and quality."""
    source = Path(path).expanduser().resolve()
    ckpt = inspect_checkpoint(source)
    quantization, _ = _quant(ckpt)
    own = _own_manifest(source)
    model_name, _ = import_name(source, name, quantization, ckpt, own)
    origin = SourceInfo(repo=snapshot_repo(source), path=str(source))
    if own is not None and own.source.files:
        origin = own.source
    store = Store(home)
    model_name, notes, set_latest = claimed_name(
        store, model_name, parameter_count(ckpt), requested=name
    )
    check_name_free(store, model_name, repo=origin.repo, path=origin.path, force=force)
    final = store.path_for(model_name)
    if final.exists() and not force:
        raise OutputExistsError(
            f"{model_name} is already in the store at {final}; pass --force to replace it."
        )
    files = ckpt.all_files()
    with store.staging(final) as tmp:
        for f in files:
            shutil.copyfile(source / f, tmp / f)
        entries = hash_files(tmp, files)
        params = parameter_count(ckpt)
        bits = count_bits(tmp)
        kept = own is not None and {(f.path, f.sha256) for f in own.files} == {
            (e.path, e.sha256) for e in entries
        }
        manifest = Manifest.new(
            model_name,
            parameters=params,
            config=ckpt.config,
            quantization=replace(
                own.quantization if kept else quantization,
                bits_per_weight=round(bits.per_weight, 3),
                bits_per_weight_linear=round(bits.per_weight_linear, 3),
            ),
            source=own.source
            if kept
            else SourceInfo(
                repo=snapshot_repo(source),
                path=str(source),
                revision=snapshot_revision(source),
                files={e.path: e.sha256 for e in entries},
            ),
            files=entries,
            quality=own.quality if kept else None,
            quality_others=own.quality_others if kept else (),
            license_from=source,
        )
        manifest.write(tmp)
        install(tmp, final, replace=force)
    became_latest = store.register(final, manifest, event="imported", set_latest=set_latest)
    store.close()
    return FolderImport(final, manifest, became_latest, tuple(notes))
