"""The README's Python blocks run as written, in order, like a notebook, against the demo
model (the only change: the model name, and the port of the server they talk to). Those of
"Use it from your tools" need the agent clients: the interop tier runs them
(tests/test_agents_python.py)."""

from __future__ import annotations

import re
import sys

import pytest

from .helpers import MCP_NOTES, ROOT, write_pdf
from .served import serving

README = (ROOT / "README.md").read_text()
TOOLS_SECTION = re.compile(r"^## Use it from your tools\n.*?(?=^## )", flags=re.S | re.M)
BLOCKS = re.findall(r"^```python\n(.*?)^```", TOOLS_SECTION.sub("", README), flags=re.S | re.M)
DOCUMENT = "# Launch plan\n\nThe release is on 14 March. Risks: the build farm is slow.\n"


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.interop  # every block against the demo model: half a minute
def test_every_python_block_runs_against_the_demo_model(home, tmp_path, monkeypatch, capsys):
    from qwen_mlx import Model, load
    from qwen_mlx.chat import documents
    from qwen_mlx.convert.demo import ensure_demo_model

    name = ensure_demo_model()
    # Random weights never end a reply: keep each one short (the code runs as written).
    defaults = Model.default_params.fget
    monkeypatch.setattr(
        Model, "default_params", property(lambda m: defaults(m).replace(max_tokens=16))
    )
    for function in (documents.summarize, documents.ask):
        monkeypatch.setitem(function.__kwdefaults__, "reply_tokens", 16)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.md").write_text(DOCUMENT)
    write_pdf(tmp_path / "report.pdf", "The release is on 14 March.")
    (tmp_path / "notes_server.py").write_text(MCP_NOTES.read_text())
    namespace: dict = {}
    with serving(load(name), key=None) as served:
        port = served.base.rsplit(":", 1)[1]
        for i, block in enumerate(BLOCKS, start=1):
            code = block.replace('"qwen3-4b-instruct"', repr(name))
            code = code.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            code = code.replace('stdio("python"', f"stdio({sys.executable!r}")
            try:
                exec(compile(code, f"README.md python block {i}", "exec"), namespace)
            except Exception as e:
                pytest.fail(f"README python block {i} failed: {type(e).__name__}: {e}\n{block}")
    assert (tmp_path / "kyoto.json").is_file()  # the ChatSession block saved its session
    assert "tokens/s" in capsys.readouterr().out
