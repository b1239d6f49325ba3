"""The store when things outside qwen-mlx go wrong: hostile or odd manifests, folders
deleted by hand, a full disk, a damaged registry page, a reader that closes the pipe."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from qwen_mlx import load
from qwen_mlx.cli.models import main
from qwen_mlx.convert import convert
from qwen_mlx.errors import DamagedModelError
from qwen_mlx.fileio import sha256_file
from qwen_mlx.store import Store
from qwen_mlx.store.registry import Registry

from .helpers import child_env

FAMILY = "qwen3-1m-tiny"
Q4 = "qwen3-1m-tiny-2507-mlx-q4-g64"
Q8 = "qwen3-1m-tiny-2507-mlx-q8-g64"


@pytest.fixture
def two_versions(tiny_hf, home):
    """The tiny model converted twice, 4-bit and 8-bit; the 8-bit one is latest."""
    convert(str(tiny_hf))
    convert(str(tiny_hf), q_bits=8)
    store = Store(home)
    store.set_latest(Q8)
    store.close()
    return home


def folder_of(home: Path, fmt: str) -> Path:
    return home / "models" / FAMILY / "2507" / fmt


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- a reader that stops early -------------------------------------------------------------


def test_list_json_into_head_exits_quietly(tiny_hf, home):
    result = convert(str(tiny_hf))
    store = Store(home)
    with store.registry.transaction() as conn:  # enough rows to overflow any pipe buffer
        for i in range(2, 700):
            name = f"qwen3-{i}m-tiny-2507-mlx-q4-g64"
            store.registry.upsert_model(conn, replace(result.manifest, name=name), result.path, "")
    store.close()
    lister = subprocess.Popen(
        [sys.executable, "-m", "qwen_mlx", "models", "list", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    head = subprocess.Popen(["head", "-1"], stdin=lister.stdout, stdout=subprocess.PIPE)
    lister.stdout.close()  # head alone holds the reading end now
    first, _ = head.communicate()
    err = lister.stderr.read()
    lister.stderr.close()
    assert lister.wait() == 128 + 13  # as if SIGPIPE ended it, as `yes | head` reports
    assert first == b"[\n"
    assert err == b""  # no traceback, no "Exception ignored", no "error: Broken pipe"


# -- verify with no name ---------------------------------------------------------------------


def test_verify_without_a_name_verifies_every_version(two_versions, capsys):
    code, out, _ = run(capsys, "verify")
    assert code == 0
    assert f"ok      {Q4}" in out and f"ok      {Q8}" in out
    assert all(m.last_verify_ok for m in Store().list())


def test_verify_without_a_name_fails_when_any_version_does(two_versions, capsys):
    (folder_of(two_versions, "mlx-q4-g64") / "tokenizer.json").unlink()
    code, out, err = run(capsys, "verify")
    assert code == 1
    assert f"FAILED  {Q4}" in out and f"ok      {Q8}" in out
    assert "1 of 2 failed verification" in err


# -- manifests that name files outside their folder ------------------------------------------


@pytest.fixture(params=["absolute", "relative"])
def hostile_manifest(request, two_versions, tmp_path):
    """Q8's manifest also lists a file outside the model folder, with its true size and
    sha256, so that only the path gives it away."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any model\n")
    folder = folder_of(two_versions, "mlx-q8-g64")
    entry = str(secret) if request.param == "absolute" else os.path.relpath(secret, folder)
    assert request.param == "absolute" or entry.startswith("..")
    data = json.loads((folder / "manifest.json").read_text())
    data["files"].append(
        {"path": entry, "size": secret.stat().st_size, "sha256": sha256_file(secret)}
    )
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder, entry


def test_verify_refuses_a_manifest_that_lists_files_outside_its_folder(hostile_manifest, capsys):
    _, entry = hostile_manifest
    code, out, _ = run(capsys, "verify", Q8)
    assert code == 1
    assert f"FAILED  {Q8}" in out and "manifest.json: damaged" in out
    assert "points outside the model folder" in out and entry in out


def test_load_refuses_a_manifest_that_lists_files_outside_its_folder(hostile_manifest):
    with pytest.raises(DamagedModelError, match="points outside the model folder"):
        load(Q8)


def test_repair_leaves_out_a_manifest_that_lists_files_outside_its_folder(hostile_manifest, capsys):
    folder, _ = hostile_manifest
    code, out, _ = run(capsys, "repair")
    assert code == 0 and "from 1 manifests" in out
    assert "Left out 1 folders" in out and str(folder) in out and "outside" in out
    assert [m.name for m in Store().list()] == [Q4]


def test_import_ignores_a_hostile_manifest_in_the_folder_it_copies(tiny_mlx, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any model\n")
    source = tmp_path / "Qwen3-1M-Tiny-2507-4bit"  # a folder `convert --mlx-path` wrote
    shutil.copytree(tiny_mlx, source)
    data = json.loads((source / "manifest.json").read_text())
    data["files"].append({"path": "../secret.txt", "size": 22, "sha256": sha256_file(secret)})
    (source / "manifest.json").write_text(json.dumps(data))
    code, _, err = run(capsys, "import", str(source))
    assert code == 0, err
    folder, manifest = Store().manifest(Q4)
    assert sorted(f.path for f in manifest.files) == sorted(
        p.name for p in folder.iterdir() if p.name != "manifest.json"
    )
    assert "secret.txt" not in (folder / "manifest.json").read_text()
    assert run(capsys, "verify", Q4)[0] == 0


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "manifest.json"])
def test_a_link_to_a_file_outside_the_folder_fails_verify_and_load(
    two_versions, tmp_path, capsys, name
):
    """The file is swapped for a link to a copy elsewhere, bytes and sha256 unchanged:
    only where it lives gives it away, as with a `../` entry."""
    folder = folder_of(two_versions, "mlx-q4-g64")
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    shutil.move(folder / name, outside)
    (folder / name).symlink_to(outside)
    code, out, _ = run(capsys, "verify", Q4)
    assert code == 1 and f"FAILED  {Q4}" in out
    if name == "manifest.json":
        assert f"manifest.json: damaged (it links to {outside}, outside the model folder)" in out
    else:
        assert f"{name}: outside (a link to {outside}, outside the model folder)" in out
    with pytest.raises(DamagedModelError, match="outside the model folder"):
        load(Q4)
    assert run(capsys, "verify", Q8)[0] == 0  # the other version is fine


# -- manifest.json that is not a file ----------------------------------------------------------


def test_a_manifest_that_is_a_folder_is_reported_not_an_assertion(two_versions, capsys):
    folder = folder_of(two_versions, "mlx-q4-g64")
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir()
    code, out, err = run(capsys, "repair")
    assert code == 0, err
    assert "Left out 1 folders" in out and "not a file" in out
    code, out, _ = run(capsys, "verify", Q4)
    assert code == 1 and "manifest.json: damaged (it is not a file)" in out
    with pytest.raises(DamagedModelError, match="not a file"):
        load(Q4)


# -- a damaged page in the registry -------------------------------------------------------------


def test_set_latest_on_a_registry_with_a_damaged_page_says_repair(two_versions, capsys):
    db = two_versions / "registry.sqlite"
    assert not (two_versions / "registry.sqlite-wal").exists()  # every page is in the file
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    [(root,)] = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'")
    conn.close()
    with open(db, "r+b") as f:  # the events table only: reading the families still works
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    code, _, err = run(capsys, "set-latest", Q4)
    assert code == 1
    assert "unexpected" not in err
    assert "is damaged or unreadable" in err and "models repair" in err
    assert str(Store().latest(FAMILY)) == Q8  # nothing changed half-way
    code, out, _ = run(capsys, "repair")
    assert code == 0 and "from 2 manifests" in out
    assert run(capsys, "set-latest", Q4)[0] == 0


# -- a full disk ----------------------------------------------------------------------------------


@pytest.fixture
def full_sqlite(monkeypatch):
    """SQLite files cannot grow past their current size, as on a full disk: SQLite itself
    answers SQLITE_FULL ("database or disk is full")."""
    connect = sqlite3.connect

    def full(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.execute("PRAGMA max_page_count = 1")  # never below the current page count
        return conn

    monkeypatch.setattr(sqlite3, "connect", full)


def test_a_full_disk_is_not_called_a_damaged_registry(home, full_sqlite, capsys):
    code, _, err = run(capsys, "list")
    assert code == 1
    assert "The disk is full" in err and str(home / "registry.sqlite") in err
    assert "damaged" not in err and "repair" not in err


def test_repair_on_a_full_disk_says_so_and_keeps_the_old_registry(two_versions, capsys, request):
    before = (two_versions / "registry.sqlite").read_bytes()
    request.getfixturevalue("full_sqlite")
    code, _, err = run(capsys, "repair")
    assert code == 1
    assert "The disk is full" in err and "damaged" not in err
    assert (two_versions / "registry.sqlite").read_bytes() == before
    assert not list(two_versions.glob("*registry.sqlite.*"))  # no rebuild left, none set aside


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_while_switching_latest_says_so(two_versions, monkeypatch, capsys):
    import qwen_mlx.fileio as fileio

    def mkstemp(prefix="", suffix="", dir=None):  # every write returns ENOSPC, for real
        return os.open("/dev/full", os.O_WRONLY), os.path.join(dir, f"{prefix}x{suffix}")

    events = Store().registry.events(FAMILY)
    with monkeypatch.context() as patch:
        patch.setattr(fileio.tempfile, "mkstemp", mkstemp)
        code, _, err = run(capsys, "set-latest", Q4)
    assert code == 1
    assert err.startswith("error: The disk is full: could not write ")
    assert str(two_versions / "models" / FAMILY / "latest") in err
    store = Store()
    assert str(store.latest(FAMILY)) == Q8
    assert store.registry.events(FAMILY) == events  # the transaction was rolled back


def test_disk_full_errors_still_read_as_enospc(tmp_path, monkeypatch):
    import qwen_mlx.fileio as fileio

    monkeypatch.setattr(
        fileio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    )
    with pytest.raises(OSError) as caught:
        fileio.atomic_write_text(tmp_path / "x.txt", "x")
    assert caught.value.errno == errno.ENOSPC and "The disk is full" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# -- a model folder deleted outside qwen-mlx ------------------------------------------------------


def test_list_marks_a_deleted_folder_missing(two_versions, capsys):
    shutil.rmtree(folder_of(two_versions, "mlx-q4-g64"))
    code, out, _ = run(capsys, "list")
    assert code == 0
    [line] = [line for line in out.splitlines() if Q4 in line]
    assert "FOLDER MISSING" in line
    _, out, _ = run(capsys, "list", "--json")
    assert {r["name"]: r["missing"] for r in json.loads(out)} == {Q4: True, Q8: False}


def test_verify_all_reports_a_deleted_folder_and_goes_on(two_versions, capsys):
    shutil.rmtree(folder_of(two_versions, "mlx-q4-g64"))
    code, out, err = run(capsys, "verify", "--all")
    assert code == 1
    assert f"FAILED  {Q4}" in out and "missing" in out and f"models rm {Q4}" in out
    assert f"ok      {Q8}" in out
    assert "1 of 2 failed" in err
    rows = {m.name: m for m in Store().list()}
    assert rows[Q4].last_verify_ok is False and rows[Q8].last_verify_ok is True


def test_rm_of_a_deleted_folder_drops_the_entry_and_keeps_pins_and_policies(two_versions, capsys):
    assert run(capsys, "policy", FAMILY, "frozen")[0] == 0
    assert run(capsys, "pin", FAMILY)[0] == 0  # pinned at Q8, the latest
    shutil.rmtree(folder_of(two_versions, "mlx-q8-g64"))
    code, out, err = run(capsys, "rm", Q8)
    assert code == 0, err
    assert f"Removed {Q8} from the registry" in out and f"latest of {FAMILY}: {Q4}" in out
    store = Store()
    assert [m.name for m in store.list()] == [Q4]
    assert store.registry.family(FAMILY) == ("frozen", True)
    assert str(store.latest(FAMILY)) == Q4
    assert load(FAMILY).manifest.name == Q4
    assert [e.kind for e in store.registry.events(FAMILY)][-2:] == ["removed", "set-latest"]


def test_rm_of_a_folder_that_lost_its_manifest_deletes_the_rest(two_versions, capsys):
    folder = folder_of(two_versions, "mlx-q4-g64")
    (folder / "manifest.json").unlink()
    code, out, _ = run(capsys, "verify", Q4)
    assert code == 1 and "manifest.json: missing" in out
    code, out, _ = run(capsys, "rm", Q4)
    assert code == 0 and f"Removed {Q4}" in out
    assert not folder.exists()
    assert [m.name for m in Store().list()] == [Q8]


def test_rm_of_a_name_that_was_never_stored_is_still_an_error(two_versions, capsys):
    code, _, err = run(capsys, "rm", "qwen3-1m-tiny-2507-mlx-q6-g64")
    assert code == 1 and "is not in the store" in err


def test_registry_rows_are_read_by_name(two_versions):
    registry = Registry.open(two_versions / "registry.sqlite")
    assert registry.model(Q4).name == Q4 and registry.model("nope") is None
    registry.close()


def test_verify_all_goes_on_past_a_file_it_cannot_read(two_versions, monkeypatch, capsys):
    import qwen_mlx.store.manifest as manifest

    hash_file = manifest.sha256_file
    locked = folder_of(two_versions, "mlx-q4-g64") / "model.safetensors"

    def sha256_file(path, progress=None):
        if path == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return hash_file(path, progress)

    monkeypatch.setattr(manifest, "sha256_file", sha256_file)
    code, out, _ = run(capsys, "verify")
    assert code == 1
    assert f"FAILED  {Q4}\n  cannot read a file (Permission denied: {locked})" in out
    assert f"ok      {Q8}" in out
    code, _, err = run(capsys, "verify", Q4)  # one version: the error itself
    assert code == 1 and err.endswith(f"error: Permission denied: {locked}\n")
