"""What several test modules share that is not a fixture: where the shared models are,
the skips for when they are absent, a server on a free port, a PDF with text in it, the
MCP test server, a chat template that blows up, a check on a session's cache.
Fixtures stay in conftest.py; the server tests' names are in served.py, tool-calling
inputs in tool_cases.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
SHARED_MODELS = ROOT.parent / "shared" / "models"
SHARED_MODEL = SHARED_MODELS / "qwen3-4b-instruct-2507"  # config and tokenizer, no weights
# A small Qwen3 pair trained on real text (see its SOURCES.md): the target and its draft.
TRAINED_TARGET = SHARED_MODELS / "qwen3-tiny-trained" / "target"
TRAINED_DRAFT = SHARED_MODELS / "qwen3-tiny-trained" / "draft"
MCP_NOTES = ROOT / "tests" / "mcp_notes.py"  # an MCP server (stdio or HTTP) with notes tools

# Renders ChatML, except that a message saying "boom" sets off nested loops.
BOOM = (
    "{% for m in messages %}{% if 'boom' in m.content %}{% for i in range(100000) %}"
    "{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
    "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

needs_shared = pytest.mark.skipif(
    not (SHARED_MODEL / "tokenizer.json").is_file(),
    reason=f"the real Qwen3-4B-Instruct-2507 tokenizer and config are not at {SHARED_MODEL}",
)
needs_trained = pytest.mark.skipif(
    not (TRAINED_TARGET / "model.safetensors").is_file(),
    reason=f"the trained tiny Qwen3 is not at {TRAINED_TARGET}",
)


def run_script(
    name: str, *args: str, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """scripts/NAME run as a user runs it (a child process from the repository root, this
    test's environment unless `env`), its output captured as text."""
    command = ["bash"] if name.endswith(".sh") else [sys.executable]
    return subprocess.run(
        [*command, str(SCRIPTS / name), *args],
        cwd=ROOT,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process a test starts, given explicitly: this test's (its own
    QWEN_MLX_HOME, HOME and offline Hugging Face cache, set by conftest), with this checkout
    first on the import path so the child runs the code under test."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def start_server(app, **limits):
    """uvicorn as `qwen-mlx serve` configures it (with these limits), on a free port in a
    daemon thread; returns (server, thread, port) once it accepts connections."""
    import uvicorn

    from qwen_mlx.server import server_config

    config = server_config(app, host="127.0.0.1", port=0, log_level="warning", **limits)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, port


def write_pdf(path: Path, text: str) -> None:
    """A one-page PDF whose text pypdf extracts (no PDF library writes text for us)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
    )
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
    page[NameObject("/Contents")] = writer._add_object(stream)
    with open(path, "wb") as f:
        writer.write(f)


def assert_cache_matches_conversation(session) -> None:
    """The cache holds exactly the ids the session says, and those render the history."""
    from qwen_mlx.runtime import cache_length

    assert cache_length(session._cache) == len(session.cache_tokens)
    rendered = session.model.encode(
        session.model.render(session.messages, add_generation_prompt=False)
    )
    # The cache ends with the last reply's end-of-turn token; the template adds a newline.
    held = session.cache_tokens
    assert held == rendered[: len(held)] or common_len(held, rendered) >= len(held) - 12


def common_len(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# -- the sampled distribution -------------------------------------------------------------


def chi2_critical(df: int, z: float = 3.09) -> float:
    """The 0.999 quantile of chi-square with `df` degrees of freedom (Wilson-Hilferty)."""
    import math

    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def topk_probs(model, tokens, k):
    """The model's top-k tokens after `tokens` and their renormalised probabilities."""
    import mlx.core as mx
    import numpy as np

    logits = np.array(model.model(mx.array(tokens)[None])[0, -1].astype(mx.float32))
    top = np.argsort(-logits)[:k]
    p = np.exp(logits[top] - logits[top].max())
    return dict(zip(top.tolist(), (p / p.sum()).tolist(), strict=True))


def pair_distribution(model, prompt, k):
    """The exact distribution of the first two sampled tokens (top-k, temperature 1); an
    end-of-turn token ends the reply ("end")."""
    eos = model.tokenizer.eos_token_ids
    out: dict = {}
    for a, pa in topk_probs(model, prompt, k).items():
        if a in eos:
            out[("end",)] = out.get(("end",), 0) + pa
            continue
        for b, pb in topk_probs(model, [*prompt, a], k).items():
            key = (a, "end") if b in eos else (a, b)
            out[key] = out.get(key, 0) + pa * pb
    return out


def serving_url(lines: list[str], server: subprocess.Popen) -> str:
    """The base URL `qwen-mlx serve` announces in `lines` (its output as read so far), once
    it does (120 s at most); fails with the output if the server exits first."""
    import re

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in lines:
            found = re.search(r"serving .* at (http://127\.0\.0\.1:\d+)/v1", line)
            if found:
                return found.group(1)
        assert server.poll() is None, "".join(lines)
        time.sleep(0.1)
    raise AssertionError("the server did not start: " + "".join(lines))
