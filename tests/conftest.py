"""Shared fixtures: a private store per test, offline Hub, tiny random Qwen3 checkpoints;
and a guard that fails any test that writes into the user's own store."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint

from .scripted import Script
from .served import Served, serving

pytest_plugins = ["pytester"]  # test_home_guard runs a small session of its own


def _user_stores() -> list[Path]:
    """The stores a test must never touch, as they were when the session started: the home
    folder's `.qwen_mlx` (HOME's, and the account's should HOME point elsewhere) and the
    QWEN_MLX_HOME the tests were started with."""
    homes = {os.path.expanduser("~"), pwd.getpwuid(os.getuid()).pw_dir}
    stores = {Path(home) / ".qwen_mlx" for home in homes}
    if os.environ.get("QWEN_MLX_HOME"):
        stores.add(Path(os.environ["QWEN_MLX_HOME"]).expanduser())
    return sorted(stores)


def _state(store: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `store` with its size and modification time (the folder
    itself as ""); empty when it does not exist. Only stats: weights are never read."""
    found: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(store):
        for name in ["", *dirs, *files]:
            path = os.path.join(folder, name) if name else folder
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            found[os.path.relpath(path, store) if name else ""] = (info.st_size, info.st_mtime_ns)
    return found


def _changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """What differs, files first (the store folder's own time changes with any of them)."""
    said = {
        "added": [n for n in after if n not in before],
        "removed": [n for n in before if n not in after],
    }
    said["changed"] = [n for n in after if n in before and after[n] != before[n]]
    changes = [(name, how) for how, names in said.items() for name in names]
    return [f"{name or '.'} ({how})" for name, how in sorted(changes, key=lambda c: (not c[0], c))]


@pytest.fixture(scope="session")
def _user_store_state() -> dict[Path, dict[str, tuple[int, int]]]:
    return {store: _state(store) for store in _user_stores()}


@pytest.fixture(autouse=True)
def _user_store_untouched(_user_store_state):
    """Fails the test (at its teardown) that changed anything in the user's own store."""
    yield
    for store, before in _user_store_state.items():
        after = _state(store)
        if after != before:
            _user_store_state[store] = after  # blame this test only, not every later one
            changes = ", ".join(_changes(before, after)[:10])
            pytest.fail(
                f"this test wrote into the user's store {store}: {changes}. Tests must use "
                "their own QWEN_MLX_HOME (the `home` fixture) and pass it to any process they "
                "start (tests/helpers.child_env)."
            )


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch, _user_store_untouched):
    """Every test gets its own empty store, its own HOME (so nothing that defaults to a
    file under `~` reaches the user's), and an offline, empty Hugging Face cache."""
    home = tmp_path_factory.mktemp("qwen_mlx_home")
    monkeypatch.setenv("QWEN_MLX_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("user_home")))
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
def trained_mlx(tmp_path_factory) -> Path:
    """The trained tiny Qwen3 target (../shared, real text and template) as bf16 MLX,
    converted once per session outside any store (bf16: MLX's quantized matmuls are slow
    on a CPU). Skips without the trained pair."""
    from qwen_mlx.convert import convert

    from .helpers import TRAINED_TARGET

    if not (TRAINED_TARGET / "model.safetensors").is_file():
        pytest.skip(f"the trained tiny Qwen3 is not at {TRAINED_TARGET}")
    root = tmp_path_factory.mktemp("trained")
    return convert(
        str(TRAINED_TARGET), mlx_path=root / "t", quantize=False, home=root / "home"
    ).path


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


@pytest.fixture(scope="session")
def tiny_store(tiny_hf, tmp_path_factory) -> Path:
    """A store holding the tiny model (`qwen3-1m-tiny`), converted once per session;
    `stored` copies it into a test's own store."""
    from qwen_mlx.convert import convert

    root = tmp_path_factory.mktemp("tiny_store")
    convert(str(tiny_hf), home=root)
    return root


@pytest.fixture
def stored(tiny_store, home) -> str:
    """The tiny model in this test's own store (the one model there, so the default of
    the chat app and the CLI), copied from `tiny_store`; its family name."""
    import shutil

    shutil.copytree(tiny_store, home, dirs_exist_ok=True)
    return "qwen3-1m-tiny"


@pytest.fixture
def hf_copy(tiny_hf, tmp_path) -> Path:
    """A private copy of the tiny checkpoint that a test may damage."""
    import shutil

    dst = tmp_path / tiny_hf.name
    shutil.copytree(tiny_hf, dst)
    return dst


@pytest.fixture(scope="session")
def scripted_model(tiny_model) -> Script:
    """The tiny model with a script (tests/scripted.py): `scripted_model.model` serves and
    chats like the tiny model until a test writes replies for it."""
    return Script(tiny_model)


@pytest.fixture
def script(scripted_model) -> Script:
    """The scripted model's script, empty at the start of the test."""
    scripted_model.clear()
    return scripted_model


@pytest.fixture(autouse=True)
def _scripts_cleared() -> Iterator[None]:
    """No script or record outlives its test."""
    yield
    for script in list(Script.live):
        script.clear()


def _servers(stack: ExitStack, request: pytest.FixtureRequest) -> Callable[..., Served]:
    def serve(model: Any = None, **options: Any) -> Served:
        """`served.serving(model, **options)` until the fixture ends; the model is the
        scripted tiny model unless given."""
        if model is None:
            model = request.getfixturevalue("scripted_model").model
        return stack.enter_context(serving(model, **options))

    return serve


@pytest.fixture
def serve(request) -> Iterator[Callable[..., Served]]:
    """Start servers for this test: `serve(model=None, *, key, app={...}, limits={...},
    **engine_options)` (see `served.serving`); each is stopped when the test ends."""
    with ExitStack() as stack:
        yield _servers(stack, request)


@pytest.fixture(scope="module")
def module_server(request) -> Iterator[Callable[..., Served]]:
    """`serve`, for servers a whole module shares (stopped after its last test)."""
    with ExitStack() as stack:
        yield _servers(stack, request)


@pytest.fixture(scope="module")
def notes_url() -> Iterator[str]:
    """The MCP test server (tests/mcp_notes.py) over streamable HTTP: its URL."""
    from .mcp_notes import serve_http

    url, server, thread = serve_http()
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def agent_store(tmp_path_factory) -> Path:
    """A store holding the agent clients' long-context test model (tests/agents.py) under
    the name a download of Qwen3-4B-Instruct-2507 gets; built once."""
    from .agents import build_agent_model
    from .helpers import SHARED_MODEL

    if not (SHARED_MODEL / "tokenizer.json").is_file():
        pytest.skip(f"the real Qwen3-4B-Instruct-2507 tokenizer is not at {SHARED_MODEL}")
    store = tmp_path_factory.mktemp("agent_store")
    build_agent_model(store, tmp_path_factory.mktemp("agent_source"))
    return store


@pytest.fixture(scope="session")
def agent_server(agent_store, tmp_path_factory):
    """`qwen-mlx serve` on `agent_store`, started once for the interop tier's client tests
    (a test that needs other flags starts its own `agents.ServeProcess` on the store)."""
    from .agents import ServeProcess

    served = ServeProcess(agent_store, tmp_path_factory.mktemp("agent_user"))
    yield served
    served.stop()


@pytest.fixture(scope="session")
def agent_relay(agent_server):
    """The forcing proxy in front of `agent_server`, one port for the session (clients that
    read their settings once need that); tests take it through `agent_proxy`."""
    from .agents import ForcingProxy

    proxy = ForcingProxy(agent_server.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def agent_proxy(agent_relay):
    """`agent_relay` with an empty script and no exchanges."""
    agent_relay.reset()
    return agent_relay
