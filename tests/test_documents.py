"""Long documents: structure-aware chunks, map-reduce with [IMPORTANT] passages kept,
PDF input, prefix reuse for repeated questions, and the CLI."""

from __future__ import annotations

import gc
import logging
import re
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qwen_mlx.chat.documents as documents
from qwen_mlx import load
from qwen_mlx.chat.documents import (
    ask,
    important_passages,
    read_document,
    split_document,
    summarize,
)
from qwen_mlx.cli.ask import main as ask_main
from qwen_mlx.cli.summarize import main as summarize_main
from qwen_mlx.errors import GenerationCancelled

from .helpers import write_pdf

REPORT = """# Quarterly report

The team shipped the converter and the store. Conversions now stream one tensor at a time.
Peak memory fell by two thirds. Users noticed.

## Risks

[IMPORTANT] The registry must never be edited by hand: run `qwen-mlx models repair`.

Metal memory is shared with the desktop. Long contexts need planning. The planner helps.

## Next

We will build the terminal app, then the server. The server needs authentication.
[IMPORTANT] Release on 14 March, not before.

Everything else can wait until the spring.
"""
LONG = "\n\n".join([REPORT] * 6)
# Sampled, seeded: the random tiny model's greedy reply is only newlines, an empty summary.
PARAMS = {"temperature": 0.7, "seed": 0}


def word_count(text: str) -> int:
    return len(text.split())


def test_chunks_fit_the_budget_and_lose_no_text(tiny_model):
    count = lambda t: len(tiny_model.encode(t))  # noqa: E731
    for budget in (40, 120, 400):
        chunks = split_document(LONG, budget, count)
        assert "".join(c.text for c in chunks) == LONG
        assert all(c.tokens <= budget for c in chunks)
        assert all(count(c.text) == c.tokens for c in chunks)
        assert [c.start for c in chunks] == [
            sum(len(x.text) for x in chunks[:i]) for i in range(len(chunks))
        ]


def test_chunks_break_at_headings_paragraphs_then_sentences(tiny_model):
    count = lambda t: len(tiny_model.encode(t))  # noqa: E731
    chunks = split_document(REPORT, 90, count)
    for chunk in chunks[1:]:
        # Each chunk starts at a heading, a paragraph, a sentence or at least a word.
        before = REPORT[: chunk.start]
        assert before.endswith(("\n", ". ", "\n\n", " ")) or chunk.text.startswith("#")
        assert not before[-1:].isalnum() or not chunk.text[:1].isalnum()


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .\n#!?")), max_size=400), st.integers(3, 40))
def test_splitting_never_loses_text_and_never_cuts_words(text, budget):
    count = lambda t: len(t.split()) + t.count("\n")  # noqa: E731
    chunks = split_document(text, budget, count)
    assert "".join(c.text for c in chunks) == text
    for c in chunks[:-1]:
        # A word is never split between two chunks (unless one word exceeds the budget).
        nxt = text[c.start + len(c.text) :]
        if c.text[-1:].isalpha() and nxt[:1].isalpha():
            word = (c.text.split()[-1] if c.text.split() else "") + nxt.split()[0]
            assert count(word) > budget


def test_important_passages_are_whole_paragraphs():
    found = important_passages(REPORT)
    assert found == [
        "[IMPORTANT] The registry must never be edited by hand: run `qwen-mlx models repair`.",
        "We will build the terminal app, then the server. The server needs authentication.\n"
        "[IMPORTANT] Release on 14 March, not before.",
    ]


class Recorder:
    """Counts and records the real model calls made by the document functions."""

    def __init__(self, monkeypatch):
        self.prompts: list[str] = []
        real = documents._complete

        def complete(model, prompt, params, should_stop=None, tick=None):
            self.prompts.append(prompt)
            return real(model, prompt, params, should_stop, tick)

        monkeypatch.setattr(documents, "_complete", complete)


def test_a_document_that_fits_is_one_call(tiny_model, monkeypatch):
    calls = Recorder(monkeypatch)
    summary = summarize(tiny_model, REPORT, params=tiny_model.default_params.replace(**PARAMS))
    assert (summary.chunks, summary.calls, summary.levels) == (1, 1, 0)
    assert len(calls.prompts) == 1 and REPORT in calls.prompts[0]


def test_map_reduce_calls_and_important_passages(tiny_model, monkeypatch):
    calls = Recorder(monkeypatch)
    seen = []
    summary = summarize(
        tiny_model,
        LONG,
        params=tiny_model.default_params.replace(**PARAMS),
        max_context=900,
        reply_tokens=96,
        progress=lambda *a: seen.append(a),
    )
    assert summary.chunks > 2
    assert summary.levels >= 1
    assert summary.calls == len(calls.prompts) == summary.chunks + (summary.calls - summary.chunks)
    maps = calls.prompts[: summary.chunks]
    reduces = calls.prompts[summary.chunks :]
    assert len(reduces) == summary.calls - summary.chunks >= 1
    assert all(p.startswith("Summarize this part") for p in maps)
    # Every reduce step quotes the [IMPORTANT] passages of the parts it combines.
    passages = important_passages(LONG)
    last_reduce = reduces[-1]
    for passage in set(passages):
        assert passage in last_reduce
    for prompt in reduces:
        assert "word for word" in prompt
    for passage in passages:
        assert passage in summary.text  # and the final summary carries them verbatim
    assert {s for s, *_ in seen} >= {"map", "reduce 1"}
    for prompt in calls.prompts:
        assert len(tiny_model.encode(prompt)) <= 900


def test_pdf_markdown_and_text_inputs(tmp_path, caplog):
    md = tmp_path / "r.md"
    md.write_text(REPORT)
    assert read_document(md) == REPORT
    pdf = tmp_path / "r.pdf"
    write_pdf(pdf, "Release on 14 March.")
    assert "Release on 14 March." in read_document(pdf)
    (tmp_path / "bad.pdf").write_bytes(b"not a pdf")
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="not a readable PDF"):
        read_document(tmp_path / "bad.pdf")
    assert [r.name for r in caplog.records] == []  # no pypdf warnings echoing the error
    assert logging.getLogger("pypdf").level == logging.NOTSET  # as it was
    with pytest.raises(FileNotFoundError):
        read_document(tmp_path / "missing.txt")


def test_questions_about_one_document_prefill_it_once(tiny_model):
    params = tiny_model.default_params.replace(temperature=0.0, max_tokens=6)
    first = ask(tiny_model, REPORT, "When is the release?", params=params)
    assert first.mode == "whole"
    second = ask(tiny_model, REPORT, "What are the risks?", params=params)
    document_tokens = len(tiny_model.encode(REPORT))
    assert first.prefilled_tokens > document_tokens
    assert second.prefilled_tokens < 40  # only the new question and its markup


def test_summarize_stops_when_asked(tiny_model, monkeypatch):
    calls = Recorder(monkeypatch)
    asked = []

    def stop_during_the_second_part() -> bool:
        asked.append(len(calls.prompts))
        return len(calls.prompts) >= 2

    with pytest.raises(GenerationCancelled):
        summarize(
            tiny_model,
            LONG,
            max_context=900,
            reply_tokens=48,
            params=tiny_model.default_params.replace(**PARAMS),
            should_stop=stop_during_the_second_part,
        )
    assert len(calls.prompts) == 2 and asked  # no third call once stopped


def test_the_document_conversation_is_freed_with_its_model(tiny_mlx):
    model = load(tiny_mlx)
    params = model.default_params.replace(temperature=0.0, max_tokens=2)
    ask(model, REPORT, "When is the release?", params=params)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None  # nothing global holds the model through its cached conversation


def test_ask_map_reduce_for_a_long_document(tiny_model, monkeypatch):
    calls = Recorder(monkeypatch)
    answer = ask(
        tiny_model,
        LONG,
        "When is the release?",
        max_context=900,
        reply_tokens=48,
        params=tiny_model.default_params.replace(**PARAMS),
    )
    assert answer.mode == "map-reduce"
    assert answer.calls == len(calls.prompts)
    assert calls.prompts[-1].startswith("Answer the question")


def test_summarize_and_ask_commands(tiny_mlx, tmp_path, capsys):
    doc = tmp_path / "report.md"
    doc.write_text(LONG)
    assert (
        summarize_main(
            [
                str(doc),
                "--model",
                str(tiny_mlx),
                "--max-context",
                "900",
                "--temperature",
                "0.7",
                "--seed",
                "0",
                "--reply-tokens",
                "48",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert "Release on 14 March, not before." in out
    assert "model calls" in err and "parts" in err
    assert re.search(r"\([\d,]+/[\d,]+ tokens\)", err)  # the progress counts tokens
    assert (
        ask_main(
            [
                str(doc),
                "When?",
                "--model",
                str(tiny_mlx),
                "--max-context",
                "900",
                "--reply-tokens",
                "32",
            ]
        )
        == 0
    )
    assert "map-reduce" in capsys.readouterr().err
    assert summarize_main([str(tmp_path / "nope.md"), "--model", str(tiny_mlx)]) == 1


class ScriptedModel:
    """Stands in for the model's replies: `reply(prompt)` answers each model call."""

    def __init__(self, monkeypatch, reply):
        self.prompts: list[str] = []

        def complete(model, prompt, params, should_stop=None, tick=None):
            self.prompts.append(prompt)
            return reply(prompt)

        monkeypatch.setattr(documents, "_complete", complete)


def summarize_args(doc, model) -> list[str]:
    return [str(doc), "--model", str(model), "--max-context", "900", "--reply-tokens", "48"]


def test_an_empty_final_summary_is_said_and_the_part_summaries_are_given(
    tiny_mlx, tmp_path, capsys, monkeypatch
):
    doc = tmp_path / "report.md"
    doc.write_text(LONG)
    parts = iter(range(1, 1000))
    model = ScriptedModel(
        monkeypatch,
        lambda prompt: (
            f"Part {next(parts)} says a thing." if prompt.startswith("Summarize") else ""
        ),
    )
    assert summarize_main(summarize_args(doc, tiny_mlx)) == 1
    out, err = capsys.readouterr()
    maps = [p for p in model.prompts if p.startswith("Summarize this part")]
    assert len(maps) > 2 and len(model.prompts) > len(maps)  # it did try to combine them
    for i in range(1, len(maps) + 1):
        assert f"Part {i} says a thing." in out
    assert "Release on 14 March, not before." in out  # the [IMPORTANT] passages still close it
    assert "final summary came out empty" in err and "not one summary" in err


def test_a_summary_with_no_text_at_all_is_an_error(tiny_mlx, tmp_path, capsys, monkeypatch):
    doc = tmp_path / "report.md"
    doc.write_text(REPORT)
    ScriptedModel(monkeypatch, lambda prompt: "")
    assert summarize_main(summarize_args(doc, tiny_mlx)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "error: The model gave an empty summary (its call returned no text)" in err
    doc.write_text(LONG)  # map-reduce, every part empty
    assert summarize_main(summarize_args(doc, tiny_mlx)) == 1
    out, err = capsys.readouterr()
    assert out == "" and "empty summary" in err and "calls returned no text" in err


def test_parts_the_model_said_nothing_about_are_reported_missing(
    tiny_mlx, tmp_path, capsys, monkeypatch
):
    doc = tmp_path / "report.md"
    doc.write_text(LONG)
    calls = iter(range(1000))
    # The second part's summary is empty; everything else answers.
    ScriptedModel(monkeypatch, lambda prompt: "" if next(calls) == 1 else "A summary.")
    assert summarize_main(summarize_args(doc, tiny_mlx)) == 0
    out, err = capsys.readouterr()
    assert out.startswith("A summary.")
    assert re.search(r"warning: 1 of \d+ model calls gave an empty summary", err)


def test_an_empty_answer_is_said(tiny_mlx, tmp_path, capsys, monkeypatch):
    doc = tmp_path / "report.md"
    doc.write_text(LONG)
    ScriptedModel(monkeypatch, lambda prompt: "")
    args = [str(doc), "When?", "--model", str(tiny_mlx), "--max-context", "900"]
    assert ask_main([*args, "--reply-tokens", "32"]) == 1
    assert "the model's answer was empty" in capsys.readouterr().err
