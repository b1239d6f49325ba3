"""Attachments: a text, Markdown or PDF file read into the open chat, whole when it fits,
else (if the user agrees) as a summary made part by part.

`attach_file` runs in a worker of the app (it may ask a question and wait for the
answer) and works through the ChatView's own methods: the chat is held meanwhile (busy,
the input locked), and Esc stops the model's part.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from qwen_mlx.runtime.thread import on_model_thread

from .chat_view import ChatView
from .reply_job import PolicyNotice, save_chat
from .screens import ConfirmScreen

if TYPE_CHECKING:
    from qwen_mlx.chat.session import ChatSession


async def attach_file(view: ChatView, path: Path) -> None:
    """Read `path` into the chat on `view`: whole if it fits, else (if the user agrees)
    as a summary. The chat is busy throughout; Esc stops the model's part."""
    from qwen_mlx.chat.documents import read_document

    if not view.can_change():
        return
    session, stop = view.session, threading.Event()
    view.begin_busy(f"reading {path.name}", stop=stop.set)
    try:
        try:
            text = await asyncio.to_thread(read_document, path)  # a PDF can take a while
        except (OSError, ValueError) as e:
            view.notify(str(e), severity="error")
            return
        message = f"Attached file `{path.name}`:\n\n{text}"
        # Tokenizing only: a thread of its own, so the model thread stays free.
        fits = await asyncio.to_thread(session.fit_report, message)
        if stop.is_set():
            view.notify(f"Stopped; {path.name} was not attached.")
            return
        if fits is not None:
            tokens = await asyncio.to_thread(session.count_tokens, message)
            question = (
                f"{path.name} has about {tokens:,} tokens: more than fits in this chat. "
                "Summarize it part by part and attach the summary?"
            )
            if not await view.app.push_screen_wait(ConfirmScreen(question, "Summarize", "Cancel")):
                return
            message = await _summarize(view, session, text, path.name, stop)
            if message is None:
                return
        await _read_into_context(view, session, message, path.name, stop)
    finally:
        view.end_busy()


async def _summarize(
    view: ChatView, session: ChatSession, text: str, name: str, stop: threading.Event
) -> str | None:
    """The message that attaches a summary of `text` (None, said, if stopped or failed)."""
    from qwen_mlx.chat.documents import summarize
    from qwen_mlx.errors import GenerationCancelled

    bar = view.progress
    bar.start(f"Summarizing {name}", " · Esc stops")
    view.busy = f"summarizing {name}"
    limit = max(session.context_limit - session.context_tokens, 512) // 2

    def progress(stage: str, done: int, total: int) -> None:
        bar.report(done, total, f"Summarizing {name} ({stage})")

    try:
        summary = await on_model_thread(
            summarize,
            session.model,
            text,
            max_context=limit,
            progress=progress,
            should_stop=stop.is_set,
        )
    except GenerationCancelled:
        view.notify(f"Stopped summarizing {name}; nothing was attached.")
        return None
    except Exception as e:
        view.notify(f"Could not summarize {name}: {e}", severity="error")
        return None
    finally:
        bar.stop()
    return f"Summary of the attached file `{name}` ({summary.chunks} parts):\n\n{summary.text}"


async def _read_into_context(
    view: ChatView, session: ChatSession, message: str, name: str, stop: threading.Event
) -> None:
    """Add the message and prefill it now, so the next reply starts at once."""
    chat = view.ensure_chat(f"About {name}")
    session.add_message({"role": "user", "content": message})
    view.add_message("user", message)
    bar = view.progress
    bar.start(f"Reading {name}", " · Esc stops")
    session.prefill_progress = bar.report
    session.on_notice = lambda notice: view.post_message(PolicyNotice(notice))

    def job() -> tuple[int, bool, tuple[int, int]]:
        read = session.prefill(should_stop=stop.is_set)
        complete = len(session.cache_tokens) == session.context_tokens
        save_chat(view.store, chat, session, cache=True)
        return read, complete, (session.context_tokens, session.context_limit)

    try:
        read, complete, context = await on_model_thread(job)
    except Exception as e:
        view.notify(f"Could not read {name}: {e}", severity="error")
        return
    finally:
        session.prefill_progress = session.on_notice = None
        bar.stop()
    view.update_context(*context)
    if complete:
        view.notify(f"Read {name}: {read:,} tokens.")
    else:
        view.notify(f"Stopped reading {name}; the rest is read with your next message.")
