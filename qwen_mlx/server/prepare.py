"""The shared request (prompt.py) made into an engine job, for every protocol.

Preparing a chat renders the chat template and tokenizes, applies the tool choice (a
forced call is opened by the server and its JSON held to the tools' schemas) and the
response schema (a JSON-schema logits processor), sets sampling parameters over the
model's defaults and checks the prompt fits. It runs on the engine's preparation threads
and evaluates no MLX arrays: all model work stays on the model thread.

A prompt far over the context is refused without tokenizing it whole (a 10 MB body took
18 s): first by its characters (no token covers more than the vocabulary's longest
spelling), then, when it has many characters per token of context, by counting its
tokens piece by piece until the count is over; only a prompt near the context is
tokenized whole, so the work is bounded by the context, not by the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..chat.tools import CALL_CLOSE, CALL_OPEN, Tool, call_schema
from ..runtime import SamplingParams
from .engine import Engine
from .errors import APIError
from .jobs import Job
from .prompt import ChatPrompt, NamedTool, TextPrompt
from .reply import Reply
from .schemas import Sampling

# Prompts with more characters than this per token of context are counted piece by piece
# before being tokenized whole (real text has about four).
_COUNT_ABOVE = 8
_PIECE = 8192  # characters per piece when counting


@dataclass(frozen=True)
class Prepared:
    """A chat made ready: its job, and the reply that shapes its text."""

    job: Job
    reply: Reply


def prepare_chat(engine: Engine, prompt: ChatPrompt) -> Prepared:
    """Render and tokenize a chat, apply its tool choice and response schema, and check
    it fits; runs on a preparation thread."""
    model = engine.model
    tokens, tools, forced = _chat_tokens(engine, prompt, fit=True)
    response_schema = prompt.response_schema
    prefix = suffix = ""
    schema = response_schema
    if forced:  # open the call ourselves and hold the JSON to the tools' schemas
        prefix, suffix = CALL_OPEN + "\n", "\n" + CALL_CLOSE
        tokens += model.encode(prefix)
        schema = call_schema(forced)
    engine.check_context(len(tokens), "messages")
    params = _sampling(engine, prompt.sampling, len(tokens))
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
    turns = engine.turns  # where the reply begins, for the prompt cache (`turns.py`)
    job = Job(
        tokens,
        params,
        processors,
        logprobs=prompt.logprobs,
        speculative=prompt.speculative,
        reply_tail=turns.reply_tail(tokens) if turns else None,
        reply_close=tuple(model.encode(suffix)) if suffix else (),
    )
    return Prepared(job, reply)


def count_chat(engine: Engine, prompt: ChatPrompt) -> int:
    """The tokens a chat's prompt has, however many that is (a token count is no request
    to generate: it is not held to the context); runs on a preparation thread."""
    tokens, _, forced = _chat_tokens(engine, prompt, fit=False)
    return len(tokens) + (len(engine.model.encode(CALL_OPEN + "\n")) if forced else 0)


def _chat_tokens(
    engine: Engine, prompt: ChatPrompt, *, fit: bool
) -> tuple[list[int], list[Tool], list[Tool]]:
    """A chat's prompt tokens, the tools the reply may call and those the tool choice
    forces it to; with `fit`, a prompt far over the context is refused before it is
    tokenized whole."""
    import jinja2

    messages = [dict(m) for m in prompt.messages]
    for i, ids in prompt.reply_ids.items():
        messages[i]["token_ids"] = list(ids)
    listed, choice = prompt.tools, prompt.tool_choice
    tools = [*listed, *prompt.deferred]
    forced: list[Tool] = []
    if choice == "none":
        listed = tools = []
    elif choice == "required" or isinstance(choice, NamedTool):
        if isinstance(choice, NamedTool):
            forced = [t for t in tools if t.name == choice.name]
        else:
            forced = tools
        if not forced:
            raise APIError(400, "tool_choice asks for a tool not in `tools`.", param="tool_choice")
    if forced and prompt.response_schema is not None:
        raise APIError(
            400,
            "response_format cannot be combined with a forced tool_choice.",
            param="tool_choice",
        )
    try:  # control tokens spelled in any message or schema are read as text
        tokens = engine.model.render_tokens(
            messages,
            tools=[t.spec() for t in listed] or None,
            check=(lambda text: _check_length(engine, text, "messages")) if fit else None,
        )
    except jinja2.TemplateError as e:
        raise APIError(400, f"The chat template cannot render these messages: {e}") from e
    return tokens, tools, forced


def prepare_completion(engine: Engine, prompt: TextPrompt) -> Job:
    """Tokenize a prompt (text, or token ids as they are) and check it fits."""
    if isinstance(prompt.prompt, str):
        _check_length(engine, prompt.prompt, "prompt")
        tokens = engine.model.encode(prompt.prompt)
    else:
        tokens = list(prompt.prompt)
        vocab = int(engine.model.config["vocab_size"])
        if any(not 0 <= t < vocab for t in tokens):
            raise APIError(400, f"Token ids must be in [0, {vocab}).", param="prompt")
    if not tokens:
        raise APIError(400, "The prompt is empty.", param="prompt")
    engine.check_context(len(tokens), "prompt")
    params = _sampling(engine, prompt.sampling, len(tokens))
    return Job(tokens, params, logprobs=prompt.logprobs, speculative=prompt.speculative)


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


def _sampling(engine: Engine, sampling: Sampling, prompt_tokens: int) -> SamplingParams:
    """The request's sampling parameters over the model's defaults, with max_tokens capped
    by the server and by the context left after the prompt."""
    room = engine.context_limit - prompt_tokens
    stop = [sampling.stop] if isinstance(sampling.stop, str) else list(sampling.stop or [])
    if not all(stop):
        raise APIError(400, "stop strings must not be empty.", param="stop")
    cap = engine.max_tokens_cap
    try:
        return engine.model.default_params.replace(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            seed=None if sampling.seed is None else sampling.seed % 2**64,
            max_tokens=min(sampling.max_tokens or cap, cap, room),
            stop=tuple(stop),
        )
    except ValueError as e:
        raise APIError(400, str(e)) from e
