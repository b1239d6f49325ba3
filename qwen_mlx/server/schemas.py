"""What every protocol's request schemas share: the base model (fields a server has no
use for are ignored, not refused), finite JSON numbers, OpenAI-style function tools
(Ollama takes them too), and the server's sampling fields with their bounds, whichever
protocol a request came by (`Sampling`, `sampling`); and `validated`, which makes
pydantic's refusals a 400 naming the field.

Numbers, booleans and integers are taken as JSON types only, as OpenAI does: `"10"` is
not a max_tokens, `"yes"` not a stream flag, and NaN or Infinity (which Python's JSON
reader lets through) no sampling parameter.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from .errors import APIError, invalid

M = TypeVar("M", bound=BaseModel)


def number(**bounds: float) -> Any:
    """A finite JSON number, optional (an integer is welcome; a string or a boolean is
    not), within `bounds` (pydantic's ge, gt, le, lt)."""
    return Field(default=None, strict=True, allow_inf_nan=False, **bounds)


class Body(BaseModel):
    """A request body, or a part of one: what clients send that the server has no use
    for (user, metadata, service_tier, ...) is ignored."""

    model_config = ConfigDict(extra="ignore")


def validated(schema: type[M], data: Any) -> M:
    """`data` (parsed JSON) as a `schema`, or a 400 naming the field that is wrong."""
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise invalid(list(e.errors())) from None


class FunctionSpec(Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(Body):
    """An OpenAI-style function tool (OpenAI's chat completions and Ollama take these)."""

    type: Literal["function"] = "function"
    function: FunctionSpec


class Sampling(Body):
    """The sampling a request asks for, with the bounds the server holds every protocol
    to; unset fields keep the model's defaults. top_k, min_p and repetition_penalty go
    beyond OpenAI's; a `top_k` at or above the vocabulary means no top-k (see
    `SamplingParams`)."""

    temperature: float | None = number(ge=0, le=2)
    top_p: float | None = number(gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    min_p: float | None = number(ge=0, le=1)
    repetition_penalty: float | None = number(gt=0)
    presence_penalty: float | None = number(ge=-2, le=2)
    frequency_penalty: float | None = number(ge=-2, le=2)
    seed: StrictInt | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None


def sampling(**fields: Any) -> Sampling:
    """A protocol's sampling fields (None: unset) held to the server's bounds: a 400
    naming the field past them."""
    return validated(Sampling, {k: v for k, v in fields.items() if v is not None})
