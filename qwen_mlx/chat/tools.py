"""Tools for Qwen3's tool calls: schemas from Python functions, a forgiving parser for
`<tool_call>{json}</tool_call>` blocks, and safe execution.

Qwen3 lists tools in the system turn (the chat template does it) and answers with
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, possibly several, with
text around them. Nothing the model writes can make this module raise: malformed JSON,
an unknown tool, arguments that fail the schema, a tool that raises or a call the user
declines all become an error message the model reads in the tool's reply.
"""

from __future__ import annotations

import enum
import inspect
import json
import math
import re
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..runtime.generation import held_back

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"


@dataclass(frozen=True)
class Tool:
    """A tool the model may call: its JSON schema and, for executable tools, a function."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any] | None = field(default=None, compare=False)

    def spec(self) -> dict[str, Any]:
        """The OpenAI-style tool dict the chat template renders."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class ToolCall:
    """One call found in a reply. `error` is set when it cannot be run as written.

    `partial` is set on a forced call that max_tokens cut off (`cut_call`): its arguments
    as far as the model wrote them, unfinished JSON, which APIs return as they are;
    `arguments` then holds the values complete in them.
    """

    name: str | None
    arguments: dict[str, Any] | None
    raw: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")
    error: str | None = None
    partial: str | None = None

    @property
    def arguments_json(self) -> str:
        """The arguments as a JSON string (as written, for a call cut off)."""
        if self.partial is not None:
            return self.partial
        return json.dumps(self.arguments if self.arguments is not None else {})

    def to_message(self) -> dict[str, Any]:
        """The OpenAI-style entry for an assistant message's `tool_calls`."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name or "", "arguments": self.arguments_json},
        }


# -- schemas from Python functions ---------------------------------------------------------------


def as_tool(obj: Callable[..., Any] | dict[str, Any] | Tool) -> Tool:
    """A Tool from a plain function, an OpenAI-style tool dict, or a Tool."""
    if isinstance(obj, Tool):
        return obj
    if isinstance(obj, dict):
        fn = obj.get("function", obj)
        if "name" not in fn:
            raise ValueError(f"A tool dict needs a name: {obj!r}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        return Tool(fn["name"], fn.get("description", ""), params)
    if callable(obj):
        return tool_from_function(obj)
    raise TypeError(f"Cannot make a tool from {type(obj).__name__}.")


def tool_from_function(fn: Callable[..., Any]) -> Tool:
    """JSON schema from a function's signature and Google- or Sphinx-style docstring."""
    summary, param_docs = _parse_docstring(inspect.getdoc(fn) or "")
    hints = typing.get_type_hints(fn, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        schema = _schema_for(hints.get(name, Any))
        if name in param_docs:
            schema["description"] = param_docs[name]
        if param.default is inspect.Parameter.empty:
            required.append(name)
        else:
            default = param.default.value if isinstance(param.default, enum.Enum) else param.default
            if _json_safe(default):
                schema["default"] = default
        properties[name] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return Tool(fn.__name__, summary, parameters, fn)


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def _schema_for(tp: Any) -> dict[str, Any]:
    """JSON schema for a type annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        schema = _schema_for(args[0])
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            schema["description"] = notes[0]
        return schema
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    if tp is Any or tp is inspect.Parameter.empty:
        return {}
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        return {**_enum_type(values), "enum": values}
    if origin is typing.Literal:
        return {**_enum_type(list(args)), "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [_schema_for(a) for a in args]
        if len(options) == 2 and {"type": "null"} in options:
            other = next(o for o in options if o != {"type": "null"})
            if set(other) == {"type"} and isinstance(other["type"], str):
                return {"type": [other["type"], "null"]}
        return {"anyOf": options}
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        schema: dict[str, Any] = {"type": "array"}
        if args and not (origin is tuple and args[-1] is Ellipsis and len(args) == 2):
            if origin is tuple:
                schema["prefixItems"] = [_schema_for(a) for a in args]
            else:
                schema["items"] = _schema_for(args[0])
        elif args:
            schema["items"] = _schema_for(args[0])
        return schema
    if origin is dict or tp is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _schema_for(args[1])
        return schema
    raise TypeError(f"No JSON schema for the annotation {tp!r}.")


def call_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """The JSON schema of a call to one of `tools` (`{"name": ..., "arguments": {...}}`),
    for holding a forced call to their schemas.

    Each tool's parameters move under the root's `$defs` with their local references
    (`#/$defs/...`, draft-07's `#/definitions/...`, `#` itself) rebased onto their new
    place: left where the call puts them, pydantic's `$ref`s would point at the call's
    root, where no such definitions are.
    """
    defs: dict[str, Any] = {}
    options = []
    for i, tool in enumerate(tools):
        key = f"arguments_{i}"
        parameters = {k: v for k, v in tool.parameters.items() if k not in ("$id", "$schema")}
        defs[key] = _rebased(parameters, f"#/$defs/{key}")
        arguments = {"$ref": f"#/$defs/{key}"}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "$defs": defs}


# Keywords whose value is a map of names to schemas, and those whose value is data.
_NAMED_SCHEMAS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_DATA = ("const", "enum", "default", "examples")


def _rebased(schema: Any, base: str) -> Any:
    """`schema` with its local `$ref`s ("#..."), which point into its own root, made to
    point into `base` (where its root will be)."""
    if isinstance(schema, list):
        return [_rebased(s, base) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            out[key] = base + value[1:]
        elif key in _NAMED_SCHEMAS and isinstance(value, dict):
            out[key] = {name: _rebased(s, base) for name, s in value.items()}
        elif key in _DATA:
            out[key] = value
        else:
            out[key] = _rebased(value, base)
    return out


def _enum_type(values: list[Any]) -> dict[str, Any]:
    kinds = {_SIMPLE.get(type(v)) for v in values}
    return {"type": kinds.pop()} if len(kinds) == 1 and None not in kinds else {}


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(summary, {parameter: description}) from Google-style `Args:` or Sphinx `:param:`."""
    lines = doc.splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section = None
    current = None
    for raw in lines:
        line = raw.strip()
        sphinx = re.match(r"^:param\s+(?:[\w\[\], |.]+\s+)?(\w+):\s*(.*)$", line)
        if sphinx:
            current, params[sphinx[1]] = sphinx[1], sphinx[2]
            section = "sphinx"
            continue
        if _SECTION.match(line):
            section = _SECTION.match(line)[1]
            current = None
            continue
        if section is None:
            if line or summary:
                summary.append(line)
            continue
        if section in ("Args", "Arguments", "Parameters"):
            entry = re.match(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if entry and raw.startswith((" ", "\t")) and not raw.startswith(" " * 8):
                current, params[entry[1]] = entry[1], entry[2]
            elif current and line:
                params[current] = f"{params[current]} {line}".strip()
        elif section == "sphinx" and current and line and not line.startswith(":"):
            params[current] = f"{params[current]} {line}".strip()
    text = " ".join(" ".join(summary).split())
    return text, params


# -- parsing ---------------------------------------------------------------------------------------


_DECODER = json.JSONDecoder()
_WS = re.compile(r"\s*")


def _call_end(text: str, body: int, *, final: bool) -> tuple[int | None, bool]:
    """Where the call whose body starts at `body` ends, and whether it ended cleanly.

    A JSON value followed by `</tool_call>` ends there (cleanly), so tags quoted inside
    its strings do not count; otherwise (malformed JSON) the first closing tag does.
    (None, _) means the text ends inside the call: more is coming, or, when `final`, it
    was cut off.
    """
    start = _WS.match(text, body).end()
    try:
        _, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        if not final and (e.msg.startswith("Unterminated") or e.pos >= len(text.rstrip())):
            return None, False
    except (RecursionError, ValueError):  # too deep, or an integer over Python's digit limit
        pass
    else:
        close = _WS.match(text, end).end()
        if text.startswith(CALL_CLOSE, close):
            return close, True
        if not final and CALL_CLOSE.startswith(text[close:]):
            return None, False
    close = text.find(CALL_CLOSE, body)
    return (close if close >= 0 else None), False


def _abandoned(text: str, body: int, end: int | None) -> int:
    """The position of an opening tag that restarts a malformed call, or -1."""
    nested = text.find(CALL_OPEN, body)
    return nested if nested >= 0 and (end is None or nested < end) else -1


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split a reply into its prose and its tool calls.

    Every `<tool_call>...</tool_call>` block becomes a ToolCall (with `error` set when the
    JSON is malformed or lacks a name); an opening tag inside a malformed block restarts
    the call; an unterminated block at the end is a call with an error. The prose is the
    text outside the blocks, stripped. Never raises.
    """
    calls: list[ToolCall] = []
    prose: list[str] = []
    pos = 0
    while True:
        start = text.find(CALL_OPEN, pos)
        if start < 0:
            prose.append(text[pos:])
            break
        prose.append(text[pos:start])
        body = start + len(CALL_OPEN)
        end, clean = _call_end(text, body, final=True)
        restart = -1 if clean else _abandoned(text, body, end)
        if restart >= 0:
            prose.append(text[start:restart])  # an abandoned opening: keep it as text
            pos = restart
            continue
        if end is None:
            calls.append(_call(text[body:], closed=False))
            break
        calls.append(_call(text[body:end], closed=True))
        pos = end + len(CALL_CLOSE)
    return "".join(prose).strip(), calls


def _strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity (which `json` accepts), and numbers too
    large for a float, are refused, since they could not be passed on as JSON."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value; write a number or a string")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:20]}... is too large; write it as a string")
    return value


def _call(body: str, *, closed: bool) -> ToolCall:
    raw = body.strip()
    if not closed:
        return ToolCall(None, None, raw, error="the tool call was cut off before </tool_call>")
    try:
        data = _strict_json(raw)
    except (RecursionError, ValueError) as e:  # ValueError: JSONDecodeError, NaN, huge ints
        return ToolCall(None, None, raw, error=f"the tool call is not valid JSON ({e})")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return ToolCall(None, None, raw, error='a tool call needs {"name": ..., "arguments": ...}')
    name = data["name"]
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = _strict_json(arguments) if arguments.strip() else {}
        except (RecursionError, ValueError) as e:
            return ToolCall(name, None, raw, error=f"the arguments are not valid JSON ({e})")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return ToolCall(name, None, raw, error="the arguments must be a JSON object")
    return ToolCall(name, arguments, raw)


_CALL_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*')
_CALL_ARGUMENTS = re.compile(r'\s*,\s*"arguments"\s*:\s*')


def cut_call(text: str, names: Sequence[str]) -> ToolCall | None:
    """A forced call as far as the model wrote it before max_tokens ended the reply:
    `{"name": "...", "arguments": {...` (the order the call's schema holds it to).

    The call names the tool its text names, or, when the name itself was cut off, the
    only one of `names` it can still be. Its arguments are complete (then it is an
    ordinary call: max_tokens only cut the closing brace), or unfinished (`partial`).
    None when the text cannot tell which tool it calls.
    """
    start = _CALL_NAME.match(text)
    if start is None:
        return ToolCall(names[0], {}, text, partial="") if len(names) == 1 else None
    try:
        name, end = _DECODER.raw_decode(text, start.end())
    except (json.JSONDecodeError, RecursionError):
        written = text[start.end() :].removeprefix('"')
        fits = [n for n in names if json.dumps(n)[1:-1].startswith(written)]
        return ToolCall(fits[0], {}, text, partial="") if len(fits) == 1 else None
    if not isinstance(name, str):
        return None
    after = _CALL_ARGUMENTS.match(text, end)
    if after is None:
        return ToolCall(name, {}, text, partial="")
    written = text[after.end() :].rstrip()
    try:
        arguments, _ = _DECODER.raw_decode(written)
    except (json.JSONDecodeError, RecursionError):
        pass
    else:
        if isinstance(arguments, dict):
            return ToolCall(name, arguments, text)
    from pydantic_core import from_json

    try:
        complete = from_json(written, allow_partial=True) if written else {}
    except ValueError:
        complete = {}
    return ToolCall(name, complete if isinstance(complete, dict) else {}, text, partial=written)


class CallFilter:
    """Streams a reply's prose while holding back `<tool_call>` blocks (and any text that
    might be the start of one).

    It shows what `parse_tool_calls` would keep as prose, and decides where a call ends
    as `_call_end` does, in time linear in the reply: a call's JSON is decoded again only
    when that can change the answer, as tracked by a light scan of each new piece
    (a closing tag that is outside any JSON string, an opening tag, the first closing
    tag) and otherwise each time the call has doubled; `flush` decides what is left.
    """

    def __init__(self) -> None:
        self._pending = ""  # outside a call: text held back (a possible start of a tag)
        self._inside = False
        self._call = _OpenCall()

    def feed(self, text: str) -> str:
        return self._feed(text, force=False)

    def flush(self) -> str:
        """The prose still held back, at the end of the reply (an unterminated call at
        the end is dropped)."""
        return self.finish()[0]

    def finish(self) -> tuple[str, str | None]:
        """At the end of the reply: (the prose still held back, the unterminated call it
        ends in as written, opening tag included, or None)."""
        out = self._feed("", force=True)
        call = None
        if not self._inside:
            out += self._pending
        else:
            call = CALL_OPEN + self._call.text()
        self._pending, self._inside, self._call = "", False, _OpenCall()
        return out, call

    def _feed(self, text: str, *, force: bool) -> str:
        out: list[str] = []
        if self._inside:
            self._call.add(text)
        else:
            self._pending += text
        while True:
            if self._inside:
                call = self._call
                if call.close < 0:  # no closing tag yet: the call cannot have ended
                    end, clean = None, False
                elif force or call.worth_decoding():
                    end, clean = _call_end(call.text(), 0, final=False)
                    call.decoded()
                else:  # no tag and no possible end since: only a malformed end can have
                    # come, which is found when the call doubles, or by flush
                    end, clean = None, False
                opening = call.open
                restart = (
                    opening if not clean and opening >= 0 and (end is None or opening < end) else -1
                )
                if restart >= 0:  # as parse_tool_calls: an abandoned opening is prose
                    body = call.text()
                    out.append(CALL_OPEN + body[:restart])
                    self._call = _OpenCall(body[restart + len(CALL_OPEN) :])
                    continue
                if end is None:
                    return "".join(out)
                self._pending = call.text()[end + len(CALL_CLOSE) :]
                self._inside, self._call = False, _OpenCall()
            start = self._pending.find(CALL_OPEN)
            if start >= 0:
                out.append(self._pending[:start])
                self._call = _OpenCall(self._pending[start + len(CALL_OPEN) :])
                self._pending, self._inside = "", True
                continue
            keep = held_back(self._pending, (CALL_OPEN,))
            out.append(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
            return "".join(out)


_JSON_MARKS = re.compile(r'["\\{}\[\]]')
_CLOSE_TAG = re.compile(re.escape(CALL_CLOSE))


class _OpenCall:
    """The body of a call being streamed, kept as pieces (joined only to decode it),
    with the first opening and closing tags in it and a scan of its JSON strings and
    brackets, so that CallFilter decodes it only when the answer may have changed."""

    def __init__(self, text: str = "") -> None:
        self._parts: list[str] = []
        self._length = 0
        self._tail = ""  # the last characters, for tags split across pieces
        self.open = self.close = -1
        self._in_string = self._escaped = False
        self._depth = 0
        self._possible_end = False  # a closing tag outside any string, at depth 0
        self._decoded_at = -1  # the length at the last decoding
        self.add(text)

    def add(self, text: str) -> None:
        if not text:
            return
        base = self._length - len(self._tail)
        window = self._tail + text
        if self.open < 0:
            found = window.find(CALL_OPEN)
            self.open = base + found if found >= 0 else -1
        pos = 0  # in `text`
        for m in _CLOSE_TAG.finditer(window):
            at = base + m.start()
            if at < self._length:  # began in an earlier piece: the scan is already there
                cut = 0
            else:
                cut = at - self._length
                self._scan(text[pos:cut])
                pos = cut
            if self.close < 0:
                self.close = at
                self._possible_end = True
            if not self._in_string and self._depth <= 0:
                self._possible_end = True
        self._scan(text[pos:])
        self._parts.append(text)
        self._length += len(text)
        self._tail = window[-(len(CALL_CLOSE) - 1) :]

    def _scan(self, text: str) -> None:
        """Follow JSON strings (with their escapes) and bracket depth through `text`."""
        skip = 0
        if self._escaped and text:
            self._escaped, skip = False, 1
        for m in _JSON_MARKS.finditer(text, skip):
            if m.start() < skip:
                continue
            mark = m.group()
            if self._in_string:
                if mark == "\\":
                    skip = m.end() + 1
                    self._escaped = skip > len(text)
                elif mark == '"':
                    self._in_string = False
            elif mark == '"':
                self._in_string = True
            elif mark in "{[":
                self._depth += 1
            elif mark in "}]":
                self._depth -= 1

    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def worth_decoding(self) -> bool:
        if self._decoded_at == self._length:
            return False
        return self._possible_end or self.open >= 0 or self._length >= 2 * self._decoded_at

    def decoded(self) -> None:
        self._decoded_at, self._possible_end = self._length, False


# -- running ---------------------------------------------------------------------------------------

Approver = Callable[[ToolCall], bool]


def run_tool_call(call: ToolCall, tools: dict[str, Tool], approve: Approver | None = None) -> str:
    """Validate and run one call; return what the model reads back. Never raises."""
    if call.error is not None:
        return (
            f'error: {call.error}. Write calls as <tool_call>{{"name": "...", '
            f'"arguments": {{...}}}}</tool_call>.'
        )
    tool = tools.get(call.name or "")
    if tool is None:
        names = ", ".join(sorted(tools)) or "none"
        return f"error: there is no tool named {call.name!r}; available tools: {names}."
    problem = validate_arguments(tool, call.arguments or {})
    if problem is not None:
        return f"error: the arguments for {tool.name} do not match its schema: {problem}"
    if tool.function is None:
        return f"error: {tool.name} has no implementation here."
    if approve is not None:
        try:
            allowed = approve(call)
        except Exception as e:
            return f"error: the approval step failed ({type(e).__name__}: {e})."
        if not allowed:
            return f"error: the user declined the call to {tool.name}."
    try:
        result = tool.function(**_typed_arguments(tool.function, call.arguments or {}))
    except Exception as e:
        return f"error: {tool.name} raised {type(e).__name__}: {e}"
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(result)


def _typed_arguments(fn: Callable[..., Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """JSON values turned back into the Enum members the function's annotations ask for
    (the schema carried their values)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved: pass the values as they are
        return arguments
    typed = dict(arguments)
    for name, value in arguments.items():
        hint = hints.get(name)
        options = (
            typing.get_args(hint)
            if typing.get_origin(hint) in (typing.Union, types.UnionType)
            else (hint,)
        )
        for option in options:
            if inspect.isclass(option) and issubclass(option, enum.Enum) and value is not None:
                typed[name] = option(value)
                break
    return typed


def validate_arguments(tool: Tool, arguments: dict[str, Any]) -> str | None:
    """None if the arguments satisfy the tool's JSON schema, else the first problem."""
    import jsonschema

    try:
        jsonschema.validate(arguments, tool.parameters)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        return f"{where + ': ' if where else ''}{e.message}"
    except jsonschema.SchemaError as e:
        return f"the tool's own schema is invalid ({e.message})"
    return None


@typing.runtime_checkable
class ToolSource(typing.Protocol):
    """Something that provides several tools at once (an MCP server: see mcp_client.py)."""

    def tools(self) -> list[Tool]: ...


def tool_table(
    tools: Iterable[Callable[..., Any] | dict[str, Any] | Tool | ToolSource],
) -> dict[str, Tool]:
    """Tools by name; a ToolSource adds each of its tools."""
    table: dict[str, Tool] = {}
    for obj in tools:
        for t in obj.tools() if isinstance(obj, ToolSource) else [as_tool(obj)]:
            if t.name in table:
                raise ValueError(f"Two tools are named {t.name!r}.")
            table[t.name] = t
    return table
