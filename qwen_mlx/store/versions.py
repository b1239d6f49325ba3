"""`Store`: the versions of models under `$QWEN_MLX_HOME` (default `~/.qwen_mlx`).

    models/<family>/<release>/<format>/   one converted model, with manifest.json
    models/<family>/latest                which <release>/<format> is current
    registry.sqlite                       models, files, events, pins and policies

A model reference is a store name, a family id (its latest), a folder, or a Hub repo id;
`resolve` turns any of them into a folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    DamagedModelError,
    InvalidNameError,
    ModelNotFoundError,
    QwenMLXError,
    StoreError,
)
from ..fileio import (
    atomic_write_text,
    fsync_dir,
    now_iso,
    tree_size,
)
from . import naming
from .manifest import (
    MANIFEST_FILE,
    FileProblem,
    Manifest,
    QualityReport,
    manifest_sha256,
    read_manifest,
    verify_files,
)
from .registry import POLICIES, Registry
from .staging import (
    _OPEN_SWAPS,
    PARTIAL_MARK,
    SWAP_MARK,
    _delete_tree,
    _has_manifest,
    _Swap,
    clean_partials,
)

LATEST_FILE = "latest"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredModel:
    """A model in the store, as `models list` shows it."""

    name: str
    family: str
    release: str
    format: str
    path: Path
    size_bytes: int
    last_verified_at: str | None
    last_verify_ok: bool | None
    latest: bool
    pinned: bool
    quality: QualityReport | None = None
    manifest_ok: bool = True  # False when manifest.json cannot be read
    missing: bool = False  # the folder was deleted outside qwen-mlx; `rm` drops the entry


@dataclass(frozen=True)
class VerifyResult:
    """What `Store.verify` found. A damaged manifest is a problem like any other."""

    name: str
    files: int
    size: int
    problems: list[FileProblem]


@dataclass(frozen=True)
class Removed:
    """What `Store.remove` did."""

    name: naming.ModelName
    freed: int  # bytes
    was_missing: bool  # the folder was already gone: only the registry entry went


@dataclass(frozen=True)
class RepairResult:
    kept: Path | None  # where the old registry was moved, if there was one
    models: int
    skipped: list[str]  # folders left out, with the reason


def home() -> Path:
    """The store root: `$QWEN_MLX_HOME`, or `~/.qwen_mlx`."""
    return Path(os.environ.get("QWEN_MLX_HOME") or "~/.qwen_mlx").expanduser()


class Store:
    """The store at `root` (default `home()`).

    Opening it finishes any folder swap that a killed conversion or import left half-done
    (see `install`), so every command starts from whole, registered models."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else home()
        self._registry: Registry | None = None
        self._swaps: list[_Swap] = []  # swaps done through `staging`, closed by `close`
        self._recover()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.open(self.root / "registry.sqlite")
        return self._registry

    def close(self) -> None:
        """Close the registry, and the journals of the swaps done through this store (the
        caller has registered their models by now, or did not mean to)."""
        while self._swaps:
            swap = self._swaps.pop()
            try:
                swap.complete()  # deletes an `.old-*` copy that install could not
                swap.finish()
            except OSError as e:  # left for the next command to finish
                logger.warning("Could not finish the swap of %s: %s", swap.final, e)
                swap.release()
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def _recover(self) -> None:
        """Finish the swaps of processes that died half-way (killed during `convert
        --force`, say): put the new model (or else the old one) in place, delete the
        `.old-*` copy and register the new model if that had not happened yet."""
        for journal in sorted(self.models_dir.glob(f"*/*/.*{SWAP_MARK}*.json")):
            swap = _Swap.claim(journal)
            if swap is None:  # its process is still at it, or another one recovers it
                continue
            try:
                swap.complete()
                self._register_recovered(swap)
                swap.finish()
            except (OSError, QwenMLXError) as e:  # a full disk, a damaged registry, ...
                logger.warning("Could not finish the interrupted swap of %s: %s", swap.final, e)
                swap.release()

    def _register_recovered(self, swap: _Swap) -> None:
        """Register the swap's new model unless the registry already has it."""
        if not swap.sha256 or manifest_sha256(swap.final) != swap.sha256:
            return  # the new model is not there (rolled back): the registry still fits
        manifest = read_manifest(swap.final)
        if manifest is None:
            return
        row = self.registry.model(manifest.name)
        if row is None or row.manifest_sha256 != swap.sha256:
            self.register(swap.final, manifest, event="recovered")

    # -- layout --------------------------------------------------------------------------

    def path_for(self, name: naming.ModelName) -> Path:
        return self.models_dir / name.family_id / name.release / name.format_dir

    def _name_at(self, family: str, version: str) -> naming.ModelName | None:
        """The name of the model at `<family>/<release>/<format dir>`, from the path alone
        (a damaged manifest must not hide which model a folder holds)."""
        folder = self.models_dir / family / version
        if not _has_manifest(folder):
            return None
        release, _, format_dir = version.partition("/")
        tag = "" if format_dir == "original" else f"-{format_dir}"
        try:
            return naming.parse(f"{family}-{release}{tag}")
        except InvalidNameError:
            return None

    def latest(self, family: str) -> naming.ModelName | None:
        """The family's current model, from its `latest` pointer."""
        pointer = self.models_dir / family / LATEST_FILE
        if not pointer.is_file():
            return None
        return self._name_at(family, pointer.read_text().strip())

    def _write_latest(self, name: naming.ModelName | None, family: str) -> None:
        pointer = self.models_dir / family / LATEST_FILE
        if name is None:
            pointer.unlink(missing_ok=True)
        else:
            atomic_write_text(pointer, f"{name.release}/{name.format_dir}\n")

    # -- registration ----------------------------------------------------------------------

    def register(
        self,
        folder: Path,
        manifest: Manifest,
        *,
        event: str = "converted",
        set_latest: bool | None = None,
    ) -> bool:
        """Record a model that now sits in `folder`. It becomes its family's latest when
        `set_latest` is True or, when None, when that is what a user expects: the family's
        first version, or a newer release in the same format and quantization as the
        current latest (`naming.why_not_latest`); a fine-tune, another quantization or an
        older release is added beside it. A pinned or frozen family keeps its latest.
        Returns whether it became latest."""
        name = naming.parse(manifest.name)
        digest = manifest_sha256(folder) or ""
        with self.registry.transaction() as conn:
            self.registry.upsert_model(conn, manifest, folder, digest)
            Registry.log(conn, name.family_id, event, manifest.name, str(folder))
            policy, pinned = self.registry.family(name.family_id)
            if pinned or policy == "frozen" or set_latest is False:
                return False
            current = self.latest(name.family_id)  # read under the registry's write lock
            if set_latest is None and naming.why_not_latest(name, current) is not None:
                return False
            self._write_latest(name, name.family_id)
            Registry.log(conn, name.family_id, "set-latest", manifest.name, event)
        return True

    # -- reference resolution ----------------------------------------------------------------

    def find(self, ref: str) -> Path | None:
        """The folder of a store name or family id, or None if it is neither."""
        text = ref.strip().lower()
        if naming.is_name(text):
            name = naming.parse(text)
            if name.format is None:
                return self._only_version_of_release(name)
            folder = self.path_for(name)
            return folder if folder.is_dir() else None
        if naming.is_family_id(text):
            latest = self.latest(text)
            if latest is None:
                if (self.models_dir / text).is_dir():
                    raise ModelNotFoundError(
                        f"{text} has no latest version; pick one with "
                        f"`qwen-mlx models set-latest NAME` (see `qwen-mlx models list`)."
                    )
                return None
            return self.path_for(latest)
        return None

    def _only_version_of_release(self, name: naming.ModelName) -> Path | None:
        release_dir = self.models_dir / name.family_id / name.release
        versions = sorted(p for p in release_dir.glob("*") if _has_manifest(p))
        if not versions:
            return None
        latest = self.latest(name.family_id)
        if latest is not None and latest.release == name.release:
            return self.path_for(latest)
        if len(versions) == 1:
            return versions[0]
        choices = ", ".join(f"{name}-{p.name}" for p in versions)
        raise ModelNotFoundError(f"{name} has several conversions; pick one of: {choices}.")

    # -- listing ---------------------------------------------------------------------------

    def list(self) -> list[StoredModel]:
        """Every registered model; one whose folder was deleted is marked `missing`."""
        rows = self.registry.models()
        latest = {f: self.latest(f) for f in {r.family for r in rows}}
        out = []
        for r in rows:
            _, pinned = self.registry.family(r.family)
            is_latest = latest.get(r.family) is not None and str(latest[r.family]) == r.name
            folder = self._folder_of(r.name, r.path)
            try:
                manifest = read_manifest(folder) if folder.is_dir() else None
                manifest_ok = True
            except DamagedModelError:
                manifest, manifest_ok = None, False
            out.append(
                StoredModel(
                    name=r.name,
                    family=r.family,
                    release=r.release,
                    format=r.format,
                    path=folder,
                    size_bytes=r.size_bytes,
                    last_verified_at=r.last_verified_at,
                    last_verify_ok=r.last_verify_ok,
                    latest=is_latest,
                    pinned=pinned and is_latest,
                    quality=manifest.quality if manifest else None,
                    manifest_ok=manifest_ok,
                    missing=not folder.is_dir(),
                )
            )
        return out

    def _folder_of(self, name: str, recorded: str) -> Path:
        """Where a registered model lives: its place in this store (the store may have
        moved since it was registered), or the recorded path for an odd name."""
        try:
            return self.path_for(naming.parse(name))
        except InvalidNameError:
            return Path(recorded)

    def _lost(self, ref: str) -> tuple[Path, naming.ModelName] | None:
        """The folder and name of a registered model whose folder (or manifest.json) was
        deleted outside qwen-mlx, so that verify can report it and rm can drop it."""
        text = ref.strip().lower()
        if not naming.is_name(text):
            return None
        name = naming.parse(text)
        if name.format is None or self.registry.model(str(name)) is None:
            return None
        folder = self.path_for(name)
        return None if _has_manifest(folder) else (folder, name)

    def _locate_or_lost(self, ref: str) -> tuple[Path, naming.ModelName, bool]:
        """`locate(ref)`, or a registered model whose folder was deleted (lost: True);
        ModelNotFoundError when it is neither."""
        try:
            return (*self.locate(ref), False)
        except ModelNotFoundError:
            lost = self._lost(ref)
            if lost is None:
                raise
            return (*lost, True)

    def locate(self, ref: str) -> tuple[Path, naming.ModelName]:
        """The folder and name of a stored model, without reading its manifest."""
        folder = self.find(ref)
        name = None
        if folder is not None:
            family, release, format_dir = folder.relative_to(self.models_dir).parts
            name = self._name_at(family, f"{release}/{format_dir}")
        if folder is None or name is None:
            raise ModelNotFoundError(
                f"{ref} is not in the store (see `qwen-mlx models list`).{self.did_you_mean(ref)}"
            )
        return folder, name

    def names(self) -> list[str]:
        """Every stored version's name and every family id, from the folders alone."""
        found: set[str] = set()
        for folder in self.models_dir.glob("*/*/*"):
            family, release, format_dir = folder.relative_to(self.models_dir).parts
            name = self._name_at(family, f"{release}/{format_dir}")
            if name is not None:
                found.update((str(name), name.family_id))
        return sorted(found)

    def did_you_mean(self, ref: str) -> str:
        """` Did you mean X?` naming the stored names closest to `ref`, or "": a sentence
        to follow a message's last one."""
        import difflib

        close = difflib.get_close_matches(ref.strip().lower(), self.names(), n=3, cutoff=0.6)
        return f" Did you mean {' or '.join(close)}?" if close else ""

    def manifest(self, ref: str) -> tuple[Path, Manifest]:
        folder, name = self.locate(ref)
        try:
            manifest = read_manifest(folder)
        except DamagedModelError as e:
            raise DamagedModelError(
                f"{e} Check it with `qwen-mlx models verify {name}`; convert or import "
                f"it again, or remove it with `qwen-mlx models rm {name}`."
            ) from e
        assert manifest is not None  # locate only finds folders with a manifest.json
        return folder, manifest

    def stored_name(self, ref: str | Path) -> naming.ModelName | None:
        """The store name `ref` stands for: a name, a family (its latest) or a folder inside
        the store; None for anything else (a Hub repo id, a folder elsewhere)."""
        try:
            folder = Path(ref).expanduser().resolve()
            if folder.is_dir() and folder.parent.parent.parent == self.models_dir.resolve():
                family, release, format_dir = folder.parts[-3:]
                return self._name_at(family, f"{release}/{format_dir}")
            return self.locate(str(ref))[1]
        except (QwenMLXError, OSError, ValueError):
            return None

    # -- drafts, and the model to use when none is named -------------------------------------

    def note_draft(self, ref: str | Path) -> None:
        """Remember that the stored model `ref` was used as a speculative-decoding draft
        (nothing for a model outside the store), so `recent_model` never picks it."""
        name = self.stored_name(ref)
        if name is not None:
            with self.registry.transaction() as conn:
                Registry.record_draft(conn, str(name))

    def recent_model(self, *, exclude: tuple[str | Path, ...] = ()) -> str | None:
        """The most recently converted or imported model that can be chatted with: an MLX
        version whose folder is here, never one used as a draft (`note_draft`) nor one of
        `exclude` (the draft of this very run, say). None when there is none."""
        if not self.models_dir.is_dir():
            return None
        left_out = self.registry.drafts()
        left_out |= {str(n) for n in map(self.stored_name, exclude) if n is not None}
        rows = [
            r
            for r in self.registry.models()
            if r.name not in left_out
            and not r.format.startswith("gguf")
            and _has_manifest(self._folder_of(r.name, r.path))
        ]
        if not rows:
            return None
        order = self.registry.registrations()
        return max(rows, key=lambda r: (order.get(r.name, 0), r.created_at, r.name)).name

    # -- verify ----------------------------------------------------------------------------

    def verify(
        self, ref: str, *, progress: Callable[[str, int, int], None] | None = None
    ) -> VerifyResult:
        """Recompute every file's sha256 against the manifest and record the outcome.

        `progress(file, nbytes, total_bytes)` is called as bytes are hashed. A registered
        model whose folder was deleted is reported as missing, not as an error."""
        manifest = None
        folder, name, lost = self._locate_or_lost(ref)
        if lost:
            gone = not folder.is_dir()
            problems = [
                FileProblem(
                    f"{folder}" if gone else MANIFEST_FILE,
                    "missing",
                    f"deleted outside qwen-mlx; `qwen-mlx models rm {name}` drops the entry",
                )
            ]
        else:
            try:
                manifest = read_manifest(folder)
            except DamagedModelError as e:
                problems = [FileProblem(MANIFEST_FILE, "damaged", str(e.__cause__ or e))]
        if manifest is not None:
            total = manifest.size
            tick = None if progress is None else (lambda file, n: progress(file, n, total))
            problems = verify_files(folder, manifest, full=True, progress=tick)
        with self.registry.transaction() as conn:
            Registry.record_verify(conn, str(name), not problems)
            detail = "ok" if not problems else "; ".join(map(str, problems))
            Registry.log(conn, name.family_id, "verified", str(name), detail)
        return VerifyResult(
            name=str(name),
            files=len(manifest.files) if manifest else 0,
            size=manifest.size if manifest else tree_size(folder) if folder.is_dir() else 0,
            problems=problems,
        )

    # -- latest, rollback, pin ---------------------------------------------------------------

    def _stored_name(self, ref: str) -> naming.ModelName:
        return self.locate(ref)[1]

    def set_latest(self, ref: str, *, force: bool = False) -> naming.ModelName:
        name = self._stored_name(ref)
        _, pinned = self.registry.family(name.family_id)
        if pinned and not force:
            raise StoreError(
                f"{name.family_id} is pinned; `qwen-mlx models unpin {name.family_id}` first."
            )
        with self.registry.transaction() as conn:
            Registry.log(conn, name.family_id, "set-latest", str(name), "manual")
            self._write_latest(name, name.family_id)  # last: a registry error changes nothing
        return name

    def history(self, family: str) -> list[str]:
        """The timeline of latest versions, oldest first, replayed from the events.

        Each set-latest appends; a rollback steps back to its target, so rolling back
        twice walks two steps back in time (an undo, not a toggle).
        """
        stack: list[str] = []
        for e in self.registry.events(family):
            if e.kind == "set-latest" and e.model and (not stack or stack[-1] != e.model):
                stack.append(e.model)
            elif e.kind == "rolled-back" and e.model in stack:
                while stack[-1] != e.model:
                    stack.pop()
            elif e.kind == "removed" and e.model in stack:
                stack = [m for m in stack if m != e.model]
                stack = [m for i, m in enumerate(stack) if i == 0 or stack[i - 1] != m]
        return stack

    def rollback(self, family: str) -> naming.ModelName:
        """Go back to the version that was latest before the current one."""
        family = family.strip().lower()
        _, pinned = self.registry.family(family)
        if pinned:
            raise StoreError(f"{family} is pinned; `qwen-mlx models unpin {family}` first.")
        stack = self.history(family)
        current = self.latest(family)
        if current is None or not stack or stack[-1] != str(current):
            raise StoreError(f"{family} has no latest version to roll back from.")
        previous = [n for n in stack[:-1] if self.path_for(naming.parse(n)).is_dir()]
        if not previous:
            raise StoreError(f"{family} has no earlier version to roll back to.")
        target = naming.parse(previous[-1])
        with self.registry.transaction() as conn:
            Registry.log(conn, family, "rolled-back", str(target), f"from {current}")
            self._write_latest(target, family)
        return target

    def pin(self, family: str, version: str | None = None) -> naming.ModelName:
        """Freeze a family at `version` (a name or `<release>-<format>`), or at its latest."""
        family = family.strip().lower()
        if version:
            ref = version if naming.is_name(version) else f"{family}-{version}"
            target = self._stored_name(ref)
            if target.family_id != family:
                raise StoreError(f"{target} is not a version of {family}.")
        else:
            latest = self.latest(family)
            if latest is None:
                raise StoreError(f"{family} has no latest version to pin.")
            target = latest
        with self.registry.transaction() as conn:
            Registry.set_pinned(conn, family, True)
            moved = self.latest(family) != target
            if moved:
                Registry.log(conn, family, "set-latest", str(target), "pin")
            Registry.log(conn, family, "pinned", str(target))
            if moved:
                self._write_latest(target, family)
        return target

    def unpin(self, family: str) -> None:
        family = family.strip().lower()
        with self.registry.transaction() as conn:
            Registry.set_pinned(conn, family, False)
            Registry.log(conn, family, "unpinned")

    def set_policy(self, family: str, policy: str) -> None:
        if policy not in POLICIES:
            raise StoreError(f"Unknown update policy {policy!r}; use one of {', '.join(POLICIES)}.")
        family = family.strip().lower()
        with self.registry.transaction() as conn:
            Registry.set_policy(conn, family, policy)
            Registry.log(conn, family, "policy", None, policy)

    # -- remove ----------------------------------------------------------------------------

    def remove(self, ref: str, *, force: bool = False) -> Removed:
        """Delete a model from disk and the registry.

        A registered model whose folder was already deleted loses its registry entry (and
        the `latest` pointer moves back if it named it); pins and policies stay."""
        folder, name, lost = self._locate_or_lost(ref)
        if lost:
            return self._forget(folder, name)
        family = name.family_id
        is_latest = self.latest(family) == name
        _, pinned = self.registry.family(family)
        if is_latest and not force:
            what = "the pinned latest" if pinned else "the latest"
            raise StoreError(
                f"{name} is {what} version of {family}; pass --force to remove it anyway "
                "(latest then moves back to the previous version)."
            )
        freed = tree_size(folder)
        with self.registry.transaction() as conn:
            Registry.delete_model(conn, str(name))
            Registry.log(conn, family, "removed", str(name), str(folder))
            if is_latest:
                self._move_latest_back(conn, name)
            _delete_tree(folder)
            with contextlib.suppress(OSError):  # the release's last format: its folder too
                folder.parent.rmdir()
            self._drop_family_if_empty(conn, family)
        return Removed(name, freed, was_missing=False)

    def _forget(self, folder: Path, name: naming.ModelName) -> Removed:
        """Drop the registry entry of a model whose folder (or manifest) is gone."""
        family = name.family_id
        pointer = self.models_dir / family / LATEST_FILE
        pointed = pointer.is_file() and pointer.read_text().strip() == (
            f"{name.release}/{name.format_dir}"
        )
        gone = not folder.is_dir()
        freed = 0 if gone else tree_size(folder)
        with self.registry.transaction() as conn:
            Registry.delete_model(conn, str(name))
            detail = "was already gone" if gone else f"had no {MANIFEST_FILE}"
            Registry.log(conn, family, "removed", str(name), f"{folder} {detail}")
            if pointed:
                self._move_latest_back(conn, name)
            if not gone:  # a folder without its manifest.json is not a model any more
                _delete_tree(folder)
            self._drop_family_if_empty(conn, family)
        return Removed(name, freed, was_missing=gone)

    def _drop_family_if_empty(self, conn: sqlite3.Connection, family: str) -> None:
        """A family whose last version went goes too: its pin and update policy, its
        `latest` pointer and its empty folders. Anything else in its folder (a conversion
        under way into it, a file of the user's) keeps the folder."""
        folder = self.models_dir / family
        if any(_has_manifest(p) for p in folder.glob("*/*")):
            return  # a version on disk the registry lacks: `repair` brings it back
        if not Registry.delete_family_if_empty(conn, family):
            return
        (folder / LATEST_FILE).unlink(missing_ok=True)
        for release in folder.glob("*"):
            with contextlib.suppress(OSError):  # not empty: left as it is
                release.rmdir()
        with contextlib.suppress(OSError):
            folder.rmdir()

    def _move_latest_back(self, conn: sqlite3.Connection, name: naming.ModelName) -> None:
        """Point `latest` at the newest earlier version still on disk (or at nothing)."""
        family = name.family_id
        remaining = [n for n in self.history(family) if n != str(name)]
        remaining = [n for n in remaining if _has_manifest(self.path_for(naming.parse(n)))]
        target = naming.parse(remaining[-1]) if remaining else None
        if target is not None:
            Registry.log(conn, family, "set-latest", str(target), "removed latest")
        self._write_latest(target, family)

    # -- repair ----------------------------------------------------------------------------

    def repair(self) -> RepairResult:
        """Rebuild registry.sqlite from the manifests on disk.

        The new registry is built beside the old one and swapped in only when complete;
        the old file is kept aside. The models and `latest` pointers are files and survive
        as they are. Pins, policies and older events are lost. Folders whose manifest
        cannot be read are left out and reported.
        """
        self.close()
        db = self.root / "registry.sqlite"
        building = db.with_name(f".registry.sqlite.rebuild-{uuid.uuid4().hex[:8]}")
        count, skipped = 0, []
        try:
            fresh = Registry.open(building)
            try:
                for file in sorted(self.models_dir.glob("*/*/*/manifest.json")):
                    folder = file.parent
                    if folder.name.startswith("."):
                        continue
                    try:
                        manifest = read_manifest(folder)
                        if manifest is None:  # deleted since the glob
                            continue
                        name = naming.parse(manifest.name)
                    except (DamagedModelError, InvalidNameError) as e:
                        skipped.append(f"{folder}: {e}")
                        continue
                    with fresh.transaction() as conn:
                        fresh.upsert_model(conn, manifest, folder, manifest_sha256(folder) or "")
                        Registry.log(conn, name.family_id, "repaired", manifest.name, str(folder))
                    count += 1
                for family in fresh.families():
                    latest = self.latest(family)
                    if latest is not None:
                        with fresh.transaction() as conn:
                            Registry.log(conn, family, "set-latest", str(latest), "repair")
            finally:
                fresh.close()  # the last connection folds the write-ahead log back in
            kept = self._set_aside(db)
            os.replace(building, db)
            fsync_dir(db.parent)
        finally:
            for leftover in building.parent.glob(building.name + "*"):
                leftover.unlink(missing_ok=True)
        return RepairResult(kept=kept, models=count, skipped=skipped)

    @staticmethod
    def _set_aside(db: Path) -> Path | None:
        """Rename a damaged registry (and its -wal/-shm files) out of the way."""
        if not db.exists():
            return None
        stamp = now_iso().replace(":", "").replace("+0000", "Z")
        kept = db.with_name(f"registry.sqlite.damaged-{stamp}")
        os.replace(db, kept)
        for suffix in ("-wal", "-shm"):
            side = db.with_name(db.name + suffix)
            if side.exists():
                os.replace(side, kept.with_name(kept.name + suffix))
        return kept

    # -- partial outputs ---------------------------------------------------------------------

    @contextmanager
    def staging(self, final: Path) -> Iterator[Path]:
        """A temporary sibling of `final` that is deleted unless the caller installs it.

        The journal of an `install` into it stays open until `close()`, which the caller
        calls after registering the model: a process killed before that leaves a journal
        that the next command finishes (registering the model). A refused write leaves no
        emptied `<family>/<release>/` folders in the store."""
        final.parent.mkdir(parents=True, exist_ok=True)
        in_store = final.parent.parent.parent == self.models_dir
        clean_partials(final.parent, swaps=not in_store)  # the store's own: see _recover
        tmp = final.parent / f".{final.name}{PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)  # parents: another refused write may have just removed them
        try:
            yield tmp
        finally:
            swap = _OPEN_SWAPS.pop(tmp, None)
            if swap is not None:
                self._swaps.append(swap)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if in_store and not final.exists():
                for parent in (final.parent, final.parent.parent):  # release, then family
                    try:
                        parent.rmdir()
                    except OSError:  # not empty: other versions live there
                        break


# Swaps installed but not yet handed to their Store (see Store.staging), by staging folder.
