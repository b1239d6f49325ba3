"""OpenAI's chat completions and completions requests as the shared request (`..prompt`):
messages (content parts as text, a developer message as a system message), function
tools, `tool_choice`, `response_format` as a JSON schema, sampling and logprobs."""

from __future__ import annotations

from typing import Any

from ...errors import APIError
from ...prompt import (
    ChatPrompt,
    NamedTool,
    TextPrompt,
    format_schema,
    function_tool,
    message,
    text_of,
    tool_call,
)
from ...schemas import Sampling
from .schemas import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    ResponseFormat,
    ToolChoiceFunction,
)


def chat_prompt(req: ChatRequest) -> ChatPrompt:
    """What a chat completions request asks for."""
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
    choice = req.tool_choice
    return ChatPrompt(
        messages=[_template_message(m, i) for i, m in enumerate(req.messages)],
        tools=[
            function_tool(t.function.name, t.function.description, t.function.parameters)
            for t in req.tools or []
        ],
        tool_choice=(
            NamedTool(choice.function.name) if isinstance(choice, ToolChoiceFunction) else choice
        ),
        response_schema=_response_schema(req.response_format),
        sampling=_sampling(req, req.max_completion_tokens or req.max_tokens),
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        speculative=req.speculative is not False,
    )


def text_prompt(req: CompletionRequest) -> TextPrompt:
    """What a completions request asks for: one prompt, text or token ids."""
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise APIError(400, "Send one prompt per request.", param="prompt")
        prompt = prompt[0]
    return TextPrompt(
        prompt,  # type: ignore[arg-type]  # one prompt: a str or a list of ids
        sampling=_sampling(req, req.max_tokens),
        logprobs=req.logprobs,
        speculative=req.speculative is not False,
    )


def _sampling(req: Sampling, max_tokens: int | None) -> Sampling:
    """The request's sampling fields (already held to the server's bounds)."""
    values = {name: getattr(req, name) for name in Sampling.model_fields}
    return Sampling.model_construct(**dict(values, max_tokens=max_tokens))


def _template_message(m: ChatMessage, index: int) -> dict[str, Any]:
    """A message as the chat template takes it."""
    return message(
        m.role,
        text_of(m.content, f"messages.{index}.content"),
        tool_calls=[
            tool_call(c.id or f"call_{i}", c.function.name, c.function.arguments)
            for i, c in enumerate(m.tool_calls or [])
        ],
        tool_call_id=m.tool_call_id,
        name=m.name,
    )


def _response_schema(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    if fmt is None:
        return None
    schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
    missing = "response_format json_schema needs json_schema.schema."
    return format_schema(fmt.type, schema, param="response_format", missing=missing)
