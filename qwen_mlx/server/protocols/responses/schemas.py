"""The request body of OpenAI's Responses API, as pydantic models (only the fields the
server acts on: reasoning, truncation, prompt_cache_key, client_metadata,
parallel_tool_calls, input items' ids and the rest are ignored; which fields of an
input item or a tool matter depends on its type, checked when translating), and
`metadata` held to OpenAI's limits (16 keys of at most 64 characters, values of at most
512), refused past them in OpenAI's words."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictInt

from ...errors import APIError
from ...schemas import Body, number

# OpenAI's limits on `metadata`.
METADATA_KEYS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512


class Part(Body):
    type: str
    text: str | None = None


class Item(Body):
    """An input item; which fields matter depends on `type` (checked when translating)."""

    type: str | None = None  # "message" when it has a role
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[Part] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[Part] | None = None
    namespace: str | None = None  # of a call of a namespace's tool (Codex)


class FunctionTool(Body):
    """A tool: a function; a `namespace` of functions (Codex's); or one of OpenAI's hosted
    tools (web search, ...), which do not run here (see translate.py)."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None
    tools: list[FunctionTool] | None = None  # a namespace's


class FunctionChoice(Body):
    type: Literal["function"]
    name: str
    namespace: str | None = None  # a namespace's tool, by its own name


class HostedChoice(Body):
    """A tool choice forcing one of OpenAI's hosted tools (`{"type": "web_search"}`)."""

    type: str


class Format(Body):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class TextOptions(Body):
    format: Format | None = None


class ResponsesRequest(Body):
    model: str | None = None
    input: str | list[Item]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | HostedChoice | None = None
    text: TextOptions | None = None
    max_output_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = number(ge=0, le=2)
    top_p: float | None = number(gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    seed: StrictInt | None = None
    stream: StrictBool = False
    store: StrictBool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    include: list[str] | None = None  # "message.output_text.logprobs" asks for logprobs
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)


def check_metadata(metadata: dict[str, str] | None) -> None:
    """Refuse `metadata` past OpenAI's limits, in OpenAI's words."""
    if not metadata:
        return
    if len(metadata) > METADATA_KEYS:
        raise APIError(
            400,
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{METADATA_KEYS} properties, but got an object with {len(metadata)} properties "
            "instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_CHARS:
            raise APIError(
                400,
                f"Invalid 'metadata': key too long. Expected a key with maximum length "
                f"{METADATA_KEY_CHARS}, but got a key with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if len(value) > METADATA_VALUE_CHARS:
            raise APIError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length {METADATA_VALUE_CHARS}, but got a string with length {len(value)} "
                "instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
