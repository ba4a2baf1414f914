"""`--dry-run` of GPU plans (nothing starts, no GPU needed): every process with its host, devices,
command line and environment, for the local launcher (1 node × 8 GPUs) and Ray (2 nodes × 8 GPUs);
a placement that does not fit exits 2 with one line."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import yaml

from tests.e2e.conftest import ENTRY, SMALL, deep_merge

MODEL = "Qwen/Qwen2.5-1.5B-Instruct"  # a hub id: a dry run neither downloads nor opens it
BLOCK = re.compile(r"^\[(\S+)\] role=(\S+) host=(\S+) devices=(\S+)(?: weight_ranks=\S+)?\n  env: (.*)\n  cmd: (.*)$", re.M)


def gpu_config(tmp_path, **cluster) -> str:
    cfg = deep_merge(SMALL, {
        "actor": {"path": MODEL},
        "allocation": {"device": "cuda", "inference": {"backend": "sglang"}},
        "cluster": {"fileroot": str(tmp_path / "runs"), **cluster},
    })
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def dry_run(module: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, str(ENTRY), "--config", config, *overrides, "--dry-run"],
                          capture_output=True, text=True, timeout=120)


def processes(out: str) -> dict[str, dict]:
    procs = {}
    for name, role, host, devices, env, cmd in BLOCK.findall(out):
        procs[name] = {
            "role": role, "host": host, "devices": [] if devices == "-" else [int(d) for d in devices.split(",")],
            "env": dict(kv.split("=", 1) for kv in shlex.split(env)), "cmd": shlex.split(cmd),
        }
    return procs


def runs_sglang(cmd: list[str]) -> bool:
    """`python -m sglang.launch_server ...`, or the shim that adds --api-key from the environment."""
    return cmd[1:3] == ["-m", "sglang.launch_server"] or (
        cmd[1] == "-c" and "run_module('sglang.launch_server'" in cmd[2] and "AREAL_LITE_API_KEY" in cmd[2])


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_local_dry_run_of_an_8_gpu_node(tmp_path):
    config = gpu_config(tmp_path, n_nodes=1, n_gpus_per_node=8)
    proc = dry_run("areal_lite.launcher.local", config, "allocation.inference.tp_size=4",
                   "allocation.trainer.nproc_per_node=4")
    assert proc.returncode == 0, proc.stderr
    procs = processes(proc.stdout)
    assert set(procs) == {"server0", "trainer", "worker0"}, proc.stdout

    server, trainer, worker = procs["server0"], procs["trainer"], procs["worker0"]
    assert server["devices"] == [0, 1, 2, 3] and server["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert trainer["devices"] == [4, 5, 6, 7] and trainer["env"]["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert "CUDA_VISIBLE_DEVICES" not in worker["env"]  # rollout workers need no device

    cmd = server["cmd"]
    assert cmd[1:3] == ["-m", "sglang.launch_server"]  # one machine: no API key, no shim
    assert flag(cmd, "--tp-size") == "4" and flag(cmd, "--model-path") == MODEL and "--skip-tokenizer-init" in cmd
    assert flag(cmd, "--host") == "127.0.0.1"
    port = flag(cmd, "--port")
    # Addresses travel in the environment: the trainer and the worker know the server's URL.
    for p in (trainer, worker):
        assert p["env"]["AREAL_LITE_SERVER_ADDRS"] == f"http://127.0.0.1:{port}"
    assert worker["env"]["AREAL_LITE_ROLE"] == "rollout" and trainer["env"]["AREAL_LITE_ROLE"] == "trainer"
    assert worker["env"]["AREAL_LITE_CONTROLLER"] == trainer["env"]["AREAL_LITE_CONTROLLER"]

    t = trainer["cmd"]
    # One machine: torchrun with its rendezvous store bound to the master address (launcher/torchrun.py).
    assert t[1:3] == ["-m", "areal_lite.launcher.torchrun"] and flag(t, "--rdzv-endpoint").startswith("127.0.0.1:")
    assert flag(t, "--nproc-per-node") == "4" and flag(t, "--nnodes") == "1" and t[-3] == str(ENTRY)
    assert not (tmp_path / "runs").exists()  # nothing was started or written


def test_ray_dry_run_of_two_8_gpu_nodes(tmp_path):
    config = gpu_config(tmp_path, n_nodes=2, n_gpus_per_node=8, n_cpus_per_node=64, bind_host="0.0.0.0")
    proc = dry_run("areal_lite.launcher.ray", config, "allocation.inference.num_servers=2",
                   "allocation.inference.tp_size=4", "allocation.trainer.nproc_per_node=8")
    assert proc.returncode == 0, proc.stderr
    procs = processes(proc.stdout)
    assert set(procs) == {"server0", "server1", "trainer", "worker0"}, proc.stdout

    s0, s1, trainer = procs["server0"], procs["server1"], procs["trainer"]
    # Servers fill node0 (4 + 4 GPUs, disjoint); the trainer has node1 to itself.
    assert (s0["host"], s0["devices"]) == ("node0", [0, 1, 2, 3])
    assert (s1["host"], s1["devices"]) == ("node0", [4, 5, 6, 7])
    assert (trainer["host"], trainer["devices"]) == ("node1", list(range(8)))
    assert trainer["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert procs["worker0"]["host"] == "node1"
    for s in (s0, s1):
        assert runs_sglang(s["cmd"]) and flag(s["cmd"], "--tp-size") == "4"
        assert flag(s["cmd"], "--host") == "0.0.0.0"
    urls = [f"http://node0:{flag(s['cmd'], '--port')}" for s in (s0, s1)]
    assert trainer["env"]["AREAL_LITE_SERVER_ADDRS"] == ",".join(urls)
    assert flag(trainer["cmd"], "--master-addr") == "node1" and flag(trainer["cmd"], "--nproc-per-node") == "8"
    # Across hosts messages are authenticated; the secrets are never printed.
    assert trainer["env"]["AREAL_LITE_RUN_SECRET"] == "<redacted>"
    assert s0["env"]["AREAL_LITE_API_KEY"] == "<redacted>" and "--api-key" not in s0["cmd"]
    # One placement group per role, bundles sized from the plan.
    assert "servers: server0@node0{CPU: 6, GPU: 4}, server1@node0{CPU: 6, GPU: 4}" in proc.stdout
    assert "trainer: trainer@node1{CPU: 48, GPU: 8}" in proc.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("module, cluster, overrides, message", [
    ("areal_lite.launcher.local", {"n_gpus_per_node": 8},
     ["allocation.inference.num_servers=2", "allocation.inference.tp_size=4", "allocation.trainer.nproc_per_node=4"],
     "error: allocation"),
    ("areal_lite.launcher.local", {"n_nodes": 2, "n_gpus_per_node": 8, "bind_host": "0.0.0.0"}, [],
     "error: cluster.n_nodes=2: the local launcher runs on one machine"),
    ("areal_lite.launcher.ray", {"n_nodes": 2, "n_gpus_per_node": 8, "bind_host": "0.0.0.0"},
     ["allocation.inference.tp_size=4", "allocation.trainer.nproc_per_node=12"],
     "error: allocation: the trainer needs 12 GPUs per node but nodes have 8"),
    # 12 GPUs for 12 ranks, but no node keeps the 4 the trainer needs: refused, never a rank without a GPU.
    ("areal_lite.launcher.ray", {"n_nodes": 2, "n_gpus_per_node": 6, "bind_host": "0.0.0.0"},
     ["allocation.inference.num_servers=2", "allocation.inference.tp_size=4", "allocation.trainer.nproc_per_node=4"],
     "error: allocation: the trainer needs 1 node(s) with 4 free GPU(s) each, but after 2 server(s) x 4 GPU(s) "
     "the free GPUs are node0: 2, node1: 2"),
    # One GPU: servers and trainer need their own unless they share it, which the message suggests.
    ("areal_lite.launcher.local", {"n_gpus_per_node": 1}, [],
     "error: allocation: needs 2 GPUs (1 servers x 1 + 1 trainer ranks) but the cluster has 1 (cluster: 1 node(s) "
     "x 1 GPUs); to share GPUs between servers and trainer set allocation.colocate=true"),
    ("areal_lite.launcher.local", {"n_gpus_per_node": 2}, ["allocation.colocate=true", "allocation.inference.num_servers=2"],
     "error: allocation: colocated servers run on the trainer's GPUs"),
    ("areal_lite.launcher.ray", {"n_nodes": 2, "n_gpus_per_node": 8}, [],
     "error: cluster.bind_host: 127.0.0.1 cannot be reached from other nodes"),
])
def test_a_placement_that_does_not_fit_exits_2_with_one_line(tmp_path, module, cluster, overrides, message):
    proc = dry_run(module, gpu_config(tmp_path, **cluster), *overrides)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(message), proc.stderr
