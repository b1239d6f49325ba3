"""Speculative decoding: prompt lookup and a draft model give plain decoding's output
(greedy: the same tokens; sampled: the same distribution), with every other guarantee."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import jsonschema
import pytest

from qwen_mlx import generate, load, stream_generate
from qwen_mlx.convert.tiny import build_tiny_checkpoint
from qwen_mlx.errors import TokenizerMismatchError
from qwen_mlx.runtime import cache_length, make_cache, stream_tokens
from qwen_mlx.runtime.memory import MemoryPlanner
from qwen_mlx.runtime.sampling import SamplingParams

from .helpers import chi2_critical, pair_distribution, topk_probs

TRAINED = Path(__file__).resolve().parents[2] / "shared" / "models" / "qwen3-tiny-trained"
needs_trained = pytest.mark.skipif(
    not (TRAINED / "target" / "config.json").is_file(),
    reason=f"the trained Qwen3 pair is not at {TRAINED}",
)

PROMPTS = [
    "def parse(self, text):\n    return",
    "import os\nimport sys\n\ndef main():\n    print(os.getcwd())\n\ndef main():\n",
    [{"role": "user", "content": "Repeat the text above.\nThe with statement is used to"}],
    "class Queue:\n    def put(self, item):\n        self.items.append(item)\n    def get(self):",
    [{"role": "user", "content": "Continue: for i in range(10):\n    print(i)\nfor j in"}],
    "a b c d a b c d a b",
]


@pytest.fixture(scope="module")
def tiny_bf16(tiny_hf):
    """The tiny checkpoint unquantized (the session's `tiny_model` is its 4-bit copy)."""
    return load(tiny_hf)


@pytest.fixture(scope="module")
def tiny_other(tmp_path_factory):
    """Different random weights, the same tokenizer: a draft that disagrees."""
    return load(build_tiny_checkpoint(tmp_path_factory.mktemp("hf") / "Qwen3-Other", seed=3))


@pytest.fixture(scope="module")
def trained(trained_mlx, tmp_path_factory):
    """The trained pair in ../shared, converted by our convert (bf16; the target once per
    session, `conftest.trained_mlx`)."""
    from qwen_mlx.convert import convert

    root = tmp_path_factory.mktemp("trained")
    draft = convert(str(TRAINED / "draft"), mlx_path=root / "draft", quantize=False)
    return load(trained_mlx), load(draft.path)


def _reply(model, prompt, **kw):
    chunks = list(stream_generate(model, prompt, **kw))
    return [c.token for c in chunks if c.token is not None], "".join(c.text for c in chunks), chunks


def _greedy_identical(model, draft, prompts, max_tokens):
    accepted = 0
    for prompt in prompts:
        plain = _reply(model, prompt, temperature=0, max_tokens=max_tokens)
        spec = _reply(model, prompt, temperature=0, max_tokens=max_tokens, draft=draft)
        assert spec[1] == plain[1], prompt
        assert spec[2][-1].finish_reason == plain[2][-1].finish_reason
        assert spec[2][-1].generation_tokens == plain[2][-1].generation_tokens
        accepted += spec[2][-1].accepted
    return accepted


@pytest.mark.parametrize("mode", ["lookup", "self", "other"])
def test_greedy_replies_are_token_for_token_those_of_plain_decoding(tiny_model, tiny_other, mode):
    draft = {"lookup": "lookup", "self": tiny_model, "other": tiny_other}[mode]
    accepted = _greedy_identical(tiny_model, draft, PROMPTS, 24)
    if mode != "other":
        assert accepted > 0  # speculation really ran


@needs_trained
def test_the_trained_pair_is_greedy_exact_with_lookup_and_with_its_draft(trained):
    target, draft = trained
    for mode in ("lookup", draft):
        assert _greedy_identical(target, mode, PROMPTS[:3], 32) > 0


def test_the_last_chunk_reports_drafted_and_accepted_tokens(tiny_model):
    last = _reply(tiny_model, PROMPTS[0], temperature=0, max_tokens=16, draft=tiny_model)[2][-1]
    assert last.drafted >= last.accepted > 0
    assert last.acceptance_rate == last.accepted / last.drafted
    plain = _reply(tiny_model, PROMPTS[0], temperature=0, max_tokens=4)[2][-1]
    assert (plain.drafted, plain.accepted, plain.acceptance_rate) == (0, 0, 0.0)


def test_a_draft_with_another_tokenizer_is_refused_before_any_work(tiny_model, tmp_path):
    foreign = load(build_tiny_checkpoint(tmp_path / "Qwen3-Foreign", tokenizer_vocab_size=400))
    with pytest.raises(TokenizerMismatchError, match="tokenizer"):
        generate(tiny_model, "hello", draft=foreign, max_tokens=4)


def test_a_draft_can_be_named_by_its_store_reference(tiny_model, tiny_mlx):
    plain = generate(tiny_model, PROMPTS[1], temperature=0, max_tokens=12)
    assert generate(tiny_model, PROMPTS[1], temperature=0, max_tokens=12, draft=str(tiny_mlx)) == (
        plain
    )


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 8, 13])
def test_max_tokens_is_exact_inside_an_accepted_run(tiny_model, max_tokens):
    spec = _reply(tiny_model, PROMPTS[3], temperature=0, max_tokens=max_tokens, draft=tiny_model)
    plain = _reply(tiny_model, PROMPTS[3], temperature=0, max_tokens=max_tokens)
    assert spec[2][-1].generation_tokens == plain[2][-1].generation_tokens == max_tokens
    assert spec[1] == plain[1] and spec[2][-1].finish_reason == "length"


def test_a_stop_string_inside_an_accepted_run_ends_the_reply_there(tiny_model):
    full = generate(tiny_model, PROMPTS[0], temperature=0, max_tokens=40)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    plain = _reply(tiny_model, PROMPTS[0], temperature=0, max_tokens=40, stop=[stop])
    spec = _reply(
        tiny_model, PROMPTS[0], temperature=0, max_tokens=40, stop=[stop], draft=tiny_model
    )
    assert spec[1] == plain[1] == full[: full.index(stop)]
    assert spec[2][-1].finish_reason == "stop"


@pytest.mark.parametrize("kv_bits", [None, 8, 4])
def test_the_cache_holds_exactly_the_prompt_and_the_reply_after_speculation(tiny_model, kv_bits):
    params = SamplingParams(temperature=0, max_tokens=19)
    prompt = tiny_model.encode(PROMPTS[1])
    held_plain: list[int] = []
    cache_plain = make_cache(tiny_model, kv_bits)
    list(
        stream_tokens(tiny_model, prompt, params, prompt_cache=cache_plain, cache_tokens=held_plain)
    )
    for draft in ("lookup", tiny_model):
        held: list[int] = []
        cache = make_cache(tiny_model, kv_bits)
        list(
            stream_tokens(
                tiny_model, prompt, params, prompt_cache=cache, cache_tokens=held, draft=draft
            )
        )
        assert held == held_plain and cache_length(cache) == len(held)
        # The next turn continues the cache: the same reply as plain decoding's next turn.
        more = tiny_model.encode(" and then")
        out = [
            c.token
            for c in stream_tokens(
                tiny_model, more, params, prompt_cache=cache, cache_tokens=held, draft=draft
            )
        ]
        ref = [
            c.token
            for c in stream_tokens(
                tiny_model, more, params, prompt_cache=cache_plain, cache_tokens=list(held_plain)
            )
        ]
        assert out == ref and cache_length(cache) == len(held)
        trim = len(held) - len(held_plain)
        from qwen_mlx.runtime import trim_cache

        trim_cache(cache_plain, trim)  # back to after the first turn for the next draft


def test_stop_from_another_thread_ends_a_speculative_reply(tiny_model):
    stop = threading.Event()
    first = threading.Event()
    held: list[int] = []
    cache = make_cache(tiny_model)
    result: list = []

    def work():
        for chunk in stream_tokens(
            tiny_model,
            tiny_model.encode(PROMPTS[0]),
            SamplingParams(temperature=0, max_tokens=-1),
            prompt_cache=cache,
            cache_tokens=held,
            should_stop=stop.is_set,
            draft=tiny_model,
            on_token=lambda _: first.set(),
        ):
            result.append(chunk)
            first.wait()

    worker = threading.Thread(target=work)
    worker.start()
    assert first.wait(30)
    stop.set()
    worker.join(30)
    assert result[-1].finish_reason == "cancelled"
    assert cache_length(cache) == len(held)


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("draft", ["lookup", "self"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_the_schema_constraint_masks_the_verify_step(tiny_model, tiny_other, draft, temperature):
    drafter = tiny_other if draft == "self" else draft
    for seed in range(3):
        text = generate(
            tiny_model,
            [{"role": "user", "content": "A person as JSON"}],
            json_schema=SCHEMA,
            temperature=temperature,
            seed=seed,
            max_tokens=120,
            draft=drafter,
        )
        jsonschema.validate(json.loads(text), SCHEMA)
        if temperature == 0:
            plain = generate(
                tiny_model,
                [{"role": "user", "content": "A person as JSON"}],
                json_schema=SCHEMA,
                temperature=0,
                max_tokens=120,
            )
            assert text == plain
            break


# -- the sampled distribution -----------------------------------------------------------


def _assert_follows(model, prompt, draft, k=3, n=200):
    exact = pair_distribution(model, prompt, k)
    counts: dict = {}
    drafted = accepted = 0
    eos = model.tokenizer.eos_token_ids
    for seed in range(n):
        taken: list = []
        params = SamplingParams(temperature=1.0, top_k=k, top_p=1.0, max_tokens=2, seed=seed)
        chunks = list(stream_tokens(model, prompt, params, draft=draft, on_token=taken.append))
        pair = tuple("end" if t in eos else t for t in taken)
        counts[pair] = counts.get(pair, 0) + 1
        drafted += chunks[-1].drafted
        accepted += chunks[-1].accepted
    chi2 = sum((counts.get(c, 0) - n * p) ** 2 / (n * p) for c, p in exact.items())
    assert chi2 < chi2_critical(len(exact) - 1), (chi2, counts)
    return drafted, accepted


def test_sampled_lookup_follows_the_models_distribution(tiny_bf16):
    # A prompt x y b x y whose lookup draft (b, after the 2-gram x y) the model samples
    # about one time in three: both the accept and the reject paths run.
    x, y = 40, 41
    b = next(b for b in range(42, 576) if b in topk_probs(tiny_bf16, [x, y, b, x, y], 3))
    drafted, accepted = _assert_follows(tiny_bf16, [x, y, b, x, y], "lookup")
    assert 0 < accepted < drafted


def test_sampled_draft_model_follows_the_models_distribution(tiny_bf16, tiny_model):
    # The 4-bit copy as the draft: its top 3 overlap the target's in part.
    drafted, accepted = _assert_follows(tiny_bf16, [40, 41, 42], tiny_model)
    assert 0 < accepted < drafted


def test_the_memory_planner_counts_the_drafts_weights_and_kv(tiny_model, tiny_other):
    alone = MemoryPlanner.for_model(tiny_model)
    both = MemoryPlanner.for_model(tiny_model, draft=tiny_other)
    assert both.weights > alone.weights
    assert (
        both.kv_per_token()
        == alone.kv_per_token() + MemoryPlanner.for_model(tiny_other).kv_per_token()
    )
    assert both.max_context() <= alone.max_context()


# -- ChatSession ------------------------------------------------------------------------


def _assert_cache_is_the_conversation(session):
    from .helpers import assert_cache_matches_conversation

    assert_cache_matches_conversation(session)


@pytest.mark.parametrize("mode", ["lookup", "model"])
def test_a_speculative_session_keeps_exact_caches_across_turns_and_resumes(
    tiny_model, tiny_other, tmp_path, mode
):
    from qwen_mlx import ChatSession

    draft = "lookup" if mode == "lookup" else tiny_other
    plain = ChatSession(tiny_model, system="Be brief.")
    spec = ChatSession(tiny_model, system="Be brief.", draft=draft, num_draft_tokens=3)
    for text in ("Hello there", "Tell me more about it", "And again"):
        a = "".join(c.text for c in plain.send(text, temperature=0, max_tokens=20))
        b = "".join(c.text for c in spec.send(text, temperature=0, max_tokens=20))
        assert a == b
        assert spec.cache_tokens == plain.cache_tokens
        _assert_cache_is_the_conversation(spec)
    assert spec.last_stats.drafted >= spec.last_stats.accepted
    if mode == "model":
        # The draft's cache was reused: it holds the conversation up to the last reply.
        held = spec.drafter.held
        assert held == spec.cache_tokens[: len(held)] and len(held) > len(spec.cache_tokens) // 2
    path = spec.save(tmp_path / "chat.json")
    resumed = ChatSession.load(path, tiny_model, draft=draft)
    assert resumed.cache_tokens == spec.cache_tokens
    c = "".join(x.text for x in resumed.send("One more", temperature=0, max_tokens=20))
    d = "".join(x.text for x in plain.send("One more", temperature=0, max_tokens=20))
    assert c == d and resumed.last_stats.reused_tokens == len(spec.cache_tokens)


def test_a_session_can_turn_its_draft_on_and_off(tiny_model):
    from qwen_mlx import ChatSession

    session = ChatSession(tiny_model)
    session.set_draft(tiny_model)
    "".join(c.text for c in session.send("Hi", temperature=0, max_tokens=12))
    assert session.last_stats.accepted > 0
    session.set_draft(None)
    "".join(c.text for c in session.send("Hi again", temperature=0, max_tokens=12))
    assert session.last_stats.drafted == 0


# -- the command line -------------------------------------------------------------------


def test_generate_draft_lookup_prints_the_same_reply_and_the_acceptance(tiny_mlx, capsys):
    from qwen_mlx.cli.main import main

    base = ["generate", "--model", str(tiny_mlx), "--prompt", "a b c a b", "--temp", "0"]
    assert main([*base, "--max-tokens", "24"]) == 0
    plain = capsys.readouterr()
    assert main([*base, "--max-tokens", "24", "--draft", "lookup", "--num-draft-tokens", "4"]) == 0
    spec = capsys.readouterr()
    assert spec.out == plain.out
    assert "draft: " in spec.err and "accepted (" in spec.err
    assert "draft: " not in plain.err


def test_generate_draft_by_reference_and_bad_draft_flags(tiny_mlx, tmp_path, capsys):
    from qwen_mlx.cli.main import main

    base = ["generate", "--model", str(tiny_mlx), "--prompt", "hello", "--temp", "0", "-n", "8"]
    assert main([*base, "--draft", str(tiny_mlx), "--session", str(tmp_path / "s.json")]) == 0
    assert "accepted" in capsys.readouterr().err
    assert main([*base, "--num-draft-tokens", "3"]) != 0
    assert "--draft" in capsys.readouterr().err
    foreign = build_tiny_checkpoint(tmp_path / "Qwen3-Foreign", tokenizer_vocab_size=400)
    assert main([*base, "--draft", str(foreign)]) != 0
    err = capsys.readouterr().err
    assert "tokenizer" in err and "Traceback" not in err


def test_bench_draft_reports_the_acceptance(tiny_mlx, capsys):
    from qwen_mlx.cli.main import main

    args = ["bench", "--model", str(tiny_mlx), "-p", "16", "-g", "12", "--repeat", "1"]
    assert main([*args, "--draft", "lookup", "--bandwidth", "100"]) == 0
    out = capsys.readouterr().out
    assert "draft      lookup:" in out and "accepted" in out


# -- the server -------------------------------------------------------------------------


def test_the_server_speculates_server_wide_unless_a_request_turns_it_off(serve, tiny_model):
    served = serve(draft=tiny_model, num_draft_tokens=3)
    engine = served.engine
    client = served.client()
    ask = {
        "model": tiny_model.name,
        "messages": [{"role": "user", "content": "Say something"}],
        "temperature": 0,
        "max_tokens": 16,
    }
    spec = client.chat.completions.create(**ask)
    assert engine.finished[-1].accepted > 0
    plain = client.chat.completions.create(**ask, extra_body={"speculative": False})
    assert engine.finished[-1].drafted == 0
    assert spec.choices[0].message.content == plain.choices[0].message.content
    assert spec.usage.completion_tokens == plain.usage.completion_tokens
    text = client.completions.create(
        model=tiny_model.name, prompt="a b c a b", temperature=0, max_tokens=12
    )
    assert engine.finished[-1].drafted > 0 and text.choices[0].text


# -- the terminal app -------------------------------------------------------------------


def test_the_chat_app_speculates_shows_the_acceptance_and_turns_it_off(tiny_hf, home):
    import asyncio

    from qwen_mlx.convert import convert

    from .tui_pilot import reply as wait_reply
    from .tui_pilot import running, type_and_send

    convert(str(tiny_hf))
    family = "qwen3-1m-tiny"
    from tui.widgets import StatusBar

    async def run():
        async with running(home, model=family, draft=family) as (app, pilot):
            app.run_command("/temp 0")
            app.run_command("/max_tokens 12")
            await type_and_send(pilot, "Hello")
            await wait_reply(pilot)
            assert app.session.last_stats.accepted > 0
            assert "accepted" in app.query_one(StatusBar).speed
            app.run_command("/draft off")
            await pilot.pause(0.2)
            await type_and_send(pilot, "Again")
            await wait_reply(pilot)
            assert app.session.last_stats.drafted == 0
            app.run_command("/draft lookup")
            await pilot.pause(0.2)
            assert app.draft_ref == "lookup" and app.session.drafter is not None

    asyncio.run(run())


def test_chat_takes_draft_flags(tiny_mlx, capsys):
    from tui.app import build_parser

    args = build_parser().parse_args(["--draft", "lookup", "--num-draft-tokens", "5"])
    assert (args.draft, args.num_draft_tokens) == ("lookup", 5)
