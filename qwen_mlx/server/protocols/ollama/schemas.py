"""The request bodies of Ollama's API, as pydantic models: only the fields the server acts
on; of `options`, those that map onto sampling (Ollama's runner settings, num_gpu,
num_thread, mirostat and the like, are accepted and have no effect)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt

from ...schemas import Body, ToolSpec, number


class OllamaOptions(Body):
    """The options we act on; Ollama's runner settings (num_gpu, ...) are ignored."""

    temperature: float | None = number(ge=0)
    top_p: float | None = number(gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    min_p: float | None = number(ge=0, le=1)
    num_predict: StrictInt | None = None  # -1: no limit, -2: fill the context
    num_ctx: StrictInt | None = Field(default=None, ge=1)
    stop: list[str] | str | None = None
    seed: StrictInt | None = None
    repeat_penalty: float | None = number(gt=0)
    presence_penalty: float | None = number()
    frequency_penalty: float | None = number()


class _CallFunction(Body):
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class _ToolCallIn(Body):
    function: _CallFunction


class OllamaMessage(Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[Any] | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_name: str | None = None


class Generating(Body):
    model: str | None = None
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    stream: StrictBool = True  # Ollama streams unless told not to
    keep_alive: float | str | None = None  # accepted; the model stays loaded


class OllamaChatRequest(Generating):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[ToolSpec] | None = None


class OllamaGenerateRequest(Generating):
    prompt: str = ""
    system: str | None = None
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: StrictBool = False
    images: list[Any] | None = None


class ModelRequest(Body):
    model: str | None = None
    name: str | None = None  # what older clients send
