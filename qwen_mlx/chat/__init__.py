"""The conversation layer: `ChatSession` (messages, prefix-reused KV cache, context policy,
tool calls, save and resume), saved sessions, the chat store the front ends share, tools
(Python functions, and MCP servers: mcp_client.py, mcp_config.py) and long documents."""
