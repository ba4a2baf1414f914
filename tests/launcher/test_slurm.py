"""The Slurm launcher: the generated sbatch script for a 2-node GPU plan (no Slurm needed), and real
jobs on a real Slurm (launcher/slurm/testcluster.sh: slurmctld + slurmd on this machine).

The real-Slurm tests skip when `sinfo` cannot reach a controller, except under
AREAL_LITE_REQUIRE_SLURM=1 (set by .ci/run after starting the test cluster), where they fail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.e2e.conftest import ENTRY, explain, launch, read_jsonl, run_dir, write_config

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------
# --dry-run: the script of a 2-node GPU plan
# ------------------------------------------------------------------------------------------------


def gpu_config(tmp_path: Path, allocation: dict, **cluster) -> Path:
    cfg = {
        "experiment_name": "gsm8k",
        "trial_name": "h100",
        "cluster": {"fileroot": str(tmp_path / "runs"), "n_nodes": 2, "n_gpus_per_node": 8,
                    "bind_host": "0.0.0.0", **cluster},
        "allocation": {"device": "cuda", **allocation},
        "actor": {"path": "Qwen/Qwen2.5-1.5B"},
        "train_dataset": {"path": "synthetic:arith"},
    }
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def dry_run(tmp_path: Path, config: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "areal_lite.launcher.slurm", str(ENTRY), "--config", str(config), *overrides,
         "--dry-run"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )


def step_block(script: str, name: str) -> str:
    """The body of `start_<name>() { ... }` in the script."""
    m = re.search(r"^start_%s\(\) \{\n(.*?)^\}" % re.escape(name.replace("-", "_")), script, re.M | re.S)
    assert m, f"no step function for {name}"
    return m.group(1)


def script_of(out: str) -> str:
    body = out.split("\n", 1)[1]
    return body.split("\n# steps (", 1)[0]


def test_dry_run_two_node_gpu_plan(tmp_path):
    cfg = gpu_config(tmp_path, {
        "inference": {"backend": "sglang", "num_servers": 2, "tp_size": 4},
        "rollout": {"num_workers": 2},
        "trainer": {"nnodes": 1, "nproc_per_node": 8},
    })
    proc = dry_run(tmp_path, cfg)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    script = script_of(out)
    assert not (tmp_path / "runs").exists(), "a dry run must not write the run directory"

    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --nodes=2" in header
    assert "#SBATCH --gres=gpu:8" in header
    assert "#SBATCH --exclusive" in header
    assert any(h.startswith("#SBATCH --output=") and h.endswith("/logs/slurm-%j.log") for h in header)

    # Nodes and ports are resolved inside the job: servers' ports on node 0, the trainer's on node 1.
    assert "slurm_step resolve --nodes 2 --port-nodes 0,0,1,1,1,1,1" in script

    # Servers: SGLang with tp 4 on node 0, four devices each.
    for i, devices in ((0, "0,1,2,3"), (1, "4,5,6,7")):
        block = step_block(script, f"server{i}")
        assert '--nodelist="${AREAL_NODE0}"' in block
        assert "--gres=gpu:8" in block
        assert f"CUDA_VISIBLE_DEVICES={devices} \\" in block
        assert "sglang.launch_server" in block
        assert "--tp-size 4" in block and "--host 0.0.0.0" in block
        assert f'--port "${{AREAL_PORT_{i}}}"' in block
    # Trainer: torchrun on the other node, 8 ranks, static rendezvous on that node.
    block = step_block(script, "trainer")
    assert '--nodelist="${AREAL_NODE1}"' in block
    assert "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \\" in block
    assert "-m torch.distributed.run --nnodes 1 --nproc-per-node 8 --node-rank 0" in block
    assert '--master-addr "${AREAL_NODE1}" --master-port "${AREAL_PORT_5}"' in block
    assert 'AREAL_LITE_CONTROLLER="${AREAL_NODE1}:${AREAL_PORT_2}:${AREAL_PORT_3}:${AREAL_PORT_4}"' in block
    assert 'AREAL_LITE_SERVER_ADDRS="http://${AREAL_NODE0}:${AREAL_PORT_0},http://${AREAL_NODE0}:${AREAL_PORT_1}"' \
        in block
    # Workers: CPU processes, no GPUs requested.
    for i in range(2):
        block = step_block(script, f"worker{i}")
        assert "--gres" not in block and "CUDA_VISIBLE_DEVICES" not in block
        assert f"AREAL_LITE_WORKER_INDEX={i} \\" in block
    # Start order: servers, health, trainer, workers, supervision.
    order = [script.index(s) for s in ("\nstart_server0\n", "\nstart_server1\n", "slurm_step wait-health",
                                       "\nstart_trainer\n", "\nstart_worker0\n", "\nsupervise 1\n")]
    assert order == sorted(order)
    # Secrets travel in sbatch's environment, never in the script or the printed plan.
    assert not re.search(r"(RUN_SECRET|API_KEY)=['\"]?[0-9a-f]{16}", out)
    assert "AREAL_LITE_RUN_SECRET='<redacted>'" in out
    # Every step's command and environment are printed too, and the script is valid bash.
    for name in ("server0", "server1", "trainer", "worker0", "worker1"):
        assert f"[{name}] role=" in out
    script_file = tmp_path / "job.sbatch"
    script_file.write_text(script)
    check = subprocess.run(["bash", "-n", str(script_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_dry_run_two_node_trainer_and_container(tmp_path):
    cfg = gpu_config(tmp_path, {
        "inference": {"backend": "sglang", "num_servers": 1, "tp_size": 2},
        "rollout": {"num_workers": 1},
        "trainer": {"nnodes": 2, "nproc_per_node": 6},
    })
    proc = dry_run(tmp_path, cfg, "launcher.slurm.container_type=apptainer",
                   "launcher.slurm.container_image=/images/areal.sif", "launcher.slurm.partition=gpu",
                   "launcher.slurm.time_limit=02:00:00")
    assert proc.returncode == 0, proc.stderr
    script = script_of(proc.stdout)
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=02:00:00" in script
    head, node1 = step_block(script, "trainer"), step_block(script, "trainer-node1")
    # Ranks on node 0 after the server's two devices; all eight on node 1; one rendezvous on node 0.
    assert "CUDA_VISIBLE_DEVICES=2,3,4,5,6,7 \\" in head
    assert "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5 \\" in node1
    for k, block in enumerate((head, node1)):
        assert f"--nnodes 2 --nproc-per-node 6 --node-rank {k}" in block
        assert '--master-addr "${AREAL_NODE0}"' in block
        assert "apptainer exec --nv /images/areal.sif \\" in block
    assert '--nodelist="${AREAL_NODE1}"' in node1
    assert "\nsupervise 2\n" in script


def test_multi_node_on_loopback_is_a_user_error(tmp_path):
    cfg = gpu_config(tmp_path, {"inference": {"backend": "sglang", "num_servers": 1, "tp_size": 2}},
                     bind_host="127.0.0.1")
    proc = dry_run(tmp_path, cfg)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cluster.bind_host:") and proc.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# Real Slurm
# ------------------------------------------------------------------------------------------------


def _sinfo_ok(env: dict) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    """The environment that reaches a Slurm controller: as is, or with the test cluster's SLURM_CONF."""
    env = dict(os.environ)
    if _sinfo_ok(env):
        return env
    state = os.environ.get("AREAL_SLURM_DIR") or os.path.join(os.environ.get("TMPDIR") or "/tmp", "areal_slurm")
    conf = os.path.join(state, "slurm.conf")
    if os.path.isfile(conf) and _sinfo_ok({**env, "SLURM_CONF": conf}):
        return {**env, "SLURM_CONF": conf}
    why = f"no reachable Slurm (sinfo failed; no running test cluster at {conf}: launcher/slurm/testcluster.sh start)"
    if os.environ.get("AREAL_LITE_REQUIRE_SLURM") == "1":
        pytest.fail(f"AREAL_LITE_REQUIRE_SLURM=1 but {why}")
    pytest.skip(why)


def cpu_config(tmp_path: Path, model_dir: Path, env: dict) -> Path:
    # The test cluster has 2 CPUs: ask for at most those (never more than the node has); the steps
    # share them (srun --overlap).
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=20, env=env)
    cpus = min([2] + [int(c) for c in out.stdout.split() if c.isdigit()])
    return write_config(tmp_path, model_dir, {"cluster": {"n_cpus_per_node": cpus}})


def job_id_of(stdout: str) -> str:
    m = re.search(r"submitted job (\d+)", stdout)
    assert m, stdout
    return m.group(1)


def assert_nothing_left(job_id: str, rdir: Path, env: dict, timeout: float = 30.0) -> None:
    """The job left the queue and no process of the run (its config/weights paths) is alive."""
    deadline = time.monotonic() + timeout
    while True:
        queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                                env=env, timeout=20).stdout.strip()
        alive = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if str(rdir) in cmd and p.pid != os.getpid():
                alive.append(f"{p.pid}: {cmd[:160]}")
        if not queued and not alive:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} state {queued!r}; processes left: {alive}")
        time.sleep(0.5)


@pytest.mark.timeout(300)
def test_real_job_trains_end_to_end(tmp_path, tiny_model_dir, slurm_env):
    cfg = cpu_config(tmp_path, tiny_model_dir, slurm_env)
    proc = launch("areal_lite.launcher.slurm", cfg, "total_train_steps=2", timeout=280, env=slurm_env)
    rdir = run_dir(tmp_path)
    assert proc.returncode == 0, explain(proc, rdir)
    job = job_id_of(proc.stdout)
    assert "training finished" in proc.stdout
    assert re.search(r"step 2/2 \| v2 \| reward", proc.stdout), proc.stdout  # the console progress line

    metrics = read_jsonl(rdir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1]
    assert [m["version"] for m in metrics] == [1, 2]
    assert all(m["train/num_seqs"] == 4 * 2 for m in metrics)
    for name in ("server0", "trainer", "worker0"):
        assert (rdir / "logs" / f"{name}.log").stat().st_size > 0, name
    job_log = (rdir / "logs" / f"slurm-{job}.log").read_text()
    assert "[job] trainer finished" in job_log and "[job] training finished" in job_log
    assert (rdir / "slurm" / "job.sbatch").is_file() and (rdir / "config.yaml").is_file()
    # Slurm saw a completed job with exit code 0.
    state = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                           env=slurm_env).stdout
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state
    assert_nothing_left(job, rdir, slurm_env)


@pytest.mark.timeout(240)
def test_step_failing_at_start_fails_the_job_fast(tmp_path, tiny_model_dir, slurm_env):
    bad = tmp_path / "bad_entry.py"
    bad.write_text('raise RuntimeError("boom: this entry script fails at start")\n')
    cfg = cpu_config(tmp_path, tiny_model_dir, slurm_env)
    t0 = time.monotonic()
    proc = launch("areal_lite.launcher.slurm", cfg, "total_train_steps=2", timeout=200, env=slurm_env, entry=bad)
    elapsed = time.monotonic() - t0
    rdir = run_dir(tmp_path)
    assert proc.returncode == 1, explain(proc, rdir)
    # The trainer and the worker both run the entry script; whichever Slurm saw die first is named,
    # with the tail of its own log.
    m = re.search(r"error: job \d+ FAILED: step (trainer|worker0) exited with status 1; tail of (\S+):", proc.stdout)
    assert m, proc.stdout
    assert m.group(2) == str(rdir / "logs" / f"{m.group(1)}.log")
    assert "RuntimeError: boom: this entry script fails at start" in proc.stdout
    # Servers must start and pass /health first (several seconds on a loaded 2-core machine); the
    # failure itself stops the job within a second or two and the launcher notices at its next poll.
    assert elapsed < 90, f"took {elapsed:.0f}s"
    assert_nothing_left(job_id_of(proc.stdout), rdir, slurm_env)


@pytest.mark.timeout(240)
def test_ctrl_c_cancels_the_job(tmp_path, tiny_model_dir, slurm_env):
    cfg = cpu_config(tmp_path, tiny_model_dir, slurm_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "areal_lite.launcher.slurm", str(ENTRY), "--config", str(cfg), "total_train_steps=50"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=slurm_env,
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:  # wait until every process of the run has started
            lines.append(line)
            if "[job] started worker0" in line:
                break
        else:
            pytest.fail("".join(lines))
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGINT, out
    job = job_id_of(out)
    assert f"cancelling job {job}" in out and f"job {job} cancelled" in out, out
    assert_nothing_left(job, run_dir(tmp_path), slurm_env)
