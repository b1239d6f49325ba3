"""The qwen-mlx terminal chat app (Textual). Run it with `qwen-mlx chat` or `python -m tui`.

    app.py           ChatApp: the layout, the keys, the model and its draft, which chat
                     is open; it wires the parts below and runs `main`
    chat_view.py     ChatView: the open chat (messages, the reply streaming in, progress,
                     the status line, the input) and what holds it (a reply, busy work)
    reply_job.py     a reply on the model thread, and the messages it sends the view
    sidebar.py       Sidebar: the saved chats, most recent first, and their search
    tool_servers.py  ToolServers: MCP servers from chat.json, /mcp, approval of calls
    attachments.py   a file read into the open chat, whole or as a summary
    commands.py      the slash commands as a table, /help and /info
    model_choice.py  the model a chat opens with, the store's models, loading a draft
    screens.py       the dialogs (no model yet, help, settings, pickers, questions)
    widgets.py       a message, the input, the progress bar, the status line

The parts say what happened with Textual messages (`ChatView.ChatChanged`,
`Sidebar.Selected`, `ToolServers.ToolsChanged`, ...); the app handles them and calls the
parts' methods. Each part can be mounted alone (tests/test_tui_parts.py does so).
"""

from __future__ import annotations

__all__ = ["ChatApp", "main"]


def __getattr__(name: str):
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'tui' has no attribute {name!r}")
