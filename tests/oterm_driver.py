"""oterm's chat path, run by oterm's own Python (it pins exact versions of its
dependencies, so it lives in a virtual environment of its own, as `pipx install oterm`
gives its users). test_agents_python.py runs this file there, with the README's
OLLAMA_URL in the environment, and reads the JSON line it prints.

    python tests/oterm_driver.py plain|stream|tools

`oterm.agent.get_agent` is what oterm's chat screen runs: it lists the models on
/api/tags (NAME:latest) and chats with the first on /v1/chat/completions. This file
imports oterm and the standard library only, never qwen_mlx.
"""

from __future__ import annotations

import asyncio
import json
import sys


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def main(mode: str) -> dict:
    from oterm.agent import get_agent
    from oterm.providers import ollama

    listed = [m.model for m in ollama.list_models().models]
    result: dict = {"listed": listed}
    if mode == "plain":
        result["output"] = get_agent("ollama", listed[0]).run_sync("Hi!").output
    elif mode == "stream":

        async def stream() -> list[str]:
            async with get_agent("ollama", listed[0]).run_stream("Hi!") as run:
                return [piece async for piece in run.stream_text(delta=True)]

        result["pieces"] = asyncio.run(stream())
    elif mode == "tools":
        from pydantic_ai import Tool

        agent = get_agent("ollama", listed[0], tools=[Tool(get_weather)])
        run = agent.run_sync("What is the weather in Paris?")
        result["output"] = run.output
        result["returns"] = [
            part.content
            for message in run.all_messages()
            for part in message.parts
            if part.part_kind == "tool-return"
        ]
    else:
        raise SystemExit(f"unknown mode {mode!r}: plain, stream or tools")
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
