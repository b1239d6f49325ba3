"""The request bodies of Anthropic's Messages API, as pydantic models: only the fields the
server acts on (metadata, thinking, context_management, safeguards, service_tier,
cache_control and the rest ask nothing of this server and are ignored); which fields of
a content block matter depends on its type, checked when the request is translated
(translate.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt

from ...schemas import Body, number


class Block(Body):
    """A content block; which fields matter depends on `type` (checked when translating)."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: StrictBool | None = None
    tool_name: str | None = None  # of a `tool_reference` (tool search loading a tool)
    source: dict[str, Any] | str | None = None  # an image's or document's; a search result's URL
    title: str | None = None  # of a `document` or a `search_result`


class MessageParam(Body):
    # A system turn in the conversation: Claude Code sends one after the first user turn.
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class ToolDef(Body):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # "custom"; Anthropic's server tools (web search...) are refused
    # Left out of the prompt until a `tool_reference` block loads it (tool search).
    defer_loading: StrictBool | None = None


class ToolChoice(Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: StrictBool | None = None


class OutputFormat(Body):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Body):
    format: OutputFormat | None = None  # structured output; `effort` means nothing here


class CountRequest(Body):
    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[Block] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    mcp_servers: list[Any] | None = None  # the MCP connector: refused (translate.py)


class MessagesRequest(CountRequest):
    max_tokens: StrictInt = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = number(ge=0, le=1)
    top_p: float | None = number(gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    stream: StrictBool = False
    output_config: OutputConfig | None = None
