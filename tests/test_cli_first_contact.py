"""First-contact fixes in the CLI and the library: sessions remember their model, `plan`
from a config alone, did-you-mean, documents that are empty, binary or long."""

from __future__ import annotations

import io
import json

import pytest

import qwen_mlx
from qwen_mlx.cli.common import ProgressBar
from qwen_mlx.cli.generate import main as generate_main
from qwen_mlx.cli.main import main as cli_main
from qwen_mlx.cli.plan import main as plan_main
from qwen_mlx.cli.summarize import main as summarize_main

from .helpers import SHARED_MODEL, needs_shared


def test_dir_of_the_package_is_its_public_api():
    assert dir(qwen_mlx) == sorted(qwen_mlx.__all__)
    assert "import_module" not in dir(qwen_mlx)


def test_generate_with_a_session_uses_the_model_it_was_saved_with(tiny_mlx, tmp_path, capsys):
    session = tmp_path / "trip.json"
    first = ["--session", str(session), "--prompt", "Hi", "-n", "3", "--temperature", "0"]
    assert generate_main(["--model", str(tiny_mlx), *first]) == 0
    capsys.readouterr()
    # No --model: the store has no qwen3-4b-instruct, so only the saved model can answer.
    again = ["--session", str(session), "--prompt", "And?", "-n", "3", "--temperature", "0"]
    assert generate_main(again) == 0
    err = capsys.readouterr().err
    assert "read this turn" in err
    saved = json.loads(session.read_text())
    assert saved["model"]["ref"] == str(tiny_mlx.resolve())


def test_generate_without_a_session_or_model_names_the_default_it_looked_for(home, capsys):
    assert generate_main(["--prompt", "Hi"]) == 1
    assert "qwen3-4b-instruct" in capsys.readouterr().err


@needs_shared
def test_plan_works_from_a_config_alone(capsys):
    assert plan_main(["--model", str(SHARED_MODEL), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights_from"] == "config"
    assert 7.5e9 < data["weights_bytes"] < 8.5e9  # Qwen3-4B in bf16
    assert data["model_context"] == 262_144
    assert plan_main(["--model", str(SHARED_MODEL), "--q-bits", "4", "--json"]) == 0
    four_bit = json.loads(capsys.readouterr().out)["weights_bytes"]
    assert 2.0e9 < four_bit < 2.6e9  # what a 4-bit g64 conversion weighs


@needs_shared
def test_plan_says_which_limit_a_context_breaks(capsys):
    assert plan_main(["--model", str(SHARED_MODEL), "--context", "300000", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert all("over the model's 262,144-token limit" in r["why"] for r in rows)
    assert not any(r["fits_model_context"] for r in rows)
    assert plan_main(["--model", str(SHARED_MODEL), "--context", "1000"]) == 0
    assert "yes" in capsys.readouterr().out


def test_plan_says_memory_when_memory_is_the_limit(tiny_mlx, capsys, monkeypatch):
    from qwen_mlx.runtime import memory

    monkeypatch.setattr(memory, "machine_budget", lambda: memory.Budget(1 << 20, 1 << 30, "test"))
    assert plan_main(["--model", str(tiny_mlx), "--context", "4096", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert all(r["why"].startswith("no: needs") for r in rows)


@pytest.mark.parametrize("bad", ["0", "-5"])
def test_plan_rejects_a_context_that_is_not_positive(tiny_mlx, capsys, bad):
    assert plan_main(["--model", str(tiny_mlx), "--context", bad]) == 1
    assert "--context must be a positive" in capsys.readouterr().err


def test_an_unknown_command_suggests_the_closest(capsys):
    assert cli_main(["genrate"]) == 2
    assert "Did you mean 'generate'?" in capsys.readouterr().err


def test_abbreviated_flags_are_errors_not_guesses(tiny_mlx, capsys):
    with pytest.raises(SystemExit) as e:
        generate_main(["--model", str(tiny_mlx), "--prompt", "x", "--temperatur", "0"])
    assert e.value.code == 2
    assert "unrecognized arguments: --temperatur" in capsys.readouterr().err


def test_a_mistyped_store_name_suggests_the_stored_one(tiny_hf, home, capsys):
    from qwen_mlx.convert import convert

    name = convert(str(tiny_hf)).manifest.name
    family = name.rsplit("-", 4)[0]
    typo = family.replace("tiny", "tyni")
    assert generate_main(["--model", typo, "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert f"Did you mean {family}?" in err
    assert "?." not in err and "?:" not in err  # one mark ends the question
    from qwen_mlx.cli.models import main as models_main

    assert models_main(["show", f"{family}-2507-mlx-q4-g65"]) == 1
    err = capsys.readouterr().err
    assert f"Did you mean {family}-2507-mlx-q4-g64" in err and "?." not in err


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"", "is empty"), (b"  \n\n ", "is empty"), (b"\x7fELF\x02\x01\x00\x00", "binary")],
)
def test_summarize_refuses_empty_and_binary_files_before_loading(tmp_path, capsys, content, says):
    doc = tmp_path / "doc.txt"
    doc.write_bytes(content)
    # No model is loaded: the store is empty and the error is about the file.
    assert summarize_main([str(doc)]) == 1
    err = capsys.readouterr().err
    assert says in err and "doc.txt" in err


def test_document_progress_counts_tokens_in_small_prefill_chunks(tiny_model):
    from qwen_mlx.chat.documents import summarize

    text = "The launch moves to Tuesday because the build farm is slow. " * 60
    seen: list[tuple[str, int, int]] = []
    tiny_model.memo["prefill_tps"] = 200.0  # a slow machine: 100-token chunks
    summarize(
        tiny_model,
        text,
        # Sampled: the random tiny model's greedy reply is only newlines, an empty summary.
        params=tiny_model.default_params.replace(temperature=0.7, seed=0),
        reply_tokens=8,
        progress=lambda *event: seen.append(event),
    )
    stages = {stage for stage, _, _ in seen}
    assert stages == {"summarize"}
    total = seen[0][2]
    assert total > len(tiny_model.encode(text))  # tokens, not calls
    done = [d for _, d, _ in seen]
    assert done == sorted(done) and done[-1] == total
    reading = {d for d in done if 0 < d < len(tiny_model.encode(text))}
    assert len(reading) >= 5  # the prompt was read in several chunks, each one reported


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_token_progress_bar_shows_counts_and_time_left(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 3.0])
    monkeypatch.setattr("qwen_mlx.cli.common.time.monotonic", lambda: next(clock))
    out = _Terminal()
    bar = ProgressBar(out, unit="tokens")
    bar.update("read", 0, 4000)
    bar.update("read", 1000, 4000)
    line = out.getvalue().rsplit("\r", 1)[-1]
    assert "1,000/4,000 tokens" in line
    assert "0:03 left" in line  # 1,000 tokens a second, 3,000 to go


def test_a_str_document_is_text_even_when_a_file_has_that_name(tiny_model, tmp_path, monkeypatch):
    from pathlib import Path

    from qwen_mlx.chat import documents

    monkeypatch.chdir(tmp_path)
    Path("notes.md").write_text("SECRET FILE CONTENTS")
    prompts = []
    monkeypatch.setattr(
        documents, "_complete", lambda m, prompt, *a, **k: prompts.append(prompt) or "Notes."
    )
    documents.summarize(tiny_model, "notes.md", reply_tokens=4)
    documents.summarize(tiny_model, Path("notes.md"), reply_tokens=4)
    assert "notes.md" in prompts[0] and "SECRET" not in prompts[0]
    assert "SECRET FILE CONTENTS" in prompts[1]
