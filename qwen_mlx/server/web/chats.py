"""The web chat's conversations: the terminal app's saved chats, on the served model.

Each chat is a `ChatSession` over the engine's one model, run on the process's model
thread (where the API's jobs run too, one after another), so any number of tabs share one
copy of the weights. Chats live in the same `ChatStore` as `qwen-mlx chat`'s, with their KV
caches beside them: a chat opened here resumes from the terminal app's saved cache, and
the terminal app resumes from ours, neither re-reading the history. A chat whose messages
changed on disk since we last used it (the terminal app went on with it) is reloaded.

One turn at a time per chat: a second tab asking for a reply while one streams is told
the chat is busy.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ...chat.chat_store import DEFAULT_TITLE, Chat, ChatStore, title_from
from ...chat.documents import read_document
from ...chat.export import to_markdown
from ...chat.policy import ContextPolicy, longest_token, most_characters, tokens_over
from ...chat.session import ChatSession
from ...chat.stored_chat import SAMPLING_KEYS, ChatSettings, chat_sampling, resume, settle
from ...errors import ContextOverflowError
from ...runtime import Message, Model
from ...runtime.memory import MemoryPlanner
from ..defaults import DEFAULT_MAX_TOKENS_CAP
from ..errors import APIError

T = TypeVar("T")

KEEP_SESSIONS = 2  # chats kept in memory with their KV caches; the others are on disk
ATTACHABLE = (".txt", ".md", ".markdown", ".pdf")
MAX_PDF_PAGES = 2000  # a PDF's pages read at most (each can take a while to extract)
PREPARE_THREADS = 2  # reading attachments and tokenizing, beside the model thread


@functools.cache
def web_sampling() -> type[BaseModel]:
    """The page's sampling parameters as a pydantic model made of the API's own fields
    (the server's `Sampling`): the same types and bounds, so `1e308`, NaN, infinity or a string
    are refused here as they are on /v1/chat/completions."""
    from pydantic import ConfigDict, create_model

    from ..schemas import Sampling

    fields = Sampling.model_fields
    return create_model(
        "WebSampling",
        __config__=ConfigDict(extra="forbid"),
        **{key: (fields[key].annotation, fields[key]) for key in SAMPLING_KEYS},
    )


class ChatBusy(APIError):
    """Work is running in this chat (in another tab, or one since closed, until it stops):
    the message says what and for how long."""

    def __init__(self, turn: Turn) -> None:
        super().__init__(
            409,
            f"This chat is busy in another tab or window: {turn.what} (for "
            f"{_duration(time.time() - turn.since)}). Wait for it to finish, or stop it, "
            "then try again.",
            code="chat_busy",
        )


@dataclass
class Turn:
    """Work in a chat (a reply, reading an attachment): what it is and since when (for
    the busy message), a stop flag for a stop that comes before the model thread has the
    session, then the session."""

    chat_id: str
    what: str
    since: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)
    session: ChatSession | None = None
    ended: bool = False  # set on the event loop when the chat is free again

    def request_stop(self) -> None:
        self.stop.set()
        if self.session is not None:
            self.session.stop()

    def view(self) -> dict[str, Any]:
        """What the page shows of it."""
        return {"what": self.what, "since": self.since}


def _duration(seconds: float) -> str:
    """`3 min 5 s`, `12 s`."""
    minutes, seconds = divmod(max(int(seconds), 0), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


class WebChats:
    """The chats the page shows and the sessions that answer them."""

    def __init__(
        self,
        model: Model,
        home: str | Path,
        *,
        planner: MemoryPlanner | None = None,
        kv_bits: int | None = None,
        max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
    ) -> None:
        self.model = model
        self.planner = planner or MemoryPlanner.for_model(model)
        self.kv_bits = kv_bits
        self.max_tokens_cap = max_tokens_cap
        self.context_limit = min(model.context_length, self.planner.max_context(kv_bits))
        # More characters than this cannot fit, whatever they say: refused untokenized.
        self.max_chars = most_characters(model, self.context_limit)
        self.home = Path(home)
        self._store: ChatStore | None = None
        self._store_lock = threading.Lock()
        self._sessions: OrderedDict[str, ChatSession] = OrderedDict()  # model thread only
        self._turns: dict[str, Turn] = {}  # event loop only
        self._preparer: ThreadPoolExecutor | None = None

    async def off_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a preparation thread: reading files and tokenizing, which must
        not hold up the model thread (every API client waits on it)."""
        if self._preparer is None:
            self._preparer = ThreadPoolExecutor(PREPARE_THREADS, "qwen-mlx-web-prepare")
        return await asyncio.get_running_loop().run_in_executor(self._preparer, fn, *args)

    def check_system(self, system: str | None) -> None:
        """A 400 for a system prompt that alone is over the context, found by counting it
        piece by piece only until it is (on a preparation thread)."""
        over = tokens_over(
            [system or ""], self.context_limit, self.model.encode, longest_token(self.model)
        )
        if over is not None:
            raise APIError(
                400,
                f"system: the system prompt alone takes at least {over:,} tokens, but the "
                f"context holds {self.context_limit:,}. Shorten it.",
                param="system",
                code="context_length_exceeded",
            )

    def check_length(self, text: str, what: str, param: str) -> None:
        """A 400 for a text longer than the context could hold, by its characters alone
        (before anything tokenizes it)."""
        if len(text) > self.max_chars:
            raise APIError(
                400,
                f"{what} has {len(text):,} characters: more than the {self.context_limit:,}-"
                "token context can hold, whatever they say. Shorten it.",
                param=param,
                code="context_length_exceeded",
            )

    @property
    def store(self) -> ChatStore:
        """The chat store, opened on first use (an unreadable one then fails the page,
        not the whole server)."""
        with self._store_lock:
            if self._store is None:
                self._store = ChatStore(self.home)
            return self._store

    # -- chats ------------------------------------------------------------------------------

    def chat(self, chat_id: str) -> Chat:
        chat = self.store.get(chat_id)
        if chat is None:
            raise APIError(
                404, f"There is no chat {chat_id}; the list on the left shows them.", code="no_chat"
            )
        return chat

    def create(self, settings: dict[str, Any]) -> Chat:
        checked = self.check_settings(settings)
        chat = self.store.create(
            model=self.model.ref,
            system=checked.system,
            params=checked.overrides,
            policy=checked.policy.value,
        )
        if checked.system:
            self.store.save_messages(chat.id, [Message("system", checked.system)])
        return chat

    def check_settings(self, settings: Any) -> ChatSettings:
        """The chat's settings from the page's settings form (`stored_chat.settle`), or a
        400 naming what is wrong. The sampling parameters are held to the API's own bounds
        (`web_sampling`), and max_tokens to the server's cap. The form sends every
        parameter: the overrides keep what differs from the model's defaults."""
        if not isinstance(settings, dict):
            raise APIError(400, "settings: expected an object.", param="settings")
        defaults = self.model.default_params
        raw = settings.get("params") or {}
        if not isinstance(raw, dict):
            raise APIError(400, "params: expected an object of sampling parameters.")
        unknown = [key for key in raw if key not in SAMPLING_KEYS]
        if unknown:
            key = unknown[0]
            raise APIError(400, f"params: unknown sampling parameter {key!r}.", param=key)
        given = {key: value for key, value in raw.items() if value is not None and value != ""}
        try:
            checked = web_sampling().model_validate(given).model_dump(exclude_none=True)
        except ValidationError as e:
            first = e.errors()[0]
            key = ".".join(map(str, first["loc"])) or "params"
            message = f"{key}: {first['msg']}, not {first['input']!r}."
            raise APIError(400, message, param=key) from None
        most = min(self.max_tokens_cap, max(self.context_limit - 1, 1))
        if checked.get("max_tokens", 0) > most:
            raise APIError(
                400,
                f"max_tokens: at most {most:,} on this server (its --max-tokens-cap and "
                f"context), not {checked['max_tokens']:,}.",
                param="max_tokens",
            )
        overrides = {k: v for k, v in checked.items() if v != getattr(defaults, k)}
        system = settings.get("system")
        if system is not None and not isinstance(system, str):
            raise APIError(400, "system: expected text.", param="system")
        self.check_length(system or "", "system: the system prompt", "system")
        policy = settings.get("policy") or ContextPolicy.TRUNCATE.value
        if not isinstance(policy, str) or policy not in ContextPolicy.names():
            names = ", ".join(ContextPolicy.names())
            raise APIError(400, f"policy: expected one of {names}.", param="policy")
        try:
            return settle(self.model, overrides, system=system, policy=policy)
        except ValueError as e:  # the sampler refuses the parameters together
            raise APIError(400, str(e)) from None

    # -- sessions (model thread) --------------------------------------------------------------

    def session(self, chat: Chat) -> ChatSession:
        """The chat's session: the one in memory if its messages are still those on disk,
        else loaded with its saved KV cache (as the terminal app does)."""
        stored = self.store.messages(chat.id)
        session = self._sessions.get(chat.id)
        if session is None or _texts(session.history) != _texts(stored):
            session = resume(
                self.store,
                chat,
                self.model,
                messages=stored,
                planner=self.planner,
                kv_bits=self.kv_bits,
            )
        session.params = chat_sampling(self.model, chat.params)
        session.policy = ContextPolicy(chat.policy)
        self._sessions[chat.id] = session
        self._sessions.move_to_end(chat.id)
        while len(self._sessions) > KEEP_SESSIONS:
            self._sessions.popitem(last=False)  # saved after each turn: nothing is lost
        return session

    def forget(self, chat_id: str) -> None:
        self._sessions.pop(chat_id, None)

    def save(self, chat: Chat, session: ChatSession, *, cache: bool) -> None:
        """Save the messages (with `cache`, the KV cache too) as the terminal app does."""
        self.store.save_messages(chat.id, session.history)
        if cache:
            session.save(self.store.session_path(chat.id))

    def apply_settings(self, chat: Chat, settings: dict[str, Any]) -> ChatSession:
        """Change a chat's sampling, system prompt and policy (on the model thread)."""
        checked = self.check_settings(settings)
        session = self.session(chat)
        chat.params, chat.system, chat.policy = (
            checked.overrides,
            checked.system,
            checked.policy.value,
        )
        self.store.update(chat)
        session.params, session.policy = checked.params, checked.policy
        if session.system != checked.system:
            session.system = checked.system
            self.store.save_messages(chat.id, session.history)
        return session

    def context(self, session: ChatSession) -> dict[str, int]:
        """The context figures the page shows (on a preparation thread: it tokenizes)."""
        return {"used": session.context_tokens, "limit": session.context_limit}

    def read_attachment(self, name: str, data: bytes) -> str:
        """The message that attaches file `name` (its bytes `data`): its text, read on a
        preparation thread, a PDF only as far as the context could hold (`MAX_PDF_PAGES`
        pages, `max_chars` characters); a 400 for what cannot be read or cannot fit."""
        suffix = Path(name).suffix.lower()
        if suffix not in ATTACHABLE:
            raise APIError(
                400,
                f"{name} is not a text, Markdown or PDF file ({', '.join(ATTACHABLE)}).",
                code="unsupported_file",
            )
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"attachment{suffix}"
            path.write_bytes(data)
            try:
                text = read_document(path, max_chars=self.max_chars, max_pages=MAX_PDF_PAGES)
            except ContextOverflowError as e:
                message = str(e).replace(str(path), name)
                raise APIError(400, message, code="context_length_exceeded") from e
            except (OSError, ValueError) as e:
                raise APIError(400, str(e).replace(str(path), name), code="unreadable_file") from e
        return f"Attached file `{name}`:\n\n{text}"

    def check_attachment(self, session: ChatSession, name: str, message: str) -> None:
        """A 400 unless the attachment fits in the chat as it stands, with room for a
        reply, without the context policy leaving anything out (on a preparation thread:
        it tokenizes)."""
        try:  # as `attach` will read it: no reply yet, room kept for one
            fit = session.prepare(
                [*session.history, Message("user", message)], add_generation_prompt=False
            )
        except ContextOverflowError as e:
            size = f"is far too long ({e})"
        else:
            if not fit.notices:
                return
            size = f"has about {session.count_tokens(message):,} tokens"
        used, limit = session.context_tokens, session.context_limit
        raise APIError(
            400,
            f"{name} {size}: more than fits in this chat ({used:,} of {limit:,} tokens used). "
            f"Start a new chat, or summarize it first (`qwen-mlx summarize {name}`).",
            code="context_length_exceeded",
        )

    def attach(
        self,
        chat: Chat,
        session: ChatSession,
        name: str,
        message: str,
        should_stop: Callable[[], bool],
    ) -> int:
        """Add an attachment's message to the chat and read it into the KV cache, so the
        next reply starts at once (on the model thread; `should_stop` ends the reading
        between chunks, and the rest is read with the next reply). Returns the tokens
        read."""
        session.add_message({"role": "user", "content": message})
        if chat.title == DEFAULT_TITLE:
            chat.title = title_from(f"About {name}")
            self.store.rename(chat.id, chat.title)
        self.save(chat, session, cache=False)
        read = session.prefill(should_stop=should_stop)
        self.save(chat, session, cache=True)
        return read

    def export(self, chat: Chat) -> str:
        params = chat_sampling(self.model, chat.params)
        return to_markdown(
            title=chat.title,
            model=self.model.name,
            params={key: getattr(params, key) for key in SAMPLING_KEYS},
            policy=chat.policy,
            messages=self.store.messages(chat.id),
        )

    # -- turns (event loop) ---------------------------------------------------------------------

    def busy(self, chat_id: str) -> dict[str, Any] | None:
        """What runs in the chat, for the page; None when nothing does."""
        turn = self._turns.get(chat_id)
        return None if turn is None else turn.view()

    def begin(self, chat_id: str, what: str) -> Turn:
        """Hold the chat for work described by `what` ("replying to …"); ChatBusy (409)
        if something holds it already."""
        if chat_id in self._turns:
            raise ChatBusy(self._turns[chat_id])
        turn = self._turns[chat_id] = Turn(chat_id, what)
        return turn

    def end(self, turn: Turn) -> None:
        turn.ended = True
        if self._turns.get(turn.chat_id) is turn:
            del self._turns[turn.chat_id]

    def stop(self, chat_id: str) -> bool:
        turn = self._turns.get(chat_id)
        if turn is None:
            return False
        turn.request_stop()
        return True

    def close(self) -> None:
        for turn in list(self._turns.values()):
            turn.request_stop()
        if self._preparer is not None:
            self._preparer.shutdown(wait=False, cancel_futures=True)
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def _texts(messages: list[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]
