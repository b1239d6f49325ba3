"""The naming convention parses and formats both ways, and explains bad names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_mlx import naming
from qwen_mlx.errors import InvalidNameError


@pytest.mark.parametrize(
    ("text", "family_id", "release", "fmt", "quant"),
    [
        ("qwen3-4b-instruct-2507", "qwen3-4b-instruct", "2507", None, None),
        ("qwen3-4b-instruct-2507-mlx-q4-g64", "qwen3-4b-instruct", "2507", "mlx", "q4-g64"),
        ("qwen3-4b-instruct-2507-gguf-q4_0", "qwen3-4b-instruct", "2507", "gguf", "q4_0"),
        ("qwen3-4b-chat-2507-awq-int4", "qwen3-4b-chat", "2507", "awq", "int4"),
        ("qwen3-4b-medical-instruct-2507", "qwen3-4b-medical-instruct", "2507", None, None),
        (
            "qwen3-30b-a3b-instruct-2507-mlx-mixed_4_6-g64",
            "qwen3-30b-a3b-instruct",
            "2507",
            "mlx",
            "mixed_4_6-g64",
        ),
    ],
)
def test_documented_examples_parse(text, family_id, release, fmt, quant):
    name = naming.parse(text)
    assert (name.family_id, name.release, name.format, name.quant) == (
        family_id,
        release,
        fmt,
        quant,
    )
    assert str(name) == text


def test_repo_ids_become_lowercase_names():
    name = naming.name_from_source("Qwen/Qwen3-4B-Instruct-2507")
    assert str(name) == "qwen3-4b-instruct-2507"
    assert (name.family, name.size, name.variant) == ("qwen3", "4b", "instruct")


def test_store_layout_parts():
    name = naming.parse("qwen3-4b-instruct-2507-mlx-q4-g64@1a2b3c4")
    assert name.format_dir == "mlx-q4-g64@1a2b3c4"
    assert name.version == "2507-mlx-q4-g64@1a2b3c4"
    assert naming.parse("qwen3-4b-instruct-2507").format_dir == "original"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("qwen3", "fewer than four"),
        ("qwen3-big-instruct-2507", "size 'big'"),
        ("qwen3-4b-instruct-latest", "no release"),
        ("qwen3-4b-instruct-2507-zip-q4", "unknown format 'zip'"),
        ("qwen3-4b-2507-mlx", "variant"),
    ],
)
def test_bad_names_say_what_is_wrong_and_show_the_form(text, says):
    with pytest.raises(InvalidNameError) as e:
        naming.parse(text)
    assert says in str(e.value)
    assert naming.EXPECTED_FORM in str(e.value)


def test_family_ids_are_told_apart_from_names():
    assert naming.is_family_id("qwen3-4b-instruct")
    assert not naming.is_family_id("qwen3-4b-instruct-2507")
    assert naming.is_name("qwen3-4b-instruct-2507")


def test_quant_tags():
    assert naming.quant_tag(bits=4, group_size=64) == "q4-g64"
    assert naming.quant_tag(bits=None, dtype="float16") == "f16"
    assert naming.quant_tag(bits=4, group_size=32, recipe="mixed_3_6") == "mixed_3_6-g32"


_word = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
names = st.builds(
    naming.ModelName,
    family=st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True),
    size=st.from_regex(r"[1-9][0-9]{0,2}(\.[0-9])?[mb]", fullmatch=True),
    variant=st.lists(_word, min_size=1, max_size=3).map("-".join),
    release=st.from_regex(r"[0-9]{4}([0-9]{2}){0,2}", fullmatch=True),
).flatmap(
    lambda base: st.one_of(
        st.just(base),
        st.builds(
            lambda fmt, quant, rev: base.with_format(fmt, quant, rev),
            st.sampled_from(naming.FORMATS),
            st.one_of(
                st.none(),
                st.lists(
                    st.from_regex(r"[a-z0-9][a-z0-9_]{0,5}", fullmatch=True), min_size=1, max_size=3
                ).map("-".join),
            ),
            st.one_of(st.none(), st.from_regex(r"[0-9a-f]{7,12}", fullmatch=True)),
        ),
    )
)


@given(names)
def test_format_then_parse_round_trips(name):
    assert naming.parse(str(name)) == name


@given(names)
def test_parse_is_case_insensitive(name):
    assert naming.parse(str(name).upper()) == name


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_invalid_name(text):
    try:
        name = naming.parse(text)
    except InvalidNameError:
        return
    assert str(name) == text.strip().lower()
