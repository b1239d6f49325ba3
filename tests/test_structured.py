"""Schema-constrained decoding: random weights still write valid JSON for the schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from qwen_mlx import ChatSession, generate, stream_generate
from qwen_mlx.cli.generate import main as generate_main

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
ENUM = {
    "type": "object",
    "properties": {"mood": {"enum": ["happy", "sad", "neutral"]}, "ok": {"type": "boolean"}},
    "required": ["mood", "ok"],
    "additionalProperties": False,
}
ARRAY = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": 9},
    "minItems": 1,
    "maxItems": 4,
}
NESTED = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 8},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1, "maximum": 99},
                "admin": {"type": "boolean"},
            },
            "required": ["id", "admin"],
            "additionalProperties": False,
        },
    },
    "required": ["title", "tags", "owner"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Give me JSON."}]


@pytest.mark.parametrize(
    "schema", [PERSON, ENUM, ARRAY, NESTED], ids=["person", "enum", "array", "nested"]
)
@pytest.mark.parametrize("seed", range(4))
def test_random_weights_still_write_schema_valid_json(tiny_model, schema, seed):
    chunks = list(
        stream_generate(
            tiny_model, MESSAGES, json_schema=schema, seed=seed, temperature=1.0, max_tokens=200
        )
    )
    assert chunks[-1].finish_reason == "stop"  # ended by the grammar, not by max_tokens
    value = json.loads("".join(c.text for c in chunks))
    jsonschema.validate(value, schema)


def test_greedy_decoding_is_constrained_too(tiny_model):
    text = generate(tiny_model, MESSAGES, json_schema=ENUM, temperature=0, max_tokens=100)
    jsonschema.validate(json.loads(text), ENUM)


def test_chat_session_send_with_a_schema(tiny_model):
    session = ChatSession(tiny_model)
    text = "".join(
        c.text for c in session.send("Person?", json_schema=PERSON, seed=1, max_tokens=200)
    )
    jsonschema.validate(json.loads(text), PERSON)
    assert session.messages[-1]["content"] == text
    # The next, unconstrained turn reuses the cache as usual.
    "".join(c.text for c in session.send("More?", max_tokens=4))
    assert session.last_stats.reused_tokens > 0


def test_an_unusable_schema_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="JSON schema"):
        generate(tiny_model, MESSAGES, json_schema={"type": "no-such-type"})


def test_cli_json_schema_file(tiny_mlx, tmp_path, capsys):
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(NESTED))
    code = generate_main(
        [
            "--model",
            str(tiny_mlx),
            "--prompt",
            "JSON please",
            "--json-schema",
            str(schema_file),
            "--seed",
            "2",
            "-n",
            "200",
        ]
    )
    assert code == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), NESTED)


def test_cli_rejects_a_schema_file_that_is_not_json(tiny_mlx, tmp_path, capsys):
    bad = tmp_path / "schema.json"
    bad.write_text("{not json")
    assert (
        generate_main(["--model", str(tiny_mlx), "--prompt", "x", "--json-schema", str(bad)]) == 1
    )
    assert "schema.json is not valid JSON" in capsys.readouterr().err
