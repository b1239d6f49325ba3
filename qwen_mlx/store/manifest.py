"""`manifest.json`: what a model folder is, where it came from, and the sha256 of every file.

The manifest is written last when a model is converted or imported; `verify` recomputes
what it lists. Its own sha256 identifies the exact model (saved sessions are tied to it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import DamagedModelError
from ..fileio import atomic_write_text, now_iso, sha256_file

if TYPE_CHECKING:
    from .naming import ModelName

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CalibrationInfo:
    """The text a learned method (AWQ, GPTQ, DWQ, dynamic) was calibrated on."""

    source: str  # "packaged" or the file's name
    sha256: str  # of the file's bytes
    tokens: int  # used, in `samples` windows of `sequence_length`
    samples: int
    sequence_length: int


@dataclass(frozen=True)
class Quantization:
    """How the weights are stored. `bits` is None for an unquantized copy; `mode` is
    mlx's quantization mode (affine, mxfp4, nvfp4, mxfp8); `method` the learned method
    (awq, gptq, dwq, dynamic) or None for round-to-nearest; `layers` the layers whose
    settings differ from `bits`/`group_size`/`mode` (path -> {"bits", "group_size",
    "mode"}, or False for a layer left unquantized)."""

    dtype: str
    bits: int | None = None
    group_size: int | None = None
    mode: str | None = None
    recipe: str | None = None
    bits_per_weight: float | None = None
    method: str | None = None
    target_bpw: float | None = None
    layers: dict[str, Any] | None = None
    calibration: CalibrationInfo | None = None
    # `bits_per_weight` counts every byte of the weight matrices (weights, scales and
    # biases), the token embedding included; this one the linear layers alone.
    bits_per_weight_linear: float | None = None

    @property
    def label(self) -> str:
        if self.mode and self.mode.startswith("gguf-"):  # a GGUF export: its llama.cpp type
            return self.mode.removeprefix("gguf-")
        if self.recipe:
            return f"{self.recipe} (g{self.group_size})"
        if self.bits:
            fmt = self.mode if self.mode not in (None, "affine") else f"{self.bits}-bit"
            label = f"{fmt} g{self.group_size}"
            if self.method and self.method.startswith("dynamic") and self.target_bpw:
                return f"{label} {self.method} ({self.target_bpw} bpw target)"
            return f"{label} {self.method}" if self.method else label
        return self.dtype


@dataclass(frozen=True)
class SourceInfo:
    """Where the weights came from: a Hub repo at a revision, or a local folder."""

    repo: str | None = None
    path: str | None = None
    revision: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256


@dataclass(frozen=True)
class QualityReport:
    """Source model versus converted model on a held-out text (the packaged one unless
    `text` names another), never the text a method was calibrated on."""

    tokens: int
    kl_divergence: float
    top1_agreement: float
    perplexity_source: float
    perplexity_converted: float
    verdict: str  # "ok" or "broken"
    text: str | None = None  # "packaged" or the file's name; None in older manifests
    text_sha256: str | None = None


@dataclass(frozen=True)
class FileProblem:
    path: str
    problem: str  # "missing", "size", "sha256", "unexpected", "damaged", "outside"
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Manifest:
    name: str
    family: str
    variant: str
    release: str
    parameters: int
    context_length: int
    quantization: Quantization
    source: SourceInfo
    files: tuple[FileEntry, ...]
    quality: QualityReport | None = None
    tools: dict[str, str] = field(default_factory=dict)
    license: str | None = None
    created_at: str = ""
    schema: int = SCHEMA_VERSION
    # Reports on the other held-out texts (`convert --heldout A --heldout B`): `quality`
    # is the first text's.
    quality_others: tuple[QualityReport, ...] = ()

    @classmethod
    def new(
        cls,
        name: ModelName,
        *,
        parameters: int,
        config: dict[str, Any],
        quantization: Quantization,
        source: SourceInfo,
        files: Iterable[FileEntry],
        quality: QualityReport | None = None,
        quality_others: Iterable[QualityReport] = (),
        license_from: Path | None = None,
    ) -> Manifest:
        """The manifest of a model just written (converted or imported): its name's parts,
        its context from `config`, the license found in `license_from`, today's tools."""
        return cls(
            name=str(name),
            family=name.family_id,
            variant=name.variant,
            release=name.release,
            parameters=parameters,
            context_length=int(config.get("max_position_embeddings", 0)),
            quantization=quantization,
            source=source,
            files=tuple(files),
            quality=quality,
            quality_others=tuple(quality_others),
            tools=tool_versions(),
            license=detect_license(license_from) if license_from else None,
            created_at=now_iso(),
        )

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def quality_reports(self) -> tuple[QualityReport, ...]:
        """Every held-out text's report, the first one's first."""
        return ((self.quality,) if self.quality else ()) + self.quality_others

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        data["quality_others"] = [asdict(r) for r in self.quality_others]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        quant = dict(data["quantization"])
        if quant.get("calibration"):
            quant["calibration"] = CalibrationInfo(**quant["calibration"])
        data["quantization"] = Quantization(**quant)
        data["source"] = SourceInfo(**data["source"])
        data["files"] = tuple(FileEntry(**f) for f in data["files"])
        if data.get("quality"):
            data["quality"] = QualityReport(**data["quality"])
        data["quality_others"] = tuple(QualityReport(**r) for r in data.get("quality_others", ()))
        return cls(**data)

    def write(self, folder: str | os.PathLike) -> str:
        """Write atomically into `folder`; return the manifest's own sha256."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write_text(Path(folder) / MANIFEST_FILE, text)
        return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(folder: str | os.PathLike) -> Manifest | None:
    """The folder's manifest, or None if it has none. A damaged one raises.

    A manifest is damaged, too, when it lists a file outside its folder (`/etc/hostname`,
    `../x`), or is itself a link to a file outside it: every reader (verify, load,
    repair, ...) would otherwise hash or trust it.
    """
    file = Path(folder) / MANIFEST_FILE
    if not file.exists() and not file.is_symlink():
        return None
    try:
        if not file.resolve().is_relative_to(Path(folder).resolve()):
            raise ValueError(f"it links to {file.resolve()}, outside the model folder")
        if not file.is_file():
            raise ValueError("it is not a file")
        data = json.loads(file.read_text())
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        manifest = Manifest.from_dict(data)
        for entry in manifest.files:
            _check_entry(entry)
    except (ValueError, KeyError, TypeError) as e:  # JSON and UTF-8 errors are ValueErrors
        raise DamagedModelError(f"{file} is damaged ({e}).") from e
    return manifest


def _check_entry(entry: FileEntry) -> None:
    """Raise ValueError unless `entry` names a file inside the model folder."""
    if not isinstance(entry.path, str) or not entry.path:
        raise ValueError(f"file entry {entry.path!r} is not a file name")
    parts = PurePosixPath(entry.path).parts
    if entry.path.startswith(("/", "\\")) or ".." in parts or "\\" in entry.path:
        raise ValueError(f"file entry {entry.path!r} points outside the model folder")
    if not isinstance(entry.size, int) or not isinstance(entry.sha256, str):
        raise ValueError(f"file entry {entry.path!r} has no usable size and sha256")


def manifest_sha256(folder: str | os.PathLike) -> str | None:
    file = Path(folder) / MANIFEST_FILE
    return sha256_file(file) if file.is_file() else None


def hash_files(
    folder: Path,
    names: Iterable[str],
    progress: Callable[[int], None] | None = None,
    known: dict[str, str] | None = None,
) -> list[FileEntry]:
    """FileEntry for each name; `known` supplies hashes computed while writing."""
    known = known or {}
    entries = []
    for name in names:
        file = folder / name
        digest = known.get(name)
        if digest is None:
            digest = sha256_file(file, progress)
        elif progress is not None:
            progress(file.stat().st_size)
        entries.append(FileEntry(name, file.stat().st_size, digest))
    return entries


def verify_files(
    folder: str | os.PathLike,
    manifest: Manifest,
    *,
    full: bool = True,
    progress: Callable[[str, int], None] | None = None,
) -> list[FileProblem]:
    """Compare the folder with its manifest: sizes always, sha256 when `full`.

    `progress(file, nbytes)` is called as bytes are hashed. Files that are not in the
    manifest are problems too: a stray `*.safetensors` would be loaded as weights. So is
    a listed file that is a link (or lies under one) to somewhere outside the folder: as
    with a `../` entry, its bytes are not the model's, whatever their hash.
    """
    folder = Path(folder)
    root = folder.resolve()
    problems: list[FileProblem] = []
    listed = {f.path for f in manifest.files}
    for entry in manifest.files:
        file = folder / entry.path
        real = file.resolve()
        if not real.is_relative_to(root):
            detail = f"a link to {real}, outside the model folder"
            problems.append(FileProblem(entry.path, "outside", detail))
            continue
        if not file.is_file():
            problems.append(FileProblem(entry.path, "missing"))
            continue
        size = file.stat().st_size
        if size != entry.size:
            problems.append(FileProblem(entry.path, "size", f"{size} bytes, expected {entry.size}"))
            continue
        if full:
            tick = None if progress is None else (lambda n, p=entry.path: progress(p, n))
            if sha256_file(file, tick) != entry.sha256:
                problems.append(FileProblem(entry.path, "sha256", "contents changed"))
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder).as_posix()
        if (
            file.is_file()
            and rel != MANIFEST_FILE
            and rel not in listed
            and not rel.startswith(".")
        ):
            problems.append(FileProblem(rel, "unexpected", "not in the manifest"))
    return problems


def detect_license(folder: Path) -> str | None:
    """A short license id from a LICENSE file, if there is one."""
    file = folder / "LICENSE"
    if not file.is_file():
        return None
    head = file.read_text(errors="replace")[:2000]
    if "Apache License" in head and "Version 2.0" in head:
        return "apache-2.0"
    if "MIT License" in head:
        return "mit"
    first = next((line.strip() for line in head.splitlines() if line.strip()), "")
    return first[:80] or None


def tool_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for dist in ("qwen-mlx", "mlx", "mlx-lm", "safetensors", "huggingface_hub"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return versions
