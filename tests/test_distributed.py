"""One model across two processes over mx.distributed's ring backend (two local ranks).

Every rank running the same program (`distributed_worker.py`): collectives, tensor
parallel against one process (float32: same greedy tokens, logits within 1e-4),
pipeline parallel (bit-exact) and the memory a rank holds while loading.

Rank 0 driving a follower (this test process is rank 0): generation, batches and chat
sessions give what one process gives; the server answers the OpenAI, Anthropic and Ollama
clients, streams and batches; a killed follower ends a command or a request with its name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from qwen_mlx import ChatSession
from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint
from qwen_mlx.errors import RankFailedError
from qwen_mlx.runtime import SamplingParams, batch_generate, generate, load
from qwen_mlx.runtime.launch import HostFile, Ranks, free_ports

from .helpers import ROOT, run_script, serving_url
from .served import MODEL, Served, all_at_once, user

KEY = "group-key"
WORKER = Path(__file__).with_name("distributed_worker.py")


def _env(home: Path) -> dict[str, str]:
    """A child's environment: this checkout first on the path, a private store."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"PYTHONPATH": path, "QWEN_MLX_HOME": str(home)}


# -- every rank runs the same program ----------------------------------------------------------


@pytest.fixture(scope="module")
def f32(tmp_path_factory) -> Path:
    """A float32 tiny Qwen3: split, it gives one process's tokens (bf16 differs at ties)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("f32") / "Qwen3-1M-F32", dtype="float32")


@pytest.fixture(scope="module")
def spmd(tmp_path_factory, f32) -> dict[int, dict]:
    """What each rank of `distributed_worker.py` saw, run once over a ring of two."""
    root = tmp_path_factory.mktemp("spmd")
    scaled = build_tiny_checkpoint(
        root / "scaled",
        TinyConfig(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            intermediate_size=1024,
        ),
        dtype="float32",
        shards=2,
    )
    ring = root / "ring.json"
    ring.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(2)]))
    env = _env(root / "home")
    ranks = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(root), str(f32), str(scaled)],
            env=env | {"MLX_RANK": str(rank), "MLX_HOSTFILE": str(ring)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240) for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(ranks, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return {r: json.loads((root / f"rank{r}.json").read_text()) for r in range(2)}


def test_collectives_round_trip_between_two_ranks(spmd):
    for rank, seen in spmd.items():
        assert seen["size"] == 2
        assert seen["all_sum"] == [3.0]
        assert seen["all_gather"] == [0, 10]
        assert seen["received"] == [100 * (1 - rank) + i for i in range(4)]
        assert seen["broadcast"] == [7, 8, 9]  # rank 0's, on every rank
        assert seen["exchange"] == [{"rank": 0, "word": "r0"}, {"rank": 1, "word": "r1"}]
        assert seen["flag"] == [True, False]  # rank 0 decides


def test_float32_tensor_parallel_gives_one_process_greedy_tokens_and_logits(spmd):
    for seen in spmd.values():
        assert seen["tensor"]["max_logit_diff"] <= 1e-4
        assert seen["tensor"]["same_greedy"]
        assert seen["tensor"]["same_sampled"]  # every rank takes rank 0's token
        assert seen["tensor"]["same_quantized_kv"]


def test_pipeline_parallel_is_bit_exact(spmd):
    for seen in spmd.values():
        assert seen["pipeline"]["bit_exact"]
        assert seen["pipeline"]["max_logit_diff"] == 0.0
        assert seen["pipeline"]["same_greedy"] and seen["pipeline"]["same_sampled"]
        assert seen["pipeline"]["same_quantized_kv"]


def test_a_split_kv_cache_is_put_together_whole_and_split_again(spmd):
    assert spmd[0]["pipeline"]["gathered_diff"] == 0.0  # each rank's layers, as they are
    assert spmd[0]["tensor"]["gathered_diff"] <= 1e-4  # each rank's heads
    for seen in spmd.values():
        assert seen["pipeline"]["scattered_diff"] == 0.0
        assert seen["tensor"]["scattered_diff"] == 0.0


@pytest.mark.parametrize("split", ["tensor", "pipeline"])
def test_no_rank_holds_more_than_its_share_and_one_layer_while_loading(spmd, split):
    for seen in spmd.values():
        load_ = seen[f"load_{split}"]
        assert load_["share"] < load_["whole"]  # a share, not the whole model
        assert 0 < load_["peak"] <= load_["share"] + load_["layer"]


# -- rank 0 drives (this process), a follower replays ------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(f32):
    return load(f32)


@pytest.fixture(scope="module")
def group_model(f32, tmp_path_factory) -> Iterator:
    """The float32 tiny model split across this process and one follower."""
    home = tmp_path_factory.mktemp("group_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QWEN_MLX_HOME", str(home))
        mp.setenv("PYTHONPATH", _env(home)["PYTHONPATH"])
        ranks = Ranks(HostFile.local(2))
        ranks.start()
        try:
            yield load(f32, group=ranks)
        finally:
            ranks.close()


def test_a_learned_conversion_in_a_process_that_joined_a_group_runs_alone(
    group_model, tiny_hf, home, tmp_path
):
    # mlx-lm's AWQ averages its losses over mx.distributed.init()'s group: in this process
    # that is the group above, whose follower is not converting. Without running alone the
    # method waits on the follower for ever (or fails once it is gone): a thread and a
    # deadline turn a hang into a failure.
    from importlib import resources

    from qwen_mlx.cli import main

    short = tmp_path / "short.txt"
    text = resources.files("qwen_mlx.data").joinpath("quant_calibration.txt").read_text()
    short.write_text(text[:2000])
    codes: list[int] = []
    argv = ["convert", "--hf-path", str(tiny_hf), "--method", "awq", "--calibration", str(short)]
    worker = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert codes == [0], "the conversion waited on the group's other rank"
    assert group_model.shard.size == 2  # the group is still this process's


GREEDY = SamplingParams(temperature=0, max_tokens=16)
SEEDED = SamplingParams(temperature=0.8, top_k=30, seed=11, max_tokens=16)


def test_two_ranks_reply_as_one_process_does(group_model, tiny_model):
    assert group_model.shard.size == 2 and group_model.shard.mode == "tensor"
    for params in (GREEDY, SEEDED, GREEDY.replace(stop=("a",))):
        assert generate(group_model, user("Hello"), params) == generate(
            tiny_model, user("Hello"), params
        )
    long = user("many words " * 300)  # its ids take more than one message to send
    assert generate(group_model, long, GREEDY) == generate(tiny_model, long, GREEDY)


def test_a_batch_on_two_ranks_matches_one_process(group_model, tiny_model):
    prompts = [user(f"question {i}") for i in range(4)]
    params = [GREEDY, SEEDED, GREEDY.replace(max_tokens=5), SEEDED.replace(seed=3)]
    split = batch_generate(group_model, prompts, params, progress=False)
    alone = batch_generate(tiny_model, prompts, params, progress=False)
    assert [r.text for r in split] == [r.text for r in alone]
    assert [r.finish_reason for r in split] == [r.finish_reason for r in alone]


def test_a_chat_saved_on_two_ranks_resumes_on_one_without_rereading(
    group_model, tiny_model, tmp_path
):
    def say(session: ChatSession, text: str) -> str:
        return "".join(c.text for c in session.send(text))

    on_group = ChatSession(group_model, params=GREEDY)
    alone = ChatSession(tiny_model, params=GREEDY)
    for text in ("hi", "tell me more"):
        assert say(on_group, text) == say(alone, text)
    on_group.save(tmp_path / "chat.json")
    alone.save(tmp_path / "alone.json")

    resumed = ChatSession.load(tmp_path / "chat.json", tiny_model)  # the file is a whole cache
    assert say(resumed, "again") == say(alone, "again")
    assert resumed.last_stats.reused_tokens > 0
    assert resumed.last_stats.reused_tokens == alone.last_stats.reused_tokens

    back = ChatSession.load(tmp_path / "alone.json", group_model)  # and split again
    reference = ChatSession.load(tmp_path / "alone.json", tiny_model)
    assert say(back, "once more") == say(reference, "once more")
    assert back.last_stats.reused_tokens == reference.last_stats.reused_tokens > 0


@pytest.fixture(scope="module")
def served(module_server, group_model) -> Served:
    return module_server(
        group_model, key=KEY, max_context=2048, max_batch=4, max_queue=8, prefill_step_size=16
    )


def test_health_reports_the_ranks_and_each_ones_state(served):
    health = served.get("/health", timeout=10).json()
    assert health["status"] == "ok"
    assert health["ranks"] == 2 and health["split"] == "tensor"
    states = health["rank_states"]
    assert [s["rank"] for s in states] == [0, 1]
    assert all(s["state"] == "ready" and s["weights_bytes"] > 0 for s in states)


def test_the_server_on_two_ranks_answers_openai_anthropic_and_ollama(served, tiny_model):
    base, engine = served.base, served.engine
    expected = generate(tiny_model, user("Hi there"), GREEDY)
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)
    reply = client.chat.completions.create(
        model=engine.model.name, messages=user("Hi there"), max_tokens=16, temperature=0
    )
    assert reply.choices[0].message.content == expected
    stream = client.chat.completions.create(
        model=engine.model.name,
        messages=user("Hi there"),
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == expected

    claude = anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0, timeout=60)
    greedy = {"extra_body": {"temperature": 0}}
    message = claude.messages.create(
        model=engine.model.name, max_tokens=16, messages=user("Hi there"), **greedy
    )
    assert message.content[0].text == expected
    with claude.messages.stream(
        model=engine.model.name, max_tokens=16, messages=user("Hi there"), **greedy
    ) as events:
        assert "".join(events.text_stream) == expected

    llama = ollama.Client(host=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    answer = llama.chat(
        model=engine.model.name,
        messages=user("Hi there"),
        options={"temperature": 0, "num_predict": 16},
    )
    assert answer.message.content == expected


def test_four_clients_decode_together_on_two_ranks(served, tiny_model):
    base, engine = served.base, served.engine
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)

    def ask(i: int) -> str:
        reply = client.chat.completions.create(
            model=engine.model.name, messages=user(f"client {i}"), max_tokens=24, temperature=0
        )
        return reply.choices[0].message.content

    before = len(engine.finished)
    replies = all_at_once(ask, 4)
    assert replies == [
        generate(tiny_model, user(f"client {i}"), GREEDY.replace(max_tokens=24)) for i in range(4)
    ]
    assert max(f.batch_size for f in list(engine.finished)[before:]) > 1


def test_a_batch_with_quantized_kv_on_two_ranks_matches_one_process(group_model, tiny_model):
    # Each rank's batch holds its share of the heads' KV quantized; a long prompt is read
    # in chunks; sampled rows draw what they draw in one process (float32: same logits).
    prompts = [user(f"question {i}") for i in range(3)] + ["The history of the sea " * 40]
    params = [SEEDED, SEEDED.replace(seed=3), GREEDY.replace(max_tokens=5), SEEDED.replace(seed=9)]
    for bits in (8, 4):
        split = batch_generate(
            group_model, prompts, params, progress=False, kv_bits=bits, prefill_step_size=64
        )
        alone = batch_generate(
            tiny_model, prompts, params, progress=False, kv_bits=bits, prefill_step_size=64
        )
        assert [r.text for r in split] == [r.text for r in alone], bits
    plain = batch_generate(tiny_model, prompts, params, progress=False, prefill_step_size=64)
    assert [r.text for r in plain] != [r.text for r in alone]  # the KV was quantized


def test_the_server_on_two_ranks_batches_with_quantized_kv(serve, group_model, tiny_model):
    served = serve(group_model, key=KEY, max_context=2048, max_batch=4, kv_bits=8)
    engine = served.engine
    assert engine.batched and served.get("/health", timeout=10).json()["kv_bits"] == 8
    client = openai.OpenAI(base_url=served.base + "/v1", api_key=KEY, max_retries=0, timeout=60)
    sampled = {"max_tokens": 16, "temperature": 0.8}

    def ask(i: int) -> tuple[str, int]:
        """A first turn, then the next one (the pool's quantized split cache serves it)."""
        first = user(f"client {i} " * (i + 1))
        one = client.chat.completions.create(
            model=engine.model.name, messages=first, seed=i, **sampled
        )
        text = one.choices[0].message.content
        then = [*first, {"role": "assistant", "content": text}, *user("more")]
        two = client.chat.completions.create(
            model=engine.model.name, messages=then, seed=i, **sampled
        )
        return text, two.usage.prompt_tokens_details.cached_tokens

    before = len(engine.finished)
    replies = all_at_once(ask, 4)
    assert max(f.batch_size for f in list(engine.finished)[before:]) > 1
    expected = [
        batch_generate(
            tiny_model,
            [user(f"client {i} " * (i + 1))],
            tiny_model.default_params.replace(temperature=0.8, seed=i, max_tokens=16),
            kv_bits=8,
            progress=False,
        )[0].text
        for i in range(4)
    ]
    assert [text for text, _ in replies] == expected
    assert all(cached > 0 for _, cached in replies)


def test_a_prompts_file_on_a_pipeline_split_batches_with_quantized_kv(f32, tiny_model, tmp_path):
    # Its own process: this one has joined the module's group, and MLX joins one.
    asks = ["question 0", "The history of the sea " * 40]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(a) + "\n" for a in asks))
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--model", str(f32), "--ranks", "2", "--pipeline", "--kv-bits", "8"]
    argv += ["--prompts-file", str(prompts), "--output", str(out)]
    argv += ["--temperature", "0.8", "--seed", "9", "--max-tokens", "16"]
    done = subprocess.run(
        [sys.executable, "-m", "qwen_mlx", *argv],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    alone = batch_generate(
        tiny_model,
        [user(a) for a in asks],
        tiny_model.default_params.replace(temperature=0.8, seed=9, max_tokens=16),
        kv_bits=8,
        progress=False,
    )
    assert [r["text"] for r in rows] == [r.text for r in alone]


# -- failures: a follower killed under a command or a server -----------------------------------


def _child_pids(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie nobody has reaped yet does not)."""
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return bool(out.stdout.strip()) and not out.stdout.strip().startswith("Z")


def _generating(tiny_mlx, home: Path, **env: str) -> subprocess.Popen:
    """`qwen-mlx generate --ranks 2` with no end to its reply, once its text has begun."""
    argv = ["generate", "--model", str(tiny_mlx), "--ranks", "2", "--prompt", "Hello"]
    command = subprocess.Popen(
        [sys.executable, "-m", "qwen_mlx", *argv, "--temperature", "0", "--max-tokens", "-1"],
        env=_env(home) | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if not command.stdout.read(8):
        command.kill()
        raise AssertionError("no text came: " + command.communicate()[1].decode()[-2000:])
    return command


# How long a command may take to end after its follower is lost. Its longest path is a
# step left blocked in MLX (a collective queued after the one that failed never ends):
# launch.STUCK_GRACE (10 s) after the loss, then the followers are ended (2.5 s). It took
# 10.5 s on 2 cores at a load average of 10; 60 s leaves room for a slower machine.
ENDS_WITHIN = 60


@pytest.mark.interop  # a failure drill: processes killed or frozen and waited out
def test_a_killed_follower_fails_the_command_naming_it(tiny_mlx, tmp_path):
    command = _generating(tiny_mlx, tmp_path)
    try:
        (follower,) = _child_pids(command.pid)
        os.kill(follower, signal.SIGKILL)
        _, err = command.communicate(timeout=ENDS_WITHIN)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode != 0
    assert "error: Rank 1 of 2 (127.0.0.1) stopped (killed by SIGKILL)" in err.decode()


@pytest.mark.interop  # a failure drill: processes killed or frozen and waited out
def test_a_follower_that_stops_answering_fails_the_command_naming_it(tiny_mlx, tmp_path):
    # A frozen follower keeps its sockets open: rank 0's collective waits on it for good
    # and no error ever comes from MLX. Silent 3 s while rank 0 waits, it is given up,
    # and the command ends (its followers ended: within ENDS_WITHIN, as above).
    command = _generating(tiny_mlx, tmp_path, QWEN_MLX_RANK_TIMEOUT="3")
    (follower,) = _child_pids(command.pid)
    try:
        os.kill(follower, signal.SIGSTOP)
        _, err = command.communicate(timeout=ENDS_WITHIN)
    finally:
        if command.poll() is None:
            command.kill()
        if _running(follower):
            os.kill(follower, signal.SIGKILL)
    assert command.returncode != 0
    assert "error: Rank 1 of 2 (127.0.0.1) stopped answering" in err.decode()
    assert not _running(follower)  # rank 0 ended it on the way out


@pytest.mark.interop  # a failure drill: processes killed or frozen and waited out
def test_a_follower_leaves_when_rank_0_dies_during_a_step(tiny_mlx, tmp_path):
    command = _generating(tiny_mlx, tmp_path)
    (follower,) = _child_pids(command.pid)
    command.kill()
    command.communicate()
    deadline = time.monotonic() + ENDS_WITHIN
    while _running(follower) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = not _running(follower)
    if not left:
        os.kill(follower, signal.SIGKILL)
    assert left, "the follower outlived rank 0"


def test_requests_a_blocked_model_thread_cannot_end_hear_the_ranks_failure(serve, tiny_model):
    # What a server does when a lost rank leaves its model thread blocked in MLX (see
    # launch.Ranks.on_stuck): the engine ends the requests itself, naming the rank. The
    # scripted model writes a few words, then blocks inside its step, in the batched path.
    from .scripted import Script

    release = threading.Event()
    script = Script(tiny_model)
    script.reply("wait for it, the model is thinking", hold=release)
    served = serve(script.model, key=KEY, max_context=2048, cache_bytes=0)
    engine = served.engine
    assert engine.batched
    try:
        stream = served.client().chat.completions.create(
            model=engine.model.name, messages=user("go on"), stream=True
        )
        chunks = iter(stream)
        while not next(chunks).choices[0].delta.content:  # the role comes first
            pass  # then the text: the model thread is in the step
        lost = RankFailedError("Rank 1 of 2 (127.0.0.1) stopped (killed by SIGKILL).")
        engine.abandon(lost)
        with pytest.raises(openai.APIError, match=r"Rank 1 of 2 \(127\.0\.0\.1\) stopped"):
            for _ in chunks:
                pass
        assert engine.queued == 0  # a server can restart the group now
    finally:
        release.set()


@pytest.mark.interop  # a failure drill: processes killed or frozen and waited out
def test_a_killed_follower_ends_requests_with_its_name_and_the_group_restarts(tiny_mlx, tmp_path):
    argv = ["serve", "--model", str(tiny_mlx), "--ranks", "2", "--port", "0"]
    server = subprocess.Popen(
        [sys.executable, "-m", "qwen_mlx", *argv, "--log-level", "warning"],
        env=_env(tmp_path) | {"QWEN_MLX_RESTART_DELAY": "3", "QWEN_MLX_API_KEY": KEY},
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stderr), daemon=True)
    reader.start()
    try:
        base = serving_url(lines, server)
        health = httpx.get(base + "/health", timeout=10).json()
        follower = health["rank_states"][1]["pid"]
        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)
        stream = client.chat.completions.create(
            model=MODEL, messages=user("go on"), max_tokens=100_000, temperature=0, stream=True
        )
        next(iter(stream))  # decoding on both ranks
        os.kill(follower, signal.SIGKILL)
        with pytest.raises(openai.APIError, match=r"Rank 1 of 2 \(127\.0\.0\.1\) stopped"):
            for _ in stream:
                pass

        with pytest.raises(openai.APIStatusError, match="Rank 1 of 2") as refused:
            client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=2)
        assert refused.value.status_code == 503
        claude = anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0, timeout=60)
        with pytest.raises(anthropic.APIStatusError, match="Rank 1 of 2"):
            claude.messages.create(model=MODEL, max_tokens=2, messages=user("hi"))
        llama = ollama.Client(host=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        with pytest.raises(ollama.ResponseError, match="Rank 1 of 2"):
            llama.chat(model=MODEL, messages=user("hi"))
        health = httpx.get(base + "/health", timeout=10).json()
        assert health["status"] == "degraded" and "Rank 1 of 2" in health["error"]
        assert health["rank_states"][1]["state"] == "failed"

        deadline = time.monotonic() + 90  # the group starts again, on the same port
        while time.monotonic() < deadline:
            try:
                health = httpx.get(base + "/health", timeout=5).json()
                if health.get("group_restarts") == 1 and health["status"] == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert health["status"] == "ok" and health["group_restarts"] == 1
        reply = client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=3)
        assert reply.choices[0].finish_reason == "length"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.mark.interop
def test_the_distributed_benchmark_runs_in_smoke_mode():
    out = run_script(
        "bench_distributed.py",
        "--smoke",
        "--ranks",
        "1,2",
        timeout=600,
        env=_env(Path(os.environ["QWEN_MLX_HOME"])),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^\s+1\s+[\d.]+\s+1\.00x", out.stdout, re.M)
    assert re.search(r"^\s+2\s+[\d.]+\s+[\d.]+x\s.*\d+ us\s+[\d.]+$", out.stdout, re.M)
    assert "planned for Qwen3-4B-Instruct-2507" in out.stdout
    assert re.search(r"^\s+2\s+16 GB\s+1\.24 GB\s+124,630\s", out.stdout, re.M)
