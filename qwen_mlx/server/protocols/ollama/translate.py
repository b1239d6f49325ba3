"""Ollama's requests as the shared request (`..prompt`): `options` as sampling (held to
the server's bounds), `format` ("json" or a JSON schema) as a response schema, messages
with their tool calls and tool results, function tools; `num_ctx` caps the request's
context (prompt plus reply); images, fill-in-the-middle, custom templates and the
deprecated `context` are refused in words that say so."""

from __future__ import annotations

from typing import Any

from ...engine import Engine
from ...errors import APIError
from ...jobs import Job
from ...prepare import Prepared, prepare_chat, prepare_completion
from ...prompt import ChatPrompt, TextPrompt, function_tool, message, tool_call
from ...schemas import Sampling, sampling
from .schemas import OllamaChatRequest, OllamaGenerateRequest, OllamaMessage, OllamaOptions


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


def chat_job(engine: Engine, req: OllamaChatRequest) -> Prepared:
    """On a preparation thread: an /api/chat request's job, and the reply that shapes it."""
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


def generate_job(engine: Engine, req: OllamaGenerateRequest) -> Job:
    """On a preparation thread: an /api/generate request's job (`raw`: the prompt as it
    is; otherwise through the chat template, with `system`)."""
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
