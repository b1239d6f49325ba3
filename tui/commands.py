"""What the chat app does beyond chatting: settings, models, attachments, export, chats,
and the slash commands that reach them. A mixin of ChatApp, kept apart so that app.py
holds the conversation itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from textual import work
from textual.binding import Binding
from textual.widgets import ProgressBar

from .export import default_export_path, to_markdown
from .screens import ConfirmScreen, FilePicker, HelpScreen, ModelPicker, SettingsScreen, TextPrompt
from .store import DEFAULT_TITLE, Chat
from .widgets import MessageView


def on_model_thread(fn, /, *args, **kwargs):
    """Await `fn(*args)` run on the process's model thread (see qwen_mlx.model_thread)."""
    from qwen_mlx.model_thread import model_thread

    return asyncio.wrap_future(model_thread().submit(fn, *args, **kwargs))


PARAM_COMMANDS = {
    "/temp": ("temperature", float),
    "/top_p": ("top_p", float),
    "/top_k": ("top_k", int),
    "/max_tokens": ("max_tokens", int),
    "/repeat": ("repetition_penalty", float),
}
COMMAND_HELP = (
    ("/help", "show keys and commands"),
    ("/system TEXT", "set the system prompt (no text clears it)"),
    ("/temp X  /top_p X  /top_k N", "sampling parameters for this chat"),
    ("/max_tokens N  /repeat X", "reply length, repetition penalty"),
    ("/policy truncate|kv-quantize|error", "what happens when the chat outgrows the context"),
    ("/clear", "clear this chat's messages (keeps the system prompt)"),
    ("/new", "start a new chat"),
    ("/rename TITLE", "rename this chat"),
    ("/export [PATH]", "save the conversation as Markdown"),
    ("/attach PATH", "add a text, Markdown or PDF file to the conversation"),
    ("/model [NAME]", "switch model (no name: pick from the store)"),
)


class ChatCommands:
    """Actions and slash commands of ChatApp (see app.py for the state they use)."""

    def action_help(self) -> None:
        keys = "\n".join(
            f"| `{b.key}` | {b.description} |" for b in self.BINDINGS if isinstance(b, Binding)
        )
        commands = "\n".join(f"| `{c}` | {d} |" for c, d in COMMAND_HELP)
        text = (
            "# Keys\n\n| key | action |\n|---|---|\n"
            "| `enter` | send |\n| `shift+enter`, `ctrl+j` | new line |\n"
            "| `up`, `down` | previous and next messages you sent |\n"
            f"{keys}\n| `ctrl+q` | quit |\n\n"
            f"# Commands\n\n| command | what it does |\n|---|---|\n{commands}\n"
        )
        self.push_screen(HelpScreen(text))

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
        if self.chat is None or self.streaming:
            return
        chat = self.chat
        self.push_screen(
            ConfirmScreen(f"Delete the chat “{chat.title}”?", "Delete", "Keep"),
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
            params={
                k: getattr(params, k)
                for k in ("temperature", "top_p", "top_k", "max_tokens", "repetition_penalty")
            },
            policy=self.session.policy.value,
            messages=self.session.messages,
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
            SettingsScreen(self.session.system or "", params, self.session.policy.value),
            self._apply_settings,
        )

    def _apply_settings(self, values: dict[str, Any] | None) -> None:
        if not values:
            return
        from qwen_mlx.session import ContextPolicy

        self.session.system = values["system"].strip() or None
        self.session.policy = ContextPolicy(values["policy"])
        self._set_params(values["params"])
        self.notify("Settings saved for this chat.")

    def _set_params(self, changes: dict[str, Any]) -> None:
        """Change sampling parameters of this chat (None: back to the model's default)."""
        current = dict(self.overrides)
        for key, value in changes.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        self.session.params = self.model.default_params.replace(**current)  # validates
        self.overrides = current
        if self.chat is not None:
            self.chat.params = current
            self.chat.system = self.session.system
            self.chat.policy = self.session.policy.value
            self.store.update(self.chat)

    def action_pick_model(self, name: str | None = None) -> None:
        if self.streaming:
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
        self.push_screen(ModelPicker(names), lambda n: self._load_model(n) if n else None)

    # -- attachments -----------------------------------------------------------------------

    def action_attach(self, path: str | None = None) -> None:
        if not self._can_reply():
            return
        if path:
            self._read_attachment(Path(path).expanduser())
        else:
            self.push_screen(
                FilePicker(Path.cwd()), lambda p: self._read_attachment(p) if p else None
            )

    @work(group="reply")
    async def _read_attachment(self, path: Path) -> None:
        from qwen_mlx.documents import read_document

        try:
            text = read_document(path)
        except (OSError, ValueError) as e:
            self.notify(str(e), severity="error")
            return
        message = f"Attached file `{path.name}`:\n\n{text}"
        fits = await on_model_thread(self.session.fit_report, message)
        if fits is None:
            self._attach_text(message, path.name)
            return
        tokens = await on_model_thread(self.session.count_tokens, message)
        question = (
            f"{path.name} has about {tokens:,} tokens: more than fits in this chat. "
            "Summarize it part by part and attach the summary?"
        )
        if await self.push_screen_wait(ConfirmScreen(question, "Summarize", "Cancel")):
            self._summarize_attachment(text, path.name)

    def _attach_text(self, message: str, name: str) -> None:
        self._ensure_chat(f"About {name}")
        self.session.add_message({"role": "user", "content": message})
        self.query_one("#messages").mount(MessageView("user", message))
        self._prefill(name)

    @work(group="reply")
    async def _prefill(self, name: str) -> None:
        bar = self.query_one("#progress", ProgressBar)
        bar.display = True
        session = self.session
        session.prefill_progress = lambda done, total: self.call_from_thread(
            bar.update, total=total, progress=done
        )

        def job() -> tuple[int, tuple[int, int]]:
            read = session.prefill()
            self._persist(session, cache=True)
            return read, (session.context_tokens, session.context_limit)

        try:
            read, context = await on_model_thread(job)
        except Exception as e:
            self.notify(f"Could not read {name}: {e}", severity="error")
            return
        finally:
            session.prefill_progress = None
            bar.display = False
        self._update_context(*context)
        self.notify(f"Read {name}: {read:,} tokens.")

    @work(group="reply")
    async def _summarize_attachment(self, text: str, name: str) -> None:
        from qwen_mlx.documents import summarize

        bar = self.query_one("#progress", ProgressBar)
        bar.display = True
        limit = max(self.session.context_limit - self.session.context_tokens, 512) // 2

        def progress(stage: str, done: int, total: int) -> None:
            self.call_from_thread(bar.update, total=total, progress=done)

        try:
            summary = await on_model_thread(
                summarize, self.model, text, max_context=limit, progress=progress
            )
        except Exception as e:
            self.notify(f"Could not summarize {name}: {e}", severity="error")
            return
        finally:
            bar.display = False
        message = (
            f"Summary of the attached file `{name}` ({summary.chunks} parts):\n\n{summary.text}"
        )
        self._attach_text(message, name)

    # -- slash commands --------------------------------------------------------------------

    def run_command(self, line: str) -> None:
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in PARAM_COMMANDS:
            key, kind = PARAM_COMMANDS[name]
            if self.session is None:
                self.notify("The model is still loading.")
                return
            try:
                self._set_params({key: kind(arg) if arg else None})
            except (TypeError, ValueError) as e:
                self.notify(f"{name}: {e}" if arg else f"{name} needs a value", severity="error")
                return
            self.notify(f"{key} = {getattr(self.session.params, key)}")
        elif name == "/system":
            if self.session is not None:
                self.session.system = arg or None
                if self.chat is not None:
                    self.chat.system = arg or None
                    self.store.update(self.chat)
                self.notify("System prompt set." if arg else "System prompt cleared.")
        elif name == "/policy":
            from qwen_mlx.session import ContextPolicy

            try:
                self.session.policy = ContextPolicy(arg)
            except ValueError:
                self.notify("Policies: truncate, kv-quantize, error.", severity="error")
                return
            if self.chat is not None:
                self.chat.policy = arg
                self.store.update(self.chat)
            self.notify(f"Context policy: {arg}")
        elif name == "/clear":
            if self._can_reply():
                self.session.reset()
                self.query_one("#messages").remove_children()
                if self.chat is not None:
                    self.store.save_messages(self.chat.id, self.session.messages_for_storage())
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
        else:
            self.notify(f"Unknown command {name}; /help lists them.", severity="warning")
