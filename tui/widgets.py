"""The chat app's small widgets: a message, the prompt, the progress bar, the status line."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import (
    Label,
    Markdown,
    ProgressBar,
    Static,
    TextArea,
)

if TYPE_CHECKING:
    from qwen_mlx.chat.session import TurnStats

ROLE_TITLES = {"user": "You", "assistant": "Qwen", "tool": "Tool", "system": "System"}


class MessageView(Markdown):
    """One message, rendered as Markdown; replies stream in through a MarkdownStream."""

    def __init__(self, role: str, content: str = "", *, stopped: bool = False) -> None:
        super().__init__(content, classes=role)
        self.role = role
        self.content = content
        self.border_title = ROLE_TITLES.get(role, role)
        if stopped:
            self.mark_stopped()

    def mark_stopped(self) -> None:
        self.add_class("stopped")
        self.border_subtitle = "stopped"


class PromptInput(TextArea):
    """Multi-line input: Enter sends, Shift+Enter or Ctrl+J adds a line, Up/Down walk the
    history when the cursor is on the first or last line. The history holds messages and
    slash commands, walked apart: Up in an input that starts with "/" walks the commands
    only, otherwise the messages only."""

    @dataclass
    class Submitted(Message):
        text: str

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, **kwargs)
        self.sent: list[str] = []  # what was sent, messages and commands, for Up/Down
        self._walked: list[str] = []  # the part of `sent` being walked
        self._history_index: int | None = None
        self._draft = ""

    async def _on_key(self, event: events.Key) -> None:
        if self.read_only:
            return await super()._on_key(event)
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text
            if text.strip():
                self.remember(text)
                self.post_message(self.Submitted(text))
            return
        if event.key in ("shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        if event.key == "up" and self.cursor_location[0] == 0 and self._can_walk():
            event.stop()
            event.prevent_default()
            self._walk(-1)
            return
        if (
            event.key == "down"
            and self._history_index is not None
            and (self.cursor_location[0] == self.document.line_count - 1)
        ):
            event.stop()
            event.prevent_default()
            self._walk(1)
            return
        await super()._on_key(event)

    def remember(self, text: str) -> None:
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
        self._history_index = None

    def _can_walk(self) -> bool:
        return self._history_index is not None or bool(self._history(self.text))

    def _history(self, draft: str) -> list[str]:
        """What Up walks from `draft`: the commands if it starts with "/", else the
        messages."""
        commands = draft.startswith("/")
        return [t for t in self.sent if t.startswith("/") == commands]

    def _walk(self, step: int) -> None:
        if self._history_index is None:
            if step > 0:
                return
            self._draft = self.text
            self._walked = self._history(self._draft)
            self._history_index = len(self._walked)
        index = self._history_index + step
        if index >= len(self._walked):
            self._history_index = None
            self.load_text(self._draft)
        else:
            self._history_index = max(index, 0)
            self.load_text(self._walked[self._history_index])
        self.move_cursor(self.document.end)

    def load_text(self, text: str) -> None:
        """Replace the text, with the cursor at its end (where typing goes on)."""
        super().load_text(text)
        self.move_cursor(self.document.end)


class WorkProgress(Horizontal):
    """A progress bar the model thread can move, with what it counts: "Reading notes.md:
    1,024 of 3,131 tokens · 1:05 left", the time left from the rate so far (as
    `summarize` shows it). `report` only posts a message, so a job never waits for the
    UI (which may be busy, or shutting down). Hidden until `start`."""

    DEFAULT_CSS = """
    WorkProgress { height: 1; display: none; }
    WorkProgress > ProgressBar { width: auto; margin-right: 1; }
    WorkProgress > .detail { width: 1fr; color: $text-muted; }
    """

    @dataclass
    class Moved(Message):
        done: int
        total: int
        label: str | None
        at: float

    def __init__(self, *, unit: str = "tokens", **kwargs) -> None:
        super().__init__(**kwargs)
        self.unit = unit
        self.label = ""
        self.hint = ""
        self._began: tuple[float, int, str | None] | None = None
        self._started = 0.0
        self._quiet_for = 0.0

    def compose(self) -> ComposeResult:
        yield ProgressBar(show_eta=False, show_percentage=True)
        yield Label("", classes="detail")

    def start(self, label: str, hint: str = "", *, quiet_for: float = 0.0) -> None:
        """Show the bar for new work: `label` says what it is, `hint` how to stop it.
        With `quiet_for`, only once the work has run that long and is not done (a reply
        whose prompt reads in a moment shows no bar; one that re-reads a long chat does)."""
        self.label, self.hint, self._began = label, hint, None
        self._started, self._quiet_for = time.monotonic(), quiet_for
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.query_one(".detail", Label).update(f"{label}…{hint}")
        self.display = not quiet_for

    def stop(self) -> None:
        self.display = False

    def report(self, done: int, total: int, label: str | None = None) -> None:
        """Safe from any thread. `label` replaces the start's (a new stage of the work)."""
        self.post_message(self.Moved(done, total, label, time.monotonic()))

    def on_work_progress_moved(self, message: Moved) -> None:
        message.stop()
        if self._quiet_for:
            finished = message.done >= message.total
            if finished or message.at - self._started < self._quiet_for:
                if finished:
                    self.display = False  # read: the reply follows
                return
            self.display = True
        if self._began is None or self._began[2] != message.label:  # a new stage
            self._began = (message.at, message.done, message.label)
        began, start, label = self._began
        self.query_one(ProgressBar).update(total=max(message.total, 1), progress=message.done)
        rate = (message.done - start) / (message.at - began) if message.at > began else 0.0
        left = ""
        if rate > 0 and message.done < message.total:
            seconds = int((message.total - message.done) / rate)
            left = f" · {seconds // 60}:{seconds % 60:02d} left"
        unit = f" {self.unit}" if self.unit else ""
        self.query_one(".detail", Label).update(
            f"{label or self.label}: {message.done:,} of {message.total:,}{unit}{left}{self.hint}"
        )


class StatusBar(Static):
    """Model, context meter, speed and memory of the last reply, and warnings. Each line
    fits the bar's width (a narrow window shortens the meter, then the model's name,
    never wraps), so the messages above keep their room."""

    model_label: reactive[str] = reactive("no model")
    context: reactive[tuple[int, int]] = reactive((0, 0))
    speed: reactive[str] = reactive("", layout=True)
    warning: reactive[str] = reactive("", layout=True)

    def clear_turn(self) -> None:
        """Forget the last reply's figures (another chat is on screen now)."""
        self.speed = self.warning = ""

    def show_turn(self, stats: TurnStats) -> None:
        """The last reply's figures: its speed, memory and what it read; and what stays
        true for the next turns (the context policy's own notices are shown as it
        decides)."""
        from qwen_mlx.fileio import human_bytes

        speed = (
            f"first token {stats.time_to_first_token * 1000:.0f} ms · "
            f"{stats.tokens_per_second:.1f} tok/s · peak {human_bytes(stats.peak_memory * 1e9)} · "
            f"read {stats.prefilled_tokens:,} of {stats.prompt_tokens:,}"
        )
        if stats.drafted:
            speed += f" · draft {stats.acceptance_rate:.0%} accepted"
        if stats.kv_bits:
            speed += f" · KV {stats.kv_bits}-bit"
        self.speed = speed
        warnings = []
        if stats.dropped_messages:
            warnings.append(
                f"{stats.dropped_messages} oldest messages not in the prompt (context policy)"
            )
        self.warning = "\n".join(warnings)

    def render(self) -> Text:
        width = self.content_size.width or 80
        lines = [self._first_line(width)]
        if self.speed:
            lines.append(self.speed)
        if self.warning:
            lines.extend(f"⚠ {line}" for line in self.warning.splitlines())
        return Text("\n").join(
            Text(line, no_wrap=True, overflow="ellipsis", end="") for line in lines
        )

    def _first_line(self, width: int) -> str:
        used, limit = self.context
        if not limit:
            return self.model_label
        figures = f"{used:,} / {limit:,}"
        for meter_width in (16, 8, 0):  # shorten the meter before the model's name
            filled = min(meter_width, round(meter_width * used / limit))
            meter = "█" * filled + "░" * (meter_width - filled)
            context = f"context {meter} {figures}" if meter else f"context {figures}"
            room = width - len(context) - len("  │  ")
            if len(self.model_label) <= room or not meter_width:
                break
        label = self.model_label
        if len(label) > room:
            label = label[: max(room - 1, 0)] + "…" if room > 1 else ""
        return f"{label}  │  {context}" if label else context
