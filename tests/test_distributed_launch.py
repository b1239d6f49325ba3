"""Starting a group without starting one: host files in mlx's format, the command a
remote rank runs, the planner per rank, and the flags that start groups (refused before
anything starts when they do not fit together)."""

from __future__ import annotations

import json

import pytest

from qwen_mlx.cli.main import main
from qwen_mlx.runtime.launch import Host, HostFile, Ranks, free_ports, remote_script
from qwen_mlx.runtime.memory import (
    Budget,
    MemoryPlanner,
    ModelShape,
    estimate_weights_parts,
    kv_bytes_per_token,
    mac_budget,
    rank_weights_bytes,
)
from qwen_mlx.runtime.split import check_split, pipeline_split, rank_layers, rank_shape

from .helpers import SHARED_MODEL, needs_shared


def write(tmp_path, data) -> str:
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_a_host_file_as_mlx_distributed_config_writes_it(tmp_path):
    hosts = HostFile.read(
        write(
            tmp_path,
            {
                "backend": "ring",
                "envs": ["MLX_METAL_FAST_SYNCH=1"],
                "hosts": [
                    {"ssh": "mac1.local", "ips": ["10.0.0.1"]},
                    {"ssh": "mac2.local", "ips": ["10.0.0.2", "10.0.1.2"]},
                ],
            },
        )
    )
    assert len(hosts) == 2 and hosts.backend == "ring"
    assert hosts.hosts[1] == Host("mac2.local", ("10.0.0.2", "10.0.1.2"))
    assert hosts.envs == ("MLX_METAL_FAST_SYNCH=1",)


def test_a_bare_list_of_hosts_is_a_ring_and_localhost_needs_no_address(tmp_path):
    hosts = HostFile.read(write(tmp_path, [{"ssh": "localhost"}, {"ssh": "127.0.0.1"}]))
    assert hosts.backend == "ring"
    assert [h.ips for h in hosts.hosts] == [("127.0.0.1",), ("127.0.0.1",)]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"hosts": [{"ssh": "mac1"}, {"ssh": "mac2"}]}, 'has no "ips"'),
        ({"backend": "mpi", "hosts": [{"ssh": "a", "ips": ["1.1.1.1"]}]}, "'mpi' backend"),
        ({"hosts": []}, "lists no hosts"),
        ({"hosts": [{"ips": ["1.1.1.1"]}]}, 'no "ssh" name'),
        (
            {"backend": "jaccl", "hosts": [{"ssh": "a", "ips": ["1.1.1.1"], "rdma": ["x"]}]},
            "null for itself",
        ),
    ],
)
def test_a_host_file_that_cannot_work_is_refused_saying_why(tmp_path, data, says):
    with pytest.raises(ValueError, match=says):
        HostFile.read(write(tmp_path, data))


def test_a_missing_host_file_says_how_to_write_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mlx\.distributed_config"):
        HostFile.read(tmp_path / "nope.json")


def test_the_first_host_must_be_this_machine():
    far = HostFile((Host("mac9.example", ("192.0.2.9",)), Host("127.0.0.1", ("127.0.0.1",))))
    with pytest.raises(ValueError, match="must be this machine"):
        Ranks(far)
    with pytest.raises(ValueError, match="at least 2 ranks"):
        Ranks(HostFile.local(1))


def test_free_ports_are_distinct():
    ports = free_ports(4)
    assert len(set(ports)) == 4 and all(p > 0 for p in ports)


def test_a_remote_rank_writes_the_ring_file_where_it_runs_and_execs_the_follower():
    env = {"MLX_HOSTFILE": '[["10.0.0.1:5000"],["10.0.0.2:5001"]]', "QWEN_MLX_BACKEND": "ring"}
    script = remote_script(1, env, ["/opt/venv/bin/python", "-m", "qwen_mlx.runtime.follower"])
    assert 'f=$(mktemp); printf %s \'[["10.0.0.1:5000"],["10.0.0.2:5001"]]\' > "$f"' in script
    assert 'export MLX_HOSTFILE="$f"' in script
    assert "export MLX_RANK=1" in script and "export QWEN_MLX_BACKEND=ring" in script
    assert script.endswith("exec /opt/venv/bin/python -m qwen_mlx.runtime.follower")


# Qwen3-4B-Instruct-2507's own config.json (the planner needs its shape, not its weights).
QWEN3_4B = (
    json.loads((SHARED_MODEL / "config.json").read_text())
    if (SHARED_MODEL / "config.json").is_file()
    else {}
)


@needs_shared
def test_tensor_parallel_halves_each_ranks_kv_cache_and_layers():
    shape = ModelShape.from_config(QWEN3_4B)
    two = rank_shape(shape, 2, "tensor")
    assert (two.kv_heads, two.heads, two.layers) == (4, 16, 36)
    assert kv_bytes_per_token(two) == kv_bytes_per_token(shape) // 2 == 72 * 1024
    outside, layer = estimate_weights_parts(QWEN3_4B, bits=4)
    whole = rank_weights_bytes(outside, [layer] * 36, 1, "tensor")
    assert rank_weights_bytes(outside, [layer] * 36, 2, "tensor") == outside + 18 * layer
    assert whole == outside + 36 * layer


@needs_shared
def test_pipeline_ranks_hold_blocks_of_layers_and_rank_0_the_last():
    assert pipeline_split(36, 4) == [9, 9, 9, 9] and pipeline_split(10, 4) == [3, 3, 2, 2]
    assert rank_layers(10, 0, 4, "pipeline") == range(7, 10)
    assert rank_layers(10, 3, 4, "pipeline") == range(0, 2)
    assert rank_layers(10, 1, 4, "tensor") == range(10)
    assert rank_shape(ModelShape.from_config(QWEN3_4B), 3, "pipeline").layers == 12
    assert rank_weights_bytes(5, [1, 2, 3, 4, 5], 2, "pipeline") == 5 + (4 + 5 + 3)


@needs_shared
def test_a_split_the_heads_do_not_allow_is_refused_naming_one_that_works():
    with pytest.raises(ValueError, match="--pipeline"):
        check_split(QWEN3_4B, 3, "tensor")
    check_split(QWEN3_4B, 3, "pipeline")
    with pytest.raises(ValueError, match="dense Qwen3"):
        check_split(QWEN3_4B | {"model_type": "llama"}, 2, "tensor")


@needs_shared
def test_two_16gb_macs_hold_a_context_one_cannot():
    outside, layer = estimate_weights_parts(QWEN3_4B, bits=4)
    shape = ModelShape.from_config(QWEN3_4B)

    def planner(ranks: int) -> MemoryPlanner:
        weights = rank_weights_bytes(outside, [layer] * 36, ranks, "tensor")
        return MemoryPlanner(rank_shape(shape, ranks, "tensor"), weights, mac_budget(16))

    one, two = planner(1), planner(2)
    assert two.max_context(4) == 262_144 > one.max_context(4)
    assert two.max_context() > 2 * one.max_context()  # the weights' share shrinks too
    assert two.max_sequences(4096) > 2 * one.max_sequences(4096)


def test_a_macs_budget_is_its_metal_working_set():
    assert mac_budget(16).bytes == int(16 * (1 << 30) * 2 / 3)
    assert mac_budget(64).bytes == 48 * (1 << 30)


@needs_shared
def test_a_split_models_planner_plans_its_tightest_rank():
    from qwen_mlx.runtime.distributed import RankInfo, Shard

    class Group:
        def rank(self) -> int:
            return 0

        def size(self) -> int:
            return 2

    def info(rank: int, budget: int, weights: int) -> RankInfo:
        return RankInfo(rank, f"mac{rank}", weights, weights, budget, budget, 1, "f", 36)

    shard = Shard(Group(), "tensor", (info(0, 30 << 30, 2 << 30), info(1, 10 << 30, 2 << 30)))
    planner = MemoryPlanner.for_shard(QWEN3_4B, shard)
    assert planner.budget.bytes == 10 << 30 and planner.budget.source == "rank 1 (mac1)"
    assert planner.shape.kv_heads == 4
    assert MemoryPlanner.for_shard(QWEN3_4B, shard, Budget(1, 1, "x")).budget.bytes == 1


@needs_shared
def test_plan_per_rank_for_macs_of_a_given_memory(capsys):
    argv = ["plan", "--model", str(SHARED_MODEL), "--q-bits", "4", "-c", "262144", "--json"]
    assert main([*argv, "--memory", "16"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert main([*argv, "--memory", "16", "--ranks", "2"]) == 0
    split = json.loads(capsys.readouterr().out)
    assert split["ranks"] == 2 and split["split"] == "tensor" and alone["ranks"] == 1
    assert split["weights_bytes"] < alone["weights_bytes"]
    rows = {r["kv"]: r for r in split["rows"]}
    assert rows["bf16"]["kv_bytes_per_token"] == 72 * 1024
    assert rows["4-bit"]["fits"] and not {r["kv"]: r for r in alone["rows"]}["4-bit"]["fits"]
    assert main([*argv, "--hosts", "4", "--pipeline"]) == 0
    four = json.loads(capsys.readouterr().out)
    assert four["split"] == "pipeline" and four["rows"][0]["kv_bytes_per_token"] == 36 * 1024


def test_plan_refuses_a_split_the_model_cannot_take(tiny_mlx, capsys):
    assert main(["plan", "--model", str(tiny_mlx), "--ranks", "3"]) == 1
    assert "--pipeline" in capsys.readouterr().err
    assert main(["plan", "--model", str(tiny_mlx), "--ranks", "2", "--hosts", "2"]) == 1
    assert main(["plan", "--model", str(tiny_mlx), "--pipeline"]) == 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["generate", "--prompt", "x", "--pipeline"], "--pipeline splits the model"),
        (["generate", "--prompt", "x", "--ranks", "2", "--hosts", "h.json"], "do not combine"),
        (["generate", "--prompt", "x", "--ranks", "0"], "at least 1"),
        (["serve", "--ranks", "2", "--draft", "lookup", "--port", "0"], "--draft"),
        (["bench", "--hosts", "missing.json"], "does not exist"),
        (["chat", "--web", "--ranks", "2"], "qwen-mlx serve --ranks 2"),
    ],
)
def test_group_flags_that_do_not_fit_are_refused_before_anything_starts(argv, says, capsys):
    assert main(argv) != 0
    assert says in capsys.readouterr().err


def test_each_rank_checks_the_files_it_reads_against_the_manifest(tiny_mlx, tmp_path):
    import dataclasses

    import mlx.core as mx

    from qwen_mlx.errors import DamagedModelError
    from qwen_mlx.runtime.sharding import check_rank_files, files_for_rank
    from qwen_mlx.store.manifest import hash_files, read_manifest

    folder = tmp_path / "split"
    folder.mkdir()
    w = mx.ones((4, 4))
    mx.save_safetensors(str(folder / "a.safetensors"), {"model.embed_tokens.weight": w})
    mx.save_safetensors(str(folder / "b.safetensors"), {"model.layers.0.mlp.up_proj.weight": w})
    mx.save_safetensors(str(folder / "c.safetensors"), {"model.layers.1.mlp.up_proj.weight": w})
    (folder / "config.json").write_text("{}")
    names = ["a.safetensors", "b.safetensors", "c.safetensors", "config.json"]
    manifest = dataclasses.replace(read_manifest(tiny_mlx), files=tuple(hash_files(folder, names)))
    first, last = files_for_rank(folder, range(0, 1)), files_for_rank(folder, range(1, 2))
    assert first == {"a.safetensors", "b.safetensors"}  # its layer, and the embedding
    assert last == {"a.safetensors", "c.safetensors"}

    data = bytearray((folder / "c.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, other contents
    (folder / "c.safetensors").write_bytes(bytes(data))
    check_rank_files(folder, manifest, first, verify=True)  # hashes only what it reads
    with pytest.raises(DamagedModelError, match=r"c\.safetensors: sha256"):
        check_rank_files(folder, manifest, last, verify=True)
    (folder / "c.safetensors").write_bytes(bytes(data[:-1]))
    with pytest.raises(DamagedModelError, match=r"c\.safetensors: size"):
        check_rank_files(folder, manifest, first, verify=False)  # sizes: every file, always


def test_chat_starts_the_group_and_hands_the_app_what_load_needs(monkeypatch):
    import contextlib

    from qwen_mlx.cli import chat

    group = object()
    seen = {}

    @contextlib.contextmanager
    def fake_ranks(args, *, echo=True):
        seen["ranks"], seen["echo"] = args.ranks, echo
        yield group

    def fake_app(argv, load_options=None):
        seen["argv"], seen["load_options"] = argv, load_options
        return 0

    monkeypatch.setattr(chat, "ranks_from_args", fake_ranks)
    monkeypatch.setattr("tui.app.main", fake_app)
    assert main(["chat", "--new", "--ranks", "2", "--pipeline", "--model", "m"]) == 0
    assert seen["argv"] == ["--new", "--model", "m"]  # the app's own flags only
    assert seen["load_options"] == {"group": group, "pipeline": True}
    assert (seen["ranks"], seen["echo"]) == (2, False)  # the app has the terminal


def test_each_rank_gets_the_backends_variables_as_mlx_launch_sets_them():
    ring = Ranks(
        HostFile(
            (Host("localhost", ("127.0.0.1",)), Host("127.0.0.1", ("127.0.0.1",))),
            envs=("MLX_METAL_FAST_SYNCH=1",),
        )
    )._rank_env()
    addresses = json.loads(ring["MLX_HOSTFILE"])
    assert [len(a) for a in addresses] == [1, 1] and addresses[0] != addresses[1]
    assert all(a[0].startswith("127.0.0.1:") for a in addresses)
    assert ring["QWEN_MLX_BACKEND"] == "ring" and ring["MLX_METAL_FAST_SYNCH"] == "1"

    rdma = (None, "rdma_en2"), ("rdma_en2", None)
    hosts = (Host("localhost", ("127.0.0.1",), rdma[0]), Host("127.0.0.1", ("127.0.0.1",), rdma[1]))
    jaccl = Ranks(HostFile(hosts, backend="jaccl-ring"))._rank_env()
    assert jaccl["QWEN_MLX_BACKEND"] == "jaccl" and jaccl["MLX_JACCL_RING"] == "1"
    assert jaccl["MLX_JACCL_COORDINATOR"].startswith("127.0.0.1:")
    assert json.loads(jaccl["MLX_IBV_DEVICES"]) == [[None, "rdma_en2"], ["rdma_en2", None]]


def test_a_follower_leaves_when_rank_0_is_gone_even_if_its_stderr_went_with_it(monkeypatch):
    # Rank 0 killed mid-step: the follower's stdin ends, and its operation may never end
    # by itself. Writing why to stderr (rank 0's pipe, gone too) fails with EPIPE; it
    # must still exit (it once stayed up for good when the step did not end).
    import io
    import threading

    from qwen_mlx.runtime import follower

    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    exited = []
    called = threading.Event()

    def fake_exit(code):
        exited.append(code)
        called.set()

    monkeypatch.setattr(follower.sys, "stderr", Gone())
    monkeypatch.setattr(follower.os, "_exit", fake_exit)
    follower.Doorbell(io.BytesIO(b""), threading.Event(), grace=0.05)
    assert called.wait(10) and exited == [1]
