"""Chat templates rendered with bounds. A template is code that comes with a model's files (a
GGUF's metadata, a downloaded folder): Jinja's sandbox keeps it from touching the machine,
but not from looping for ever or building a string of gigabytes, and it is rendered for
every prompt.

`ChatTemplate` renders as transformers' `apply_chat_template` does (the same sandboxed
environment, filters, globals and arguments, so the text is the same) with a budget per
render:

- steps: every loop iteration, call, operator and piece of output is one; a `{% for %}`
  over `range(100000)` inside another runs out of steps, not of time;
- characters: what the template builds (output, joined, added and multiplied strings,
  filter and method results) is counted, and what multiplies sizes (`*`, `**`, format
  widths, `center`, `indent`, `replace`, `join`, `tojson`'s indent, a list printed whole)
  is sized before it runs, so a refused render never built the gigabytes;
- a deadline, checked at every step, for whatever the two miss.

The budgets grow with the conversation, so a real template never meets them. A render
past one raises ChatTemplateError; `ChatTemplate` then renders with the family's known
template (Qwen's ChatML with tools) and logs that it did, once per model. `check` runs
the same renders on test conversations, for `models import` to refuse a template before
it is stored.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, update_wrapper
from importlib import resources
from typing import Any

from ..errors import ChatTemplateError

logger = logging.getLogger(__name__)

SECONDS = 10.0  # wall clock per render
STEPS = 200_000  # loop iterations, calls, operators and outputs, plus STEPS_PER_ITEM...
STEPS_PER_ITEM = 1_000  # ...per message and tool, and one per character of them
CHARS = 2_000_000  # characters built, plus CHARS_PER_INPUT...
CHARS_PER_INPUT = 32  # ...per character of the messages and tools
MAX_SOURCE = 256_000  # characters of template source (Qwen3's is about 4,000)

# Model types whose known template is Qwen's ChatML (the one shipped in qwen_mlx/data).
_CHATML_FAMILIES = ("qwen3", "qwen2")
FAMILY_TEMPLATE_NAME = "Qwen's ChatML template (with tools)"

# The conversations `check` renders: plain turns, and tools with a call and its result.
_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
TEST_CONVERSATIONS: tuple[tuple[list[dict[str, Any]], list[dict[str, Any]] | None], ...] = (
    (
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi. How can I help?"},
            {"role": "user", "content": "Tell me a joke."},
        ],
        None,
    ),
    (
        [
            {"role": "user", "content": "What is the weather in Oslo?"},
            {"role": "assistant", "content": "", "tool_calls": [_CALL]},
            {"role": "tool", "content": '{"celsius": 12}', "name": "get_weather"},
        ],
        [_TOOL],
    ),
)


# -- the budget -------------------------------------------------------------------------------


class _Budget:
    """What one render may still spend; every hook below draws on it."""

    __slots__ = ("chars", "deadline", "seconds", "steps", "total_chars", "total_steps")

    def __init__(self, steps: int, chars: int, seconds: float) -> None:
        self.steps = self.total_steps = steps
        self.chars = self.total_chars = chars
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def step(self, n: int = 1) -> None:
        self.steps -= n
        if self.steps < 0:
            raise ChatTemplateError(
                f"it ran more than {self.total_steps:,} steps (loop iterations and calls)"
            )
        if time.monotonic() > self.deadline:
            raise ChatTemplateError(f"it ran longer than {self.seconds:g} s")

    def room(self, n: int, what: str) -> None:
        """Refuse to build something of about `n` characters that would not fit."""
        if n > self.chars:
            raise ChatTemplateError(
                f"{what} would take about {n:,} characters, past the "
                f"{self.total_chars:,} a render may build"
            )

    def charge(self, n: int) -> None:
        self.chars -= n
        if self.chars < 0:
            raise ChatTemplateError(f"it built more than {self.total_chars:,} characters")

    def built(self, value: Any) -> Any:
        """Count a value just built (a string, a container, a big number)."""
        if isinstance(value, str | list | tuple | dict | set | frozenset | bytes):
            self.charge(len(value))
        elif isinstance(value, int):
            self.charge(value.bit_length() // 8)
        return value


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "qwen_mlx_template_budget", default=None
)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # Jinja folding a constant at compile time: leave it to the render
        raise ChatTemplateError("a chat template ran outside a bounded render")
    return budget


def _text_size(value: Any, limit: int) -> int:
    """About how many characters `str(value)` has, counting no further than `limit`
    (a list of the same long string 100,000 times is short as a list, huge as text)."""
    from jinja2.utils import Namespace

    total, stack = 0, [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v) + 2
        elif isinstance(v, list | tuple | set | frozenset):
            total += 2 + 2 * len(v)
            stack.extend(v)
        elif isinstance(v, dict):
            total += 2 + 4 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, Namespace):
            total += 16
            stack.extend(object.__getattribute__(v, "_Namespace__attrs").values())
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        else:
            total += 16
    return total


def _room_for_text(budget: _Budget, value: Any, what: str) -> None:
    if not isinstance(value, str):
        budget.room(_text_size(value, budget.chars + 1), what)


# -- format strings -----------------------------------------------------------------------------

_PERCENT = re.compile(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_widths(budget: _Budget, text: str, values: Sequence[Any], nested: bool) -> None:
    """A format string's widths and precisions must fit what a render may build, and so
    must the numbers it is given where it takes widths from them (`%*d`, `{:>{w}}`);
    each value is sized as the text it becomes."""
    for run in _DIGITS.findall(text):
        if len(run) > 6 or int(run) > budget.chars:
            budget.room(int(run[:12]), "a format width")
    for v in values:
        if nested and isinstance(v, int) and v > budget.chars:
            budget.room(v, "a format width")
        _room_for_text(budget, v, "formatting a value")


def _check_percent(budget: _Budget, text: str, values: Any) -> None:
    stars = any("*" in (m.group(1) or "") + (m.group(2) or "") for m in _PERCENT.finditer(text))
    if isinstance(values, Mapping):
        values = list(values.values())
    elif not isinstance(values, tuple):
        values = [values]
    _check_widths(budget, text, list(values), stars)


def _check_format(budget: _Budget, text: str, args: Sequence[Any], kwargs: Mapping) -> None:
    from string import Formatter

    try:
        nested = any("{" in (spec or "") for _, _, spec, _ in Formatter().parse(text))
    except ValueError:
        nested = False  # str.format raises its own error for it
    _check_widths(budget, text, [*args, *kwargs.values()], nested)


# -- what may multiply sizes ------------------------------------------------------------------


def _check_binop(budget: _Budget, op: str, left: Any, right: Any) -> None:
    seq = str | list | tuple
    if op == "*":
        if isinstance(left, seq) and isinstance(right, int):
            budget.room(len(left) * max(right, 0), "multiplying a string or list")
        elif isinstance(right, seq) and isinstance(left, int):
            budget.room(len(right) * max(left, 0), "multiplying a string or list")
        elif isinstance(left, int) and isinstance(right, int):
            budget.room((left.bit_length() + right.bit_length()) // 3, "a product")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            budget.room(right * left.bit_length() // 3, "a power")
    elif op == "+":
        if isinstance(left, seq) and isinstance(right, seq):
            budget.room(len(left) + len(right), "joining two strings or lists")
    elif op == "%" and isinstance(left, str):
        _check_percent(budget, left, right)


def _check_str_method(budget: _Budget, method: Any, args: tuple, kwargs: dict) -> tuple:
    """Size a string method's result before it runs; returns the arguments to call with
    (a generator given to `join` is read here, once)."""
    s, name = method.__self__, method.__name__
    try:
        bound = inspect.signature(getattr(str, name)).bind(s, *args, **kwargs).arguments
    except (TypeError, ValueError):
        return args  # the call itself will raise
    if name in ("center", "ljust", "rjust", "zfill") and isinstance(bound.get("width"), int):
        budget.room(bound["width"], f"str.{name}")
    elif name == "expandtabs":
        size = bound.get("tabsize", 8)
        if isinstance(size, int):
            budget.room(len(s) + s.count("\t") * size, "str.expandtabs")
    elif name == "replace":
        _check_replace(budget, s, bound.get("old"), bound.get("new"), bound.get("count", -1))
    elif name == "join":
        items = list(bound["iterable"]) if not isinstance(bound["iterable"], str) else None
        if items is not None:
            budget.step(len(items))
            sizes = sum(len(i) for i in items if isinstance(i, str))
            budget.room(sizes + len(s) * len(items), "str.join")
            return (items,)
    return args


def _check_replace(budget: _Budget, s: Any, old: Any, new: Any, count: Any) -> None:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return
    hits = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    budget.room(len(s) + hits * len(new), "replace")


# Filters whose result is their argument as text: a container is sized as text first.
_TEXT_FILTERS = frozenset(
    {
        *("capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower"),
        *("pprint", "replace", "safe", "string", "striptags", "title", "tojson", "trim"),
        *("truncate", "upper", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr"),
    }
)


def _check_filter(budget: _Budget, name: str, subject: Any, arguments: Mapping[str, Any]) -> None:
    """Size a filter's result before it runs, from its bound arguments."""
    values = list(arguments.values())
    if name in _TEXT_FILTERS:
        _room_for_text(budget, subject, f"the {name} filter")
    size = len(subject) if isinstance(subject, str) else 0
    if name == "center" and isinstance(arguments.get("width"), int):
        budget.room(arguments["width"], "the center filter")
    elif name == "indent":
        width = arguments.get("width", 4)
        width = len(width) if isinstance(width, str) else width
        if isinstance(width, int) and isinstance(subject, str):
            budget.room(size + (subject.count("\n") + 1) * width, "the indent filter")
    elif name == "replace":
        _check_replace(budget, subject, arguments.get("old"), arguments.get("new"),
                       arguments.get("count"))  # fmt: skip
    elif name == "wordwrap":
        width = arguments.get("width", 79)
        wrap = arguments.get("wrapstring") or "\n"
        if isinstance(width, int) and isinstance(wrap, str):
            budget.room(size + (size // max(width, 1) + 1) * len(wrap), "the wordwrap filter")
    elif name == "tojson":
        indent = arguments.get("indent") or 0
        indent = len(indent) if isinstance(indent, str) else indent
        seps = arguments.get("separators") or ()
        extra = sum(len(s) for s in seps if isinstance(s, str)) if isinstance(seps, Sequence) else 0
        if isinstance(indent, int):
            text = _text_size(subject, budget.chars + 1)
            budget.room(text * (1 + max(indent, 0) + extra), "the tojson filter")
    elif name == "urlize":
        extra = sum(len(v) for v in values if isinstance(v, str) and v is not subject)
        budget.room(size + size * extra // 8, "the urlize filter")
    elif name in ("batch", "slice"):
        count = arguments.get("linecount", arguments.get("slices"))
        if isinstance(count, int):
            budget.step(max(count, 0))
    elif name == "format":
        extra = arguments.get("kwargs") or arguments.get("args") or ()
        if isinstance(subject, str):
            _check_percent(budget, subject, extra)


def _read_items(budget: _Budget, name: str, arguments: dict[str, Any]) -> None:
    """`join` and `sum` of a sequence: read the items once, here, and size the result
    (a separator between 100,000 items; lists summed one onto the next)."""
    key = "value" if name == "join" else "iterable"
    if isinstance(arguments.get(key), str):
        return
    items = list(arguments[key])
    arguments[key] = items
    budget.step(len(items))
    limit = budget.chars + 1
    if name == "join":
        sep = arguments.get("d", "")
        sizes = sum(_text_size(i, limit) for i in items)
        budget.room(sizes + len(sep if isinstance(sep, str) else "") * len(items), "join")
    elif not isinstance(arguments.get("start", 0), int | float):
        sizes = sum(len(i) for i in items if isinstance(i, str | list | tuple))
        budget.room(sizes, "summing lists")
        budget.step(len(items) * sizes // 4096)  # each partial sum is copied: quadratic


def _filter_signature(func: Callable[..., Any]) -> tuple[inspect.Signature, str]:
    """The parameters a filter is called with, and the name of its subject (the value
    before the `|`). Jinja's sync/async filter pairs take the eval context first even
    when their sync function, whose signature `inspect` reports, does not."""
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    wrapped = getattr(func, "__wrapped__", None)
    if getattr(func, "jinja_async_variant", False) and not hasattr(wrapped, "jinja_pass_arg"):
        params.insert(0, inspect.Parameter("eval_ctx", inspect.Parameter.POSITIONAL_ONLY))
        signature = signature.replace(parameters=params)
    passed = getattr(func, "jinja_pass_arg", None) is not None
    return signature, params[1 if passed else 0].name


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    signature, subject = _filter_signature(func)

    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        try:
            arguments = signature.bind(*args, **kwargs)
        except TypeError:
            return func(*args, **kwargs)  # let the filter say what is wrong
        arguments.apply_defaults()
        if name in ("join", "sum"):
            _read_items(budget, name, arguments.arguments)
        else:
            _check_filter(budget, name, arguments.arguments.get(subject), arguments.arguments)
        return budget.built(func(*arguments.args, **arguments.kwargs))

    return update_wrapper(bounded, func)


# -- the environment --------------------------------------------------------------------------


class _Counted:
    """A loop's iterable: each item is a step. Keeps `len` for `loop.length`."""

    __slots__ = ("_items",)

    def __init__(self, items: Any) -> None:
        self._items = items

    def __iter__(self) -> Any:
        budget = _budget()
        for item in self._items:
            budget.step()
            yield item

    def __len__(self) -> int:
        return len(self._items)


def _iterate(items: Any) -> _Counted:
    return _Counted(items)


def _output(value: Any) -> Any:
    budget = _budget()
    budget.step()
    if isinstance(value, str):
        budget.charge(len(value))
    else:
        budget.charge(_text_size(value, budget.chars + 1))
    return value


def _concat(*parts: Any) -> str:
    """`a ~ b ~ c`, sized before it is joined."""
    budget = _budget()
    budget.step()
    texts = []
    for part in parts:
        if not isinstance(part, str):
            _room_for_text(budget, part, "joining with ~")
            part = str(part)
        texts.append(part)
    budget.charge(sum(map(len, texts)))
    return "".join(texts)


_HOOKS = {"iterate": _iterate, "output": _output, "concat": _concat}


@lru_cache(maxsize=1)
def _environment_class() -> type:
    """The sandboxed environment, built on first use (jinja2 is imported only then)."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.runtime import LoopContext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.visitor import NodeTransformer

    def hook(name: str, *args: Any, lineno: int | None) -> Any:
        call = nodes.Call(
            nodes.EnvironmentAttribute(f"_qwen_mlx_{name}"), list(args), [], None, None
        )
        return call.set_lineno(lineno or 1)

    class Instrument(NodeTransformer):
        """Every loop's iterable, piece of output and `~` goes through a hook."""

        def visit_For(self, node: Any) -> Any:
            node = self.generic_visit(node)
            node.iter = hook("iterate", node.iter, lineno=node.lineno)
            return node

        def visit_Output(self, node: Any) -> Any:
            node = self.generic_visit(node)
            node.nodes = [hook("output", n, lineno=node.lineno) for n in node.nodes]
            return node

        def visit_Concat(self, node: Any) -> Any:
            node = self.generic_visit(node)
            return hook("concat", *node.nodes, lineno=node.lineno)

    class Generation(Extension):
        """transformers' `{% generation %}` tag (marks the assistant's part): renders its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    class TemplateDict:
        """transformers' `dict`: no attribute access into the real type."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """transformers' `namespace`: no underscore attributes."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # Namespace's own signature trick
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes ({name!r})."
                )

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        from datetime import datetime

        if not isinstance(format, str) or len(format) > 256 or _DIGITS.search(format):
            raise jinja2.exceptions.TemplateError(f"strftime_now({format!r}): not a date format")
        return datetime.now().strftime(format)

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"+", "*", "%", "**"})

        def __init__(self) -> None:
            super().__init__(
                trim_blocks=True,
                lstrip_blocks=True,
                extensions=[Generation, "jinja2.ext.loopcontrols"],
            )
            self.filters["tojson"] = tojson
            self.filters = {n: _bounded_filter(n, f) for n, f in self.filters.items()}
            self.globals.pop("lipsum", None)  # up to n paragraphs of words: no use here
            self.globals.update(
                raise_exception=raise_exception,
                strftime_now=strftime_now,
                dict=TemplateDict(),
                namespace=TemplateNamespace,
            )
            for name, function in _HOOKS.items():
                setattr(self, f"_qwen_mlx_{name}", function)

        def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
            tree = Instrument().visit(super()._parse(source, name, filename))
            tree.set_environment(self)
            return tree

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            budget = _budget()
            budget.step()
            _check_binop(budget, operator, left, right)
            return budget.built(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            if __obj is _output or __obj is _concat or __obj is _iterate:
                return __obj(*args)
            budget = _budget()
            budget.step()
            if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
                args = (_Counted(args[0]), *args[1:])
            elif isinstance(getattr(__obj, "__self__", None), str) and inspect.isbuiltin(__obj):
                args = _check_str_method(budget, __obj, args, kwargs)
            return budget.built(super().call(__context, __obj, *args, **kwargs))

        def wrap_str_format(self, value: Any) -> Any:
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None
            text = value.__self__

            def checked(*args: Any, **kwargs: Any) -> str:
                budget = _budget()
                if value.__name__ == "format_map" and args and isinstance(args[0], Mapping):
                    _check_format(budget, text, (), args[0])
                else:
                    _check_format(budget, text, args, kwargs)
                return wrapped(*args, **kwargs)

            return update_wrapper(checked, value)

    return Bounded


@lru_cache(maxsize=1)
def _environment() -> Any:
    return _environment_class()()


@lru_cache(maxsize=32)
def compile_template(source: str) -> Any:
    """The template compiled in the bounded environment. jinja2.TemplateSyntaxError when
    it does not parse; ChatTemplateError when it is too big or too deeply nested."""
    if len(source) > MAX_SOURCE:
        raise ChatTemplateError(
            f"it has {len(source):,} characters; a chat template has at most {MAX_SOURCE:,}"
        )
    try:
        return _environment().from_string(source)
    except RecursionError:
        raise ChatTemplateError("it is nested too deeply to compile") from None


# -- rendering ---------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON types only, as transformers passes them (anything else becomes a placeholder
    naming its type): the template sees data, never an object with methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


_REASONING = ("reasoning_content", "thinking", "reasoning")


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as the template sees it: no None values, the reasoning under every name
    templates read it by (as transformers does)."""
    out = {k: _plain(v) for k, v in message.items() if v is not None}
    reasoning = next((out[k] for k in _REASONING if k in out), None)
    if reasoning is not None:
        out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
    return out


def render(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    variables: Mapping[str, Any] | None = None,
    seconds: float = SECONDS,
) -> str:
    """Render `source` with its budget (see the module docstring). ChatTemplateError when
    the render is stopped, or the template does not compile; an ordinary error from the
    template (`raise_exception`, a wrong type) passes through as Jinja raised it."""
    import jinja2

    template = compile_template(source)
    chat = [_message(m) for m in messages]
    schemas = None if tools is None else [_plain(t) for t in tools]
    size = _text_size(chat, 1 << 62) + _text_size(schemas, 1 << 62)
    budget = _Budget(
        STEPS + STEPS_PER_ITEM * (len(chat) + len(schemas or ())) + size,
        CHARS + CHARS_PER_INPUT * size,
        seconds,
    )
    token = _BUDGET.set(budget)
    try:
        return template.render(
            messages=chat,
            tools=schemas,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **_plain(dict(variables or {})),
        )
    except RecursionError:
        raise ChatTemplateError("it recursed too deeply") from None
    except MemoryError:
        raise ChatTemplateError("it ran out of memory") from None
    except (jinja2.exceptions.SecurityError, OverflowError) as e:
        raise ChatTemplateError(f"the sandbox stopped it ({e})") from None
    finally:
        _BUDGET.reset(token)


def check(source: str, *, variables: Mapping[str, Any] | None = None) -> None:
    """Render the test conversations (plain turns; tools, a call and its result) within
    the bounds. jinja2.TemplateSyntaxError when the template does not parse,
    ChatTemplateError when a render is stopped or fails."""
    import jinja2

    for messages, tools in TEST_CONVERSATIONS:
        try:
            render(source, messages, tools=tools, variables=variables)
        except jinja2.TemplateSyntaxError:
            raise
        except jinja2.TemplateError as e:
            what = "a conversation with a tool call" if tools else "a plain conversation"
            raise ChatTemplateError(f"it fails on {what} ({type(e).__name__}: {e})") from None


def family_template(model_type: str | None) -> str | None:
    """The template known for a model type: Qwen's ChatML (the Qwen3 format, with tools)
    for Qwen models, None for others."""
    if model_type not in _CHATML_FAMILIES:
        return None
    return resources.files("qwen_mlx.data").joinpath("chatml_template.jinja").read_text()


# -- a model's template ----------------------------------------------------------------------


@dataclass
class ChatTemplate:
    """A model's chat template, rendered with bounds, and its family's known one to fall
    back on. `fallback_reason` says why it fell back (None while it has not)."""

    own: str | dict[str, str] | None
    variables: dict[str, Any]
    fallback: str | None
    label: str = "the model"
    fallback_reason: str | None = None

    @classmethod
    def of(cls, tokenizer: Any, config: Mapping[str, Any], label: str) -> ChatTemplate:
        """From a loaded tokenizer (mlx-lm's wrapper or a transformers tokenizer): its
        template, special tokens, and the `enable_thinking` mlx-lm passes."""
        variables = dict(getattr(tokenizer, "special_tokens_map", None) or {})
        variables["enable_thinking"] = bool(getattr(tokenizer, "has_thinking", False))
        return cls(
            own=getattr(tokenizer, "chat_template", None),
            variables=variables,
            fallback=family_template(config.get("model_type")),
            label=label,
        )

    def _source(self, tools: Any) -> str | None:
        if isinstance(self.own, dict):  # named templates, chosen as transformers does
            if tools and "tool_use" in self.own:
                return self.own["tool_use"]
            return self.own.get("default")
        return self.own

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        import jinja2

        own = self._source(tools)
        if own is not None and self.fallback_reason is None:
            try:
                return render(
                    own,
                    messages,
                    tools=tools,
                    add_generation_prompt=add_generation_prompt,
                    variables=self.variables,
                )
            except (ChatTemplateError, jinja2.TemplateSyntaxError) as e:
                if self.fallback is None:
                    raise ChatTemplateError(
                        f"The chat template of {self.label} cannot be used: {e}. Give it a "
                        "working template (tokenizer_config.json's chat_template)."
                    ) from None
                self.fallback_reason = str(e)
                logger.warning(
                    "The chat template of %s was stopped (%s); using %s instead.",
                    self.label,
                    e,
                    FAMILY_TEMPLATE_NAME,
                )
        if self.fallback_reason is None or self.fallback is None:
            raise ChatTemplateError(
                f"{self.label} has no chat template: send plain text, or give it one "
                "(tokenizer_config.json's chat_template)."
            )
        return render(
            self.fallback,
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            variables=self.variables,
        )
