"""ChatSession: a conversation that never re-reads history its KV cache already holds.

The session keeps the messages and the exact token ids its KV cache holds. Each turn it
renders the whole conversation with the chat template, keeps the longest common prefix
with the cache, trims the cache there and prefills only the rest: turn 20 costs what turn
1 costs, and a template that renders history differently still gets the right tokens.

Before a turn the memory planner checks that the conversation, plus room for the reply,
fits; the context policy (policy.py) decides what happens when it does not.

A session saves to disk with its cache (`save`) and resumes without re-reading its
history (`ChatSession.load`); a cache that does not belong to the model, or is damaged,
is discarded with a notice and the history is re-read on the next turn.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ContextOverflowError, GenerationCancelled
from ..runtime import (
    GenerationChunk,
    Message,
    Model,
    ModelDrafter,
    SamplingParams,
    make_cache,
    prefill,
    requantize_cache,
    resolve_params,
    reuse_cache,
    stream_tokens,
    timely_chunk,
)
from ..runtime.memory import KV_BITS, MemoryPlanner
from ..runtime.speculative import drafter_and_planner
from .policy import (
    ContextPolicy,
    Conversation,
    Fit,
    fit,
    longest_token,
    reply_reserve,
    why_not,
)
from .saved import check_messages, read_cache, read_session, write_session
from .tools import (
    Approver,
    CallFilter,
    Tool,
    ToolCall,
    ToolSource,
    parse_tool_calls,
    run_tool_call,
    tool_table,
)

_RENDERS_KEPT = 8  # renders a session keeps (a turn needs a few while the policy works)


def _render_key(message: Message) -> tuple[Any, ...]:
    """What a message's render depends on (its text is hashed once: Python keeps a
    string's hash)."""
    calls = json.dumps(message.tool_calls, sort_keys=True) if message.tool_calls else ""
    return (
        message.role,
        message.content,
        message.token_ids,
        message.name,
        message.tool_call_id,
        calls,
    )


def _check_text(value: Any, what: str) -> None:
    """ValueError unless every string in `value` (a text, or a message's fields) is valid
    Unicode: a lone surrogate ("a\\ud800") cannot be tokenized or saved, and once in the
    messages it would break every later save."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"The {what} is not valid Unicode: it has a lone surrogate "
                    f"({value[e.start]!r}) at character {e.start:,}. Pass text that can be "
                    "written as UTF-8."
                ) from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_text(key, what)
            _check_text(item, what)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_text(item, what)


@dataclass(frozen=True)
class TurnStats:
    """The last turn, as measured."""

    prompt_tokens: int  # the whole rendered conversation this turn
    prefilled_tokens: int  # of those, computed this turn; the rest came from the cache
    generation_tokens: int
    time_to_first_token: float  # seconds
    prompt_tps: float  # prefilled tokens per second
    tokens_per_second: float  # generation
    peak_memory: float  # GB
    kv_bits: int | None
    dropped_messages: int  # left out of the prompt by the truncate policy
    finish_reason: str  # stop, length or cancelled
    notices: tuple[str, ...] = ()
    drafted: int = 0  # speculative decoding: draft tokens proposed and kept
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def reused_tokens(self) -> int:
        return self.prompt_tokens - self.prefilled_tokens


def _same_text(decoded: str, streamed: str) -> bool:
    """Whether `streamed`, a reply as the stream showed it, is the text of its tokens
    (`decoded`). mlx-lm's streaming detokenizers drop the space the first token starts
    with, and invalid UTF-8 from a weak model may decode to a different number of
    replacement characters: neither makes the text another one."""
    candidates = [decoded, decoded[1:]] if decoded.startswith(" ") else [decoded]
    return any(
        c == streamed or c.replace("\ufffd", "") == streamed.replace("\ufffd", "")
        for c in candidates
    )


class ChatSession:
    """A conversation with a loaded model.

    `send(text)` streams the reply as GenerationChunk values (like `stream_generate`);
    `stop()` from another thread ends it early, keeping the partial reply marked
    `"stopped": True`. `messages` is the whole history as OpenAI-style dicts, `history`
    the same as `Message` values with what front ends keep (reply token ids, sampling);
    `last_stats` describes the last turn; `context_tokens` / `context_limit` say how full
    the context is.
    """

    def __init__(
        self,
        model: Model,
        system: str | None = None,
        params: SamplingParams | None = None,
        policy: ContextPolicy | str = ContextPolicy.TRUNCATE,
        *,
        kv_bits: int | None = None,
        planner: MemoryPlanner | None = None,
        tools: Sequence[Callable[..., Any] | dict[str, Any] | Tool | ToolSource] | None = None,
        max_tool_rounds: int = 4,
        approve: Approver | None = None,
        draft: Any = None,
        num_draft_tokens: int | None = None,
    ) -> None:
        if kv_bits not in KV_BITS:
            raise ValueError(f"kv_bits must be one of None, 8, 4, not {kv_bits!r}.")
        self.model = model
        self.params = params or model.default_params
        self.policy = ContextPolicy(policy)
        # Speculative decoding ("lookup", a draft Model or store reference): one drafter
        # for the session, so a draft model's own cache is reused turn after turn.
        self.drafter, self.planner = drafter_and_planner(
            model, draft, kv_bits=kv_bits, planner=planner
        )
        self.num_draft_tokens = num_draft_tokens
        self.id = uuid.uuid4().hex
        self.last_stats: TurnStats | None = None
        self.notices: list[str] = []
        # Front ends follow a long read: `prefill_progress(done, total)` counts the prompt's
        # tokens in the cache (the reused part counts as done), from the start of the read;
        # `on_notice(text)` hears what the context policy did as soon as it is decided.
        self.prefill_progress: Callable[[int, int], None] | None = None
        self.on_notice: Callable[[str], None] | None = None
        self.prefill_chunk: int | None = None  # an upper bound on the planner's chunk size
        self.tools = tool_table(tools or ())
        self.max_tool_rounds = max_tool_rounds
        self.approve = approve
        self.on_tool_call: Callable[[ToolCall, str], None] | None = None
        self._messages: list[Message] = []
        self._dropped = 0
        self._kv_bits = kv_bits
        self._cache: list[Any] | None = None
        self._cache_tokens: list[int] = []
        self._stop = threading.Event()
        self._busy = threading.Lock()
        # Renders by what they render (see `_render`): a front end may tokenize a turn on
        # another thread first (`prepare`), and the turn then finds it here.
        self._rendered: OrderedDict[tuple[Any, ...], list[int]] = OrderedDict()
        self._render_lock = threading.Lock()
        if system:
            self._messages.append(Message("system", system))

    # -- state -------------------------------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The whole conversation, including messages the truncate policy left out."""
        return [m.to_openai() for m in self._messages]

    @property
    def history(self) -> list[Message]:
        """The whole conversation as Messages, with each reply's token ids and sampling:
        what a front end keeps and passes back to `load(..., messages=...)`."""
        return list(self._messages)

    @property
    def system(self) -> str | None:
        has = self._messages and self._messages[0].role == "system"
        return self._messages[0].content if has else None

    @system.setter
    def system(self, text: str | None) -> None:
        if self._messages and self._messages[0].role == "system":
            if text:
                self._messages[0] = Message("system", text)
            else:
                del self._messages[0]
        elif text:
            self._messages.insert(0, Message("system", text))
        self._changed()

    @property
    def kv_bits(self) -> int | None:
        return self._kv_bits

    @property
    def dropped_messages(self) -> int:
        """How many of the oldest messages the truncate policy leaves out of the prompt."""
        return self._dropped

    @property
    def cache_tokens(self) -> list[int]:
        """The token ids the KV cache holds, in order."""
        return list(self._cache_tokens)

    @property
    def context_tokens(self) -> int:
        """Tokens the conversation takes in the prompt now."""
        return len(self._tokens(add_generation_prompt=False))

    @property
    def context_limit(self) -> int:
        """The most tokens a conversation can take: the model's context, or memory."""
        return min(self.model.context_length, self.planner.max_context(self._kv_bits))

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    def count_tokens(self, text: str) -> int:
        return len(self.model.encode(text))

    def _changed(self) -> None:
        self._dropped = min(self._dropped, max(len(self._turn_messages()) - 1, 0))

    def _system_part(self) -> list[Message]:
        return self._messages[:1] if self.system is not None else []

    def _turn_messages(self) -> list[Message]:
        return self._messages[len(self._system_part()) :]

    def _prompt_messages(self) -> list[Message]:
        return self._system_part() + self._turn_messages()[self._dropped :]

    def _tokens(self, *, add_generation_prompt: bool = True) -> list[int]:
        return self._conversation(self._messages, add_generation_prompt).render(self._dropped)

    def _conversation(
        self, messages: Sequence[Message], add_generation_prompt: bool
    ) -> Conversation:
        """`messages` as the context policy sees them (policy.Conversation)."""
        has_system = bool(messages) and messages[0].role == "system"
        system, turns = list(messages[: int(has_system)]), list(messages[int(has_system) :])
        return Conversation(
            system=system,
            turns=turns,
            dropped=min(self._dropped, max(len(turns) - 1, 0)),
            render=lambda dropped: self._render([*system, *turns[dropped:]], add_generation_prompt),
            encode=self.model.encode,
            longest_token=longest_token(self.model),
        )

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> list[int]:
        """The token ids of `messages` rendered with the chat template (and the tools).
        Kept by what they render rather than by position, so a render made before a
        change (by `prepare`, on another thread) is found after it."""
        if not messages:
            return []
        key = (add_generation_prompt, *map(_render_key, messages))
        with self._render_lock:
            if key in self._rendered:
                self._rendered.move_to_end(key)
                return self._rendered[key]
        tokens = self.model.render_tokens(
            messages,
            tools=[t.spec() for t in self.tools.values()] or None,
            add_generation_prompt=add_generation_prompt,
        )
        with self._render_lock:
            self._rendered[key] = tokens
            while len(self._rendered) > _RENDERS_KEPT:
                self._rendered.popitem(last=False)
        return tokens

    def prepare(
        self,
        messages: Sequence[Message | Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
        reserve: int | None = None,
    ) -> Fit:
        """Do a turn's tokenizing ahead of it: render `messages` (the conversation the
        turn will read; default: as it is now) and apply the context policy to them, as
        the turn will, without changing anything. The turn then finds its renders done,
        so a front end can keep this work off its model thread: safe from another
        thread, while the session is idle or not. `reserve` is the room kept for the
        reply (default: from max_tokens). Raises ContextOverflowError where the turn
        would be refused."""
        messages = self._messages if messages is None else [Message.of(m) for m in messages]
        if reserve is None:
            reserve = reply_reserve(self.params.max_tokens)
        chat = self._conversation(messages, add_generation_prompt)
        return fit(self.policy, self.planner, chat, kv_bits=self._kv_bits, reserve=reserve)

    # -- conversation --------------------------------------------------------------------------

    def send(
        self, text: str, *, json_schema: dict[str, Any] | str | None = None, **overrides: Any
    ) -> Iterator[GenerationChunk]:
        """Add a user message and stream the reply. Keyword overrides change sampling
        parameters for this turn only (`temperature=0`, `max_tokens=64`, ...);
        `json_schema` constrains the reply to JSON valid for that schema.

        With tools, calls in the reply are run and their results fed back (up to
        `max_tool_rounds` rounds); the stream carries the prose, and `messages` the calls.
        A turn refused before any work (ContextOverflowError) leaves `messages` as it was.
        """
        before = self._idle_snapshot()
        self._messages.append(Message("user", _text(text, "message")))
        self._changed()
        return self._turn(overrides, json_schema, restore=before)

    def regenerate(self, **overrides: Any) -> Iterator[GenerationChunk]:
        """Drop the last reply and generate a new one for the same user message."""
        before = self._idle_snapshot()
        last_user = self._last_index("user")
        if last_user is None:
            raise ValueError("There is no user message to reply to.")
        del self._messages[last_user + 1 :]
        self._changed()
        return self._turn(overrides, restore=before)

    def edit(self, index: int, text: str, **overrides: Any) -> Iterator[GenerationChunk]:
        """Replace message `index` and drop everything after it. Editing a user message
        streams a fresh reply; editing any other message returns an empty stream."""
        before = self._idle_snapshot()
        if not -len(self._messages) <= index < len(self._messages):
            raise IndexError(f"No message {index}; the conversation has {len(self._messages)}.")
        index %= len(self._messages)
        role = self._messages[index].role
        self._messages[index] = Message(role, _text(text, "edited message"))
        del self._messages[index + 1 :]
        self._changed()
        if role == "user":
            return self._turn(overrides, restore=before)
        return iter(())

    def undo(self) -> str | None:
        """Remove the last user message and what followed it; return its text."""
        self._idle_snapshot()
        last_user = self._last_index("user")
        if last_user is None:
            return None
        text = self._messages[last_user].content
        del self._messages[last_user:]
        self._changed()
        return text

    def reset(self) -> None:
        """Start over, keeping the system prompt (and the cache of it)."""
        self._idle_snapshot()
        del self._messages[len(self._system_part()) :]
        self._dropped = 0
        self._changed()

    def stop(self) -> None:
        """End the reply being generated (safe from another thread)."""
        self._stop.set()

    def prefill(self, should_stop: Callable[[], bool] | None = None) -> int:
        """Read the conversation into the KV cache now, without replying (an attached
        document, say), so the next reply starts at once. `prefill_progress` sees the
        progress; `stop()`, or `should_stop` returning True, ends it between chunks.
        Returns the tokens read."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("A reply is being generated in this session.")
        try:
            self._stop.clear()
            tokens, notices = self._fit(self.params, add_generation_prompt=False)
            self.notices.extend(notices)
            reuse, step = self._ready_cache(tokens, reserve=0, keep_one=False)
            if reuse == len(tokens):
                return 0
            progress = self._progress_from(reuse, len(tokens))
            if progress is not None:
                progress(0, len(tokens) - reuse)  # where the read starts (as replies say)
            try:
                prefill(
                    self.model,
                    tokens[reuse:],
                    self._cache,
                    cache_tokens=self._cache_tokens,
                    step=step,
                    progress=progress,
                    should_stop=lambda: self._stop.is_set() or bool(should_stop and should_stop()),
                )
            except GenerationCancelled:
                pass
            except BaseException:
                self._cache, self._cache_tokens = None, []
                raise
            return len(self._cache_tokens) - reuse
        finally:
            self._busy.release()

    def add_message(self, message: Message | Mapping[str, Any]) -> None:
        """Append a message as is (a tool result, an attached document, ...): a Message or
        an OpenAI-style dict."""
        self._idle_snapshot()
        raw = message.to_dict() if isinstance(message, Message) else message
        message = Message.of(message)
        _check_text(raw, f"{message.role} message")
        self._messages.append(message)
        self._changed()

    def set_tools(
        self, tools: Sequence[Callable[..., Any] | dict[str, Any] | Tool | ToolSource]
    ) -> None:
        """Replace the tools the model may call, from the next turn on (a front end
        enabling or disabling an MCP server, say)."""
        self._idle_snapshot()
        self.tools = tool_table(tools)
        with self._render_lock:
            self._rendered.clear()  # renders hold the tools' specs
        self._changed()

    def _idle_snapshot(self) -> list[Message]:
        """The messages as they are, after checking no reply is being generated (changing
        them under a running turn would put its reply after the wrong message)."""
        if self.busy:
            raise RuntimeError("A reply is being generated in this session; stop it first.")
        return list(self._messages)

    def _last_index(self, role: str) -> int | None:
        for i in range(len(self._messages) - 1, -1, -1):
            if self._messages[i].role == role:
                return i
        return None

    # -- fitting the context and readying the cache ---------------------------------------------

    def fit_report(self, text: str = "", max_tokens: int | None = None) -> str | None:
        """None if a user message `text` fits as things stand; else what the policy will do."""
        reserve = reply_reserve(max_tokens or self.params.max_tokens)
        need = self.context_tokens + self.count_tokens(text) + 16 + reserve
        plan = self.planner.plan(need, self._kv_bits)
        if plan.fits:
            return None
        return (
            f"This message needs about {need:,} tokens; {why_not(self.planner, plan)}: "
            f"{self.policy.action} (context policy: {self.policy.value})."
        )

    def _fit(
        self, params: SamplingParams, *, add_generation_prompt: bool = True
    ) -> tuple[list[int], list[str]]:
        """The prompt tokens for this turn after applying the context policy, and what
        the policy did (heard at once by `on_notice`)."""
        chat = self._conversation(self._messages, add_generation_prompt)
        reserve = reply_reserve(params.max_tokens)
        done = fit(self.policy, self.planner, chat, kv_bits=self._kv_bits, reserve=reserve)
        self._dropped = done.dropped
        if done.kv_bits != self._kv_bits:
            self.set_kv_bits(done.kv_bits)
        for notice in done.notices:
            if self.on_notice is not None:
                self.on_notice(notice)
        return done.tokens, list(done.notices)

    def set_kv_bits(self, kv_bits: int | None) -> None:
        """Store the KV cache at this precision from now on (requantizing what it holds)."""
        if self._cache is not None and kv_bits is not None:
            self._cache = requantize_cache(self.model, self._cache, kv_bits)
        self._kv_bits = kv_bits
        if isinstance(self.drafter, ModelDrafter):  # the draft's cache follows (re-read)
            self.drafter.kv_bits = kv_bits
            self.drafter.reset()

    def set_draft(self, draft: Any, num_draft_tokens: int | None = None) -> None:
        """Turn speculative decoding on ("lookup", a draft Model or reference) or off
        (None) from the next reply on; the planner counts a draft model's memory."""
        if self.busy:
            raise RuntimeError("Cannot change the draft while a reply is being generated.")
        self.drafter, self.planner = drafter_and_planner(
            self.model, draft, kv_bits=self._kv_bits, budget=self.planner.budget
        )
        self.num_draft_tokens = num_draft_tokens

    def _ready_cache(self, tokens: list[int], *, reserve: int, keep_one: bool) -> tuple[int, int]:
        """Make the cache if there is none and trim it to the longest prefix it shares with
        `tokens` (with `keep_one`, at least one token is left to read); then choose the
        prefill chunk for `tokens` plus `reserve` more: while a front end follows the
        progress, one this machine reads in about a second, so the progress moves and a
        stop is heard. Returns (tokens reused, chunk)."""
        if self._cache is None:
            self._cache = make_cache(self.model, self._kv_bits)
            self._cache_tokens = []
        reuse = reuse_cache(self._cache, self._cache_tokens, tokens, keep_one=keep_one)
        chunk = self.planner.chunk_for(len(tokens) + reserve, self._kv_bits)
        if self.prefill_chunk:
            chunk = min(chunk, self.prefill_chunk)
        if self.prefill_progress is not None:
            chunk = min(chunk, timely_chunk(self.model, 1.0))
        return reuse, chunk

    def _progress_from(self, reuse: int, total: int) -> Callable[[int, int], None] | None:
        """`prefill_progress` in whole-conversation terms (the cached part counts as done)."""
        report = self.prefill_progress
        return None if report is None else (lambda done, _: report(reuse + done, total))

    # -- a turn ---------------------------------------------------------------------------------

    def _turn(
        self,
        overrides: dict[str, Any],
        json_schema: dict[str, Any] | str | None = None,
        *,
        restore: list[Message],
    ) -> Iterator[GenerationChunk]:
        if not self._busy.acquire(blocking=False):
            self._messages = restore
            self._changed()
            raise RuntimeError("A reply is already being generated in this session.")
        try:
            self._stop.clear()
            params = resolve_params(self.model, self.params, overrides)
            try:
                reason = yield from self._round(params, json_schema)
            except ContextOverflowError:
                self._messages = restore  # refused before any work: nothing happened
                self._changed()
                raise
            rounds = 0
            while reason != "cancelled" and self.tools and json_schema is None:
                # After max_tool_rounds the calls get an error telling the model to answer;
                # it gets one more round to do so, and calls after that are not answered.
                if not self._answer_tool_calls(rounds):
                    return
                rounds += 1
                reason = yield from self._round(params, json_schema)
        finally:
            self._busy.release()

    def _answer_tool_calls(self, rounds: int) -> bool:
        """Answer the calls in the last reply: run them, or past the limit reply with an
        error, or after that leave them unanswered. True if the model should go on."""
        reply = self._messages[-1]
        prose, calls = parse_tool_calls(reply.content)
        if not calls:
            return False
        self._messages[-1] = replace(
            reply, content=prose, tool_calls=tuple(c.to_message() for c in calls), token_ids=None
        )
        self._changed()
        if rounds > self.max_tool_rounds:
            return False
        for call in calls:
            if rounds < self.max_tool_rounds:
                result = run_tool_call(call, self.tools, self.approve)
            else:
                result = "error: too many rounds of tool calls; answer with what you have."
            self._messages.append(
                Message("tool", result, tool_call_id=call.id, name=call.name or "")
            )
            if self.on_tool_call is not None:
                self.on_tool_call(call, result)
        self._changed()
        return True

    def _round(
        self, params: SamplingParams, json_schema: dict[str, Any] | str | None
    ) -> Iterator[GenerationChunk]:
        """One reply from the model: fit, reuse the cache, prefill the rest, stream.
        Returns the finish reason."""
        processors = []
        if json_schema is not None:
            from ..runtime.structured import JsonSchemaProcessor

            processors.append(JsonSchemaProcessor(self.model, json_schema))
        calls_hidden = CallFilter() if self.tools and json_schema is None else None
        tokens, notices = self._fit(params)
        reuse, chunk_size = self._ready_cache(
            tokens, reserve=reply_reserve(params.max_tokens), keep_one=True
        )
        suffix = tokens[reuse:]
        pieces: list[str] = []
        last: GenerationChunk | None = None
        finished = False
        try:
            for chunk in stream_tokens(
                self.model,
                suffix,
                params,
                prompt_cache=self._cache,
                cache_tokens=self._cache_tokens,
                prefill_step_size=chunk_size,
                prompt_progress=self._progress_from(reuse, len(tokens)),
                should_stop=self._stop.is_set,
                logits_processors=processors,
                draft=self.drafter,
                num_draft_tokens=self.num_draft_tokens,
            ):
                pieces.append(chunk.text)
                last = chunk
                if calls_hidden is not None:
                    shown = calls_hidden.feed(chunk.text)
                    if chunk.finish_reason is not None:
                        shown += calls_hidden.flush()
                    chunk = replace(chunk, text=shown)
                yield chunk
            finished = True
        except GenerationCancelled:
            finished = True
        except BaseException as e:
            if not isinstance(e, GeneratorExit):
                self._cache, self._cache_tokens = None, []  # state unknown: start clean
            raise
        finally:
            reason = last.finish_reason if finished and last and last.finish_reason else "cancelled"
            self._record(tokens, reuse, pieces, last, reason, notices, params)
        if last is None or last.finish_reason is None:  # cancelled before the first token
            yield GenerationChunk(
                text="",
                token=None,
                prompt_tokens=len(suffix),
                prompt_tps=0.0,
                generation_tokens=0,
                generation_tps=0.0,
                peak_memory=0.0,
                time_to_first_token=0.0,
                finish_reason="cancelled",
            )
            return "cancelled"
        return last.finish_reason

    def _record(
        self,
        tokens: list[int],
        reuse: int,
        pieces: list[str],
        last: GenerationChunk | None,
        reason: str,
        notices: list[str],
        params: SamplingParams,
    ) -> None:
        content = "".join(pieces)
        produced = self._cache_tokens[len(tokens) :]
        while produced and produced[-1] in self.model.tokenizer.eos_token_ids:
            produced = produced[:-1]
        # Reused verbatim when the history is rendered, unless the text is not theirs (a
        # stop string cut it); a reply whose ids are dropped is re-read from its start.
        decoded = self.model.tokenizer.decode(produced) if produced else None
        same = decoded is not None and _same_text(decoded, content)
        self._messages.append(
            Message(
                "assistant",
                content,
                token_ids=tuple(produced) if same else None,
                stopped=reason == "cancelled",
                sampling=params.to_dict(),  # kept with the reply (storage, export)
            )
        )
        self._changed()
        self.notices.extend(notices)
        self.last_stats = TurnStats(
            prompt_tokens=len(tokens),
            prefilled_tokens=len(tokens) - reuse,
            generation_tokens=last.generation_tokens if last else 0,
            time_to_first_token=last.time_to_first_token if last else 0.0,
            prompt_tps=last.prompt_tps if last else 0.0,
            tokens_per_second=last.generation_tps if last else 0.0,
            peak_memory=last.peak_memory if last else 0.0,
            kv_bits=self._kv_bits,
            dropped_messages=self._dropped,
            finish_reason=reason,
            notices=tuple(notices),
            drafted=last.drafted if last else 0,
            accepted=last.accepted if last else 0,
        )

    # -- save and resume ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the session (JSON) and its KV cache atomically, both readable by you only.

        The cache lives beside the JSON, named after it: `save("kyoto.json")` also writes
        `kyoto.json.<sha12>.kv.safetensors`. Copy or move a saved session with
        `qwen_mlx.chat.saved.copy_session` / `move_session`, which take the cache along
        (see saved.py for the format)."""
        if self.busy:
            raise RuntimeError("Cannot save while a reply is being generated.")
        state = {
            "id": self.id,
            "model": {
                "name": self.model.name,
                "ref": self.model.ref,  # what `generate --session` loads without --model
                "fingerprint": self.model.fingerprint,
            },
            "messages": [m.to_dict() for m in self._messages],
            "dropped": self._dropped,
            "params": self.params.to_dict(),
            "policy": self.policy.value,
            "kv_bits": self._kv_bits,
        }
        return write_session(
            Path(path),
            state,
            cache=self._cache,
            cache_tokens=self._cache_tokens,
            kv_bits=self._kv_bits,
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: Model,
        *,
        policy: ContextPolicy | str | None = None,
        planner: MemoryPlanner | None = None,
        messages: Sequence[Message | Mapping[str, Any]] | None = None,
        tools: Sequence[Callable[..., Any] | dict[str, Any] | Tool | ToolSource] | None = None,
        approve: Approver | None = None,
        draft: Any = None,
        num_draft_tokens: int | None = None,
    ) -> ChatSession:
        """Resume a saved session. Its messages always come back; its KV cache only if it
        belongs to this exact model and is intact (otherwise `notices` says why not).

        `messages` (Messages, as `history` gives them, or dicts) replaces the saved
        messages, when a front end keeps newer ones elsewhere; the cache is still used for
        whatever prefix they share with it. `tools` and `approve` are as for a new session
        (tools are not saved: pass them again).
        """
        path = Path(path)
        data = read_session(path)  # ValueError for a file that is not a session
        if policy is not None:
            policy = ContextPolicy(policy)  # the caller's mistake, not the file's
        if messages is not None:
            try:
                messages = check_messages(list(messages))
            except ValueError as e:
                raise ValueError(f"The messages given to ChatSession.load: {e}.") from e
        table = tool_table(tools or ())  # the caller's mistake, not the file's
        try:
            params = SamplingParams(**data["params"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path} has unusable sampling parameters ({e}).") from e
        try:
            session = cls(
                model,
                params=params,
                policy=policy or data.get("policy", ContextPolicy.TRUNCATE),
                kv_bits=data.get("kv_bits"),
                planner=planner,
                tools=list(table.values()),
                approve=approve,
                draft=draft,
                num_draft_tokens=num_draft_tokens,
            )
            session._dropped = int(data.get("dropped", 0))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path} has unusable settings ({e}).") from e
        session.id = str(data["id"])
        session._messages = list(messages if messages is not None else data["messages"])
        session._changed()
        if data.get("cache"):
            saved = read_cache(path, data, model)
            if isinstance(saved, str):
                session.notices.append(saved)
            else:
                session._cache, session._cache_tokens = saved.cache, saved.tokens
                session._kv_bits = saved.kv_bits
                if isinstance(session.drafter, ModelDrafter):
                    session.drafter.kv_bits = saved.kv_bits
        return session


def _text(text: Any, what: str) -> str:
    """`text` if it is a str of valid Unicode; else a clear error."""
    if not isinstance(text, str):
        raise TypeError(f"A message is text (a str), not {type(text).__name__}.")
    _check_text(text, what)
    return text
