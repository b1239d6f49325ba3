"""The scripted model (tests/scripted.py) that protocol tests use: its replies come out
exactly through every path production runs (generate and stream_tokens, speculative
decoding, BatchDecoder with sequences coming and going, the server's scheduler, the
prompt-cache pool, ChatSession across turns and a save), and an unscripted prompt gets
the real tiny model's reply."""

from __future__ import annotations

import threading

import pytest

from qwen_mlx import ChatSession, generate
from qwen_mlx.runtime import make_cache, prefill, stream_tokens
from qwen_mlx.runtime.batch import BatchDecoder

from .served import MODEL, all_at_once, user, wait_until

GREEDY = {"temperature": 0, "max_tokens": 40}


def test_a_scripted_reply_comes_out_exactly_greedy_or_sampled(script):
    script.reply("The capital of France is Paris.")
    model = script.model
    assert generate(model, user("Capital of France?"), **GREEDY) == (
        "The capital of France is Paris."
    )
    sampled = generate(model, user("Again?"), temperature=1.0, top_p=0.9, seed=3, max_tokens=40)
    assert sampled == "The capital of France is Paris."
    prompt = model.prompt_tokens(user("Capital of France?"))
    chunks = list(stream_tokens(model, prompt, model.default_params.replace(**GREEDY)))
    assert "".join(c.text for c in chunks) == "The capital of France is Paris."
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].generation_tokens == len(model.encode("The capital of France is Paris."))
    assert script.prompts[-1] == prompt


def test_an_unscripted_prompt_gets_the_real_models_reply(script, tiny_model):
    script.reply("Only about France.", when="France")
    for args in (GREEDY, {"temperature": 1.0, "seed": 5, "max_tokens": 12}):
        assert generate(script.model, user("Hello"), **args) == generate(
            tiny_model, user("Hello"), **args
        )
    assert generate(script.model, user("And France?"), **GREEDY) == "Only about France."


def test_the_latest_entry_matching_the_last_message_writes_the_reply(script):
    script.reply("first")
    script.reply("about tea", when="tea")
    conversation = [*user("I like tea."), {"role": "assistant", "content": "about tea"}]
    assert generate(script.model, user("tea?"), **GREEDY) == "about tea"
    # `when` reads the last message only: the earlier one about tea no longer counts.
    assert generate(script.model, [*conversation, *user("And coffee?")], **GREEDY) == "first"
    script.reply("coffee then", when="coffee")
    assert generate(script.model, [*conversation, *user("And coffee?")], **GREEDY) == (
        "coffee then"
    )


def test_a_completion_continues_its_prompt_and_a_reply_can_go_on_or_repeat(script):
    script.complete("The answer is:", "42, of course.")
    assert generate(script.model, "The answer is:", **GREEDY) == "42, of course."
    script.reply("tick ", repeat=True)
    n = len(script.model.encode("tick "))
    assert generate(script.model, user("count"), temperature=0, max_tokens=3 * n) == "tick " * 3
    script.reply("Hello", end=False)  # then the real model goes on
    text = generate(script.model, user("hi"), temperature=0, max_tokens=12)
    assert text.startswith("Hello") and len(script.model.encode(text)) == 12


def test_speculative_decoding_writes_the_script_and_keeps_drafts(script):
    reply = "one two three, one two three, one two three, one two three."
    script.reply(reply)
    prompt = script.model.prompt_tokens(user("Repeat after me: one two three."))
    params = script.model.default_params.replace(temperature=0, max_tokens=60)
    chunks = list(stream_tokens(script.model, prompt, params, draft="lookup"))
    assert "".join(c.text for c in chunks) == reply
    assert chunks[-1].accepted > 0  # verified several tokens per pass, and rolled back misses


def test_four_sequences_of_different_scripts_decode_together(script):
    model = script.model
    replies = {
        "rivers": "The Nile, the Amazon and the Yangtze.",
        "mountains": "Everest and K2.",
        "seas": "The Baltic Sea.",
        "deserts": "The Sahara, which is large.",
    }
    for topic, text in replies.items():
        script.reply(text, when=topic)
    system = {"role": "system", "content": "You answer in one line. " * 8}
    prompts = {t: model.prompt_tokens([system, *user(f"Name some {t}.")]) for t in replies}
    prompts["deserts"] = model.prompt_tokens(  # longer than a chunk: read before it joins
        [system, *user("Name some deserts. " + "Please answer. " * 40)]
    )
    params = model.default_params.replace(temperature=0, max_tokens=40)
    decoder = BatchDecoder(model, max_batch=4, prefill_step_size=32)
    # A cache that holds the system turn, as the prompt-cache pool hands one out: this
    # sequence is merged into the batch with left padding beside the others.
    shared = len(model.prompt_tokens([system])) - 1
    cache = make_cache(model)
    prefill(model, prompts["seas"][:shared], cache)
    texts: dict[int, str] = {}
    topics: dict[int, str] = {}
    most = 0
    for topic in ("rivers", "mountains"):
        topics[decoder.add(prompts[topic], params)] = topic
    for step in range(400):
        if step == 3:  # two more join while the first two decode
            uid = decoder.add(prompts["seas"], params, cache=cache, cached=shared)
            topics[uid] = "seas"
            topics[decoder.add(prompts["deserts"], params)] = "deserts"
        most = max(most, len(decoder))
        for event in decoder.step():
            texts[event.uid] = texts.get(event.uid, "") + event.text
            if event.finish_reason is not None:
                assert event.finish_reason == "stop"
        if step > 3 and not len(decoder):
            break
    decoder.close()
    assert {topics[uid]: text for uid, text in texts.items()} == replies
    assert most == 4 and max(script.batches) >= 3


def test_the_server_decodes_scripted_requests_in_its_batch(script, serve):
    served = serve(max_context=2048, max_batch=4)
    assert served.engine.batched
    gate = threading.Event()
    script.reply("Held until the others arrive, then done.", when="first", hold=gate)
    script.reply("Second reply.", when="second")
    script.reply("Third reply.", when="third")

    def ask(i: int) -> str:
        name = ("first", "second", "third")[i]
        if i:  # the others ask once the first one is being written
            wait_until(lambda: script.prompts, what="the first request never started")
        reply = served.client().chat.completions.create(
            model=MODEL, messages=user(f"The {name} question."), temperature=0, max_tokens=40
        )
        return reply.choices[0].message.content

    def release() -> None:  # the first reply ends once all three are in (batch or queue)
        try:
            wait_until(lambda: served.engine.queued == 3, what="the others never came")
        finally:
            gate.set()

    releaser = threading.Thread(target=release)
    releaser.start()
    answers = all_at_once(ask, 3)
    releaser.join(timeout=60)
    assert answers == ["Held until the others arrive, then done.", "Second reply.", "Third reply."]
    assert max(script.batches) >= 2  # the model ran sequences side by side
    assert max(f.batch_size for f in served.engine.finished) >= 2


def test_the_prompt_cache_pool_hands_a_later_request_its_prefix(script, serve):
    served = serve(max_context=2048, cache_bytes=16 << 20)
    script.reply("Three rivers: Nile, Amazon, Yangtze.", when="rivers")
    script.reply("Three mountains: Everest, K2, Kangchenjunga.", when="mountains")
    client = served.client()
    system = {"role": "system", "content": "You are terse."}
    first = [system, *user("Name three rivers.")]
    r1 = client.chat.completions.create(model=MODEL, messages=first, temperature=0)
    assert r1.choices[0].message.content == "Three rivers: Nile, Amazon, Yangtze."
    second = [
        *first,
        {"role": "assistant", "content": r1.choices[0].message.content},
        *user("And three mountains?"),
    ]
    script.reads.clear()
    r2 = client.chat.completions.create(model=MODEL, messages=second, temperature=0)
    assert r2.choices[0].message.content == "Three mountains: Everest, K2, Kangchenjunga."
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens
    # The model read only what the pool's cache did not hold.
    prompt = served.jobs[-1].tokens
    assert len(prompt) == r2.usage.prompt_tokens
    assert script.read_of(prompt) == len(prompt) - cached
    # A branch sharing only the system turn gets a copy of that prefix, and its own reply.
    script.reply("Two seas.", when="seas")
    r3 = client.chat.completions.create(
        model=MODEL, messages=[system, *user("Name two seas.")], temperature=0
    )
    assert r3.choices[0].message.content == "Two seas."
    assert r3.usage.prompt_tokens_details.cached_tokens > 0


def test_a_chat_session_follows_its_script_across_turns_and_a_save(script, tmp_path):
    script.reply("Hello, Ada.", when="My name is Ada")
    script.reply("You like bicycles.", when="What do I like")
    script.reply("Your name is Ada.", when="What is my name")
    session = ChatSession(script.model, system="Remember things.")
    said = "".join(c.text for c in session.send("My name is Ada. I like bicycles.", **GREEDY))
    assert said == "Hello, Ada."
    assert "".join(c.text for c in session.send("What do I like?", **GREEDY)) == (
        "You like bicycles."
    )
    assert session.last_stats.reused_tokens > 0
    path = session.save(tmp_path / "chat.json")
    resumed = ChatSession.load(path, script.model)
    assert resumed.notices == []
    held = len(resumed.cache_tokens)
    assert "".join(c.text for c in resumed.send("What is my name?", **GREEDY)) == (
        "Your name is Ada."
    )
    assert resumed.last_stats.reused_tokens == held


def test_a_scripted_error_is_raised_from_inside_the_model(script):
    script.fail(RuntimeError("the model broke"), when="break")
    with pytest.raises(RuntimeError, match="the model broke"):
        generate(script.model, user("Please break."), **GREEDY)
    assert generate(script.model, user("fine"), temperature=0, max_tokens=2)


def test_quantized_caches_are_refused_with_the_reason(script):
    with pytest.raises(RuntimeError, match="kv_bits"):
        list(ChatSession(script.model, kv_bits=8).send("hi", **GREEDY))
