"""The guard in conftest.py: a test that writes into the user's own store fails, whatever
else it asserts; a test that keeps to its own store does not."""

from __future__ import annotations

import os

from .helpers import ROOT

INNER = """
import os
import time
from pathlib import Path


def test_adds_a_file_to_the_users_store():
    Path(os.environ["USER_STORE"], "chats.sqlite").write_bytes(b"x")


def test_rewrites_a_file_of_the_users_store():
    registry = Path(os.environ["USER_STORE"], "registry.sqlite")
    time.sleep(0.01)  # a later modification time even on a coarse clock
    registry.write_bytes(b"yy")


def test_writes_into_its_own_store_and_home():
    Path(os.environ["QWEN_MLX_HOME"], "chats.sqlite").write_bytes(b"x")
    Path(os.environ["HOME"], ".qwen_mlx").mkdir()
    assert not Path(os.environ["HOME"]).samefile(Path(os.environ["USER_STORE"]).parent)
"""


def test_a_test_that_writes_into_the_users_store_fails(pytester, monkeypatch, tmp_path):
    user_store = tmp_path / "user" / ".qwen_mlx"
    user_store.mkdir(parents=True)
    (user_store / "registry.sqlite").write_bytes(b"x")
    monkeypatch.setenv("HOME", str(user_store.parent))  # the session's real home
    monkeypatch.setenv("USER_STORE", str(user_store))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]')  # this suite's, as it is
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)
    out = result.stdout.str()
    assert f"this test wrote into the user's store {user_store}: chats.sqlite (added)" in out
    assert "registry.sqlite (changed)" in out
    assert "ERROR at teardown of test_writes_into_its_own_store" not in out
    assert os.environ["HOME"] == str(user_store.parent)
