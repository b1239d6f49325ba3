"""`--context-extension F` (YaRN rope scaling) through every front end: the model is loaded
on one thread and run on another (a server's or an app's model thread), which is where
arrays left lazy at loading used to fail every generation ("There is no Stream(cpu, 0) in
current thread")."""

from __future__ import annotations

import subprocess
import sys
import threading
from types import SimpleNamespace

import anthropic
import ollama
import openai
import pytest

from qwen_mlx import load
from qwen_mlx.chat.session import ChatSession
from qwen_mlx.runtime import generate
from qwen_mlx.runtime.thread import ModelThread

from .helpers import child_env, serving_url
from .served import MODEL
from .webchat import events, new_chat, page_client


@pytest.fixture(scope="module")
def yarn_model(tiny_mlx):
    return load(tiny_mlx, context_extension=2.0)  # on this thread


def test_the_extension_doubles_the_context(tiny_model, yarn_model):
    assert yarn_model.context_length == 2 * tiny_model.context_length
    assert yarn_model.config["rope_scaling"]["type"] == "yarn"


def test_generate_runs_on_another_thread_than_the_one_that_loaded(yarn_model):
    worker = ModelThread("test-model-thread")
    text = worker.submit(generate, yarn_model, "Hello", max_tokens=3, temperature=0).result(60)
    assert isinstance(text, str) and text


def test_a_chat_session_runs_on_another_thread_than_the_one_that_loaded(yarn_model):
    session = ChatSession(yarn_model)
    worker = ModelThread("test-chat-thread")
    chunks = worker.submit(lambda: list(session.send("Hi", max_tokens=3))).result(60)
    assert chunks and session.messages[-1]["role"] == "assistant"


def test_serve_with_context_extension_answers_every_protocol_and_the_web_chat(tiny_mlx):
    argv = ["serve", "--model", str(tiny_mlx), "--context-extension", "2", "--port", "0"]
    server = subprocess.Popen(
        [sys.executable, "-m", "qwen_mlx", *argv, "--log-level", "warning"],
        env=child_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(server.stderr), daemon=True).start()
    try:
        base = serving_url(lines, server)
        hi = [{"role": "user", "content": "Hi"}]
        chat = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=60)
        reply = chat.chat.completions.create(model=MODEL, messages=hi, max_tokens=3)
        assert reply.choices[0].finish_reason in ("stop", "length")
        stream = chat.chat.completions.create(model=MODEL, messages=hi, max_tokens=3, stream=True)
        assert list(stream)
        assert chat.responses.create(model=MODEL, input="Hi", max_output_tokens=3).status
        claude = anthropic.Anthropic(base_url=base, api_key="x", max_retries=0, timeout=60)
        assert claude.messages.create(model=MODEL, max_tokens=3, messages=hi).usage.output_tokens
        llama = ollama.Client(host=base, timeout=60)
        assert llama.chat(model=MODEL, messages=hi, options={"num_predict": 3}).done
        with page_client(SimpleNamespace(url=base + "/")) as web:
            chat_id = new_chat(web)
            got = events(web.post(f"/web/api/chats/{chat_id}/send", json={"text": "Hi"}))
            assert got[-1][0] == "done", got
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "no Stream" not in "".join(lines)
