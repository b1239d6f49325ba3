"""The fake Hub answers the real huggingface_hub calls the way the Hub does."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from safetensors.numpy import save

from .fakehub import FakeHub, use_fake_hub

REPO = "org/name"
PATTERNS = ["*.json", "*.safetensors"]


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        use_fake_hub(monkeypatch, fake, tmp_path / "hf_home")
        yield fake


def weights(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return save({"embed.weight": rng.standard_normal((4, 8)).astype(np.float16)})


def two_commits(hub: FakeHub, tmp_path: Path) -> tuple[str, str, dict[str, bytes]]:
    """First commit from a folder, second from a mapping; main ends on the second."""
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "qwen3", "architectures": ["Qwen3"]}')
    (folder / "model.safetensors").write_bytes(weights(0))
    (folder / "sub" / "extra.json").write_text("{}")
    (folder / "README.md").write_text("# not matched by PATTERNS\n")
    first = hub.add_commit(REPO, folder, last_modified="2025-08-06T08:00:00.000Z")
    files = {"config.json": b'{"model_type": "qwen3"}', "model.safetensors": weights(1)}
    second = hub.add_commit(REPO, files, last_modified="2025-09-01T12:00:00.000Z")
    return first, second, files


def test_model_info_reports_the_branch_commit(hub, tmp_path):
    first, second, _ = two_commits(hub, tmp_path)
    api = huggingface_hub.HfApi(endpoint=hub.url)

    info = api.model_info(REPO, revision="main", timeout=10)
    assert info.sha == second
    assert info.id == REPO
    assert info.last_modified is not None and info.last_modified.month == 9
    assert info.created_at is not None and info.created_at.month == 8
    assert [s.rfilename for s in info.siblings] == ["config.json", "model.safetensors"]
    assert info.safetensors is not None and info.safetensors.total == 32

    old = api.model_info(REPO, revision=first, timeout=10)
    assert old.sha == first
    assert "sub/extra.json" in [s.rfilename for s in old.siblings]

    hub.set_branch(REPO, first)  # main moves back
    assert api.model_info(REPO, revision="main", timeout=10).sha == first
    assert ("GET", f"/api/models/{REPO}/revision/main") in hub.requests


def test_snapshot_download_fetches_each_revision(hub, tmp_path):
    first, second, files = two_commits(hub, tmp_path)

    path = Path(
        huggingface_hub.snapshot_download(
            REPO, revision=first, allow_patterns=PATTERNS, endpoint=hub.url
        )
    )
    assert path == tmp_path / "hf_home" / "hub" / "models--org--name" / "snapshots" / first
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        "config.json",
        "model.safetensors",
        "sub/extra.json",
    ]
    assert (path / "model.safetensors").read_bytes() == weights(0)

    path = Path(
        huggingface_hub.snapshot_download(
            REPO, revision="main", allow_patterns=PATTERNS, endpoint=hub.url
        )
    )
    assert path.name == second
    assert (path.parents[1] / "refs" / "main").read_text() == second
    for name, data in files.items():
        assert (path / name).read_bytes() == data
    # LFS files are cached under their sha256, small files under their git sha1.
    blob = Path(os.path.realpath(path / "model.safetensors")).name
    assert blob == hashlib.sha256(files["model.safetensors"]).hexdigest()
    config = files["config.json"]
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(config) + config).hexdigest()
    assert Path(os.path.realpath(path / "config.json")).name == git_sha1
    assert ("HEAD", f"/{REPO}/resolve/{second}/model.safetensors") in hub.requests


def test_unknown_repo_is_repository_not_found(hub):
    api = huggingface_hub.HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing", revision="main", timeout=10)
    with pytest.raises(RepositoryNotFoundError):
        huggingface_hub.snapshot_download("org/missing", endpoint=hub.url)


def test_unknown_revision_is_revision_not_found(hub):
    hub.add_commit(REPO, {"config.json": b"{}"})
    api = huggingface_hub.HfApi(endpoint=hub.url)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="v9", timeout=10)
    with pytest.raises(RevisionNotFoundError):
        huggingface_hub.snapshot_download(REPO, revision="v9", endpoint=hub.url)
    with pytest.raises(RevisionNotFoundError):  # a well-formed sha that is not a commit here
        huggingface_hub.snapshot_download(REPO, revision="0" * 40, endpoint=hub.url)
