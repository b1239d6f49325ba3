"""`models import`: copy an existing MLX model folder (an mlx-community download, say)
into the store, write its manifest and register it."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

from . import naming
from .checkpoint import Checkpoint, inspect_checkpoint
from .errors import InvalidNameError, OutputExistsError
from .hub import snapshot_repo, snapshot_revision
from .manifest import (
    Manifest,
    Quantization,
    SourceInfo,
    detect_license,
    hash_files,
    now_iso,
    tool_versions,
)
from .store import Store, install

# mlx-community style suffixes: Qwen3-4B-Instruct-2507-4bit, ...-8bit, ...-bf16, ...-MLX
_SUFFIX = re.compile(r"-(?:mlx-)?(?:\d+bit|bf16|fp16|mlx)(?:-.*)?$", re.IGNORECASE)


def _quant(ckpt: Checkpoint) -> tuple[Quantization, dict]:
    q = ckpt.config.get("quantization") or {}
    dtype = str(ckpt.config.get("torch_dtype") or "bfloat16")
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


def import_name(folder: Path, name: str | None, quantization: Quantization) -> naming.ModelName:
    """The store name for an imported folder: `name`, or one read off the folder name."""
    if name:
        parsed = naming.parse(name)
    else:
        stem = _SUFFIX.sub("", folder.name) if not naming.is_name(folder.name) else folder.name
        try:
            parsed = naming.name_from_source(stem)
        except InvalidNameError as e:
            raise InvalidNameError(
                f"Cannot name {folder.name!r} after its folder: {e} "
                "Pass --name, e.g. --name qwen3-4b-instruct-2507."
            ) from e
    if parsed.format:
        return parsed
    tag = naming.quant_tag(
        bits=quantization.bits, group_size=quantization.group_size, dtype=quantization.dtype
    )
    return parsed.with_format("mlx", tag)


def import_folder(
    path: str | Path,
    *,
    name: str | None = None,
    force: bool = False,
    home: str | Path | None = None,
) -> tuple[Path, Manifest, bool]:
    """Copy `path` into the store; return (folder, manifest, became latest)."""
    source = Path(path).expanduser().resolve()
    ckpt = inspect_checkpoint(source)
    quantization, _ = _quant(ckpt)
    model_name = import_name(source, name, quantization)
    store = Store(home)
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
        weight_bytes = sum(spec.nbytes for spec in ckpt.tensors.values())
        params = parameter_count(ckpt)
        manifest = Manifest(
            name=str(model_name),
            family=model_name.family_id,
            variant=model_name.variant,
            release=model_name.release,
            parameters=params,
            context_length=int(ckpt.config.get("max_position_embeddings", 0)),
            quantization=replace(quantization, bits_per_weight=round(weight_bytes * 8 / params, 3)),
            source=SourceInfo(
                repo=snapshot_repo(source),
                path=str(source),
                revision=snapshot_revision(source),
                files={e.path: e.sha256 for e in entries},
            ),
            files=tuple(entries),
            tools=tool_versions(),
            license=detect_license(source),
            created_at=now_iso(),
        )
        manifest.write(tmp)
        install(tmp, final, replace=force)
    became_latest = store.register(final, manifest, event="imported")
    store.close()
    return final, manifest, became_latest
