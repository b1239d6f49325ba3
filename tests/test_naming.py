"""The naming convention parses and formats both ways, and explains bad names."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_mlx.errors import InvalidNameError
from qwen_mlx.store import naming


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


def _not_a_size_or_format(word: str) -> bool:
    # `4b-a3b` reads as a MoE size, and a format word ends the variant: keep both out.
    return word not in naming.FORMATS and not re.fullmatch(r"a[0-9]+(\.[0-9]+)?[kmbt]", word)


_word = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(_not_a_size_or_format)
_tag = st.from_regex(r"[a-z0-9]{0,3}[0-9][a-z0-9_]{0,3}", fullmatch=True)
_date = st.from_regex(r"[0-9]{4}([0-9]{2}){0,2}", fullmatch=True)
releases = st.one_of(
    _date,
    st.builds(lambda d, tags: "-".join([d, *tags]), _date, st.lists(_tag, min_size=1, max_size=2)),
    _tag,  # a release that is not a date: v1, ft500, 500
)
names = st.builds(
    naming.ModelName,
    family=st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True),
    size=st.from_regex(r"[1-9][0-9]{0,2}(\.[0-9])?[mb]", fullmatch=True),
    variant=st.lists(_word, min_size=1, max_size=3).map("-".join),
    release=releases,
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


# -- fine-tune names, derived names, latest --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "family_id", "release", "fmt"),
    [
        ("qwen3-4b-myft-v1", "qwen3-4b-myft", "v1", None),
        ("qwen3-4b-instruct-2507-ft500", "qwen3-4b-instruct", "2507-ft500", None),
        ("qwen3-4b-instruct-2507-ft500-mlx-q4-g64", "qwen3-4b-instruct", "2507-ft500", "mlx"),
        ("qwen3-4b-checkpoint-500", "qwen3-4b-checkpoint", "500", None),
        ("qwen3-4b-r1-distill-v2-mlx-q8-g64@1a2b3c4", "qwen3-4b-r1-distill", "v2", "mlx"),
        ("qwen3-4b-mlx-ft-20250715", "qwen3-4b-mlx-ft", "20250715", None),
    ],
)
def test_names_people_give_finetunes_parse(text, family_id, release, fmt):
    name = naming.parse(text)
    assert (name.family_id, name.release, name.format) == (family_id, release, fmt)
    assert str(name) == text


def test_a_name_that_would_read_back_as_another_is_refused():
    with pytest.raises(InvalidNameError, match="would read back as another name"):
        naming.ModelName("qwen3", "4b", "instruct", "2507-mlx")  # reads as format mlx
    with pytest.raises(InvalidNameError, match="would read back"):
        naming.ModelName("qwen3", "30b", "a3b-instruct", "2507")  # reads as size 30b-a3b


def test_family_ids_are_not_names_and_a_dateless_release_is_one():
    assert naming.is_family_id("qwen3-4b-medical-ft")
    assert naming.is_family_id("qwen3-4b-instruct-latest")
    assert naming.is_name("qwen3-4b-medical-ft1") and not naming.is_family_id("qwen3-4b-x-v1")


@pytest.mark.parametrize(
    ("parameters", "tag"),
    [
        (596_049_920, "0.6b"),  # Qwen3-0.6B, tied embeddings counted once
        (1_720_574_976, "1.7b"),
        (4_022_468_096, "4b"),
        (8_190_735_360, "8b"),
        (14_768_307_200, "14b"),
        (32_762_123_264, "32b"),
        (4_200_000, "4m"),
        (920_000, "0.9m"),
        (2_700_000_000, "2.7b"),
        (140_000, "140k"),
    ],
)
def test_parameter_counts_round_to_the_usual_sizes(parameters, tag):
    assert naming.size_tag(parameters) == tag


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("Qwen/Qwen3-4B-Instruct-2507", "qwen3-4b-instruct-2507"),
        ("Qwen/Qwen3-4B-Thinking-2507", "qwen3-4b-thinking-2507"),
        ("Qwen/Qwen3-4B", "qwen3-4b-hybrid-1a2b3c4"),  # no variant, no release
        ("Qwen/Qwen3-0.6B", "qwen3-0.6b-hybrid-1a2b3c4"),  # the name's size wins
        ("Qwen/Qwen3-4B-Base", "qwen3-4b-base-1a2b3c4"),
        ("someone/Qwen3-4B-medical-ft", "qwen3-4b-medical-ft-1a2b3c4"),
        ("./checkpoint-500", "qwen3-4m-checkpoint-500"),
        ("~/runs/my-finetune/", "qwen3-4m-my-finetune-1a2b3c4"),
        ("target", "qwen3-4m-target-1a2b3c4"),
        ("Qwen3-4B-Instruct-2507-dpo", "qwen3-4b-instruct-dpo-2507"),  # a tag needs a digit
        ("my-ft-bf16", "qwen3-4m-my-ft-1a2b3c4"),  # format words are not the model's
    ],
)
def test_checkpoints_are_named_from_their_name_and_what_they_say(label, expected):
    name, note = naming.name_for(
        None,
        label,
        family="qwen3",
        parameters=4_200_000,
        release="1a2b3c4",
        release_from="the source's commit",
    )
    assert str(name) == expected
    if not naming.is_name(label.rsplit("/", 1)[-1]):
        assert note  # how it was chosen, for the user


def test_config_name_or_path_gives_a_variant_the_folder_does_not():
    name, _ = naming.name_for(
        None,
        "Qwen3-4B",
        family="qwen3",
        parameters=4_022_468_096,
        release="20261201",
        release_from="the date its weights were written",
        hint="Qwen/Qwen3-4B-Instruct-2507",
    )
    assert str(name) == "qwen3-4b-instruct-20261201"


def test_a_requested_name_that_does_not_fit_is_made_to_fit_and_said_so():
    name, note = naming.name_for(
        "My Fine Tune!",
        "out",
        family="qwen3",
        parameters=4_022_468_096,
        release="20261201",
        release_from="the date its weights were written",
    )
    assert str(name) == "qwen3-4b-my-fine-tune-20261201"
    assert "--name 'My Fine Tune!' does not fit" in note and str(name) in note
    assert naming.name_for(
        "qwen3-4b-myft-v1", "out", family="qwen3", parameters=1, release="20261201", release_from=""
    ) == (naming.parse("qwen3-4b-myft-v1"), "")


@given(
    st.one_of(st.none(), st.text(max_size=30).filter(str.strip)),
    st.text(alphabet="Qwen3-4B.mlx_0125 /vftGGUF@-", max_size=30),
    st.integers(1, 10**12),
    st.one_of(st.none(), st.text(max_size=20)),
)
def test_any_requested_name_or_folder_gives_a_name_that_round_trips(requested, label, n, hint):
    name, _ = naming.name_for(
        requested,
        label,
        family="qwen3",
        parameters=n,
        release="20261201",
        release_from="",
        hint=hint,
    )
    assert naming.parse(str(name)) == name


@pytest.mark.parametrize(
    ("new", "current", "says"),
    [
        ("qwen3-4b-instruct-2507-mlx-q4-g64", None, None),  # the family's first version
        ("qwen3-4b-instruct-2510-mlx-q4-g64", "qwen3-4b-instruct-2507-mlx-q4-g64", None),
        ("qwen3-4b-myft-v10-mlx-q4-g64", "qwen3-4b-myft-v9-mlx-q4-g64", None),
        ("qwen3-4b-x-2507-ft1000-mlx-q4-g64", "qwen3-4b-x-2507-ft500-mlx-q4-g64", None),
        ("qwen3-4b-instruct-2507-mlx-q8-g64", "qwen3-4b-instruct-2507-mlx-q4-g64", "mlx-q8-g64"),
        ("qwen3-4b-instruct-2510-mlx-q8-g64", "qwen3-4b-instruct-2507-mlx-q4-g64", "mlx-q8-g64"),
        ("qwen3-4b-instruct-2507-ft500-mlx-q4-g64", "qwen3-4b-instruct-2507-mlx-q4-g64", "fine"),
        ("qwen3-4b-instruct-2504-mlx-q4-g64", "qwen3-4b-instruct-2507-mlx-q4-g64", "older"),
        ("qwen3-4b-instruct-20250801-mlx-q4-g64", "qwen3-4b-instruct-2507-mlx-q4-g64", "follow"),
        ("qwen3-4b-hybrid-9f8e7d6-mlx-q4-g64", "qwen3-4b-hybrid-1a2b3c4-mlx-q4-g64", "follow"),
        ("qwen3-4b-instruct-2507-mlx-q4-g64@1a2b3c4", "qwen3-4b-instruct-2507-mlx-q4-g64", "same"),
    ],
)
def test_which_version_a_user_expects_to_become_latest(new, current, says):
    why = naming.why_not_latest(naming.parse(new), current and naming.parse(current))
    assert why is None if says is None else says in why


@pytest.mark.parametrize(
    ("folder", "release"),
    [
        ("checkpoint-1200", "step1200"),
        ("checkpoint-000500", "step500"),
        ("step-1200", "step1200"),
        ("global_step1200", "step1200"),
        ("epoch-3", "epoch3"),
        ("checkpoints", None),
        ("my-checkpoint-3", None),
        ("Qwen3-4B-Instruct-2507", None),
    ],
)
def test_trainer_checkpoint_folders_are_recognized(folder, release):
    assert naming.checkpoint_release(folder) == release


@pytest.mark.parametrize(
    ("run", "checkpoint", "expected"),
    [
        ("exp7", "checkpoint-1200", "qwen3-4m-exp7-step1200"),
        ("exp8", "checkpoint-1200", "qwen3-4m-exp8-step1200"),  # another run, another family
        ("my-run-3", "global_step500", "qwen3-4m-my-run_3-step500"),  # the 3 is the run's
        ("qwen3-4b-medical", "epoch-3", "qwen3-4b-medical-epoch3"),
        ("qwen3-4b-medical-2507", "checkpoint-800", "qwen3-4b-medical-2507-step800"),
        ("qwen3-4b-myft-v1", "step-10", "qwen3-4b-myft-v1_step10"),
        ("", "checkpoint-1", "qwen3-4m-checkpoint-step1"),
    ],
)
def test_a_checkpoint_takes_its_family_from_the_run_and_its_release_from_the_step(
    run, checkpoint, expected
):
    name, note = naming.name_for(
        None,
        run,
        family="qwen3",
        parameters=4_200_000,
        release="20250101",
        release_from="the date its weights were written",
        checkpoint=checkpoint,
    )
    assert str(name) == expected
    assert f"from {checkpoint!r}" in note or f"and {checkpoint!r}" in note


def test_later_steps_of_a_run_follow_earlier_ones():
    step = [naming.parse(f"qwen3-4m-exp7-step{n}-mlx-q4-g64") for n in (800, 1200, 10000)]
    assert naming.why_not_latest(step[1], step[0]) is None
    assert naming.why_not_latest(step[2], step[1]) is None  # more digits, still later
    assert "older" in naming.why_not_latest(step[0], step[1])


def test_a_suggested_name_stays_in_the_family():
    name = naming.parse("qwen3-4b-instruct-2507")
    taken = {"qwen3-4b-instruct-2507_local"}
    free = naming.distinct(name, "local", lambda n: str(n) in taken)
    assert str(free) == "qwen3-4b-instruct-2507_local2"
    assert free.family_id == name.family_id
    assert naming.why_not_latest(free, name) is not None  # another source: never latest
