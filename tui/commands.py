"""The slash commands as a table (`COMMANDS`), and the help and info they show. Each
command calls into the part of ChatApp that does the job (replies, chats, attachments,
settings); /help is built from the same table and the app's bindings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.binding import Binding

from qwen_mlx.chat.policy import ContextPolicy

from .screens import (
    SAMPLING_FIELDS,
    HelpScreen,
)
from .state import AppState

PARAM_COMMANDS = {command: (key, kind) for key, _, kind, command in SAMPLING_FIELDS}


@dataclass(frozen=True)
class SlashCommand:
    """One slash command: how it is typed, what it does, and what runs it (with the
    text after the command, stripped)."""

    usage: str
    help: str
    run: Callable[[Commands, str], None]


def _needs_arg(what: str, then: Callable[[Commands, str], None]) -> Callable[[Commands, str], None]:
    def run(app: Commands, arg: str) -> None:
        if arg:
            then(app, arg)
        else:
            app.notify(what)

    return run


# The slash commands, in the order /help lists them. The sampling commands (/temp,
# /top_p, ...) come from the settings' fields: PARAM_COMMANDS.
COMMANDS: dict[str, SlashCommand] = {
    c.usage.split()[0]: c
    for c in (
        SlashCommand("/help", "show keys and commands", lambda app, arg: app.action_help()),
        SlashCommand(
            "/system TEXT",
            "set the system prompt (no text clears it)",
            lambda app, arg: app._set_system(arg),
        ),
        SlashCommand(
            f"/policy {'|'.join(ContextPolicy.names())}",
            "what happens when the chat outgrows the context",
            lambda app, arg: app._set_policy(arg),
        ),
        SlashCommand(
            "/info",
            "this chat's id, model, settings and how to resume it",
            lambda app, arg: app.action_info(),
        ),
        SlashCommand(
            "/clear",
            "clear this chat's messages (keeps the system prompt)",
            lambda app, arg: app._clear(),
        ),
        SlashCommand("/new", "start a new chat", lambda app, arg: app.action_new_chat()),
        SlashCommand(
            "/rename TITLE",
            "rename this chat",
            lambda app, arg: app._rename(arg) if arg else app.action_rename(),
        ),
        SlashCommand(
            "/export [PATH]",
            "save the conversation as Markdown",
            lambda app, arg: app.action_export(arg or None),
        ),
        SlashCommand(
            "/attach PATH",
            "add a text, Markdown or PDF file to the conversation",
            _needs_arg(
                "/attach needs a file path (or press ctrl+o).",
                lambda app, arg: app.action_attach(arg),
            ),
        ),
        SlashCommand(
            "/model [NAME]",
            "switch model (no name: pick from the store)",
            lambda app, arg: app.action_pick_model(arg or None),
        ),
        SlashCommand(
            "/draft lookup|NAME|off",
            "speculative decoding: same replies, several tokens per step (for every chat, "
            "kept for the next start; --draft overrides it)",
            lambda app, arg: app._set_draft(arg) if app._can_change() else None,
        ),
        SlashCommand(
            "/mcp [enable|disable NAME]",
            "list the MCP servers of chat.json, or switch one on or off",
            lambda app, arg: app.mcp_command(arg),
        ),
    )
}
COMMAND_HELP = (
    *((c.usage, c.help) for c in list(COMMANDS.values())[:2]),
    ("/temp X  /top_p X  /top_k N", "sampling parameters for this chat"),
    ("/max_tokens N  /repeat X", "reply length, repetition penalty"),
    *((c.usage, c.help) for c in list(COMMANDS.values())[2:]),
)
# Keys that are not the app's own bindings: the input's, the sidebar's, the dialogs', Textual's.
INPUT_KEYS = (
    ("enter", "send"),
    ("shift+enter, ctrl+j", "new line"),
    (
        "up, down",
        "previous and next messages you sent (on the first or last line); in an input "
        "that starts with /, the slash commands you ran instead",
    ),
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


class Commands(AppState):
    """The slash commands, /help and /info (a part of ChatApp)."""

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

    def run_command(self, line: str) -> None:
        """Run a slash command line, as typed in the input."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in PARAM_COMMANDS:
            self._set_param_command(name, arg)
        elif name in COMMANDS:
            COMMANDS[name].run(self, arg)
        else:
            self.notify(f"Unknown command {name}; /help lists them.", severity="warning")

    def _set_param_command(self, name: str, arg: str) -> None:
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

    def _set_system(self, text: str) -> None:
        if self._can_change():
            self.session.system = text or None
            self._save_chat_settings()
            self.notify("System prompt set." if text else "System prompt cleared.")

    def _set_policy(self, name: str) -> None:
        if not self._can_change():
            return
        try:
            self.session.policy = ContextPolicy(name)
        except ValueError:
            self.notify(f"Policies: {', '.join(ContextPolicy.names())}.", severity="error")
            return
        self._save_chat_settings()
        self.notify(f"Context policy: {name}")

    def _clear(self) -> None:
        if self._can_reply():
            self.session.reset()
            self.query_one("#messages").remove_children()
            if self.chat is not None:
                self.store.save_messages(self.chat.id, self.session.history)
