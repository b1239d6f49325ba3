"""LiteLLM (its four routes), LangChain (ChatOpenAI on chat completions and on Responses,
ChatAnthropic, ChatOllama), oterm (its chat path) and llm (the CLI) against `qwen-mlx
serve`, each set up by the README's "Use it from your tools" blocks run as written (only the
port is the test's): a plain reply, a streamed one, a tool round trip.

The test model never calls a tool by itself: the forcing proxy (tests/agents.py) forces
the call on a conversation's first request (the tool's parameters narrowed to constants),
and has the model write a constant reply (a JSON string) otherwise, which ends. Ollama's
chat API has no `tool_choice`, so nothing can force a call there: the tool round trips of
its clients (LiteLLM's `ollama_chat/`, ChatOllama) run on the scripted tiny model
(tests/scripted.py), which writes the call through the real engine and reply parser.
Interop tier: `pytest -m interop`; `pip install 'qwen-mlx[agents]'` installs the clients,
oterm apart (tests/oterm_driver.py runs in its own environment: it pins exact versions)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from .agents import (
    MODEL,
    NOTES,
    README_PORT,
    REPLY_TEXT,
    Call,
    Workspace,
    readme_blocks,
    readme_commands,
    readme_section,
    run_client,
)
from .helpers import ROOT

pytestmark = pytest.mark.interop

WEATHER = Call("get_weather", {"city": "Paris"})
QUESTION = "What is the weather in Paris?"


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def run_block(block: str, port: int, **replace: str) -> dict:
    """A README Python block run as written, its server's port the test's (and `replace`'s
    strings swapped, as the README's table says); its namespace."""
    code = block
    for old, new in replace.items():
        assert old in code, f"{old!r} is not in the README block"
        code = code.replace(old, new)
    code = code.replace(README_PORT, f"127.0.0.1:{port}")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


@pytest.fixture
def scripted_ollama(serve, script):
    """For Ollama's chat route, where no call can be forced: a server of the scripted tiny
    model that calls get_weather when asked the question, and answers the tool's result
    with the constant reply; its port and model name."""
    served = serve(key=None)
    script.reply(CALL_TEXT, when=QUESTION)
    script.reply(REPLY_TEXT, when=get_weather("Paris"))
    return int(served.base.rsplit(":", 1)[1]), served.engine.model.name


def _forced_then_answered(proxy, forced: str = "get_weather") -> None:
    assert [e.status for e in proxy.exchanges if e.path not in ("/api/show", "/api/tags")] == [
        200,
        200,
    ]
    assert [e.forced for e in proxy.exchanges if e.forced] == [forced]


# -- LiteLLM ------------------------------------------------------------------------------------


def _litellm_routes() -> list[tuple[str, str]]:
    """The README's table of LiteLLM models and their api_base, the port left as written."""
    part = readme_section()[readme_section().index("### LiteLLM") :]
    return re.findall(r"^\| `(\w+/qwen3-4b-instruct)` \| `(http://\S+)` \|", part, flags=re.M)


ROUTES = _litellm_routes()


@pytest.fixture
def litellm(monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
    return pytest.importorskip("litellm", reason="LiteLLM is not installed (qwen-mlx[agents])")


def _litellm_call(port: int, model: str, base: str) -> dict:
    (block,) = readme_blocks("python", "### LiteLLM")
    readme_model, readme_base = ROUTES[0]
    return run_block(block, port, **{f'"{readme_model}"': f'"{model}"', readme_base: base})


def test_the_readme_names_litellm_s_four_routes():
    assert [m.split("/")[0] for m, _ in ROUTES] == ["openai", "anthropic", "ollama_chat", "ollama"]


@pytest.mark.parametrize(("model", "base"), ROUTES, ids=[m.split("/")[0] for m, _ in ROUTES])
def test_litellm_answers_a_prompt(litellm, agent_proxy, model, base, capsys):
    namespace = _litellm_call(agent_proxy.port, model, base)
    assert namespace["reply"].choices[0].message.content == REPLY_TEXT
    # (LiteLLM prints a note of its own before it on the anthropic/ route)
    assert capsys.readouterr().out.splitlines()[-1] == REPLY_TEXT


@pytest.mark.parametrize(("model", "base"), ROUTES, ids=[m.split("/")[0] for m, _ in ROUTES])
def test_litellm_streams_a_reply(litellm, agent_proxy, model, base):
    base = base.replace(README_PORT, f"127.0.0.1:{agent_proxy.port}")
    chunks = litellm.completion(
        model=model,
        api_base=base,
        api_key="unused",
        messages=[{"role": "user", "content": "Hi!"}],
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == REPLY_TEXT


@pytest.mark.parametrize(("model", "base"), ROUTES, ids=[m.split("/")[0] for m, _ in ROUTES])
def test_litellm_runs_a_tool_round_trip(litellm, agent_proxy, model, base, request):
    port = agent_proxy.port
    if model.startswith("ollama_chat/"):
        port, name = request.getfixturevalue("scripted_ollama")  # the model calls by itself
        model = model.replace(MODEL, name)
    else:
        agent_proxy.reset([WEATHER])  # forced by the proxy (the model would not call it)
    base = base.replace(README_PORT, f"127.0.0.1:{port}")
    ask = [{"role": "user", "content": QUESTION}]
    first = litellm.completion(
        model=model, api_base=base, api_key="unused", messages=ask, tools=[WEATHER_TOOL]
    )
    message = first.choices[0].message
    (call,) = message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    result = {"role": "tool", "tool_call_id": call.id, "content": get_weather("Paris")}
    final = litellm.completion(
        model=model,
        api_base=base,
        api_key="unused",
        messages=[*ask, message.model_dump(), result],
        tools=None if model.startswith("ollama/") else [WEATHER_TOOL],
    )
    assert final.choices[0].message.content == REPLY_TEXT
    if not model.startswith("ollama_chat/"):
        _forced_then_answered(agent_proxy)
        assert "sunny in Paris" in json.dumps(agent_proxy.exchanges[-1].body)


# -- LangChain ----------------------------------------------------------------------------------

LANGCHAIN = {
    "ChatOpenAI": ("langchain_openai", 0),
    "ChatOpenAI-responses": ("langchain_openai", 1),
    "ChatAnthropic": ("langchain_anthropic", 2),
    "ChatOllama": ("langchain_ollama", 3),
}


def _langchain(name: str, port: int, model: str = MODEL):
    package, index = LANGCHAIN[name]
    pytest.importorskip(package, reason=f"{package} is not installed (qwen-mlx[agents])")
    block = readme_blocks("python", "### LangChain")[index]
    return run_block(block, port, **{f'"{MODEL}"': f'"{model}"'})["llm"]


def test_the_readme_has_a_block_for_each_langchain_model():
    blocks = readme_blocks("python", "### LangChain")
    assert len(blocks) == len(LANGCHAIN)
    assert "use_responses_api=True" in blocks[1]


@pytest.mark.parametrize("name", LANGCHAIN)
def test_langchain_answers_a_prompt(agent_proxy, name, capsys):
    _langchain(name, agent_proxy.port)
    assert capsys.readouterr().out.strip() == REPLY_TEXT


@pytest.mark.parametrize("name", LANGCHAIN)
def test_langchain_streams_a_reply(agent_proxy, name):
    llm = _langchain(name, agent_proxy.port)
    pieces = [chunk.text for chunk in llm.stream("Hi!")]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == REPLY_TEXT


@pytest.mark.parametrize("name", LANGCHAIN)
def test_langchain_runs_a_tool_round_trip(agent_proxy, name, request):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    if name == "ChatOllama":
        port, served_name = request.getfixturevalue("scripted_ollama")  # calls by itself
        llm = _langchain(name, port, model=served_name)
    else:
        llm = _langchain(name, agent_proxy.port)  # (its README block asks one question)
        agent_proxy.reset([WEATHER])  # forced by the proxy (the model would not call it)
    llm = llm.bind_tools([tool(get_weather)])
    ask = HumanMessage(QUESTION)
    ai = llm.invoke([ask])
    (call,) = ai.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})
    final = llm.invoke([ask, ai, ToolMessage(get_weather("Paris"), tool_call_id=call["id"])])
    assert final.text == REPLY_TEXT
    if name != "ChatOllama":
        _forced_then_answered(agent_proxy)
        assert "sunny in Paris" in json.dumps(agent_proxy.exchanges[-1].body)


# -- oterm --------------------------------------------------------------------------------------


OTERM_DRIVER = Path(__file__).with_name("oterm_driver.py")


def oterm_python() -> Path | None:
    """oterm's own interpreter: $QWEN_MLX_OTERM_PYTHON, or the virtual environment .ci/run
    makes for it (.agents/oterm). oterm pins exact versions of pydantic, ollama and
    huggingface-hub, so it cannot share the test environment."""
    given = os.environ.get("QWEN_MLX_OTERM_PYTHON")
    found = Path(given) if given else ROOT / ".agents" / "oterm" / "bin" / "python"
    return found if found.is_file() else None


@pytest.fixture
def oterm_run(agent_proxy):
    """Run oterm's chat path (tests/oterm_driver.py, in oterm's own environment) with the
    README's OLLAMA_URL pointed at the proxy; returns what it printed."""
    python = oterm_python()
    if python is None:
        pytest.skip(
            "oterm is not installed: python3 -m venv .agents/oterm && "
            ".agents/oterm/bin/pip install oterm (as .ci/run does), or set QWEN_MLX_OTERM_PYTHON"
        )
    (block,) = readme_blocks("sh", "### oterm")
    (url,) = re.findall(r"^export OLLAMA_URL=(\S+)$", block, flags=re.M)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ["HOME"],
        "OLLAMA_URL": url.replace(README_PORT, f"127.0.0.1:{agent_proxy.port}"),
    }

    def run(mode: str) -> dict:
        done = run_client([python, OTERM_DRIVER, mode], env=env, cwd=Path(os.environ["HOME"]))
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        (listed,) = result["listed"]
        assert listed.endswith(":latest")  # the name /api/tags gives, chatted with on /v1
        return result

    return run


def test_oterm_answers_a_prompt(oterm_run):
    assert oterm_run("plain")["output"] == REPLY_TEXT


def test_oterm_streams_a_reply(oterm_run):
    pieces = oterm_run("stream")["pieces"]
    assert len(pieces) > 1 and "".join(pieces) == REPLY_TEXT


def test_oterm_runs_a_tool_round_trip(oterm_run, agent_proxy):
    agent_proxy.reset([WEATHER])  # forced by the proxy (the model would not call it)
    result = oterm_run("tools")
    assert result["output"] == REPLY_TEXT
    assert result["returns"] == ["sunny in Paris"]
    _forced_then_answered(agent_proxy)


# -- llm ----------------------------------------------------------------------------------------


def _llm_line(argv: list[str]) -> str:
    """Which of the README's llm lines this is."""
    if argv[1] == "keys":
        return "keys"
    return next((flag for flag in ("--no-stream", "--functions") if flag in argv), "stream")


@pytest.fixture(scope="module")
def llm_cli(agent_relay, tmp_path_factory):
    """A user's llm: the README's extra-openai-models.yaml in its folder (LLM_USER_PATH),
    its key set as the README says; returns a runner of the README's `llm` lines by kind
    (`stream`, `--no-stream`, `--functions`)."""
    program = Path(sys.executable).with_name("llm")
    if not program.is_file():
        program = shutil.which("llm")
    if program is None:
        pytest.skip("llm is not installed (qwen-mlx[agents])")
    tmp_path = tmp_path_factory.mktemp("llm_user")
    space = Workspace.make(tmp_path)
    folder = tmp_path / "llm"
    folder.mkdir()
    (config,) = readme_blocks("yaml", "### llm")
    config = config.replace(README_PORT, f"127.0.0.1:{agent_relay.port}")
    (folder / "extra-openai-models.yaml").write_text(config)
    env = space.env(LLM_USER_PATH=str(folder))
    env["PATH"] = os.pathsep.join([str(Path(program).parent), env["PATH"]])
    lines = {_llm_line(argv): argv for argv in readme_commands("llm", "### llm")}
    assert sorted(lines) == ["--functions", "--no-stream", "keys", "stream"]

    def run(kind: str) -> str:
        done = run_client(lines[kind], env=env, cwd=space.project, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    run("keys")
    logs = run_client(["llm", "logs", "path"], env=env, cwd=space.project, timeout=60)
    assert Path(logs.stdout.strip()).parent == folder  # where the README says the file goes
    return run


def test_llm_answers_a_prompt(agent_proxy, llm_cli):
    assert llm_cli("--no-stream").strip() == REPLY_TEXT
    (sent,) = agent_proxy.exchanges
    assert not sent.body.get("stream")


def test_llm_streams_a_reply(agent_proxy, llm_cli):
    assert llm_cli("stream").strip() == REPLY_TEXT
    (sent,) = agent_proxy.exchanges
    assert sent.body["stream"] is True and sent.content_type.startswith("text/event-stream")


def test_llm_runs_a_tool_round_trip(agent_proxy, llm_cli):
    agent_proxy.reset([Call("read_notes")])  # forced by the proxy (the model would not call it)
    assert llm_cli("--functions").strip() == REPLY_TEXT
    _forced_then_answered(agent_proxy, "read_notes")
    assert NOTES.strip() in json.dumps(agent_proxy.exchanges[-1].body)
