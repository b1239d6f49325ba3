"""The request bodies of the OpenAI API, as pydantic models FastAPI validates requests with.

Only the fields this server acts on are declared; the rest of what OpenAI clients send
(user, metadata, store, ...) is ignored rather than refused. Invalid values become a 400
in OpenAI's shape (see `errors.py`). Numbers, booleans and integers are taken as JSON
types only, as OpenAI does: `"10"` is not a max_tokens, `"yes"` not a stream flag, and
NaN or Infinity (which Python's JSON reader lets through) no sampling parameter.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from .errors import APIError, describe_invalid

M = TypeVar("M", bound=BaseModel)


def _number(**bounds: float) -> Any:
    """A finite JSON number (an integer is welcome; a string or a boolean is not)."""
    return Field(default=None, strict=True, allow_inf_nan=False, **bounds)


def validated(schema: type[M], data: Any) -> M:
    """`data` (parsed JSON) as a `schema`, or a 400 naming the field that is wrong."""
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        param, message = describe_invalid(list(e.errors()))
        raise APIError(400, message, param=param, code="invalid_value") from None


class _Body(BaseModel):
    # OpenAI clients send fields we have no use for (user, metadata, store, ...): ignore them.
    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Body):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionSpec(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(_Body):
    type: Literal["function"] = "function"
    function: FunctionSpec


class NamedFunction(_Body):
    name: str


class ToolChoiceFunction(_Body):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(_Body):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Sampling(_Body):
    """Fields chat completions and completions share. top_k, min_p and
    repetition_penalty are extensions; unset fields keep the model's defaults. A
    `top_k` at or above the vocabulary means no top-k (see `SamplingParams`)."""

    model: str | None = None
    temperature: float | None = _number(ge=0, le=2)
    top_p: float | None = _number(gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    min_p: float | None = _number(ge=0, le=1)
    repetition_penalty: float | None = _number(gt=0)
    presence_penalty: float | None = _number(ge=-2, le=2)
    frequency_penalty: float | None = _number(ge=-2, le=2)
    seed: StrictInt | None = None
    # Extension: false turns off the server's speculative decoding (--draft) for this one.
    speculative: StrictBool | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
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
