"""A real Claude Code session and a real Codex CLI session, five tool steps each (forced by
the proxy of tests/agents.py), recorded by `qwen-mlx serve --record` at test time and
replayed (`qwen-mlx replay`'s function) to a fresh server: per turn, the server prefills
only what the turn adds to its conversation. Interop tier: `pytest -m interop`."""

from __future__ import annotations

import pytest

from .agents import (
    ForcingProxy,
    ServeProcess,
    Workspace,
    claude_binary,
    claude_session,
    codex_binary,
    codex_session,
)

try:
    from qwen_mlx.cli.replay import read_session, replay
except ImportError:  # pragma: no cover - until `serve --record` and `replay` are merged
    replay = None

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(replay is None, reason="this qwen-mlx has no `serve --record`/`replay`"),
]
STEPS = 5


def _record(agent_store, tmp_path, run) -> list[dict]:
    """The requests of `run(proxy, workspace)` as `serve --record` wrote them."""
    record = tmp_path / "session.jsonl"
    server = ServeProcess(agent_store, tmp_path / "recording", "--record", str(record))
    proxy = ForcingProxy(server.url).start()
    try:
        run(proxy, Workspace.make(tmp_path / "user"))
        assert all(e.status == 200 for e in proxy.exchanges)
    finally:
        proxy.stop()
        server.stop()
    return read_session(record)


def _replayed(agent_store, tmp_path, requests: list[dict]):
    fresh = ServeProcess(agent_store, tmp_path / "replaying")
    try:
        return replay(requests, fresh.url)
    finally:
        fresh.stop()


def _prefills_only_what_is_new(turns) -> None:
    assert all(t.status == 200 for t in turns), [(t.index, t.status, t.error) for t in turns]
    first, *later = turns
    assert first.prefilled == first.prompt_tokens  # a fresh server reads it all
    for turn in later:  # the target: at most 1.05 x the tokens the turn adds
        assert turn.prefilled <= 1.05 * turn.new, (turn.index, turn.prefilled, turn.new)


@pytest.mark.skipif(claude_binary() is None, reason="Claude Code is not installed (.ci/run)")
def test_a_recorded_claude_code_session_replays_prefilling_only_each_turn_s_news(
    agent_store, tmp_path
):
    requests = _record(agent_store, tmp_path, lambda p, s: claude_session(p, s, steps=STEPS))
    assert [r["path"] for r in requests] == ["/v1/messages"] * (STEPS + 1)
    turns = _replayed(agent_store, tmp_path, requests)
    _prefills_only_what_is_new(turns)
    assert turns[-1].prompt_tokens > 10_000  # Claude Code's own prompt, as it sends it


@pytest.mark.skipif(codex_binary() is None, reason="Codex CLI is not installed (.ci/run)")
def test_a_recorded_codex_session_replays_prefilling_only_each_turn_s_news(agent_store, tmp_path):
    requests = _record(agent_store, tmp_path, lambda p, s: codex_session(p, s, steps=STEPS))
    assert [r["path"] for r in requests] == ["/v1/responses"] * (STEPS + 1)
    turns = _replayed(agent_store, tmp_path, requests)
    _prefills_only_what_is_new(turns)
    assert turns[-1].prompt_tokens > 8_000
