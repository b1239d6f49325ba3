"""The versioned store through `qwen-mlx models ...`: list, show, verify, import, latest,
rollback, pin, rm, repair; the registry under concurrent writers; load's integrity check."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3

import pytest

from qwen_mlx import load
from qwen_mlx.cli.convert import main as convert_main
from qwen_mlx.cli.models import main
from qwen_mlx.convert import convert
from qwen_mlx.errors import DamagedModelError, RegistryError
from qwen_mlx.store import Store
from qwen_mlx.store.registry import MIGRATIONS, Registry

FAMILY = "qwen3-1m-tiny"
Q4 = "qwen3-1m-tiny-2507-mlx-q4-g64"
Q8 = "qwen3-1m-tiny-2507-mlx-q8-g64"


@pytest.fixture
def two_versions(tiny_hf, home):
    """The tiny model converted twice: 4-bit, then 8-bit, made latest (another
    quantization does not become latest by itself)."""
    convert(str(tiny_hf))
    convert(str(tiny_hf), q_bits=8, set_latest=True)
    return home


def latest(home) -> str:
    return str(Store(home).latest(FAMILY))


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- list and show ------------------------------------------------------------------------


def test_list_marks_the_latest(two_versions, capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = {
        line.split()[1] if line.startswith("*") else line.split()[0]: line
        for line in out.splitlines()[1:3]
    }
    assert lines[Q8].startswith("*")
    assert not lines[Q4].startswith("*")
    assert "never" in lines[Q4]


def test_list_json_is_for_scripts(two_versions, capsys):
    _, out, _ = run(capsys, "list", "--json")
    rows = json.loads(out)
    assert {r["name"] for r in rows} == {Q4, Q8}
    assert [r["latest"] for r in rows if r["name"] == Q8] == [True]
    assert all(r["size_bytes"] > 0 for r in rows)


def test_list_of_an_empty_store_says_how_to_fill_it(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and "qwen-mlx convert" in out


def test_show_prints_the_manifest_readably(two_versions, capsys):
    code, out, _ = run(capsys, "show", FAMILY)
    assert code == 0
    assert out.startswith(f"{Q8}  (latest)")
    assert "8-bit g64" in out and "bits per weight" in out
    assert "model.safetensors" in out and "no report" in out


def test_show_prints_the_quality_report(tiny_hf, capsys):
    convert(str(tiny_hf), report=True)
    code, out, _ = run(capsys, "show", Q4)
    assert code == 0
    assert "quality       ok: KL divergence" in out and "top-1 agreement" in out
    assert "perplexity" in out
    _, out, _ = run(capsys, "show", Q4, "--json")
    quality = json.loads(out)["quality"]
    assert quality["verdict"] == "ok" and quality["tokens"] > 100


def test_list_compares_recipes_with_uniform_quantization_at_a_glance(tiny_hf, capsys):
    convert(str(tiny_hf), report=True)
    convert(str(tiny_hf), report=True, recipe="mixed_4_6")
    _, out, _ = run(capsys, "list")
    header, *rows = out.splitlines()[:3]
    assert header.split()[-2:] == ["KL", "TOP-1"]
    for row in rows:
        kl, top1 = row.split()[-2:]
        assert float(kl) >= 0 and top1.endswith("%")


# -- verify and integrity ------------------------------------------------------------------


def test_verify_passes_for_intact_models(two_versions, capsys):
    code, out, _ = run(capsys, "verify", "--all")
    assert code == 0
    assert f"ok      {Q4}" in out and f"ok      {Q8}" in out
    rows = {m.name: m for m in Store().list()}
    assert rows[Q4].last_verify_ok is True and rows[Q4].last_verified_at


def test_verify_names_a_tampered_file(two_versions, capsys):
    weights = two_versions / "models" / FAMILY / "2507" / "mlx-q4-g64" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(data))
    code, out, err = run(capsys, "verify", Q4)
    assert code == 1
    assert "model.safetensors: sha256 (contents changed)" in out
    assert "failed verification" in err
    assert [m.last_verify_ok for m in Store().list() if m.name == Q4] == [False]


def test_verify_names_a_deleted_file(two_versions, capsys):
    (two_versions / "models" / FAMILY / "2507" / "mlx-q8-g64" / "tokenizer.json").unlink()
    code, out, _ = run(capsys, "verify", FAMILY)
    assert code == 1 and "tokenizer.json: missing" in out


def test_verify_flags_a_stray_weights_file(two_versions, capsys):
    folder = two_versions / "models" / FAMILY / "2507" / "mlx-q8-g64"
    shutil.copyfile(folder / "model.safetensors", folder / "model-extra.safetensors")
    code, out, _ = run(capsys, "verify", Q8)
    assert code == 1 and "model-extra.safetensors: unexpected" in out


def test_load_refuses_a_damaged_model_and_points_to_verify(two_versions):
    folder = two_versions / "models" / FAMILY / "2507" / "mlx-q8-g64"
    with open(folder / "model.safetensors", "ab") as f:
        f.write(b"junk")
    with pytest.raises(DamagedModelError, match=f"qwen-mlx models verify {Q8}"):
        load(FAMILY)


def test_load_with_verify_checks_contents_not_just_sizes(two_versions):
    folder = two_versions / "models" / FAMILY / "2507" / "mlx-q8-g64"
    config = folder / "generation_config.json"
    text = config.read_text()
    config.write_text(text.replace("0.7", "0.9"))  # same length, other content
    load(FAMILY)  # the cheap size check passes
    with pytest.raises(DamagedModelError, match="sha256"):
        load(FAMILY, verify=True)


def _damage_manifest(home, fmt: str = "mlx-q8-g64"):
    folder = home / "models" / FAMILY / "2507" / fmt
    (folder / "manifest.json").write_text('{"name": "qwen3-1m-tiny-2507-mlx-q8-g64", "fi')
    return folder


def test_a_damaged_manifest_is_reported_by_list_verify_and_show(two_versions, capsys):
    _damage_manifest(two_versions)
    code, out, _ = run(capsys, "list")
    assert code == 0
    line = next(line for line in out.splitlines() if Q8 in line)
    assert "MANIFEST DAMAGED" in line
    assert line.startswith("*")  # still the latest: its path names it

    code, out, _ = run(capsys, "verify", "--all")
    assert code == 1
    assert f"FAILED  {Q8}" in out and "manifest.json: damaged" in out
    assert f"ok      {Q4}" in out

    code, _, err = run(capsys, "show", Q8)
    assert code == 1 and "is damaged" in err and f"qwen-mlx models rm {Q8}" in err


def test_a_version_with_a_damaged_manifest_can_still_be_switched_and_removed(two_versions, capsys):
    _damage_manifest(two_versions)
    assert run(capsys, "set-latest", Q4)[0] == 0
    assert run(capsys, "set-latest", Q8)[0] == 0
    code, out, _ = run(capsys, "rm", Q8, "--force")
    assert code == 0 and f"Removed {Q8}" in out and f"latest of {FAMILY}: {Q4}" in out
    assert latest(two_versions) == Q4
    assert {m.name for m in Store(two_versions).list()} == {Q4}


def test_repair_leaves_out_damaged_manifests_and_says_so(two_versions, capsys):
    folder = _damage_manifest(two_versions, "mlx-q4-g64")
    code, out, _ = run(capsys, "repair")
    assert code == 0 and "from 1 manifests" in out
    assert "Left out 1 folders" in out and str(folder) in out
    assert [m.name for m in Store(two_versions).list()] == [Q8]
    assert not list(two_versions.glob(".registry.sqlite.rebuild-*"))


# -- latest, rollback, pin, rm -------------------------------------------------------------


def test_set_latest_and_rollback_after_two_set_latests(two_versions, capsys):
    assert latest(two_versions) == Q8
    assert run(capsys, "set-latest", Q4)[0] == 0
    assert latest(two_versions) == Q4
    assert run(capsys, "set-latest", Q8)[0] == 0
    code, out, _ = run(capsys, "rollback", FAMILY)
    assert code == 0 and f"latest is now {Q4}" in out
    assert load(FAMILY).manifest.name == Q4
    code, out, _ = run(capsys, "rollback", FAMILY)
    assert code == 0 and latest(two_versions) == Q8  # back along the history, not a toggle


def test_rollback_with_no_history_is_explained(tiny_hf, capsys):
    convert(str(tiny_hf))
    code, _, err = run(capsys, "rollback", FAMILY)
    assert code == 1 and "no earlier version to roll back to" in err


def test_pin_freezes_latest_against_conversions_and_set_latest(two_versions, tiny_hf, capsys):
    assert run(capsys, "pin", FAMILY, "2507-mlx-q4-g64")[0] == 0
    assert latest(two_versions) == Q4
    result = convert(str(tiny_hf), q_bits=6)
    assert result.registered and not result.became_latest
    assert latest(two_versions) == Q4
    assert convert_main(["--hf-path", str(tiny_hf), "--q-bits", "5"]) == 0
    out = capsys.readouterr().out
    assert f"{FAMILY} is pinned or frozen, so its latest stays" in out
    assert "models set-latest qwen3-1m-tiny-2507-mlx-q5-g64" in out
    assert latest(two_versions) == Q4
    code, _, err = run(capsys, "set-latest", Q8)
    assert code == 1 and "pinned" in err
    code, out, _ = run(capsys, "list")
    assert any(line.startswith("*P") and Q4 in line for line in out.splitlines())
    assert run(capsys, "unpin", FAMILY)[0] == 0
    assert run(capsys, "set-latest", Q8)[0] == 0


def test_rm_refuses_the_latest_without_force_and_frees_disk(two_versions, capsys):
    folder = two_versions / "models" / FAMILY / "2507" / "mlx-q8-g64"
    code, _, err = run(capsys, "rm", Q8)
    assert code == 1 and "--force" in err and folder.is_dir()
    code, out, _ = run(capsys, "rm", Q8, "--force")
    assert code == 0 and "freed" in out
    assert not folder.exists()
    assert latest(two_versions) == Q4  # latest moved back
    assert [m.name for m in Store().list()] == [Q4]


def test_rm_of_an_older_version_needs_no_force(two_versions, capsys):
    assert run(capsys, "rm", Q4)[0] == 0
    assert latest(two_versions) == Q8


def test_events_tell_the_story(two_versions, capsys):
    run(capsys, "set-latest", Q4)
    run(capsys, "rollback", FAMILY)
    _, out, _ = run(capsys, "log", FAMILY)
    kinds = [line.split()[1] for line in out.splitlines()]
    assert kinds == [
        "converted",
        "set-latest",
        "converted",
        "set-latest",
        "set-latest",
        "rolled-back",
    ]


# -- import --------------------------------------------------------------------------------


def test_import_registers_an_mlx_community_style_folder(tiny_hf, tmp_path, capsys):
    from mlx_lm.convert import convert as mlx_lm_convert

    folder = tmp_path / "Qwen3-1M-Tiny-2507-4bit"
    mlx_lm_convert(str(tiny_hf), mlx_path=str(folder), quantize=True, q_bits=4, q_group_size=64)
    code, out, _ = run(capsys, "import", str(folder))
    assert code == 0 and f"Imported {Q4}" in out
    model = load(FAMILY)
    assert model.manifest.name == Q4
    assert model.manifest.quantization.bits == 4
    ours = convert(str(tiny_hf), mlx_path=tmp_path / "ours").manifest
    assert model.manifest.parameters == ours.parameters
    assert model.manifest.quantization.bits_per_weight == pytest.approx(
        ours.quantization.bits_per_weight, abs=0.01
    )
    assert run(capsys, "verify", Q4)[0] == 0


def test_import_takes_the_name_in_the_folders_manifest_and_name_overrides_it(tiny_mlx, capsys):
    code, out, _ = run(capsys, "import", str(tiny_mlx))  # a folder named tiny-q4
    assert code == 0 and f"Imported {Q4}" in out  # what its manifest.json says
    code, out, _ = run(capsys, "import", str(tiny_mlx), "--name", "qwen3-1m-mine-v1")
    assert code == 0 and "Imported qwen3-1m-mine-v1-mlx-q4-g64" in out


# -- the registry --------------------------------------------------------------------------


def test_registry_has_a_schema_version(two_versions):
    conn = sqlite3.connect(two_versions / "registry.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_registry_from_a_newer_version_is_refused(two_versions):
    conn = sqlite3.connect(two_versions / "registry.sqlite")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RegistryError, match="newer qwen-mlx"):
        Registry.open(two_versions / "registry.sqlite")


def test_corrupt_registry_is_explained_and_repair_rebuilds_it(two_versions, capsys):
    db = two_versions / "registry.sqlite"
    for side in ("registry.sqlite-wal", "registry.sqlite-shm"):
        (two_versions / side).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    code, _, err = run(capsys, "list")
    assert code == 1
    assert str(db) in err and "models repair" in err and "untouched" in err
    assert load(FAMILY).manifest.name == Q8  # models and latest pointers still work
    code, out, _ = run(capsys, "repair")
    assert code == 0 and "from 2 manifests" in out
    assert {m.name for m in Store().list()} == {Q4, Q8}
    assert list(two_versions.glob("registry.sqlite.damaged-*"))


def _convert_in_process(args):
    source, home, bits = args
    import os

    os.environ["QWEN_MLX_HOME"] = home
    from qwen_mlx.convert import convert

    return convert(source, q_bits=bits).manifest.name


def test_concurrent_conversions_all_land_in_the_registry(tiny_hf, home):
    bits = [2, 3, 4, 5, 6, 8]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(bits)) as pool:
        names = pool.map(_convert_in_process, [(str(tiny_hf), str(home), b) for b in bits])
    store = Store(home)
    assert store.registry.integrity_ok()
    assert {m.name for m in store.list()} == set(names)
    events = store.registry.events(FAMILY)
    assert sum(e.kind == "converted" for e in events) == len(bits)
    assert str(store.latest(FAMILY)) in names
    assert store.history(FAMILY)[-1] == str(store.latest(FAMILY))


def _open_registry(path: str) -> str:
    from qwen_mlx.store.registry import Registry

    try:
        Registry.open(path).close()
        return "opened"
    except Exception as e:
        return repr(e)


def test_processes_opening_a_new_registry_together_all_get_it(tmp_path):
    # SQLite refuses at once (no busy wait) a journal-mode switch racing another one.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6) as pool:
        for trial in range(25):
            path = str(tmp_path / f"{trial}" / "registry.sqlite")
            assert pool.map(_open_registry, [path] * 6) == ["opened"] * 6


def test_a_registry_held_by_another_process_says_so(home, monkeypatch):
    import qwen_mlx.store.registry as registry_module

    path = home / "registry.sqlite"
    monkeypatch.setattr(registry_module, "LOCK_WAIT", 0.2)
    registry = Registry.open(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write
    with pytest.raises(RegistryError, match="locked by another process") as caught:
        registry.transaction().__enter__()
    assert "repair" not in str(caught.value)  # nothing is damaged: no rebuild advised
    holder.execute("ROLLBACK")
    holder.close()


def test_an_unusable_store_folder_is_an_error_message(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QWEN_MLX_HOME", str(blocker / "store"))
    code, _, err = run(capsys, "list")
    assert code == 1
    assert err.startswith("error: ") and "a-file" in err and "Traceback" not in err


def test_an_imported_folder_named_as_an_official_family_does_not_take_it_over(
    tiny_hf, home, tmp_path, capsys
):
    assert convert_main(["--hf-path", str(tiny_hf), "--name", "qwen3-4b-instruct-2507"]) == 0
    official = str(Store(home).latest("qwen3-4b-instruct"))
    out = tmp_path / "out"
    argv = ["--hf-path", str(tiny_hf), "--name", "qwen3-4b-instruct-2510", "--mlx-path", str(out)]
    assert convert_main(argv) == 0
    capsys.readouterr()
    code, said, _ = run(capsys, "import", str(out))  # its manifest calls it qwen3-4b-...
    assert code == 0
    assert "Imported qwen3-140k-instruct-2510-mlx-q4-g64 (" in said and "K parameters" in said
    assert "calls itself qwen3-4b-instruct-2510-mlx-q4-g64" in said
    assert str(Store(home).latest("qwen3-4b-instruct")) == official
