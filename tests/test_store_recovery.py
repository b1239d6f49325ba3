"""A conversion killed with SIGKILL half-way through installing its model: the next
command of any kind finds the model whole and registered, and nothing left over.

Each test runs a real conversion in a child process that stops at one step of the swap
(a patched seam prints "paused" and sleeps), kills it with SIGKILL, then runs a command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qwen_mlx import load
from qwen_mlx.cli.models import main
from qwen_mlx.convert import convert
from qwen_mlx.fileio import sha256_file
from qwen_mlx.store import Store
from qwen_mlx.store.registry import Registry

from .helpers import child_env

FAMILY = "qwen3-1m-tiny"
Q4 = "qwen3-1m-tiny-2507-mlx-q4-g64"

CHILD = """
import sys, time
import qwen_mlx.store.staging as staging
from qwen_mlx.store import Store
from qwen_mlx.convert import convert

def pause():
    print("paused", flush=True)
    time.sleep(600)

where = sys.argv[1]
if where == "between-renames":  # the old model moved aside, the new one not yet in place
    rename = staging._rename
    def paused_rename(src, dst):
        if ".partial-" in src.name and any(p.name.startswith(f".{dst.name}.old-")
                                           for p in dst.parent.iterdir()):
            pause()
        rename(src, dst)
    staging._rename = paused_rename
elif where == "before-rename":  # the journal written, nothing renamed yet
    staging._rename = lambda src, dst: pause()
elif where == "before-register":  # installed, not yet in the registry
    Store.register = lambda *a, **k: pause()
convert(sys.argv[2], force=sys.argv[3] == "force")
"""


def kill_convert_at(where: str, source: Path, *, force: bool) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), where, str(source), str(force and "force")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    line = child.stdout.readline()
    if line != "paused\n":
        child.kill()
        raise AssertionError(f"the child did not pause: {line!r} {child.communicate()[1]}")
    child.kill()  # SIGKILL: no finally, no atexit
    child.communicate()  # reaped: its pid and its locks are gone


def registered(home: Path) -> dict[str, str | None]:
    """name -> manifest sha256 in the registry, read without opening a Store (which
    would finish the swap)."""
    registry = Registry.open(home / "registry.sqlite")
    try:
        return {m.name: m.manifest_sha256 for m in registry.models()}
    finally:
        registry.close()


def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "models").rglob(".*"))


def assert_whole_and_registered(home: Path, folder: Path) -> None:
    assert (folder / "manifest.json").is_file()
    assert registered(home) == {Q4: sha256_file(folder / "manifest.json")}
    assert leftovers(home) == []  # no .old-* copy, no partial folder, no journal
    assert load(FAMILY).manifest.name == Q4
    assert main(["verify", Q4]) == 0


def test_killed_between_the_renames_of_convert_force(tiny_hf, home, capsys):
    folder = convert(str(tiny_hf)).path
    kill_convert_at("between-renames", tiny_hf, force=True)
    assert not folder.exists()  # the old model moved aside, the new one not yet in place
    assert any(".old-" in name for name in leftovers(home))
    assert registered(home).keys() == {Q4}
    code = main(["list"])
    out = capsys.readouterr().out
    assert code == 0 and any(line.startswith("*") and Q4 in line for line in out.splitlines())
    assert_whole_and_registered(home, folder)


def test_killed_before_registering_a_new_conversion(tiny_hf, home, capsys):
    kill_convert_at("before-register", tiny_hf, force=False)
    folder = home / "models" / FAMILY / "2507" / "mlx-q4-g64"
    assert (folder / "manifest.json").is_file() and registered(home) == {}
    code = main(["list"])
    out = capsys.readouterr().out
    assert code == 0 and any(line.startswith("*") and Q4 in line for line in out.splitlines())
    assert_whole_and_registered(home, folder)
    kinds = [e.kind for e in Store().registry.events(FAMILY)]
    assert kinds[:2] == ["recovered", "set-latest"]


def test_killed_before_registering_a_forced_conversion_the_load_finishes_it(tiny_hf, home):
    folder = convert(str(tiny_hf)).path
    kill_convert_at("before-register", tiny_hf, force=True)
    assert any(".swap-" in name for name in leftovers(home))
    model = load(FAMILY)  # a load is a command too
    assert model.manifest.name == Q4
    assert registered(home)[Q4] == sha256_file(folder / "manifest.json")
    assert_whole_and_registered(home, folder)


def test_killed_before_the_first_rename_the_conversion_is_finished(tiny_hf, home, capsys):
    folder = convert(str(tiny_hf)).path
    kill_convert_at("before-rename", tiny_hf, force=True)
    assert (folder / "manifest.json").is_file()  # nothing was renamed yet
    assert main(["list"]) == 0
    capsys.readouterr()
    assert_whole_and_registered(home, folder)


def test_a_swap_whose_process_still_runs_is_left_alone(tiny_hf, home, capsys):
    """A live conversion's journal is locked: another command must not touch its folders."""
    folder = convert(str(tiny_hf)).path
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), "between-renames", str(tiny_hf), "force"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert child.stdout.readline() == "paused\n"
        before = leftovers(home)
        assert main(["list"]) == 0
        capsys.readouterr()
        assert leftovers(home) == before and not folder.exists()
    finally:
        child.kill()
        child.communicate()
    assert main(["list"]) == 0
    assert_whole_and_registered(home, folder)


def test_a_finished_conversion_leaves_no_journal(tiny_hf, home, tmp_path):
    convert(str(tiny_hf))
    convert(str(tiny_hf), force=True)
    out = convert(str(tiny_hf), mlx_path=tmp_path / "out").path
    convert(str(tiny_hf), mlx_path=out, force=True)
    assert leftovers(home) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_interrupted_swap_outside_the_store_is_finished_by_the_next_conversion_there(
    tiny_hf, tmp_path
):
    out = tmp_path / "out"
    convert(str(tiny_hf), mlx_path=out)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(CHILD).replace(
                "convert(sys.argv[2], force=", f"convert(sys.argv[2], mlx_path={str(out)!r}, force="
            ),
            "between-renames",
            str(tiny_hf),
            "force",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert child.stdout.readline() == "paused\n"
    child.kill()
    child.communicate()
    assert not out.exists()
    convert(str(tiny_hf), mlx_path=tmp_path / "other")  # another output in the same folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out"]
    assert json.loads((out / "manifest.json").read_text())["name"] == Q4


@pytest.mark.parametrize("content", ["", "not json"])
def test_an_unreadable_journal_of_a_dead_process_is_dropped(tiny_hf, home, content):
    folder = convert(str(tiny_hf)).path
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    journal = folder.parent / f".{folder.name}.swap-{dead}-0123abcd.json"
    journal.write_text(content)
    Store(home).close()
    assert not journal.exists()
    assert (folder / "manifest.json").is_file()
