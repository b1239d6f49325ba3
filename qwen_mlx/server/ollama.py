"""Ollama's API over the same engine, so apps that speak only Ollama work unchanged.

`/api/chat` and `/api/generate` (streamed as NDJSON, one JSON object a line, unless
`"stream": false`), `/api/tags`, `/api/show`, `/api/ps` and `/api/version`. A request is
turned into the shared request it means (`..prompt`) and prepared by `prepare.py`, so
templates, tool calls, JSON schemas and sampling work as they do on
`/v1/chat/completions`.

Ollama's `options` map onto our sampling parameters (temperature, top_p, top_k, min_p,
num_predict, stop, seed, repeat_penalty, presence and frequency penalties); `num_ctx`
caps the request's context (prompt plus reply); options that steer Ollama's own runner
(num_gpu, num_thread, mirostat, ...) are accepted and have no effect. `keep_alive` is
accepted: the model stays loaded for the life of the server. Errors come back as
Ollama's `{"error": "..."}`, mid-stream ones as such a line; so do those of every other
path under /api/ (an unknown route, a wrong method, an oversized body: `error_body`).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from ..chat.tools import ToolCall
from . import relay
from .engine import Engine
from .errors import APIError
from .guard import KeySource, bearer_token
from .jobs import Finished, Job
from .prepare import Prepared, prepare_chat, prepare_completion
from .prompt import ChatPrompt, TextPrompt, function_tool, message, tool_call
from .protocol import Protocol, ServerContext
from .reply import Outcome
from .schemas import Sampling, ToolSpec, sampling

# The Ollama API version these routes follow; apps check it before using newer features
# (tools need 0.3, JSON-schema formats 0.5).
OLLAMA_API_VERSION = "0.12.0"
PREFIX = "/api/"
_FOREVER = timedelta(days=365 * 10)  # keep_alive: the model is never unloaded


# -- request bodies -----------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OllamaOptions(_Body):
    """The options we act on; Ollama's runner settings (num_gpu, ...) are ignored."""

    temperature: float | None = Field(default=None, strict=True, allow_inf_nan=False, ge=0)
    top_p: float | None = Field(default=None, strict=True, allow_inf_nan=False, gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, strict=True, allow_inf_nan=False, ge=0, le=1)
    num_predict: StrictInt | None = None  # -1: no limit, -2: fill the context
    num_ctx: StrictInt | None = Field(default=None, ge=1)
    stop: list[str] | str | None = None
    seed: StrictInt | None = None
    repeat_penalty: float | None = Field(default=None, strict=True, allow_inf_nan=False, gt=0)
    presence_penalty: float | None = Field(default=None, strict=True, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, strict=True, allow_inf_nan=False)


class _CallFunction(_Body):
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class _ToolCallIn(_Body):
    function: _CallFunction


class OllamaMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[Any] | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_name: str | None = None


class _Generating(_Body):
    model: str | None = None
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    stream: StrictBool = True  # Ollama streams unless told not to
    keep_alive: float | str | None = None  # accepted; the model stays loaded


class OllamaChatRequest(_Generating):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[ToolSpec] | None = None


class OllamaGenerateRequest(_Generating):
    prompt: str = ""
    system: str | None = None
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: StrictBool = False
    images: list[Any] | None = None


class _ModelRequest(_Body):
    model: str | None = None
    name: str | None = None  # what older clients send


# -- the router ---------------------------------------------------------------------------


def install(router: APIRouter, ctx: ServerContext) -> None:
    """The /api routes over `ctx`'s engine."""
    engine, guard = ctx.engine, ctx.guard

    @router.get("/api/version")
    async def version() -> dict[str, Any]:
        return {"version": OLLAMA_API_VERSION}

    @router.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [_model_entry(engine)]}

    @router.get("/api/ps")
    async def ps() -> dict[str, Any]:
        entry = _model_entry(engine)
        entry.pop("modified_at")
        entry["expires_at"] = _stamp(datetime.now(timezone.utc) + _FOREVER)
        entry["size_vram"] = entry["size"]  # unified memory: it all is
        entry["context_length"] = engine.context_limit
        return {"models": [entry]}

    @router.post("/api/show")
    async def show(request: Request) -> dict[str, Any]:
        req = await guard.read(request, _ModelRequest)
        _check_model(engine, req.model or req.name)
        return _show(engine)

    @router.post("/api/chat")
    async def chat(request: Request) -> Any:
        req = await guard.read(request, OllamaChatRequest)
        _check_model(engine, req.model)
        started = time.perf_counter()
        if not req.messages:  # how Ollama apps load (or unload) a model ahead of use
            return _loaded(engine, req, "message", {"role": "assistant", "content": ""})
        prepared = await engine.prepare(_prepare_chat, engine, req)
        job, reply = prepared.job, prepared.reply
        if req.stream:
            return relay.stream(engine, job, request, _ChatLines(engine, started), reply)
        whole = await relay.whole(engine, job, request, reply)
        message = _message(whole.outcome.content or "", whole.outcome.calls)
        return {**_head(engine), "message": message, **_final(whole.done, started)}

    @router.post("/api/generate")
    async def generate(request: Request) -> Any:
        req = await guard.read(request, OllamaGenerateRequest)
        _check_model(engine, req.model)
        started = time.perf_counter()
        if not req.prompt and not req.system:
            return _loaded(engine, req, "response", "")
        job = await engine.prepare(_prepare_generate, engine, req)
        if req.stream:
            return relay.stream(engine, job, request, _GenerateLines(engine, started))
        whole = await relay.whole(engine, job, request)
        return {**_head(engine), "response": whole.text, **_final(whole.done, started)}


def ollama_error(e: APIError) -> dict[str, Any]:
    """An error in Ollama's shape (the server's error handling asks for it on every path
    under /api/, an unknown route's or a refused body's too)."""
    return {"error": e.message}


def _check_model(engine: Engine, requested: str | None) -> None:
    """Ollama names carry a tag (`name:latest`); ours is the one tag there is."""
    if requested is not None and requested.endswith(":latest"):
        requested = requested.removesuffix(":latest")
    engine.check_model(requested)


# -- preparing ----------------------------------------------------------------------------


def _sampling(options: OllamaOptions | None) -> Sampling:
    """Ollama's options as the server's sampling fields (held to their bounds)."""
    o = options or OllamaOptions()
    return sampling(
        temperature=o.temperature,
        top_p=o.top_p,
        top_k=o.top_k,
        min_p=o.min_p,
        max_tokens=o.num_predict if o.num_predict and o.num_predict > 0 else None,
        stop=([o.stop] if isinstance(o.stop, str) else o.stop) or None,
        seed=o.seed,
        repetition_penalty=o.repeat_penalty,
        presence_penalty=o.presence_penalty,
        frequency_penalty=o.frequency_penalty,
    )


def _response_schema(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt == "json":
        return {"type": "object"}
    return fmt if isinstance(fmt, dict) and fmt else None


def _no_images(images: list[Any] | None, param: str) -> None:
    if images:
        raise APIError(
            400, f"{param}: this model reads text only; send the request without images."
        )


def _template_message(m: OllamaMessage, index: int) -> dict[str, Any]:
    _no_images(m.images, f"messages.{index}.images")
    return message(
        m.role,
        m.content or "",
        tool_calls=[
            tool_call(f"call_{i}", c.function.name, c.function.arguments)
            for i, c in enumerate(m.tool_calls or [])
        ],
        name=m.tool_name if m.role == "tool" and m.tool_name else None,
    )


def _cap_context(job: Job, num_ctx: int | None) -> Job:
    """`num_ctx` as the request's context: the prompt must fit, the reply gets the rest."""
    if num_ctx is None:
        return job
    room = num_ctx - len(job.tokens)
    if room <= 0:
        raise APIError(
            400,
            f"The prompt has {len(job.tokens):,} tokens, more than options.num_ctx "
            f"({num_ctx:,}) leaves room for; raise num_ctx or shorten the prompt.",
        )
    job.params = job.params.replace(max_tokens=min(job.params.max_tokens, room))
    return job


def _prepare_chat(engine: Engine, req: OllamaChatRequest) -> Prepared:
    prompt = ChatPrompt(
        [_template_message(m, i) for i, m in enumerate(req.messages)],
        tools=[
            function_tool(t.function.name, t.function.description, t.function.parameters)
            for t in req.tools or []
        ],
        response_schema=_response_schema(req.format),
        sampling=_sampling(req.options),
    )
    prepared = prepare_chat(engine, prompt)
    _cap_context(prepared.job, req.options and req.options.num_ctx)
    return prepared


def _prepare_generate(engine: Engine, req: OllamaGenerateRequest) -> Job:
    _no_images(req.images, "images")
    for field, what in (("suffix", "fill-in-the-middle"), ("template", "custom templates")):
        if getattr(req, field):
            raise APIError(400, f"{field}: {what} are not supported; leave it out.")
    if req.context:
        raise APIError(
            400, "context (deprecated in Ollama) is not supported; send the turns to /api/chat."
        )
    options = req.options or OllamaOptions()
    if req.raw:
        if req.format:
            raise APIError(400, "format cannot be combined with raw; leave one out.")
        job = prepare_completion(engine, TextPrompt(req.prompt, sampling=_sampling(options)))
        return _cap_context(job, options.num_ctx)
    messages = [message("system", req.system)] if req.system else []
    messages.append(message("user", req.prompt))
    prompt = ChatPrompt(
        messages, response_schema=_response_schema(req.format), sampling=_sampling(options)
    )
    return _cap_context(prepare_chat(engine, prompt).job, options.num_ctx)


# -- replies ------------------------------------------------------------------------------


def _stamp(when: datetime | None = None) -> str:
    return (when or datetime.now(timezone.utc)).isoformat().replace("+00:00", "Z")


def _head(engine: Engine) -> dict[str, Any]:
    return {"model": _model_name(engine), "created_at": _stamp()}


def _loaded(engine: Engine, req: _Generating, key: str, value: Any) -> dict[str, Any]:
    """The answer to an empty request: the model is loaded (even with keep_alive 0, which
    asks Ollama to unload it: this server has the one model, loaded while it runs)."""
    return {**_head(engine), key: value, "done": True, "done_reason": "load"}


def _final(done: Finished, started: float) -> dict[str, Any]:
    """The closing fields: done, why, and Ollama's counts and durations (nanoseconds)."""
    prompt_ns = int(done.time_to_first_token * 1e9)
    eval_ns = int(done.completion_tokens / done.generation_tps * 1e9) if done.generation_tps else 0
    return {
        "done": True,
        "done_reason": "length" if done.finish_reason == "length" else "stop",
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": done.prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": done.completion_tokens,
        "eval_duration": eval_ns,
    }


def _tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "function": {"index": i, "name": c.name, "arguments": c.arguments or {}}}
        for i, c in enumerate(calls)
    ]


def _message(content: str, calls: list[ToolCall]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = _tool_calls(calls)
    return message


def _line(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


class _Lines(relay.Encoder):
    """Ollama's stream: one JSON object a line, the last with `done` and the counts; an
    error arrives as an `{"error": ...}` line."""

    media_type = relay.NDJSON

    def __init__(self, engine: Engine, started: float) -> None:
        self.engine = engine
        self.started = started

    def error(self, error: APIError) -> list[str]:
        return [_line(ollama_error(error))]


class _ChatLines(_Lines):
    def part(self, message: dict[str, Any]) -> str:
        return _line({**_head(self.engine), "message": message, "done": False})

    def text(self, piece: str, shown: str) -> list[str]:
        return [self.part({"role": "assistant", "content": shown})] if shown else []

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        lines = []
        if outcome.tail or outcome.calls:
            lines.append(self.part(_message(outcome.tail, outcome.calls)))
        final = {**_head(self.engine), "message": {"role": "assistant", "content": ""}}
        return [*lines, _line({**final, **_final(done, self.started)})]


class _GenerateLines(_Lines):
    def text(self, piece: str, shown: str) -> list[str]:
        return [_line({**_head(self.engine), "response": piece, "done": False})]

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        return [_line({**_head(self.engine), "response": "", **_final(done, self.started)})]


# -- the model's description --------------------------------------------------------------


def _model_name(engine: Engine) -> str:
    return f"{engine.model.name}:latest"


def _size(engine: Engine) -> int:
    model = engine.model
    if model.manifest is not None:
        return sum(f.size for f in model.manifest.files)
    return sum(p.stat().st_size for p in model.path.glob("*.safetensors"))


def _details(engine: Engine) -> dict[str, Any]:
    model = engine.model
    family = str(model.config.get("model_type", "qwen3"))
    q = model.config.get("quantization")
    parameters = model.manifest.parameters if model.manifest else 0
    if parameters >= 1e9:
        size = f"{parameters / 1e9:.1f}B"
    else:
        size = f"{parameters / 1e6:.1f}M" if parameters else ""
    return {
        "parent_model": "",
        "format": "mlx",
        "family": family,
        "families": [family],
        "parameter_size": size,
        "quantization_level": f"Q{q['bits']}" if q else model.quantization_label.upper(),
    }


def _modified(engine: Engine) -> str:
    manifest = engine.model.manifest
    try:
        return _stamp(datetime.fromisoformat(manifest.created_at).astimezone(timezone.utc))
    except (AttributeError, ValueError):  # no manifest, or no date in it
        return _stamp(datetime.fromtimestamp(engine.model.path.stat().st_mtime, timezone.utc))


def _model_entry(engine: Engine) -> dict[str, Any]:
    name = _model_name(engine)
    return {
        "name": name,
        "model": name,
        "modified_at": _modified(engine),
        "size": _size(engine),
        "digest": engine.model.fingerprint,
        "details": _details(engine),
    }


def _show(engine: Engine) -> dict[str, Any]:
    model = engine.model
    config = model.config
    family = str(config.get("model_type", "qwen3"))
    params = model.default_params
    parameters = "\n".join(
        f"{key:<15}{value}"
        for key, value in (
            ("temperature", params.temperature),
            ("top_p", params.top_p),
            ("top_k", params.top_k),
            ("num_ctx", engine.context_limit),
            ("num_predict", params.max_tokens),
            *(("stop", json.dumps(s)) for s in params.stop),
        )
    )
    info = {
        "general.architecture": family,
        "general.name": model.name,
        "general.parameter_count": model.manifest.parameters if model.manifest else None,
        f"{family}.context_length": engine.context_limit,
        f"{family}.embedding_length": config.get("hidden_size"),
        f"{family}.block_count": config.get("num_hidden_layers"),
        f"{family}.attention.head_count": config.get("num_attention_heads"),
        f"{family}.attention.head_count_kv": config.get("num_key_value_heads"),
        f"{family}.vocab_size": config.get("vocab_size"),
    }
    return {
        "modelfile": f"# Served by qwen-mlx from {model.path.name}\nFROM {model.name}\n",
        "parameters": parameters,
        "template": getattr(model.tokenizer, "chat_template", None) or "",
        "license": (model.manifest.license if model.manifest else None) or "",
        "details": _details(engine),
        "model_info": {k: v for k, v in info.items() if v is not None},
        "capabilities": ["completion", "tools"],
        "modified_at": _modified(engine),
    }


PROTOCOL = Protocol(
    name="ollama",
    prefixes=(PREFIX,),
    install=install,
    error_body=ollama_error,
    key=KeySource(bearer_token, "Set OLLAMA_API_KEY to it."),  # its clients send a Bearer
)
