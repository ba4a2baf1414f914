"""Run on a Slurm cluster: `python -m areal_lite.launcher.slurm ENTRY.py --config X.yaml k=v ... [--dry-run]`

The launcher writes a short sbatch script into `{run}/slurm/job.sbatch` — its `#SBATCH` header and
one command, `python -m areal_lite.launcher.slurm_job ENTRY.py --config {run}/config.yaml` — submits
it with `sbatch`, follows the job (squeue / scontrol / sacct, the job's `[job]` lines and the run's
metrics.jsonl for a progress line) and exits 0 when the job completed, or 1 naming the process that
failed with the tail of its log. Ctrl-C / SIGTERM / SIGHUP cancel the job (`scancel`) and wait for
it to leave the queue.

Inside the allocation, `slurm_job` runs the same plan and the same supervisor as the local and Ray
launchers (start order, health, restarts from the newest weights or the recover checkpoint,
stopping), each process one `srun --overlap` step on its node. Node names and ports are only known
inside the job: it expands SLURM_JOB_NODELIST and picks each port on the node that binds it.
Per-run secrets (multi-node runs) are made there and live only in the steps' environments.
`--dry-run` prints the script and the plan, with nodes as node<i> and ports as ${AREAL_PORT_<k>}.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from areal_lite.config import ConfigError, exit_on_config_error
from areal_lite.config.schema import ExperimentConfig, run_dir
from areal_lite.launcher.common import Stopped, parse_launch_args, preflight, run_prepare, tail, write_run_config
from areal_lite.launcher.plan import LOOPBACK, Plan, build_plan
from areal_lite.launcher.supervisor import STOP_SIGNALS, progress_line

PROG = "areal_lite.launcher.slurm"
WORKER_LEAVE_S = 10
STOP_GRACE_S = 15
CANCEL_WAIT_S = 60.0
_SHELL_VAR = re.compile(r"(\$\{[A-Za-z_][A-Za-z0-9_]*\})")
_UNSAFE_IN_DQUOTES = re.compile(r'["\\$`]')


class ShellPort(int):
    """A port the job picks at start: formats as `${AREAL_PORT_<k>}` wherever the plan prints it."""

    def __new__(cls, k: int):
        obj = super().__new__(cls, 0)
        obj.k = k
        return obj

    def __str__(self) -> str:
        return "${AREAL_PORT_%d}" % self.k

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return str(self)


class ShellPorts:
    """A PortPicker for build_plan that hands out ShellPort placeholders in order."""

    def __init__(self):
        self.picked: list[ShellPort] = []

    def __call__(self) -> ShellPort:
        port = ShellPort(len(self.picked))
        self.picked.append(port)
        return port


@dataclass
class SlurmPlan:
    plan: Plan
    n_nodes: int
    script: str
    script_path: str
    job_log: str  # with %j for the job id


def sh(word: str) -> str:
    """Quote one shell word, leaving `${VAR}` references to expand at run time."""
    word = str(word)
    if not _SHELL_VAR.search(word):
        return shlex.quote(word)
    opt = re.match(r"^(--[a-z-]+=)(.*)$", word)
    if opt:  # --nodelist="${AREAL_NODE0}" rather than "--nodelist=${AREAL_NODE0}"
        return opt.group(1) + sh(opt.group(2))
    parts = _SHELL_VAR.split(word)
    literals = parts[0::2]
    if not any(_UNSAFE_IN_DQUOTES.search(p) for p in literals):
        return f'"{word}"'
    return "".join(f'"{p}"' if i % 2 else (shlex.quote(p) if p else "") for i, p in enumerate(parts))


def node_var(i: int) -> str:
    return "${AREAL_NODE%d}" % i


def plan_hosts(cfg: ExperimentConfig) -> list[str]:
    """One node on loopback: every address is this machine's. Otherwise node labels, named in the job."""
    n = cfg.cluster.n_nodes
    return ["localhost"] if (n == 1 and cfg.cluster.bind_host in LOOPBACK) else [f"node{i}" for i in range(n)]


def build_slurm_plan(cfg: ExperimentConfig, entry: str, *, config_path: str, cwd: str | None = None) -> SlurmPlan:
    """The run's plan as the job will place it (placeholder ports) and the sbatch script that runs it."""
    n_nodes = cfg.cluster.n_nodes
    if n_nodes > 1 and cfg.cluster.bind_host in LOOPBACK:
        raise ConfigError(
            f"cluster.bind_host: {cfg.cluster.bind_host} is loopback but cluster.n_nodes={n_nodes}; "
            "set cluster.bind_host=0.0.0.0 (or the nodes' interface) so processes on other nodes can connect"
        )
    sc = cfg.launcher.slurm
    if sc.container_type != "none" and not sc.container_image:
        raise ConfigError(f"launcher.slurm.container_image: required with container_type={sc.container_type}")
    cores = cfg.cluster.n_cpus_per_node or 1
    plan = build_plan(cfg, entry, config_path=config_path, hosts=plan_hosts(cfg), ports=ShellPorts(), cores=cores)
    script_path = os.path.join(plan.run_dir, "slurm", "job.sbatch")
    job_log = os.path.join(plan.run_dir, "logs", "slurm-%j.log")
    script = render_script(cfg, plan, n_nodes=n_nodes, job_log=job_log, cwd=cwd or os.getcwd(), entry=entry)
    return SlurmPlan(plan, n_nodes, script, script_path, job_log)


def _sbatch_header(cfg: ExperimentConfig, plan: Plan, n_nodes: int, job_log: str, cwd: str) -> list[str]:
    sc = cfg.launcher.slurm
    opts = [
        f"--job-name=areal-{cfg.experiment_name}-{cfg.trial_name}",
        f"--nodes={n_nodes}",
        "--ntasks-per-node=1",
    ]
    if cfg.cluster.n_cpus_per_node > 0:
        opts.append(f"--cpus-per-task={cfg.cluster.n_cpus_per_node}")
    else:
        opts += ["--exclusive", "--mem=0"]  # whole nodes, all their CPUs and memory
    if cfg.allocation.device == "cuda":
        opts.append(f"--gres=gpu:{cfg.cluster.n_gpus_per_node}")
    if sc.partition:
        opts.append(f"--partition={sc.partition}")
    if sc.account:
        opts.append(f"--account={sc.account}")
    if sc.time_limit:
        opts.append(f"--time={sc.time_limit}")
    opts += [f"--output={job_log}", "--open-mode=append", f"--chdir={cwd}"]
    opts += [str(a) for a in sc.sbatch_extra_args]
    return [f"#SBATCH {o}" for o in opts]


def container_prefix(cfg: ExperimentConfig) -> list[str]:
    """`apptainer exec [--nv] [--bind ...] IMAGE` before each step's command, or nothing."""
    sc = cfg.launcher.slurm
    if sc.container_type == "none":
        return []
    words = [sc.container_type, "exec"]
    if cfg.allocation.device == "cuda":
        words.append("--nv")
    for mount in sc.container_mounts:
        words += ["--bind", str(mount)]
    return words + [sc.container_image]


def render_script(cfg: ExperimentConfig, plan: Plan, *, n_nodes: int, job_log: str, cwd: str, entry: str) -> str:
    """The sbatch script: the header and the one command that supervises the run inside the job."""
    return "\n".join([
        "#!/bin/bash",
        f"# areal_lite run {cfg.experiment_name}/{cfg.trial_name}, written by `python -m {PROG}`.",
        f"# {len(plan.servers)} server(s), {len(plan.trainers)} trainer node(s), {len(plan.workers)} rollout "
        f"worker(s) on {n_nodes} node(s). Config: {plan.config_path}",
        "# The supervisor below starts every process as an `srun` step; its output goes to logs/<name>.log.",
        *_sbatch_header(cfg, plan, n_nodes, job_log, cwd),
        f'mkdir -p {sh(os.path.join(plan.run_dir, "logs"))}',
        f"exec {sh(sys.executable)} -m areal_lite.launcher.slurm_job {sh(entry)} --config {sh(plan.config_path)}",
    ]) + "\n"


def describe(sp: SlurmPlan) -> str:
    """--dry-run: the script, then every process's node, devices, environment and command."""
    return "\n".join([
        f"# sbatch script ({sp.script_path}):",
        sp.script,
        "# the plan the job runs (node<i> and ${AREAL_PORT_<k>} are resolved inside the job):",
        sp.plan.describe(),
    ])


# ---------------------------------------------------------------------------------------------
# Following the job
# ---------------------------------------------------------------------------------------------


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def queue_state(job_id: str) -> str | None:
    """The job's state while squeue lists it (PENDING, RUNNING, COMPLETING, ...), else None."""
    try:
        out = _run(["squeue", "-h", "-j", job_id, "-o", "%T"])
    except (OSError, subprocess.SubprocessError):
        return "UNKNOWN"
    if out.returncode != 0:
        # "Invalid job id" once the job is purged; anything else is a transient controller hiccup.
        return None if "Invalid job id" in out.stderr else "UNKNOWN"
    state = out.stdout.strip().splitlines()
    return state[0].strip() if state else None


def final_state(job_id: str) -> tuple[str, str]:
    """(JobState, ExitCode) of a finished job from scontrol, else sacct; ('UNKNOWN', '') if neither knows."""
    try:
        out = _run(["scontrol", "show", "job", "-o", job_id])
        if out.returncode == 0:
            state = re.search(r"\bJobState=(\S+)", out.stdout)
            code = re.search(r"\bExitCode=(\S+)", out.stdout)
            if state:
                return state.group(1), code.group(1) if code else ""
        if shutil.which("sacct"):
            out = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"])
            line = out.stdout.strip().splitlines()
            if out.returncode == 0 and line:
                state, _, code = line[0].partition("|")
                return state.split()[0], code
    except (OSError, subprocess.SubprocessError):
        pass
    return "UNKNOWN", ""


class JobFollower:
    def __init__(self, cfg: ExperimentConfig, sp: SlurmPlan, job_id: str):
        self.cfg = cfg
        self.sp = sp
        self.job_id = job_id
        self.job_log = sp.job_log.replace("%j", job_id)
        self.stop_signal: int | None = None
        self._metrics_pos = 0
        self._job_log_pos = 0

    def _say(self, msg: str) -> None:
        print(f"[launcher] {msg}", flush=True)

    def follow(self) -> int:
        last = None
        while True:
            if self.stop_signal is not None:
                return self.cancel(self.stop_signal)
            state = queue_state(self.job_id)
            self._echo_job_log()
            self._print_progress()
            if state is None:
                break
            if state != last and state != "UNKNOWN":
                self._say(f"job {self.job_id} {state}")
                last = state
            self._sleep(self.cfg.launcher.slurm.poll_interval_s)
        time.sleep(0.2)
        self._echo_job_log()
        self._print_progress()
        return self.outcome()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.stop_signal is None:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def outcome(self) -> int:
        state, code = final_state(self.job_id)
        text = _read(self.job_log)
        if state == "COMPLETED" and code in ("0:0", "") and "[job] training finished" in text:
            self._say("training finished")
            return 0
        if state == "UNKNOWN" and "[job] training finished" in text:
            self._say("training finished (job state unknown to scontrol/sacct; the job log says so)")
            return 0
        m = re.findall(r"^\[job\] error: (?:step )?([\w-]+)[:,]? ([^;\n]*)", text, re.M)
        if m:
            step, what = m[-1]
            log = os.path.join(self.sp.plan.run_dir, "logs", f"{step}.log")
            if not os.path.exists(log):
                log = self.job_log
            self._say(f"error: job {self.job_id} {state}: step {step} {what}; tail of {log}:\n{tail(log)}")
        else:
            self._say(f"error: job {self.job_id} ended {state} (exit code {code or '?'}) without finishing; "
                      f"tail of {self.job_log}:\n{tail(self.job_log)}")
        return 1

    def cancel(self, signum: int) -> int:
        self._say(f"received {signal.Signals(signum).name}: cancelling job {self.job_id}")
        try:
            _run(["scancel", self.job_id])
        except (OSError, subprocess.SubprocessError) as e:
            self._say(f"scancel failed: {e}")
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            if queue_state(self.job_id) is None:
                self._say(f"job {self.job_id} cancelled")
                break
            time.sleep(0.5)
        else:
            self._say(f"job {self.job_id} still listed by squeue after {CANCEL_WAIT_S:.0f}s")
        return 128 + signum

    def _echo_job_log(self) -> None:
        """Relay the batch script's own `[job] ...` lines."""
        try:
            with open(self.job_log, "rb") as fh:
                fh.seek(self._job_log_pos)
                chunk = fh.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        self._job_log_pos += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            if line.startswith("[job] ") and not line.startswith("[job] error"):
                print(f"[launcher] {line}", flush=True)

    def _print_progress(self) -> None:
        path = os.path.join(self.sp.plan.run_dir, "metrics.jsonl")
        try:
            with open(path, "rb") as fh:
                fh.seek(self._metrics_pos)
                chunk = fh.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        self._metrics_pos += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            try:
                self._say(progress_line(json.loads(line), self.cfg))
            except ValueError:
                continue


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def submit(sp: SlurmPlan) -> str:
    """sbatch the script (the job's steps inherit this environment: --export=ALL)."""
    out = subprocess.run(["sbatch", "--parsable", "--export=ALL", sp.script_path],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"sbatch failed (exit {out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip().split(";")[0]


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_launch_args(argv, PROG)
    cfg = args.cfg
    # Devices live on the compute nodes: the allocation is checked against cluster.* (config
    # validation), not against this machine.
    preflight(cfg, check_devices=False)
    config_path = os.path.join(os.path.abspath(run_dir(cfg)), "config.yaml")
    sp = build_slurm_plan(cfg, args.entry, config_path=config_path)
    if args.dry_run:
        print(describe(sp))
        return 0
    missing = [c for c in ("sbatch", "squeue", "scontrol", "scancel") if shutil.which(c) is None]
    if missing:
        raise ConfigError(f"Slurm client commands not found ({', '.join(missing)}): run on a Slurm login node")
    write_run_config(cfg)
    os.makedirs(os.path.dirname(sp.script_path), exist_ok=True)
    with open(sp.script_path, "w") as fh:
        fh.write(sp.script)
    os.chmod(sp.script_path, 0o755)

    stop: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _f: stop.append(signum)) for s in STOP_SIGNALS}
    try:
        run_prepare(cfg, config_path, os.path.join(sp.plan.run_dir, "logs", "prepare.log"),
                    stop=lambda: stop[0] if stop else None)
        if stop:
            return 128 + stop[0]
        job_id = submit(sp)
    except Stopped as e:
        return 128 + e.signum
    except RuntimeError as e:
        print(f"[launcher] error: {e}", flush=True)
        return 1
    print(f"[launcher] submitted job {job_id}: {sp.script_path} (job log {sp.job_log.replace('%j', job_id)})",
          flush=True)
    follower = JobFollower(cfg, sp, job_id)
    for s in previous:
        signal.signal(s, lambda signum, _f: setattr(follower, "stop_signal", signum))
    if stop:
        follower.stop_signal = stop[0]
    return follower.follow()


if __name__ == "__main__":
    sys.exit(main())
