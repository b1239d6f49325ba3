"""The slash commands as a table (`COMMANDS`), and the help and info they show.

A command runs against the app through `CommandHost`, the part of the app it may use:
the open chat (`chat_view`), the MCP servers (`tool_servers`) and the app's own actions.
What a command changes in the chat it changes only when the chat is idle, and it says
what it did. /help is built from the same table and the app's bindings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from textual.binding import Binding

from qwen_mlx.chat.policy import ContextPolicy
from qwen_mlx.chat.stored_chat import SAMPLING_KEYS

from .screens import SAMPLING_FIELDS

if TYPE_CHECKING:
    from qwen_mlx.runtime import Model

    from .chat_view import ChatView
    from .tool_servers import ToolServers


class CommandHost(Protocol):
    """What the slash commands use of the app."""

    chat_view: ChatView
    tool_servers: ToolServers
    model: Model | None

    def notify(self, message: str, **kwargs: Any) -> None: ...
    def action_help(self) -> None: ...
    def action_new_chat(self) -> None: ...
    def action_rename(self) -> None: ...
    def action_export(self, path: str | None = None) -> None: ...
    def action_attach(self, path: str | None = None) -> None: ...
    def action_pick_model(self, name: str | None = None) -> None: ...
    def can_reply(self) -> bool: ...
    def set_draft(self, arg: str) -> None: ...


Run = Callable[[CommandHost, str], None]


@dataclass(frozen=True)
class SlashCommand:
    """One slash command: how it is typed, what it does, and what runs it (with the
    text after the command, stripped)."""

    usage: str
    help: str
    run: Run


def _needs_arg(what: str, then: Run) -> Run:
    def run(app: CommandHost, arg: str) -> None:
        if arg:
            then(app, arg)
        else:
            app.notify(what)

    return run


def _set_system(app: CommandHost, text: str) -> None:
    if app.chat_view.can_change():
        app.chat_view.set_system(text)
        app.notify("System prompt set." if text else "System prompt cleared.")


def _set_policy(app: CommandHost, name: str) -> None:
    view = app.chat_view
    if not view.can_change():
        return
    try:
        policy = ContextPolicy(name)
    except ValueError:
        app.notify(f"Policies: {', '.join(ContextPolicy.names())}.", severity="error")
        return
    view.set_policy(policy)
    app.notify(f"Context policy: {name}")


def _clear(app: CommandHost, arg: str) -> None:
    if app.can_reply():
        app.chat_view.clear()


def _rename(app: CommandHost, title: str) -> None:
    if title:
        app.chat_view.rename(title)
    else:
        app.action_rename()


def _draft(app: CommandHost, arg: str) -> None:
    if app.chat_view.can_change():
        app.set_draft(arg)


def _mcp(app: CommandHost, arg: str) -> None:
    app.tool_servers.command(arg, may_change=app.chat_view.can_change)


# The slash commands, in the order /help lists them. The sampling commands (/temp,
# /top_p, ...) come from the settings' fields: PARAM_COMMANDS.
COMMANDS: dict[str, SlashCommand] = {
    c.usage.split()[0]: c
    for c in (
        SlashCommand("/help", "show keys and commands", lambda app, arg: app.action_help()),
        SlashCommand("/system TEXT", "set the system prompt (no text clears it)", _set_system),
        SlashCommand(
            f"/policy {'|'.join(ContextPolicy.names())}",
            "what happens when the chat outgrows the context",
            _set_policy,
        ),
        SlashCommand(
            "/info",
            "this chat's id, model, settings and how to resume it",
            lambda app, arg: show_info(app),
        ),
        SlashCommand("/clear", "clear this chat's messages (keeps the system prompt)", _clear),
        SlashCommand("/new", "start a new chat", lambda app, arg: app.action_new_chat()),
        SlashCommand("/rename TITLE", "rename this chat", _rename),
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
            _draft,
        ),
        SlashCommand(
            "/mcp [enable|disable NAME]",
            "list the MCP servers of chat.json, or switch one on or off",
            _mcp,
        ),
    )
}
PARAM_COMMANDS = {command: (key, kind) for key, _, kind, command in SAMPLING_FIELDS}
COMMAND_HELP = (
    *((c.usage, c.help) for c in list(COMMANDS.values())[:2]),
    ("/temp X  /top_p X  /top_k N", "sampling parameters for this chat"),
    ("/max_tokens N  /repeat X", "reply length, repetition penalty"),
    *((c.usage, c.help) for c in list(COMMANDS.values())[2:]),
)


def run_command(app: CommandHost, line: str) -> None:
    """Run a slash command line, as typed in the input."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    if name in PARAM_COMMANDS:
        _set_param(app, name, arg)
    elif name in COMMANDS:
        COMMANDS[name].run(app, arg)
    else:
        app.notify(f"Unknown command {name}; /help lists them.", severity="warning")


def _set_param(app: CommandHost, name: str, arg: str) -> None:
    key, kind = PARAM_COMMANDS[name]
    view = app.chat_view
    if not view.can_change():
        return
    try:
        value = kind(arg) if arg else None
    except ValueError:
        number = "a whole number" if kind is int else "a number"
        app.notify(
            f"{name} takes {number}, and “{arg}” is not one ({name} alone goes back "
            "to the model's default).",
            severity="error",
        )
        return
    try:
        view.set_params({key: value})
    except (TypeError, ValueError) as e:
        app.notify(f"{name} {arg}: {e}", severity="error")
        return
    app.notify(f"{key} = {getattr(view.session.params, key)}")


def show_info(app: CommandHost) -> None:
    """Say which chat this is and how to come back to it."""
    session, chat = app.chat_view.session, app.chat_view.chat
    if app.model is None or session is None:
        app.notify("The model is still loading.", severity="warning")
        return
    params = session.params
    shown = ", ".join(f"{k} {getattr(params, k)}" for k in SAMPLING_KEYS)
    used, limit = session.context_tokens, session.context_limit
    lines = [
        f"Model: {app.model.name}",
        f"Sampling: {shown}",
        f"Context: {used:,} of {limit:,} tokens (policy {session.policy.value})",
    ]
    if chat is None:
        lines.insert(0, "A new chat: it is saved when you send the first message.")
    else:
        lines[:0] = [
            f"Chat {chat.id}: {chat.title}",
            f"Resume it with: qwen-mlx chat --session {chat.id}",
        ]
    app.notify("\n".join(lines), title="This chat", timeout=15)


# -- /help -------------------------------------------------------------------------------------

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


def help_text(bindings: list[Binding | Any]) -> str:
    """Keys and commands as Markdown tables: the input's keys, the app's `bindings`, the
    others' keys; then every command."""
    own = [(b.key, b.description) for b in bindings if isinstance(b, Binding)]
    keys = "\n".join(_row((_keys(k), d)) for k, d in (*INPUT_KEYS, *own, *OTHER_KEYS))
    commands = "\n".join(_row((f"`{c}`", d)) for c, d in COMMAND_HELP)
    return (
        f"# Keys\n\n| key | action |\n|---|---|\n{keys}\n\n"
        f"# Commands\n\n| command | what it does |\n|---|---|\n{commands}\n"
    )


def _row(cells: tuple[str, ...]) -> str:
    """A Markdown table row; `|` inside a cell is escaped, or it would split the cell."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _keys(keys: str) -> str:
    return ", ".join(f"`{k.strip()}`" for k in keys.split(","))
