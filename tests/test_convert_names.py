"""What a conversion is called and whether it becomes latest: any folder or repo converts
(the name is made from the checkpoint and printed), a name another source's model holds is
refused before any work, `models import` keeps a folder's own name, and latest moves only
when a user would expect it to."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest

import qwen_mlx.convert.pipeline as conv
import qwen_mlx.store.hub as hub_module
from qwen_mlx import load
from qwen_mlx.cli.convert import main
from qwen_mlx.cli.models import main as models_main
from qwen_mlx.convert import convert
from qwen_mlx.store import Store, naming
from qwen_mlx.store.manifest import read_manifest

from .fakehub import FakeHub, use_fake_hub
from .helpers import TRAINED_TARGET, needs_trained

# 2025-07-15 12:00 local time: the weights' date, which becomes the release of a folder
# whose name has none.
WRITTEN = datetime(2025, 7, 15, 12).timestamp()
Q4 = "qwen3-1m-tiny-2507-mlx-q4-g64"


def copy_as(tiny_hf: Path, folder: Path) -> Path:
    """The tiny checkpoint under another folder name, its weights dated WRITTEN."""
    shutil.copytree(tiny_hf, folder)
    os.utime(folder / "model.safetensors", (WRITTEN, WRITTEN))
    return folder


def latest(family: str) -> str:
    return str(Store().latest(family))


# -- item 1: any folder or repo converts; the name is derived and printed -----------------


def test_a_checkpoint_folder_converts_to_mlx_path_without_a_name(tiny_hf, tmp_path, capsys):
    src = copy_as(tiny_hf, tmp_path / "runs" / "exp7" / "checkpoint-500")
    out = tmp_path / "out"
    assert main(["--hf-path", str(src), "--mlx-path", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    # qwen3 from the config, 140k from the tensor headers, exp7 from the run folder,
    # step 500 from the checkpoint folder
    assert read_manifest(out).name == "qwen3-140k-exp7-step500-mlx-q4-g64"
    assert "name: qwen3-140k-exp7-step500-mlx-q4-g64 (derived" in stderr
    assert "variant 'exp7' from the run folder 'exp7'" in stderr
    assert "release step500 from 'checkpoint-500'" in stderr
    assert "Converted qwen3-140k-exp7-step500-mlx-q4-g64" in stdout
    assert "--name chooses another" in stdout


def test_a_finetune_folder_converts_into_the_store_dated_by_its_weights(tiny_hf, tmp_path, capsys):
    src = copy_as(tiny_hf, tmp_path / "my-finetune")
    assert main(["--hf-path", str(src)]) == 0
    out = capsys.readouterr().out
    name = "qwen3-140k-my-finetune-20250715-mlx-q4-g64"
    assert f"Converted {name}" in out
    assert "release 20250715, the date its weights were written" in out
    assert load("qwen3-140k-my-finetune").manifest.name == name
    # The same folder again finds the same name: "already exists", not a second copy.
    assert main(["--hf-path", str(src)]) == 1
    assert "already exists" in capsys.readouterr().err


@needs_trained
def test_the_trained_target_is_named_from_what_its_checkpoint_says(tmp_path):
    result = convert(str(TRAINED_TARGET), mlx_path=tmp_path / "out")
    day = datetime.fromtimestamp((TRAINED_TARGET / "model.safetensors").stat().st_mtime)
    assert result.manifest.name == f"qwen3-4m-target-{day:%Y%m%d}-mlx-q4-g64"
    assert "4.2M parameters" in result.name_note and "'target'" in result.name_note


def test_a_name_that_does_not_fit_is_made_to_fit_and_said_so(tiny_hf, tmp_path, capsys):
    src = copy_as(tiny_hf, tmp_path / "src")
    out = tmp_path / "out"
    assert main(["--hf-path", str(src), "--mlx-path", str(out), "--name", "My Fine Tune!"]) == 0
    stdout = capsys.readouterr().out
    assert read_manifest(out).name == "qwen3-140k-my-fine-tune-20250715-mlx-q4-g64"
    assert "--name 'My Fine Tune!' does not fit" in stdout
    assert main(["--hf-path", str(src), "--name", "My Fine Tune!"]) == 0
    assert load("qwen3-140k-my-fine-tune").manifest.name.startswith("qwen3-140k-my-fine-tune-")


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("qwen3-4b-myft-v1", "qwen3-4b-myft-v1-mlx-q4-g64"),
        ("qwen3-4b-instruct-2507-ft500", "qwen3-4b-instruct-2507-ft500-mlx-q4-g64"),
        ("qwen3-4b-medical-ft", "qwen3-4b-medical-ft-20250715-mlx-q4-g64"),
    ],
)
def test_names_people_give_finetunes_are_taken_as_they_are(tiny_hf, tmp_path, name, stored):
    src = copy_as(tiny_hf, tmp_path / "src")
    result = convert(str(src), name=name)
    assert result.manifest.name == stored
    assert result.path == Store().path_for(naming.parse(stored))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with FakeHub() as fake:
        use_fake_hub(monkeypatch, fake, tmp_path / "hf_home")
        yield fake


@pytest.mark.parametrize(
    ("repo", "expected"),
    [
        ("Qwen/Qwen3-4B-Thinking-2507", "qwen3-4b-thinking-2507-mlx-q4-g64"),
        ("Qwen/Qwen3-4B", "qwen3-4b-hybrid-{sha}-mlx-q4-g64"),  # no variant, no release
        ("Qwen/Qwen3-0.6B", "qwen3-0.6b-hybrid-{sha}-mlx-q4-g64"),
        ("someone/Qwen3-4B-medical-ft", "qwen3-4b-medical-ft-{sha}-mlx-q4-g64"),
    ],
)
def test_repo_ids_are_named_from_the_repo_and_its_commit(hub, tiny_hf, capsys, repo, expected):
    sha = hub.add_commit(repo, tiny_hf)
    assert main(["--hf-path", repo]) == 0
    short = next(sha[:n] for n in range(7, 41) if any(c.isdigit() for c in sha[:n]))
    name = expected.format(sha=short)  # a release needs a digit: rarely more than 7
    assert f"Converted {name}" in capsys.readouterr().out
    assert load(name).manifest.source.repo == repo


# -- item 2: a name another source's model holds is refused before any work --------------


def test_a_name_another_folder_holds_is_refused_before_any_work(
    tiny_hf, tmp_path, home, capsys, monkeypatch
):
    assert main(["--hf-path", str(tiny_hf)]) == 0
    other = copy_as(tiny_hf, tmp_path / "elsewhere" / tiny_hf.name)
    real_write = conv.write_weights
    written = []
    monkeypatch.setattr(conv, "write_weights", lambda *a: written.append(a))
    assert main(["--hf-path", str(other)]) == 1
    err = capsys.readouterr().err
    assert f"{Q4} is already in the store, from {tiny_hf}" in err
    assert f"{other} would get the same name" in err
    assert "--name qwen3-1m-tiny-2507_local " in err  # in the same family
    assert written == []
    monkeypatch.setattr(conv, "write_weights", real_write)
    # The suggestion is free; once taken, the next suggestion is another free one.
    assert main(["--hf-path", str(other), "--name", "qwen3-1m-tiny-2507_local"]) == 0
    third = copy_as(tiny_hf, tmp_path / "third" / tiny_hf.name)
    assert main(["--hf-path", str(third)]) == 1
    assert "--name qwen3-1m-tiny-2507_local2 " in capsys.readouterr().err
    names = {m.name for m in Store().list()}
    assert names == {Q4, "qwen3-1m-tiny-2507_local-mlx-q4-g64"}
    assert Store().latest("qwen3-1m-tiny") == naming.parse(Q4)  # the other copy is beside it
    assert read_manifest(home / "models/qwen3-1m-tiny/2507/mlx-q4-g64").source.path == str(tiny_hf)


def test_a_repo_whose_name_another_model_holds_is_refused_before_downloading(
    hub, tiny_hf, capsys, monkeypatch
):
    assert main(["--hf-path", str(tiny_hf)]) == 0
    hub.add_commit("someone/Qwen3-1M-Tiny-2507", tiny_hf)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the name is taken")

    real_fetch = hub_module.fetch
    monkeypatch.setattr(hub_module, "fetch", no_download)
    assert main(["--hf-path", "someone/Qwen3-1M-Tiny-2507"]) == 1
    err = capsys.readouterr().err
    assert f"{Q4} is already in the store, from {tiny_hf}" in err
    assert "--name qwen3-1m-tiny-2507_someone " in err
    monkeypatch.setattr(hub_module, "fetch", real_fetch)
    assert main(["--hf-path", "someone/Qwen3-1M-Tiny-2507", "--force"]) == 0
    assert load(Q4).manifest.source.repo == "someone/Qwen3-1M-Tiny-2507"


def test_with_mlx_path_a_name_is_only_recorded(tiny_hf, tmp_path):
    convert(str(tiny_hf))
    other = copy_as(tiny_hf, tmp_path / tiny_hf.name)
    result = convert(str(other), mlx_path=tmp_path / "out")
    assert result.manifest.name == Q4 and not result.registered


# -- item 3: `models import` keeps the name in the folder's own manifest -------------------


def test_import_uses_the_name_in_the_folders_own_manifest(tiny_hf, tmp_path, capsys):
    out = tmp_path / "out"
    convert(str(copy_as(tiny_hf, tmp_path / "checkpoint-500")), mlx_path=out, report=True)
    written = read_manifest(out)
    assert models_main(["import", str(out)]) == 0
    assert f"Imported {written.name}" in capsys.readouterr().out
    stored = load(written.name).manifest
    # What the folder's manifest knew is kept: where the weights came from, the quality.
    assert stored.source == written.source and stored.quality == written.quality
    assert models_main(["verify", written.name]) == 0


def test_import_without_a_manifest_or_a_conventional_name_derives_one(tiny_mlx, tmp_path, capsys):
    folder = tmp_path / "some-download"
    shutil.copytree(tiny_mlx, folder)
    (folder / "manifest.json").unlink()
    os.utime(folder / "model.safetensors", (WRITTEN, WRITTEN))
    assert models_main(["import", str(folder)]) == 0
    name = "qwen3-140k-some-download-20250715-mlx-q4-g64"
    assert f"Imported {name}" in capsys.readouterr().out
    assert load("qwen3-140k-some-download").manifest.name == name


# -- item 4: latest moves only when a user would expect it ---------------------------------


def test_a_newer_release_in_the_same_quantization_becomes_latest(tiny_hf, tmp_path, capsys):
    assert main(["--hf-path", str(tiny_hf)]) == 0
    assert "now the latest of qwen3-1m-tiny" in capsys.readouterr().out  # the first version
    newer = copy_as(tiny_hf, tmp_path / "Qwen3-1M-Tiny-2510")
    assert main(["--hf-path", str(newer)]) == 0
    assert "now the latest of qwen3-1m-tiny" in capsys.readouterr().out
    assert latest("qwen3-1m-tiny") == "qwen3-1m-tiny-2510-mlx-q4-g64"


@pytest.mark.parametrize(
    ("folder", "args", "name", "why"),
    [
        (
            "Qwen3-1M-Tiny-2507",
            ["--q-bits", "8"],
            "qwen3-1m-tiny-2507-mlx-q8-g64",
            "it is mlx-q8-g64",
        ),
        ("Qwen3-1M-Tiny-2507-ft500", [], "qwen3-1m-tiny-2507-ft500-mlx-q4-g64", "a fine-tune"),
        ("Qwen3-1M-Tiny-2504", [], "qwen3-1m-tiny-2504-mlx-q4-g64", "is older than"),
    ],
)
def test_another_quantization_a_finetune_or_an_older_release_is_added_beside_latest(
    tiny_hf, tmp_path, capsys, folder, args, name, why
):
    assert main(["--hf-path", str(tiny_hf)]) == 0
    src = tiny_hf if folder == tiny_hf.name else copy_as(tiny_hf, tmp_path / folder)
    capsys.readouterr()
    assert main(["--hf-path", str(src), *args]) == 0
    out = capsys.readouterr().out
    assert f"registered beside {Q4}, which stays the latest of qwen3-1m-tiny" in out
    assert why in out
    assert f"`qwen-mlx models set-latest {name}`" in out and "--set-latest" in out
    assert latest("qwen3-1m-tiny") == Q4
    assert name in {m.name for m in Store().list()}
    assert main(["--hf-path", str(src), *args, "--force", "--set-latest"]) == 0
    assert "now the latest of qwen3-1m-tiny" in capsys.readouterr().out
    assert latest("qwen3-1m-tiny") == name


def test_an_import_in_another_quantization_is_added_and_says_how_to_switch(
    tiny_hf, tmp_path, capsys
):
    assert main(["--hf-path", str(tiny_hf)]) == 0
    convert(str(tiny_hf), mlx_path=tmp_path / "q8", q_bits=8)
    capsys.readouterr()
    assert models_main(["import", str(tmp_path / "q8")]) == 0
    out = capsys.readouterr().out
    q8 = "qwen3-1m-tiny-2507-mlx-q8-g64"
    assert f"qwen3-1m-tiny's latest stays {Q4}" in out
    assert f"`qwen-mlx models set-latest {q8}`" in out
    assert latest("qwen3-1m-tiny") == Q4


def test_each_runs_checkpoints_are_a_family_of_their_own(tiny_hf, tmp_path, home, capsys):
    runs = tmp_path / "runs"
    for run, step in (("exp7", 1200), ("exp7", 1400), ("exp8", 1600), ("exp7", 800)):
        src = copy_as(tiny_hf, runs / run / f"checkpoint-{step}")
        assert main(["--hf-path", str(src)]) == 0
    out = capsys.readouterr().out
    assert "Converted qwen3-140k-exp7-step1200-mlx-q4-g64" in out
    assert latest("qwen3-140k-exp7") == "qwen3-140k-exp7-step1400-mlx-q4-g64"  # not exp8's
    assert latest("qwen3-140k-exp8") == "qwen3-140k-exp8-step1600-mlx-q4-g64"
    assert {m.family for m in Store().list()} == {"qwen3-140k-exp7", "qwen3-140k-exp8"}


def test_removing_a_familys_last_version_removes_the_family(tiny_hf, tmp_path, home, capsys):
    src = copy_as(tiny_hf, tmp_path / "runs" / "exp7" / "checkpoint-5")
    assert main(["--hf-path", str(src)]) == 0
    assert main(["--hf-path", str(src), "--q-bits", "8"]) == 0
    assert models_main(["policy", "qwen3-140k-exp7", "auto"]) == 0
    assert models_main(["rm", "qwen3-140k-exp7-step5-mlx-q8-g64"]) == 0
    assert (home / "models" / "qwen3-140k-exp7" / "latest").is_file()  # one version left
    assert Store().registry.family("qwen3-140k-exp7") == ("auto", False)
    assert models_main(["rm", "qwen3-140k-exp7-step5-mlx-q4-g64", "--force"]) == 0
    assert not (home / "models" / "qwen3-140k-exp7").exists()
    store = Store()
    assert "qwen3-140k-exp7" not in store.registry.families()
    assert store.registry.family("qwen3-140k-exp7") == ("notify", False)  # forgotten
    assert "qwen3-140k-exp7" not in store.names()
    capsys.readouterr()
    assert models_main(["list"]) == 0
    assert "exp7" not in capsys.readouterr().out
