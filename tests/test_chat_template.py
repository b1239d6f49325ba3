"""Chat templates render with bounds (convert/template.py): the same text transformers
renders, hostile templates refused in bounded time and memory, and a model whose template
runs away falls back to the family's known one and says so, through `generate`."""

from __future__ import annotations

import json
import logging
import shutil
import tracemalloc

import pytest

from qwen_mlx.cli import main
from qwen_mlx.convert.template import TEST_CONVERSATIONS, check, family_template, render
from qwen_mlx.errors import ChatTemplateError

from .helpers import BOOM, SHARED_MODEL, needs_shared

# A template that loops, builds or recurses without end, in each way we know of; each
# must be stopped by a bound, never run to the end.
HOSTILE = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}",
    "three nested loops with output": "{% for i in range(99999) %}{% for j in range(99999) %}"
    "{% for k in range(99999) %}x{% endfor %}{% endfor %}{% endfor %}",
    "a huge range": "{% for i in range(10**9) %}x{% endfor %}",
    "string multiplication": "{{ 'x' * 10**10 }}",
    "a long string output in a loop": "{% set s = 'x' * 1000000 %}"
    "{% for i in range(100000) %}{{ s }}{% endfor %}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "a list of one long string printed": "{% set s = 'x' * 1000000 %}{{ [s] * 100000 }}",
    "the same list as JSON": "{% set s = 'x' * 1000000 %}{{ ([s] * 100000) | tojson }}",
    "the same list joined": "{% set s = 'x' * 1000000 %}{{ ([s] * 100000) | join }}",
    "str.join": "{% set s = 'x' * 1000000 %}{{ ''.join([s] * 100000) }}",
    "output inside a macro": "{% set s = 'x' * 1000000 %}{% macro f() %}"
    "{% for i in range(100000) %}{{ s }}{% endfor %}{% endmacro %}{{ f() | length }}",
    "output inside a set block": "{% set s = 'x' * 1000000 %}{% set b %}"
    "{% for i in range(100000) %}{{ s }}{% endfor %}{% endset %}{{ b | length }}",
    "endless recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "exponential recursion": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}"
    "{% else %}{{ 'x' * 1000 }}{% endif %}{% endmacro %}{{ f(60) }}",
    "a recursive loop": "{% for x in range(2) recursive %}{% if x == 0 %}"
    "{{ loop(range(99999)) }}{% endif %}{% endfor %}",
    "a format width": "{{ '%0999999999d' % 1 }}",
    "a width from the arguments": "{{ '{:>{w}}'.format(1, w=999999999) }}",
    "center": "{{ 'x' | center(10**9) }}",
    "str.ljust": "{{ 'x'.ljust(10**9) }}",
    "indent": "{{ ('a\\n' * 1000) | indent(10**6) }}",
    "replace": "{{ ('x' * 100000) | replace('', 'y' * 100000) }}",
    "a big power": "{{ 10 ** 100000000 }}",
    "slice": "{{ [1] | slice(10**8) | list | length }}",
    "summing lists": "{{ ([range(1000) | list] * 10000) | sum(start=[]) | length }}",
    "the sandbox's own refusal": "{{ ''.__class__.__mro__ }}",
}
PLAIN = TEST_CONVERSATIONS[0][0]


@pytest.mark.parametrize("template", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_templates_are_refused_in_bounded_memory(template):
    tracemalloc.start()
    try:
        with pytest.raises(ChatTemplateError):
            render(template, PLAIN)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # what it built before the refusal stayed small


def test_a_render_past_its_deadline_is_stopped():
    with pytest.raises(ChatTemplateError, match="longer than 0 s"):
        render("{% for m in messages %}{{ m.content }}{% endfor %}", PLAIN, seconds=0)


def test_the_bounds_grow_with_the_conversation():
    template = (
        "{% for m in messages %}{% for w in m.content.split() %}{{ w }}{% endfor %}{% endfor %}"
    )
    long_chat = [{"role": "user", "content": "word " * 40_000}] * 10  # 400,000 words
    assert len(render(template, long_chat)) == 1_600_000  # 800,000 steps


def test_bounded_renders_match_transformers_on_the_tiny_template(tiny_model):
    tokenizer = tiny_model.tokenizer
    for messages, tools in TEST_CONVERSATIONS:
        for prompt in (True, False):
            want = tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=prompt
            )
            assert tiny_model.render(messages, tools=tools, add_generation_prompt=prompt) == want


@needs_shared
def test_bounded_renders_match_transformers_on_qwen3s_own_template():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHARED_MODEL)
    check(tokenizer.chat_template)
    long_chat = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 50}
        for i in range(200)
    ]
    for messages, tools in [*TEST_CONVERSATIONS, (long_chat, None)]:
        want = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True
        )
        got = render(
            tokenizer.chat_template,
            messages,
            tools=tools,
            variables=tokenizer.special_tokens_map,
        )
        assert got == want


def test_check_says_why_a_template_fails_on_a_plain_conversation():
    with pytest.raises(ChatTemplateError, match="fails on a plain conversation"):
        check("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="steps"):
        check(HOSTILE["nested loops"])


# -- at run time, through generate ----------------------------------------------------------


@pytest.fixture
def boom_model(tiny_mlx, tmp_path):
    """The tiny model in a folder of its own whose chat template is BOOM."""
    folder = shutil.copytree(tiny_mlx, tmp_path / "boom")
    (folder / "manifest.json").unlink(missing_ok=True)  # a plain folder: no checksums
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = BOOM
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_generate_falls_back_to_the_family_template_with_a_notice(boom_model, capsys, caplog):
    argv = ["generate", "--model", str(boom_model), "--temperature", "0", "-n", "4"]
    with caplog.at_level(logging.WARNING, logger="qwen_mlx.convert.template"):
        assert main([*argv, "--prompt", "hello"]) == 0
        assert "was stopped" not in caplog.text  # the model's own template, while it works
        assert main([*argv, "--prompt", "boom"]) == 0
    assert "The chat template of boom was stopped (it ran more than" in caplog.text
    assert "using Qwen's ChatML template (with tools) instead" in caplog.text


def test_a_model_that_fell_back_renders_with_the_family_template(boom_model):
    from qwen_mlx import load

    model = load(boom_model)
    messages = [{"role": "user", "content": "boom"}]
    assert model.render(messages) == render(family_template("qwen3"), messages)
    assert model.memo["chat_template"].fallback_reason.startswith("it ran more than")
    # and keeps to it, so every later render of the conversation agrees with the first
    assert model.render([{"role": "user", "content": "hi"}]) == render(
        family_template("qwen3"), [{"role": "user", "content": "hi"}]
    )


def test_the_server_answers_a_prompt_that_sets_off_the_template(boom_model, caplog):
    """What jammed serve's preparation threads: the request is answered (with the family's
    template), and so is the next one."""

    from qwen_mlx import load

    from .served import serving

    with serving(load(boom_model), key=None, cache_bytes=0) as served:
        client = served.client()
        for text in ("boom", "hello"):
            reply = client.chat.completions.create(
                model="boom", messages=[{"role": "user", "content": text}], max_tokens=4
            )
            assert reply.choices[0].finish_reason in ("stop", "length")
    assert "The chat template of boom was stopped" in caplog.text
