"""Screens of the chat app: no model yet, help, settings, pickers, confirmations.

Each screen names the widget that takes focus when it opens (AUTO_FOCUS): without it,
Textual falls back to the app's own AUTO_FOCUS (the prompt, which a dialog does not
have), nothing has focus, and Enter, the arrows and PageDown do nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    DirectoryTree,
    Footer,
    Input,
    Label,
    Markdown,
    OptionList,
    Select,
    TextArea,
)

from qwen_mlx.chat.policy import ContextPolicy

from .widgets import WorkProgress

# The sampling parameters a chat sets: (key, label, type, slash command).
SAMPLING_FIELDS = (
    ("temperature", "Temperature", float, "/temp"),
    ("top_p", "Top p", float, "/top_p"),
    ("top_k", "Top k", int, "/top_k"),
    ("max_tokens", "Max tokens", int, "/max_tokens"),
    ("repetition_penalty", "Repetition penalty", float, "/repeat"),
)

NO_MODEL_TEXT = """\
# No model yet

qwen-mlx keeps its models in a local store, and it is empty.

On a Mac, download Qwen3-4B-Instruct-2507 and convert it to 4-bit MLX (about 8 GB to
download, 2.3 GB on disk):

```bash
python -m qwen_mlx.convert --hf-path Qwen/Qwen3-4B-Instruct-2507
```

then run `qwen-mlx chat` again. Or try the app right now with the **demo model**: a tiny
Qwen3 with random weights, built here in a few seconds. It talks nonsense, but everything
around it (streaming, stop, saved chats, export) is the real thing.
"""


class NoModelScreen(Screen[bool]):
    """Shown when the store has no model: explains convert and offers the demo model."""

    BINDINGS = [("escape", "quit", "Quit"), ("d", "demo", "Build the demo model")]
    AUTO_FOCUS = "#demo"

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="no-model"):
            yield Markdown(NO_MODEL_TEXT)
            with Horizontal(id="no-model-buttons"):
                yield Button("Build the demo model", id="demo", variant="primary")
                yield Button("Quit", id="quit")
            yield WorkProgress(id="demo-progress", unit="")  # shown once the build starts
            yield Label("", id="demo-status")
        yield Footer()

    @on(Button.Pressed, "#demo")
    def action_demo(self) -> None:
        self.query_one("#demo", Button).disabled = True
        self.query_one("#demo-status", Label).update("Building the demo model…")
        self.query_one("#demo-progress", WorkProgress).start("Building the demo model")
        self._build()

    @on(Button.Pressed, "#quit")
    def action_quit(self) -> None:
        self.dismiss(False)

    @work(exclusive=True)
    async def _build(self) -> None:
        from qwen_mlx.convert.demo import ensure_demo_model
        from qwen_mlx.runtime.thread import on_model_thread

        bar = self.query_one("#demo-progress", WorkProgress)

        def progress(p: Any) -> None:
            if p.total:
                bar.report(p.done, p.total, f"Building the demo model ({p.stage})")

        try:
            await on_model_thread(ensure_demo_model, progress=progress)
        except Exception as e:  # show any failure and let the user quit
            self._failed(str(e))
            return
        self.dismiss(True)

    def _failed(self, message: str) -> None:
        self.query_one("#demo-progress", WorkProgress).stop()
        self.query_one("#demo-status", Label).update(f"Could not build the demo model: {message}")
        self.query_one("#demo", Button).disabled = False


class HelpScreen(ModalScreen[None]):
    """Keys and slash commands."""

    BINDINGS = [("escape,f1,q", "close", "Close")]
    AUTO_FOCUS = "#help"  # the scroll: PageDown, arrows, Home and End

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(self.text)

    def action_close(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A question with two buttons; Enter answers with the focused one (`default`),
    the arrows move between them, `y` says yes and Esc no."""

    BINDINGS = [
        ("escape", "no", "No"),
        ("y", "yes", "Yes"),
        ("left", "app.focus_previous", "Previous"),
        ("right", "app.focus_next", "Next"),
    ]
    AUTO_FOCUS = "#yes"

    def __init__(
        self, question: str, yes: str = "Yes", no: str = "No", *, default: bool = True
    ) -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no
        if not default:
            self.AUTO_FOCUS = "#no"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(self.yes, id="yes", variant="primary")
                yield Button(self.no, id="no")

    @on(Button.Pressed, "#yes")
    def action_yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def action_no(self) -> None:
        self.dismiss(False)


class TextPrompt(ModalScreen[str | None]):
    """One line of text (a chat title, say)."""

    BINDINGS = [("escape", "cancel", "Cancel")]
    AUTO_FOCUS = "#value"

    def __init__(self, label: str, value: str = "") -> None:
        super().__init__()
        self.label, self.value = label, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.label)
            yield Input(self.value, id="value")

    @on(Input.Submitted)
    def _done(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SettingsScreen(ModalScreen[dict[str, Any] | None]):
    """Per-chat settings: system prompt, sampling parameters, context policy. Enter in
    a parameter's field saves, as Ctrl+S does anywhere."""

    BINDINGS = [("escape", "cancel", "Cancel"), ("ctrl+s", "save", "Save")]
    AUTO_FOCUS = "#system"
    FIELDS = tuple((key, label, kind) for key, label, kind, _ in SAMPLING_FIELDS)

    def __init__(
        self,
        system: str,
        params: dict[str, Any],
        policy: str,
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`check(params)` raises ValueError for values the sampler would refuse."""
        super().__init__()
        self.system, self.params, self.policy = system, params, policy
        self.check = check

    def compose(self) -> ComposeResult:
        with Vertical(id="settings", classes="dialog"):
            yield Label("System prompt")
            yield TextArea(self.system, id="system")
            with Grid(id="params"):
                for key, label, _ in self.FIELDS:
                    yield Label(label)
                    value = self.params.get(key)
                    yield Input("" if value is None else str(value), id=key)
                yield Label("Context policy")
                yield Select(
                    [(p, p) for p in ContextPolicy.names()],
                    value=self.policy,
                    allow_blank=False,
                    id="policy",
                )
            yield Label("", id="settings-error")
            with Horizontal(classes="buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#save")
    @on(Input.Submitted)
    def action_save(self) -> None:
        values: dict[str, Any] = {}
        for key, label, kind in self.FIELDS:
            text = self.query_one(f"#{key}", Input).value.strip()
            if not text:
                values[key] = None
                continue
            try:
                values[key] = kind(text)
            except ValueError:
                self.query_one("#settings-error", Label).update(f"{label}: not a number")
                return
        if self.check is not None:
            try:
                self.check(values)
            except ValueError as e:
                self.query_one("#settings-error", Label).update(str(e))
                return
        self.dismiss(
            {
                "system": self.query_one("#system", TextArea).text,
                "params": values,
                "policy": self.query_one("#policy", Select).value,
            }
        )

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ModelPicker(ModalScreen[str | None]):
    """The models in the store; the current one first."""

    BINDINGS = [("escape", "cancel", "Cancel")]
    AUTO_FOCUS = "#models"

    def __init__(self, names: list[str], current: str | None = None) -> None:
        super().__init__()
        self.names = sorted(names, key=lambda n: n != current)  # stable: the rest keep order

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Pick a model from the store")
            yield OptionList(*self.names, id="models")

    def on_mount(self) -> None:
        self.query_one(OptionList).highlighted = 0  # Enter picks it, the arrows move

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.names[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)


class FilePicker(ModalScreen[Path | None]):
    """Pick a file to attach (.txt, .md, .pdf or any text)."""

    BINDINGS = [("escape", "cancel", "Cancel")]
    AUTO_FOCUS = "#files"

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog tall"):
            yield Label(f"Attach a file from {self.root}")
            yield DirectoryTree(self.root, id="files")

    @on(DirectoryTree.FileSelected)
    def _picked(self, event: DirectoryTree.FileSelected) -> None:
        self.dismiss(Path(event.path))

    def action_cancel(self) -> None:
        self.dismiss(None)
