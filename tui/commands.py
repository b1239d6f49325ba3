"""What the chat app does beyond chatting: settings, models, attachments, export, chats,
and the slash commands that reach them. A mixin of ChatApp, kept apart so that app.py
holds the conversation itself."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from textual import work
from textual.binding import Binding

from qwen_mlx.chat.chats import DEFAULT_TITLE, Chat
from qwen_mlx.chat.export import default_export_path, to_markdown

from .screens import (
    SAMPLING_FIELDS,
    ConfirmScreen,
    FilePicker,
    HelpScreen,
    ModelPicker,
    SettingsScreen,
    TextPrompt,
)
from .widgets import MessageView, WorkProgress


def on_model_thread(fn, /, *args, **kwargs):
    """Await `fn(*args)` run on the process's model thread (see qwen_mlx.runtime.thread)."""
    from qwen_mlx.runtime.thread import model_thread

    return asyncio.wrap_future(model_thread().submit(fn, *args, **kwargs))


PARAM_COMMANDS = {command: (key, kind) for key, _, kind, command in SAMPLING_FIELDS}
COMMAND_HELP = (
    ("/help", "show keys and commands"),
    ("/system TEXT", "set the system prompt (no text clears it)"),
    ("/temp X  /top_p X  /top_k N", "sampling parameters for this chat"),
    ("/max_tokens N  /repeat X", "reply length, repetition penalty"),
    ("/policy truncate|kv-quantize|error", "what happens when the chat outgrows the context"),
    ("/info", "this chat's id, model, settings and how to resume it"),
    ("/clear", "clear this chat's messages (keeps the system prompt)"),
    ("/new", "start a new chat"),
    ("/rename TITLE", "rename this chat"),
    ("/export [PATH]", "save the conversation as Markdown"),
    ("/attach PATH", "add a text, Markdown or PDF file to the conversation"),
    ("/model [NAME]", "switch model (no name: pick from the store)"),
    ("/draft lookup|NAME|off", "speculative decoding: same replies, several tokens per step"),
)
# Keys that are not the app's own bindings: the input's, the sidebar's, the dialogs', Textual's.
INPUT_KEYS = (
    ("enter", "send"),
    ("shift+enter, ctrl+j", "new line"),
    ("up, down", "previous and next messages you sent (on the first or last line)"),
)
OTHER_KEYS = (
    ("tab, shift+tab", "move between the input, the sidebar and the messages"),
    ("down, enter", "in the search box: go to the chat list, open the first match"),
    ("up, down, enter", "in the chat list: pick a chat, open it"),
    ("pageup, pagedown, home, end", "scroll the messages (or this help)"),
    ("enter, left, right", "in a dialog: press the focused button, move between buttons"),
    ("y, escape", "in a question: yes, no"),
    ("ctrl+p", "command palette"),
    ("ctrl+c", "copy the selected text"),
    ("ctrl+q", "quit (the chat is saved; its id and resume command are printed)"),
)


def _row(cells: tuple[str, ...]) -> str:
    """A Markdown table row; `|` inside a cell is escaped, or it would split the cell."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _keys(keys: str) -> str:
    return ", ".join(f"`{k.strip()}`" for k in keys.split(","))


class ChatCommands:
    """Actions and slash commands of ChatApp (see app.py for the state they use)."""

    def action_help(self) -> None:
        own = [(b.key, b.description) for b in self.BINDINGS if isinstance(b, Binding)]
        keys = "\n".join(_row((_keys(k), d)) for k, d in (*INPUT_KEYS, *own, *OTHER_KEYS))
        commands = "\n".join(_row((f"`{c}`", d)) for c, d in COMMAND_HELP)
        text = (
            f"# Keys\n\n| key | action |\n|---|---|\n{keys}\n\n"
            f"# Commands\n\n| command | what it does |\n|---|---|\n{commands}\n"
        )
        self.push_screen(HelpScreen(text))

    def action_info(self) -> None:
        """Say which chat this is and how to come back to it."""
        if self.model is None or self.session is None:
            self.notify("The model is still loading.", severity="warning")
            return
        params = self.session.params
        shown = ", ".join(f"{k} {getattr(params, k)}" for k, *_ in SAMPLING_FIELDS)
        used, limit = self.session.context_tokens, self.session.context_limit
        lines = [
            f"Model: {self.model.name}",
            f"Sampling: {shown}",
            f"Context: {used:,} of {limit:,} tokens (policy {self.session.policy.value})",
        ]
        if self.chat is None:
            lines.insert(0, "A new chat: it is saved when you send the first message.")
        else:
            lines[:0] = [
                f"Chat {self.chat.id}: {self.chat.title}",
                f"Resume it with: qwen-mlx chat --session {self.chat.id}",
            ]
        self.notify("\n".join(lines), title="This chat", timeout=15)

    def action_rename(self) -> None:
        if self.chat is None:
            self.notify("Send a message first: the chat is saved then.")
            return
        self.push_screen(TextPrompt("Rename chat", self.chat.title), self._rename)

    def _rename(self, title: str | None) -> None:
        if title and self.chat is not None:
            self.store.rename(self.chat.id, title)
            self.chat.title = title
            self._refresh_chats()

    def action_delete_chat(self) -> None:
        if self.chat is None or not self._idle():
            return
        chat = self.chat
        self.push_screen(
            ConfirmScreen(f"Delete the chat “{chat.title}”?", "Delete", "Keep", default=False),
            lambda ok: self._delete(chat) if ok else None,
        )

    def _delete(self, chat: Chat) -> None:
        self.store.delete(chat.id)
        self._start_new_chat()

    def action_export(self, path: str | None = None) -> None:
        if self.session is None or not self.session.messages:
            self.notify("Nothing to export yet.")
            return
        title = self.chat.title if self.chat else DEFAULT_TITLE
        target = Path(path).expanduser() if path else default_export_path(title)
        params = self.session.params
        text = to_markdown(
            title=title,
            model=self.model.name,
            params={key: getattr(params, key) for key, *_ in SAMPLING_FIELDS},
            policy=self.session.policy.value,
            messages=self.session.history,  # with each reply's sampling
        )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        except OSError as e:
            self.notify(f"Could not write {target}: {e.strerror}", severity="error")
            return
        self.notify(f"Exported to {target}")

    def action_settings(self) -> None:
        if not self._can_reply():
            return
        p = self.session.params
        params = {k: getattr(p, k) for k, _, _ in SettingsScreen.FIELDS}
        self.push_screen(
            SettingsScreen(
                self.session.system or "",
                params,
                self.session.policy.value,
                check=self._params_with,
            ),
            self._apply_settings,
        )

    def _apply_settings(self, values: dict[str, Any] | None) -> None:
        if not values or not self._can_change():
            return
        from qwen_mlx.chat.session import ContextPolicy

        try:  # everything is checked before anything changes
            overrides = self._overrides_with(values["params"])
            params = self._params_with(values["params"])
            policy = ContextPolicy(values["policy"])
        except ValueError as e:
            self.notify(f"Settings not saved: {e}", severity="error")
            return
        self.session.system = values["system"].strip() or None
        self.session.policy = policy
        self.session.params, self.overrides = params, overrides
        self._save_chat_settings()
        self.notify("Settings saved for this chat.")

    def _overrides_with(self, changes: dict[str, Any]) -> dict[str, Any]:
        """This chat's parameter overrides after `changes` (None: back to the default)."""
        current = dict(self.overrides)
        for key, value in changes.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        return current

    def _params_with(self, changes: dict[str, Any]) -> Any:
        """The sampling parameters `changes` would give; ValueError if the sampler refuses."""
        return self.model.default_params.replace(**self._overrides_with(changes))

    def _set_params(self, changes: dict[str, Any]) -> None:
        """Change sampling parameters of this chat (None: back to the model's default)."""
        self.session.params = self._params_with(changes)  # validates
        self.overrides = self._overrides_with(changes)
        self._save_chat_settings()

    def _save_chat_settings(self) -> None:
        if self.chat is not None:
            self.chat.params = dict(self.overrides)
            self.chat.system = self.session.system
            self.chat.policy = self.session.policy.value
            self.store.update(self.chat)

    def action_pick_model(self, name: str | None = None) -> None:
        if not self._idle():
            return
        if name:
            self._load_model(name)
            return
        from qwen_mlx.store import Store

        store = Store(self.home)
        try:
            names = [m.name for m in store.list()] if store.models_dir.is_dir() else []
        finally:
            store.close()
        if not names:
            self.notify("The store has no models (see `qwen-mlx models list`).")
            return
        current = self.model.name if self.model else None
        self.push_screen(ModelPicker(names, current), lambda n: self._load_model(n) if n else None)

    # -- attachments -----------------------------------------------------------------------

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
            fits = await on_model_thread(session.fit_report, message)
            if stop.is_set():
                self.notify(f"Stopped; {path.name} was not attached.")
                return
            if fits is not None:
                tokens = await on_model_thread(session.count_tokens, message)
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
        bar.display = True
        self.busy = f"summarizing {name}"
        limit = max(session.context_limit - session.context_tokens, 512) // 2

        def progress(stage: str, done: int, total: int) -> None:
            bar.report(done, total)

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
            bar.display = False
        return f"Summary of the attached file `{name}` ({summary.chunks} parts):\n\n{summary.text}"

    async def _read_into_context(
        self, session: Any, message: str, name: str, stop: threading.Event
    ) -> None:
        """Add the message and prefill it now, so the next reply starts at once."""
        chat = self._ensure_chat(f"About {name}")
        session.add_message({"role": "user", "content": message})
        self.query_one("#messages").mount(MessageView("user", message))
        bar = self.query_one("#progress", WorkProgress)
        bar.display = True
        session.prefill_progress = bar.report

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
            session.prefill_progress = None
            bar.display = False
        self._update_context(*context)
        if complete:
            self.notify(f"Read {name}: {read:,} tokens.")
        else:
            self.notify(f"Stopped reading {name}; the rest is read with your next message.")

    # -- slash commands --------------------------------------------------------------------

    @work(exclusive=True, group="draft")
    async def _set_draft(self, arg: str) -> None:
        """/draft lookup|REF|off: speculative decoding for this chat and the next ones."""
        if not arg:
            self.notify(f"Draft: {self.draft_ref or 'off'} (/draft lookup, a model, or off).")
            return
        ref = None if arg == "off" else arg
        draft = await self._load_draft(self.model, ref) if ref else None
        if ref and draft is None:
            return
        self.draft_ref, self.draft = ref, draft
        self.session.set_draft(draft, self.num_draft_tokens)
        self.notify(f"Draft: {ref}." if ref else "Speculative decoding off.")

    def run_command(self, line: str) -> None:
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in PARAM_COMMANDS:
            key, kind = PARAM_COMMANDS[name]
            if not self._can_change():
                return
            try:
                value = kind(arg) if arg else None
            except ValueError:
                number = "a whole number" if kind is int else "a number"
                self.notify(
                    f"{name} takes {number}, and “{arg}” is not one ({name} alone goes back "
                    "to the model's default).",
                    severity="error",
                )
                return
            try:
                self._set_params({key: value})
            except (TypeError, ValueError) as e:
                self.notify(f"{name} {arg}: {e}", severity="error")
                return
            self.notify(f"{key} = {getattr(self.session.params, key)}")
        elif name == "/system":
            if self._can_change():
                self.session.system = arg or None
                self._save_chat_settings()
                self.notify("System prompt set." if arg else "System prompt cleared.")
        elif name == "/policy":
            from qwen_mlx.chat.session import ContextPolicy

            if not self._can_change():
                return
            try:
                self.session.policy = ContextPolicy(arg)
            except ValueError:
                self.notify("Policies: truncate, kv-quantize, error.", severity="error")
                return
            self._save_chat_settings()
            self.notify(f"Context policy: {arg}")
        elif name == "/clear":
            if self._can_reply():
                self.session.reset()
                self.query_one("#messages").remove_children()
                if self.chat is not None:
                    self.store.save_messages(self.chat.id, self.session.history)
        elif name == "/new":
            self.action_new_chat()
        elif name == "/rename":
            self._rename(arg) if arg else self.action_rename()
        elif name == "/export":
            self.action_export(arg or None)
        elif name == "/attach":
            if arg:
                self.action_attach(arg)
            else:
                self.notify("/attach needs a file path (or press ctrl+o).")
        elif name == "/model":
            self.action_pick_model(arg or None)
        elif name == "/help":
            self.action_help()
        elif name == "/info":
            self.action_info()
        elif name == "/draft":
            if self._can_change():
                self._set_draft(arg)
        else:
            self.notify(f"Unknown command {name}; /help lists them.", severity="warning")
