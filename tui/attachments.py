"""Attachments: a text, Markdown or PDF file read into the conversation, whole when it
fits, else (if the user agrees) as a summary made part by part. The chat is held
meanwhile; Esc stops the model's part.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from textual import work

from .screens import (
    ConfirmScreen,
    FilePicker,
)
from .state import AppState, PolicyNotice, on_model_thread
from .widgets import MessageView, WorkProgress


class Attachments(AppState):
    """Files read into the conversation (a part of ChatApp)."""

    def action_attach(self, path: str | None = None) -> None:
        if not self._can_reply():
            return
        if path:
            self._attach(Path(path).expanduser())
        else:
            self.push_screen(FilePicker(Path.cwd()), lambda p: self._attach(p) if p else None)

    @work(group="attach")
    async def _attach(self, path: Path) -> None:
        """Read a file into the conversation: whole if it fits, else (if the user agrees)
        as a summary. The chat is busy throughout; Esc stops the model's part."""
        from qwen_mlx.chat.documents import read_document

        if not self._can_reply():
            return
        session, stop = self.session, threading.Event()
        self._begin_busy(f"reading {path.name}", stop=stop.set)
        try:
            try:
                text = await asyncio.to_thread(read_document, path)  # a PDF can take a while
            except (OSError, ValueError) as e:
                self.notify(str(e), severity="error")
                return
            message = f"Attached file `{path.name}`:\n\n{text}"
            # Tokenizing only: a thread of its own, so the model thread stays free.
            fits = await asyncio.to_thread(session.fit_report, message)
            if stop.is_set():
                self.notify(f"Stopped; {path.name} was not attached.")
                return
            if fits is not None:
                tokens = await asyncio.to_thread(session.count_tokens, message)
                question = (
                    f"{path.name} has about {tokens:,} tokens: more than fits in this chat. "
                    "Summarize it part by part and attach the summary?"
                )
                if not await self.push_screen_wait(ConfirmScreen(question, "Summarize", "Cancel")):
                    return
                message = await self._summarize_attachment(session, text, path.name, stop)
                if message is None:
                    return
            await self._read_into_context(session, message, path.name, stop)
        finally:
            self._end_busy()

    async def _summarize_attachment(
        self, session: Any, text: str, name: str, stop: threading.Event
    ) -> str | None:
        from qwen_mlx.chat.documents import summarize
        from qwen_mlx.errors import GenerationCancelled

        bar = self.query_one("#progress", WorkProgress)
        bar.start(f"Summarizing {name}", " · Esc stops")
        self.busy = f"summarizing {name}"
        limit = max(session.context_limit - session.context_tokens, 512) // 2

        def progress(stage: str, done: int, total: int) -> None:
            bar.report(done, total, f"Summarizing {name} ({stage})")

        try:
            summary = await on_model_thread(
                summarize,
                self.model,
                text,
                max_context=limit,
                progress=progress,
                should_stop=stop.is_set,
            )
        except GenerationCancelled:
            self.notify(f"Stopped summarizing {name}; nothing was attached.")
            return None
        except Exception as e:
            self.notify(f"Could not summarize {name}: {e}", severity="error")
            return None
        finally:
            bar.stop()
        return f"Summary of the attached file `{name}` ({summary.chunks} parts):\n\n{summary.text}"

    async def _read_into_context(
        self, session: Any, message: str, name: str, stop: threading.Event
    ) -> None:
        """Add the message and prefill it now, so the next reply starts at once."""
        chat = self._ensure_chat(f"About {name}")
        session.add_message({"role": "user", "content": message})
        self.query_one("#messages").mount(MessageView("user", message))
        bar = self.query_one("#progress", WorkProgress)
        bar.start(f"Reading {name}", " · Esc stops")
        session.prefill_progress = bar.report
        session.on_notice = lambda notice: self.post_message(PolicyNotice(notice))

        def job() -> tuple[int, bool, tuple[int, int]]:
            read = session.prefill(should_stop=stop.is_set)
            complete = len(session.cache_tokens) == session.context_tokens
            self._persist(chat, session, cache=True)
            return read, complete, (session.context_tokens, session.context_limit)

        try:
            read, complete, context = await on_model_thread(job)
        except Exception as e:
            self.notify(f"Could not read {name}: {e}", severity="error")
            return
        finally:
            session.prefill_progress = session.on_notice = None
            bar.stop()
        self._update_context(*context)
        if complete:
            self.notify(f"Read {name}: {read:,} tokens.")
        else:
            self.notify(f"Stopped reading {name}; the rest is read with your next message.")
