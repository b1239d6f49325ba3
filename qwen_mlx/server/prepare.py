"""Turning validated requests into engine jobs, and the model's text into OpenAI replies.

Preparing renders the chat template and tokenizes, applies `tool_choice` (a forced call is
opened by the server and its JSON held to the tools' schemas) and `response_format` (a
JSON-schema logits processor), sets sampling parameters over the model's defaults and
checks the prompt fits. It runs on the engine's preparation thread and evaluates no MLX
arrays: all model work stays on the model thread.
"""

from __future__ import annotations

import logging
from typing import Any

from ..runtime import SamplingParams
from ..tools import CALL_CLOSE, CALL_OPEN, CallFilter, Tool, ToolCall, as_tool, parse_tool_calls
from .engine import Engine, Job
from .errors import APIError
from .schemas import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    ContentPart,
    ResponseFormat,
    ToolChoiceFunction,
)

logger = logging.getLogger(__name__)


def prepare_chat(engine: Engine, req: ChatRequest) -> tuple[Job, Reply]:
    """Render and tokenize a chat request, apply its tool choice and response format, and
    check it fits; runs on the preparation thread."""
    import jinja2

    model = engine.model
    messages = [_template_message(m, i) for i, m in enumerate(req.messages)]
    tools = [as_tool(t.model_dump(exclude_none=True)) for t in req.tools or []]
    choice = req.tool_choice
    forced: list[Tool] = []
    if choice == "none":
        tools = []
    elif choice == "required" or isinstance(choice, ToolChoiceFunction):
        if isinstance(choice, ToolChoiceFunction):
            forced = [t for t in tools if t.name == choice.function.name]
        else:
            forced = tools
        if not forced:
            raise APIError(400, "tool_choice asks for a tool not in `tools`.", param="tool_choice")
    response_schema = _response_schema(req.response_format)
    if forced and response_schema is not None:
        raise APIError(
            400,
            "response_format cannot be combined with a forced tool_choice.",
            param="tool_choice",
        )
    try:
        tokens = model.render_tokens(messages, tools=[t.spec() for t in tools] or None)
    except jinja2.TemplateError as e:
        raise APIError(400, f"The chat template cannot render these messages: {e}") from e
    prefix = suffix = ""
    schema = response_schema
    if forced:  # open the call ourselves and hold the JSON to the tools' schemas
        prefix, suffix = CALL_OPEN + "\n", "\n" + CALL_CLOSE
        tokens += model.encode(prefix)
        schema = _call_schema(forced)
    engine.check_context(len(tokens), "messages")
    params = _sampling(engine, req, len(tokens), req.max_completion_tokens or req.max_tokens)
    processors = []
    if schema is not None:
        from ..structured import JsonSchemaProcessor

        try:  # compiles the grammar only: the processor first touches MLX when it runs
            processors.append(JsonSchemaProcessor(model, schema))
        except ValueError as e:
            raise APIError(400, str(e), param="response_format") from e
    parse_calls = bool(tools) and response_schema is None
    reply = Reply(parse_calls=parse_calls, prefix=prefix, suffix=suffix)
    return Job(tokens, params, processors), reply


def prepare_completion(engine: Engine, req: CompletionRequest) -> Job:
    """Tokenize a completion request's prompt (text or token ids) and check it fits."""
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise APIError(400, "Send one prompt per request.", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        tokens = engine.model.encode(prompt)
    else:
        tokens = list(prompt)
        vocab = int(engine.model.config["vocab_size"])
        if any(not 0 <= t < vocab for t in tokens):
            raise APIError(400, f"Token ids must be in [0, {vocab}).", param="prompt")
    if not tokens:
        raise APIError(400, "The prompt is empty.", param="prompt")
    engine.check_context(len(tokens), "prompt")
    return Job(tokens, _sampling(engine, req, len(tokens), req.max_tokens))


class Reply:
    """Shapes the model's text into an OpenAI assistant message: `<tool_call>` blocks come
    out of the content and become `tool_calls` (malformed ones are logged and dropped)."""

    def __init__(self, *, parse_calls: bool, prefix: str = "", suffix: str = "") -> None:
        self._filter = CallFilter() if parse_calls else None
        self._parts: list[str] = []
        self._suffix = suffix
        self.feed(prefix)

    def feed(self, text: str) -> str:
        """Text from the model; returns the content to show now."""
        self._parts.append(text)
        return self._filter.feed(text) if self._filter else text

    def finish(self, reason: str) -> tuple[str, str | None, list[ToolCall], str]:
        """(content still to show, whole content, tool calls, OpenAI finish reason)."""
        tail = self.feed(self._suffix) if self._suffix and reason == "stop" else ""
        text = "".join(self._parts)
        if self._filter is None:
            return tail, text, [], reason
        tail += self._filter.flush()
        prose, calls = parse_tool_calls(text)
        valid = [c for c in calls if c.error is None]
        for bad in (c for c in calls if c.error is not None):
            logger.warning("dropped a malformed tool call (%s): %.200s", bad.error, bad.raw)
        if not calls:
            return tail, text, [], reason
        return tail, prose or None, valid, "tool_calls" if valid and reason == "stop" else reason


def _sampling(
    engine: Engine,
    req: ChatRequest | CompletionRequest,
    prompt_tokens: int,
    requested: int | None,
) -> SamplingParams:
    """The request's sampling parameters over the model's defaults, with max_tokens capped
    by the server and by the context left after the prompt."""
    room = engine.context_limit - prompt_tokens
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if not all(stop):
        raise APIError(400, "stop strings must not be empty.", param="stop")
    try:
        return engine.model.default_params.replace(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            min_p=req.min_p,
            repetition_penalty=req.repetition_penalty,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            seed=None if req.seed is None else req.seed % 2**64,
            max_tokens=min(requested or engine.max_tokens_cap, engine.max_tokens_cap, room),
            stop=tuple(stop),
        )
    except ValueError as e:
        raise APIError(400, str(e)) from e


def _text(content: str | list[ContentPart] | None, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    for part in content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"Only text content is supported, not {part.type!r}.", param=param)
    return "\n".join(part.text for part in content if part.text is not None)


def _template_message(message: ChatMessage, index: int) -> dict[str, Any]:
    """A message as the chat template expects it (OpenAI's shape, content always a string)."""
    out: dict[str, Any] = {
        "role": "system" if message.role == "developer" else message.role,
        "content": _text(message.content, f"messages.{index}.content"),
    }
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id or f"call_{i}",
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for i, call in enumerate(message.tool_calls)
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _response_schema(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(
            400, "response_format json_schema needs json_schema.schema.", param="response_format"
        )
    return fmt.json_schema.schema_


def _call_schema(tools: list[Tool]) -> dict[str, Any]:
    """JSON a forced tool call must be: one of these tools' names with valid arguments."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}
