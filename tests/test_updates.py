"""Downloads and update checks through the real huggingface_hub calls, against a local fake
Hub that answers like the real one (tests/fakehub.py), and offline."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from qwen_mlx import load
from qwen_mlx.cli.convert import main as convert_main
from qwen_mlx.cli.models import main as models_main
from qwen_mlx.convert.tiny import build_tiny_checkpoint
from qwen_mlx.fileio import sha256_file
from qwen_mlx.store import Store

from .fakehub import FakeHub, use_fake_hub

REPO = "Qwen/Qwen3-1M-Tiny-2507"
FAMILY = "qwen3-1m-tiny"
Q4 = "qwen3-1m-tiny-2507-mlx-q4-g64"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        use_fake_hub(monkeypatch, fake, tmp_path / "hf_home")
        yield fake


@pytest.fixture
def published(hub, tiny_hf, capsys) -> str:
    """The tiny model published on the fake Hub and converted from there; its commit."""
    sha = hub.add_commit(REPO, tiny_hf)
    assert convert_main(["--hf-path", REPO]) == 0
    capsys.readouterr()
    return sha


def new_release(hub, tmp_path) -> str:
    """Upstream pushes new weights to the same repo: a new commit on main."""
    folder = build_tiny_checkpoint(tmp_path / "v2", seed=5)
    return hub.add_commit(REPO, folder, last_modified="2025-09-01T00:00:00.000Z")


def check(capsys, *args: str) -> tuple[int, str, str]:
    code = models_main(["check-updates", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_downloads_a_repo_and_records_its_revision(published, tiny_hf):
    model = load(FAMILY)
    source = model.manifest.source
    assert model.manifest.name == Q4
    assert (source.repo, source.revision, source.path) == (REPO, published, None)
    # The weights' sha256 comes from the HF cache's blob name: no second read of 8 GB.
    assert source.files["model.safetensors"] == sha256_file(tiny_hf / "model.safetensors")
    assert source.files["config.json"] == sha256_file(tiny_hf / "config.json")


def test_convert_of_a_pinned_revision(hub, tiny_hf, tmp_path, capsys):
    first = hub.add_commit(REPO, tiny_hf)
    new_release(hub, tmp_path)
    assert convert_main(["--hf-path", REPO, "--revision", first]) == 0
    assert load(FAMILY).manifest.source.revision == first


def test_an_existing_output_is_refused_before_downloading(published, monkeypatch, capsys):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the output exists")

    monkeypatch.setattr("qwen_mlx.store.hub.fetch", no_download)
    assert convert_main(["--hf-path", REPO]) == 1
    assert "already exists" in capsys.readouterr().err


def test_up_to_date_family(published, capsys):
    code, out, _ = check(capsys)
    assert code == 0
    assert out.strip() == f"{FAMILY}: up to date ({published[:7]} on {REPO})"


def test_notify_reports_a_new_revision_and_changes_nothing(published, hub, tmp_path, capsys):
    new = new_release(hub, tmp_path)
    code, out, _ = check(capsys, FAMILY)
    assert code == 0
    assert f"update available: {published[:7]} -> {new[:7]}" in out
    assert str(Store().latest(FAMILY)) == Q4


def test_apply_converts_the_new_revision_with_the_same_quantization(
    published, hub, tmp_path, capsys
):
    new = new_release(hub, tmp_path)
    code, out, _ = check(capsys, FAMILY, "--apply")
    assert code == 0
    updated = f"{Q4}@{new[:7]}"
    assert f"updated to {new[:7]}: {updated} is now latest" in out
    model = load(FAMILY)
    assert model.manifest.name == updated
    assert model.manifest.source.revision == new
    assert model.manifest.quantization.bits == 4
    assert models_main(["rollback", FAMILY]) == 0
    assert str(Store().latest(FAMILY)) == Q4


def test_auto_policy_updates_without_being_asked(published, hub, tmp_path, capsys):
    assert models_main(["policy", FAMILY, "auto"]) == 0
    new = new_release(hub, tmp_path)
    code, out, _ = check(capsys)
    assert code == 0 and "updated to" in out
    assert load(FAMILY).manifest.source.revision == new


@pytest.mark.parametrize("freeze", [["pin", FAMILY], ["policy", FAMILY, "frozen"]])
def test_frozen_or_pinned_families_are_never_switched(published, hub, tmp_path, capsys, freeze):
    assert models_main(["policy", FAMILY, "auto"]) == 0
    assert models_main(freeze) == 0
    new = new_release(hub, tmp_path)
    code, out, _ = check(capsys, FAMILY, "--apply")
    assert code == 0 and f"frozen: {REPO} is at {new[:7]}, not applied" in out
    assert str(Store().latest(FAMILY)) == Q4


def test_offline_has_its_own_exit_code_and_no_traceback(published, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = check(capsys)
    assert code == 3
    assert "Offline mode is on (HF_HUB_OFFLINE)" in err
    assert "Traceback" not in out + err


def test_unreachable_hub_has_its_own_exit_code(published, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    code, out, err = check(capsys)
    assert code == 3
    assert "unreachable" in err or "did not answer" in err
    assert "Traceback" not in out + err


def test_a_model_from_a_local_folder_has_nothing_to_check(tiny_hf, capsys):
    assert convert_main(["--hf-path", str(tiny_hf)]) == 0
    capsys.readouterr()
    code, out, _ = check(capsys)
    assert code == 0 and "converted from a local folder" in out


def test_unknown_repo_is_named(hub, capsys):
    assert convert_main(["--hf-path", "Qwen/Qwen3-9B-Nothing-2507"]) == 1
    assert "is not a repository on the Hugging Face Hub" in capsys.readouterr().err


def test_a_hub_server_error_is_explained_not_a_traceback(published, monkeypatch, capsys):
    import http.server
    import threading

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        code, out, err = check(capsys)
    finally:
        server.shutdown()
    assert code == 3
    assert "answered 503" in err
    assert "Traceback" not in out + err


def test_a_damaged_manifest_is_reported_not_fatal(published, home, capsys):
    manifest = home / "models" / FAMILY / "2507" / "mlx-q4-g64" / "manifest.json"
    manifest.write_text("{")
    code, out, _ = check(capsys)
    assert code == 0
    assert f"{FAMILY}: the manifest of {Q4} cannot be read" in out
    assert f"qwen-mlx models verify {Q4}" in out
