"""Turning validated requests into engine jobs, and the model's text into OpenAI replies.

Preparing renders the chat template and tokenizes, applies `tool_choice` (a forced call is
opened by the server and its JSON held to the tools' schemas) and `response_format` (a
JSON-schema logits processor), sets sampling parameters over the model's defaults and
checks the prompt fits. It runs on the engine's preparation threads and evaluates no MLX
arrays: all model work stays on the model thread.

A prompt far over the context is refused without tokenizing it whole (a 10 MB body took
18 s): first by its characters (no token covers more than the vocabulary's longest
spelling), then, when it has many characters per token of context, by counting its
tokens piece by piece until the count is over; only a prompt near the context is
tokenized whole, so the work is bounded by the context, not by the body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..chat.tools import CALL_CLOSE, CALL_OPEN, Tool, as_tool, call_schema
from ..runtime import SamplingParams
from .engine import Engine
from .errors import APIError
from .jobs import Job
from .reply import Reply
from .schemas import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    ContentPart,
    ResponseFormat,
    ToolChoiceFunction,
)

# Prompts with more characters than this per token of context are counted piece by piece
# before being tokenized whole (real text has about four).
_COUNT_ABOVE = 8
_PIECE = 8192  # characters per piece when counting


@dataclass(frozen=True)
class Prepared:
    """A chat request made ready: its job, and the reply that shapes its text."""

    job: Job
    reply: Reply


def prepare_chat(
    engine: Engine, req: ChatRequest, *, reply_ids: Mapping[int, Sequence[int]] | None = None
) -> Prepared:
    """Render and tokenize a chat request, apply its tool choice and response format, and
    check it fits; runs on a preparation thread. `reply_ids` gives the exact token ids the
    model produced for some assistant messages (by index), which go into the prompt as
    they are, so a conversation the server remembers meets its cache token for token."""
    import jinja2

    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
    model = engine.model
    messages = [_template_message(m, i) for i, m in enumerate(req.messages)]
    for i, ids in (reply_ids or {}).items():
        messages[i]["token_ids"] = list(ids)
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
    try:  # control tokens spelled in any message or schema are read as text
        tokens = model.render_tokens(
            messages,
            tools=[t.spec() for t in tools] or None,
            check=lambda text: _check_length(engine, text, "messages"),
        )
    except jinja2.TemplateError as e:
        raise APIError(400, f"The chat template cannot render these messages: {e}") from e
    prefix = suffix = ""
    schema = response_schema
    if forced:  # open the call ourselves and hold the JSON to the tools' schemas
        prefix, suffix = CALL_OPEN + "\n", "\n" + CALL_CLOSE
        tokens += model.encode(prefix)
        schema = call_schema(forced)
    engine.check_context(len(tokens), "messages")
    params = _sampling(engine, req, len(tokens), req.max_completion_tokens or req.max_tokens)
    processors = []
    if schema is not None:
        from ..runtime.structured import JsonSchemaProcessor

        try:  # compiles the grammar only: the processor first touches MLX when it runs
            processors.append(JsonSchemaProcessor(model, schema))
        except ValueError as e:
            raise APIError(400, str(e), param="response_format") from e
    parse_calls = bool(tools) and response_schema is None
    reply = Reply(
        parse_calls=parse_calls, prefix=prefix, suffix=suffix, forced=[t.name for t in forced]
    )
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    speculative = req.speculative is not False
    job = Job(tokens, params, processors, logprobs=logprobs, speculative=speculative)
    return Prepared(job, reply)


def prepare_completion(engine: Engine, req: CompletionRequest) -> Job:
    """Tokenize a completion request's prompt (text or token ids) and check it fits."""
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise APIError(400, "Send one prompt per request.", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        _check_length(engine, prompt, "prompt")
        tokens = engine.model.encode(prompt)
    else:
        tokens = list(prompt)
        vocab = int(engine.model.config["vocab_size"])
        if any(not 0 <= t < vocab for t in tokens):
            raise APIError(400, f"Token ids must be in [0, {vocab}).", param="prompt")
    if not tokens:
        raise APIError(400, "The prompt is empty.", param="prompt")
    engine.check_context(len(tokens), "prompt")
    params = _sampling(engine, req, len(tokens), req.max_tokens)
    return Job(tokens, params, logprobs=req.logprobs, speculative=req.speculative is not False)


def _check_length(engine: Engine, text: str, param: str) -> None:
    """Refuse `text` (a whole prompt) early when it cannot fit the context, reading as
    little of it as that takes (see the module docstring)."""
    limit = engine.context_limit
    engine.check_characters(len(text), param)  # too long, whatever it says
    if len(text) > limit * _COUNT_ABOVE:
        enough = limit + limit // 4 + 64  # well over: pieces may count a token or two apart
        counted = _count_tokens(engine.model, text, enough)
        if counted >= enough:
            engine.check_context(counted, param, at_least=True)


def _count_tokens(model: Any, text: str, enough: int) -> int:
    """The tokens of `text`, counted piece by piece until there are `enough`. Pieces end
    before a space that follows a non-space, where BPE pre-tokenizers split anyway, so
    the count is that of the whole text (and one long run of letters is no slower)."""
    total = pos = 0
    while pos < len(text) and total < enough:
        end = _piece_end(text, pos + _PIECE)
        total += len(model.encode(text[pos:end]))
        pos = end
    return total


def _piece_end(text: str, at: int) -> int:
    if at >= len(text):
        return len(text)
    low = at - _PIECE // 2
    cut = text.rfind(" ", low, at)
    while cut > low and text[cut - 1].isspace():
        cut = text.rfind(" ", low, cut)
    return cut if cut > low else at


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
