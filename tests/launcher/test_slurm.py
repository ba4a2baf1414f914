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


def script_of(out: str) -> str:
    body = out.split("\n", 1)[1]
    return body.split("\n# the plan the job runs", 1)[0]


def plan_blocks(out: str) -> dict[str, str]:
    """`[name] role=...` blocks of the printed plan, by process name."""
    blocks = re.split(r"^(?=\[[\w-]+\] role=)", out.split("\n# the plan the job runs", 1)[1], flags=re.M)
    return {b.split("]")[0][1:]: b for b in blocks if b.startswith("[")}


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
    # The script is its header and one command: the supervisor runs inside the allocation.
    body = [line for line in script.splitlines() if line and not line.startswith("#")]
    assert len(body) == 2 and body[0].startswith("mkdir -p ")
    assert re.match(r"exec \S+ -m areal_lite.launcher.slurm_job \S+gsm8k_drgrpo.py --config \S+/config.yaml$", body[1])

    blocks = plan_blocks(out)
    assert set(blocks) == {"server0", "server1", "trainer", "worker0", "worker1"}
    # Servers: SGLang with tp 4 on node 0, four devices each; the trainer has node 1 to itself.
    for i, devices in ((0, "0,1,2,3"), (1, "4,5,6,7")):
        block = blocks[f"server{i}"]
        assert f"host=node0 devices={devices}" in block and "sglang.launch_server" in block
        assert "--tp-size 4" in block and "--host 0.0.0.0" in block and "CUDA_VISIBLE_DEVICES=" + devices in block
    trainer = blocks["trainer"]
    assert "host=node1 devices=0,1,2,3,4,5,6,7" in trainer
    assert "-m torch.distributed.run --nnodes 1 --nproc-per-node 8 --node-rank 0 --master-addr node1" in trainer
    for i in range(2):
        assert "devices=-" in blocks[f"worker{i}"] and "CUDA_VISIBLE_DEVICES" not in blocks[f"worker{i}"]
    # Secrets are made inside the job and never printed.
    assert not re.search(r"(RUN_SECRET|API_KEY)=['\"]?[0-9a-f]{16}", out)
    assert "AREAL_LITE_RUN_SECRET='<redacted>'" in out
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
    script, blocks = script_of(proc.stdout), plan_blocks(proc.stdout)
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=02:00:00" in script
    # The trainer prefers nodes without servers, then the fullest: node 1 whole, node 0 beside the server.
    head, node1 = blocks["trainer"], blocks["trainer-node1"]
    assert "host=node0 devices=2,3,4,5,6,7" in head and "host=node1 devices=0,1,2,3,4,5" in node1
    for k, block in enumerate((head, node1)):
        assert f"--nnodes 2 --nproc-per-node 6 --node-rank {k} --master-addr node0" in block


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
    assert "[job] started trainer" in job_log and "[job] training finished" in job_log
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


@pytest.mark.timeout(300)
def test_killed_server_is_restarted_inside_the_job(tmp_path, tiny_model_dir, slurm_env):
    """The in-job supervisor applies the local launcher's restart policy: a killed server comes back
    from the trainer's newest weights and the run finishes."""
    cfg = cpu_config(tmp_path, tiny_model_dir, slurm_env)
    rdir = run_dir(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "areal_lite.launcher.slurm", str(ENTRY), "--config", str(cfg), "total_train_steps=4",
         "recover.mode=auto", "recover.retries=2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=slurm_env,
    )
    try:
        deadline = time.monotonic() + 200
        while not (rdir / "metrics.jsonl").is_file() or not read_jsonl(rdir / "metrics.jsonl"):
            assert time.monotonic() < deadline and proc.poll() is None, "no step was trained"
            time.sleep(0.5)
        servers = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.info["name"] != "srun"
                   and "launch_server" in " ".join(p.info["cmdline"] or []) and str(rdir) in " ".join(p.info["cmdline"])]
        assert len(servers) == 1, servers
        servers[0].kill()
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    job = job_id_of(out)
    job_log = (rdir / "logs" / f"slurm-{job}.log").read_text()
    assert proc.returncode == 0, out + job_log
    assert re.search(r"\[job\] server0 (exited with status \d+|was killed by signal 9); restarting it \(1/2\)", job_log)
    assert job_log.count("[job] started server0") == 2
    assert [m["step"] for m in read_jsonl(rdir / "metrics.jsonl")] == [0, 1, 2, 3]
    assert_nothing_left(job, rdir, slurm_env)
