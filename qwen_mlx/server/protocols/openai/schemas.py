"""The request bodies of OpenAI's chat completions and completions, as pydantic models.

Only the fields this server acts on are declared; the rest of what OpenAI clients send
(user, metadata, store, ...) is ignored rather than refused. Invalid values become a 400
naming the field; JSON types are taken strictly (see `..schemas`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictInt

from ...schemas import Body, Sampling, ToolSpec


class FunctionCall(Body):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(Body):
    type: str
    text: str | None = None


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class NamedFunction(Body):
    name: str


class ToolChoiceFunction(Body):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(Body):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(Body):
    include_usage: StrictBool = False


class _Sampling(Sampling):
    """What chat completions and completions share: the server's sampling fields, and
    OpenAI's own."""

    model: str | None = None
    # Extension: false turns off the server's speculative decoding (--draft) for this one.
    speculative: StrictBool | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = Field(default=1, ge=1, le=1)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    response_format: ResponseFormat | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: str | list[StrictInt] | list[str] | list[list[StrictInt]]
    echo: Literal[False] = False
    suffix: None = None
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)  # OpenAI's limit
