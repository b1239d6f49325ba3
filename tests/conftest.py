"""Shared fixtures: a private store per test, offline Hub, tiny random Qwen3 checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Every test gets its own empty store and an offline, empty Hugging Face cache."""
    home = tmp_path_factory.mktemp("qwen_mlx_home")
    monkeypatch.setenv("QWEN_MLX_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return home


@pytest.fixture
def home(_isolated) -> Path:
    return _isolated


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    """A tied-embedding tiny Qwen3 in one safetensors file, named like a real release."""
    root = tmp_path_factory.mktemp("hf")
    return build_tiny_checkpoint(root / "Qwen3-1M-Tiny-2507")


@pytest.fixture(scope="session")
def tiny_hf_untied(tmp_path_factory) -> Path:
    """Untied embeddings (like Qwen3-8B), in three shards with an index."""
    root = tmp_path_factory.mktemp("hf")
    config = TinyConfig(tie_word_embeddings=False)
    return build_tiny_checkpoint(root / "Qwen3-1M-Untied-2507", config, shards=3, seed=1)


@pytest.fixture(scope="session")
def tiny_mlx(tiny_hf, tmp_path_factory) -> Path:
    """The tiny checkpoint converted to 4-bit MLX (outside any store)."""
    from qwen_mlx.convert import convert

    out = tmp_path_factory.mktemp("mlx") / "tiny-q4"
    return convert(str(tiny_hf), mlx_path=out).path


@pytest.fixture(scope="session")
def tiny_model(tiny_mlx):
    from qwen_mlx import load

    return load(tiny_mlx)


@pytest.fixture
def hf_copy(tiny_hf, tmp_path) -> Path:
    """A private copy of the tiny checkpoint that a test may damage."""
    import shutil

    dst = tmp_path / tiny_hf.name
    shutil.copytree(tiny_hf, dst)
    return dst
