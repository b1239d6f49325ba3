"""Putting a finished model folder in place, safely: a staging folder beside the output,
an atomic rename, a journal that lets the next command finish (or undo) a swap a killed
process left half-done, and the clean-up of what dead processes left behind."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import OutputExistsError
from ..fileio import disk_full, fsync_dir, process_alive
from .manifest import MANIFEST_FILE, manifest_sha256

logger = logging.getLogger(__name__)


PARTIAL_MARK = ".partial-"


SWAP_MARK = ".swap-"  # journal of a folder swap in progress: .<name>.swap-<pid>-<hex>.json


def clean_partials(parent: Path, *, swaps: bool = True) -> None:
    """Delete leftovers (`.<name>.partial-<pid>-...`, folders or files) of conversions
    and exports whose process is gone (killed with -9, say), after finishing their swaps
    (`swaps`; without registering: the store does that itself)."""
    if swaps:
        for journal in sorted(parent.glob(f".*{SWAP_MARK}*.json")):
            swap = _Swap.claim(journal)
            if swap is not None:
                try:
                    swap.complete()
                    swap.finish()
                except OSError:
                    swap.release()
    for p in parent.glob(f".*{PARTIAL_MARK}*"):
        pid = p.name.rsplit(PARTIAL_MARK, 1)[1].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:  # a file being copied into place (an export's)
                p.unlink(missing_ok=True)


def check_replaceable(final: Path) -> None:
    """Raise unless `final` is a model folder (config.json or manifest.json) that --force
    may replace: a mistyped `--mlx-path ~/Documents --force` must delete nothing."""
    if not final.is_dir() or not any((final / f).is_file() for f in ("config.json", MANIFEST_FILE)):
        raise OutputExistsError(
            f"Will not replace {final}: it is not a model folder (no config.json or "
            f"{MANIFEST_FILE}). Choose another output folder."
        )


def install(tmp: Path, final: Path, *, replace: bool) -> None:
    """Rename a finished `tmp` folder to `final`, replacing an old model folder only if
    asked; if the swap fails half-way the old one is put back.

    A journal entry written first (`.<name>.swap-<pid>-<hex>.json`, locked while this
    process lives) lets the next command finish the swap if this process is killed
    between the renames, or before the caller registers the model.
    """
    old = None
    if final.exists():
        if not replace:
            raise _appeared(final)
        check_replaceable(final)
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    swap = _Swap.begin(tmp, final, old)
    try:
        if old is not None:
            _rename(final, old)
            try:
                _rename(tmp, final)
            except BaseException:
                _rename(old, final)  # put the previous model back
                raise
        else:
            try:
                _rename(tmp, final)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise _appeared(final) from e
                raise
    except BaseException:
        if old is None or not old.exists():
            swap.finish()  # nothing is half-done
        else:
            _OPEN_SWAPS[tmp] = swap  # the old model is stranded: the next command restores it
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _OPEN_SWAPS[tmp] = swap  # Store.close() ends it, once the caller has registered it


def _rename(src: Path, dst: Path) -> None:
    """One step of a swap (a seam for tests that kill a process between two steps)."""
    os.replace(src, dst)


_OPEN_SWAPS: dict[Path, _Swap] = {}


@dataclass
class _Swap:
    """The journal of one `install`: the folder names involved (all siblings) and the
    new model's manifest sha256. While its process lives the file is locked (flock), so
    an unlocked journal belongs to a swap whose process is gone."""

    journal: Path
    final: Path
    tmp: Path
    old: Path | None
    sha256: str | None
    handle: IO[str] | None = field(default=None, repr=False)

    @classmethod
    def begin(cls, tmp: Path, final: Path, old: Path | None) -> _Swap:
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        journal = final.parent / f".{final.name}{SWAP_MARK}{tag}.json"
        swap = cls(journal, final, tmp, old, manifest_sha256(tmp))
        entry = {
            "final": final.name,
            "tmp": tmp.name,
            "old": old.name if old else None,
            "sha256": swap.sha256,
        }
        try:
            fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            swap.handle = os.fdopen(fd, "w")
            fcntl.flock(swap.handle, fcntl.LOCK_EX)  # before there is anything to read
            json.dump(entry, swap.handle)
            swap.handle.flush()
            os.fsync(swap.handle.fileno())
            fsync_dir(final.parent)
        except OSError as e:
            swap.finish()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(journal) from e
            raise
        return swap

    @classmethod
    def claim(cls, journal: Path) -> _Swap | None:
        """The swap of `journal` if its process is gone and nobody else is finishing it."""
        try:
            handle = open(journal)  # noqa: SIM115 - held until finish() or release()
        except OSError:
            return None  # finished meanwhile
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_ino != os.stat(journal).st_ino:
                raise FileNotFoundError(journal)  # finished and deleted meanwhile
            text = handle.read()
        except OSError:
            handle.close()
            return None
        parent = journal.parent
        try:
            entry = json.loads(text)
            return cls(
                journal,
                parent / entry["final"],
                parent / entry["tmp"],
                parent / entry["old"] if entry["old"] else None,
                entry["sha256"],
                handle,
            )
        except (ValueError, KeyError, TypeError):
            # Empty: its process was killed before it renamed anything, or is about to
            # lock it. Anything else is not a journal of ours. Neither has work to finish.
            pid = journal.name.rsplit(SWAP_MARK, 1)[1].split("-", 1)[0]
            if text or not pid.isdigit() or not process_alive(int(pid)):
                journal.unlink(missing_ok=True)
            handle.close()
            return None

    def complete(self) -> None:
        """Put a whole model at `final`: the new one if it is complete, else the old."""
        final, tmp, old = self.final, self.tmp, self.old
        if (tmp / MANIFEST_FILE).is_file():  # written last: the new model is complete
            if old is not None and final.exists() and not old.exists():
                _rename(final, old)  # killed before the first rename
            if not final.exists():
                _rename(tmp, final)  # killed between the two renames
        if old is not None and old.exists():
            if final.exists():
                shutil.rmtree(old)  # killed before the old copy was deleted
            else:
                _rename(old, final)  # the new copy is gone: put the old one back
        fsync_dir(final.parent)

    def finish(self) -> None:
        """Delete the journal (the swap is whole), then let go of its lock."""
        self.journal.unlink(missing_ok=True)
        fsync_dir(self.journal.parent)
        self.release()

    def release(self) -> None:
        """Let go of the lock, leaving the journal for a later command."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _has_manifest(folder: Path) -> bool:
    """Whether `folder` has a manifest.json entry at all (a damaged one counts: it is
    reported as damaged rather than hiding the model)."""
    file = folder / MANIFEST_FILE
    return file.exists() or file.is_symlink()


def _appeared(final: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{final} appeared while this one was being written (another conversion or import "
        "of the same name finished first). It is kept as it is and this copy was discarded; "
        "pass --force to replace it."
    )


def _delete_tree(folder: Path) -> None:
    """Rename first so a half-deleted folder never looks like a model."""
    doomed = folder.parent / f".{folder.name}.removing-{uuid.uuid4().hex[:8]}"
    os.replace(folder, doomed)
    shutil.rmtree(doomed)
    for parent in (folder.parent, folder.parent.parent):  # drop emptied release/family dirs
        try:
            parent.rmdir()
        except OSError:  # not empty
            break
