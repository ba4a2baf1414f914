"""Run on a Slurm cluster: `python -m areal_lite.launcher.slurm ENTRY.py --config X.yaml k=v ... [--dry-run]`

The launcher writes a readable sbatch script into `{run}/slurm/job.sbatch`, submits it with
`sbatch`, follows the job (squeue / scontrol / sacct, and the run's metrics.jsonl for a progress
line) and exits 0 when the job completed, or 1 naming the step that failed with the tail of its
log. Ctrl-C / SIGTERM cancels the job (`scancel`) and waits for it to leave the queue.

The script is the same plan the local launcher runs (areal_lite.launcher.plan), as one `srun` step
per process: inference servers → wait for /health → trainer (torchrun, one step per trainer node,
static rendezvous on the first trainer node) → rollout workers. Node names and ports are not known
before the job starts: the plan refers to them as `${AREAL_NODE<i>}` / `${AREAL_PORT_<k>}`, and the
first thing the job does is `python -m areal_lite.launcher.slurm_step resolve`, which expands
SLURM_JOB_NODELIST and picks each port free on the node that binds it. The batch shell then
supervises the steps: a step that exits non-zero (or a server that exits at all) stops the job
within a second, naming the step; the trainer exiting 0 is a clean finish.

Secrets (the per-run HMAC secret and API key of a multi-node run) never appear in the script: the
launcher passes them in sbatch's environment, and the script makes fresh ones when resubmitted by
hand without them. `--dry-run` prints the script and every step's command and environment.
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
from areal_lite.launcher.common import parse_launch_args, preflight, run_prepare, tail, write_run_config
from areal_lite.launcher.plan import LOOPBACK, Plan, ProcessSpec, build_plan
from areal_lite.utils.runenv import ENV_API_KEY, ENV_SECRET, SECRET_VARS

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
    port_nodes: list[int]  # node index that binds port k
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


def build_slurm_plan(cfg: ExperimentConfig, entry: str, *, config_path: str, cwd: str | None = None) -> SlurmPlan:
    """The run's plan with Slurm-resolved nodes and ports, and the sbatch script that runs it."""
    n_nodes = cfg.cluster.n_nodes
    if n_nodes > 1 and cfg.cluster.bind_host in LOOPBACK:
        raise ConfigError(
            f"cluster.bind_host: {cfg.cluster.bind_host} is loopback but cluster.n_nodes={n_nodes}; "
            "set cluster.bind_host=0.0.0.0 (or the nodes' interface) so processes on other nodes can connect"
        )
    sc = cfg.launcher.slurm
    if sc.container_type != "none" and not sc.container_image:
        raise ConfigError(f"launcher.slurm.container_image: required with container_type={sc.container_type}")
    # One node on loopback: every address is 127.0.0.1. Otherwise the job's node names.
    hosts = ["localhost"] if (n_nodes == 1 and cfg.cluster.bind_host in LOOPBACK) else \
        [node_var(i) for i in range(n_nodes)]
    ports = ShellPorts()
    python = "python3" if sc.container_type != "none" else sys.executable
    cores = cfg.cluster.n_cpus_per_node or 1
    plan = build_plan(cfg, entry, config_path=config_path, hosts=hosts, ports=ports, cores=cores, python=python)
    head = plan.trainers[0].node_index
    port_nodes = [head] * len(ports.picked)
    for s in plan.servers:
        port_nodes[s.port.k] = s.node_index
    script_path = os.path.join(plan.run_dir, "slurm", "job.sbatch")
    job_log = os.path.join(plan.run_dir, "logs", "slurm-%j.log")
    script = render_script(cfg, plan, n_nodes=n_nodes, port_nodes=port_nodes, job_log=job_log,
                           cwd=cwd or os.getcwd())
    return SlurmPlan(plan, n_nodes, port_nodes, script, script_path, job_log)


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


def _container_prefix(cfg: ExperimentConfig) -> list[str]:
    sc = cfg.launcher.slurm
    if sc.container_type == "none":
        return []
    words = [sc.container_type, "exec"]
    if cfg.allocation.device == "cuda":
        words.append("--nv")
    for mount in sc.container_mounts:
        words += ["--bind", str(mount)]
    return words + [sc.container_image]


def _step_function(cfg: ExperimentConfig, spec: ProcessSpec) -> list[str]:
    sc = cfg.launcher.slurm
    srun = [
        "srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={node_var(spec.node_index)}",
        "--cpus-per-task=${SLURM_CPUS_ON_NODE}",
    ]
    if spec.devices:  # the step sees the node's GPUs; CUDA_VISIBLE_DEVICES below picks its own
        srun.append(f"--gres=gpu:{cfg.cluster.n_gpus_per_node}")
    srun += [f"--job-name={spec.name}", f"--output=${{LOGS}}/{spec.name}.log", "--open-mode=append"]
    srun += [str(a) for a in sc.srun_extra_args]
    env = {k: v for k, v in spec.env.items() if k not in SECRET_VARS}
    if spec.role in ("trainer", "rollout"):
        env["AREAL_LITE_RESTARTS"] = "${RESTARTS}"
    devices = ",".join(map(str, spec.devices)) if spec.devices else "-"
    lines = [
        f"# {spec.name}: {spec.role} on node {spec.node_index}, devices {devices}",
        f"start_{_fn(spec.name)}() {{",
        "    local RESTARTS=${1:-0}",
        "    " + " ".join(sh(w) for w in srun) + " \\",
    ]
    container = _container_prefix(cfg)
    if container:
        lines.append("        " + " ".join(sh(w) for w in container) + " \\")
    lines.append("        env \\")
    for k, v in sorted(env.items()):
        lines.append(f"            {k}={sh(v)} \\")
    lines.append("        " + " ".join(sh(w) for w in spec.cmd) + " &")
    lines.append(f"    started {spec.name} $!")
    lines.append("}")
    return lines


def _fn(name: str) -> str:
    return name.replace("-", "_")


SUPERVISION = r'''
declare -A STEP=()   # srun pid -> step name
declare -A PID=()    # step name -> srun pid
declare -A TRIES=()  # step name -> restarts so far

started() {
    STEP[$2]=$1
    PID[$1]=$2
    echo "[job] started $1 (srun pid $2, log $LOGS/$1.log)"
}

# SIGTERM every running srun (srun then ends its step), SIGKILL what is left after the grace period.
stop_steps() {
    local pid alive
    for pid in "${!STEP[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq $((STOP_GRACE_S * 10))); do
        alive=0
        for pid in "${!STEP[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    for pid in "${!STEP[@]}"; do kill -KILL "$pid" 2>/dev/null; done
}

fail() {
    echo "[job] error: step $1 $2"
    stop_steps
    exit 1
}

# A step that ends: trainer ranks exiting 0 finish the run, a worker exiting 0 has left; anything
# else fails the job (or restarts the step when recovery is on and retries are left).
supervise() {
    local trainers_left=$1 pid rc name deadline
    while true; do
        for pid in "${!STEP[@]}"; do
            kill -0 "$pid" 2>/dev/null && continue
            wait "$pid"
            rc=$?
            name=${STEP[$pid]}
            unset "STEP[$pid]"
            case "$name:$rc" in
                trainer*:0) trainers_left=$((trainers_left - 1)); echo "[job] $name finished" ;;
                worker*:0) echo "[job] $name left" ;;
                *)
                    if [[ $RECOVER == 1 && $name != server* && ${TRIES[$name]:-0} -lt $RETRIES ]]; then
                        TRIES[$name]=$(( ${TRIES[$name]:-0} + 1 ))
                        echo "[job] step $name exited with status $rc; restarting it (${TRIES[$name]}/$RETRIES)"
                        "start_${name//-/_}" "${TRIES[$name]}"
                    else
                        fail "$name" "exited with status $rc"
                    fi ;;
            esac
        done
        if ((trainers_left == 0)); then
            # Workers leave after the controller's shutdown: give them a moment, then stop the servers.
            deadline=$((SECONDS + WORKER_LEAVE_S))
            while ((SECONDS < deadline)); do
                alive=0
                for pid in "${!STEP[@]}"; do
                    [[ ${STEP[$pid]} == worker* ]] && kill -0 "$pid" 2>/dev/null && alive=1
                done
                ((alive)) || break
                sleep 0.2
            done
            stop_steps
            echo "[job] training finished"
            exit 0
        fi
        sleep 1
    done
}
'''


def render_script(cfg: ExperimentConfig, plan: Plan, *, n_nodes: int, port_nodes: list[int], job_log: str,
                  cwd: str) -> str:
    recover = cfg.recover.mode != "disabled"
    py = sh(sys.executable)
    lines = [
        "#!/bin/bash",
        f"# areal_lite run {plan.run_id} ({cfg.experiment_name}/{cfg.trial_name}), written by `python -m {PROG}`.",
        f"# {len(plan.servers)} server(s), {len(plan.trainers)} trainer node(s), {len(plan.workers)} rollout "
        f"worker(s) on {n_nodes} node(s). Config: {plan.config_path}",
        "# Every process is one `srun` step below; its output goes to $LOGS/<step>.log.",
        *_sbatch_header(cfg, plan, n_nodes, job_log, cwd),
        "set -o pipefail",
        "",
        f"RUN_DIR={sh(plan.run_dir)}",
        'LOGS="$RUN_DIR/logs"',
        f"PY={py}",
        f"STOP_GRACE_S={STOP_GRACE_S}",
        f"WORKER_LEAVE_S={WORKER_LEAVE_S}",
        f"RECOVER={1 if recover else 0}",
        f"RETRIES={cfg.recover.retries}",
        'mkdir -p "$LOGS" "$RUN_DIR/slurm"',
        'echo "[job] $SLURM_JOB_ID on $SLURM_JOB_NODELIST ($(date -Is))"',
        SUPERVISION.strip("\n"),
        "",
        "# --- 1. node names (from SLURM_JOB_NODELIST) and free ports, chosen in Python on the nodes that bind them",
        'JOB_ENV="$RUN_DIR/slurm/job-$SLURM_JOB_ID.env"',
        f'"$PY" -m areal_lite.launcher.slurm_step resolve --nodes {n_nodes} '
        f'--port-nodes {",".join(map(str, port_nodes))} >"$JOB_ENV" || fail resolve "failed"',
        'source "$JOB_ENV"',
        'echo "[job] nodes and ports: $(sed "s/^export //" "$JOB_ENV" | tr "\\n" " ")"',
    ]
    if plan.secret is not None:
        lines += [
            "# Per-run secrets come from sbatch's environment (never written here); fresh ones when absent.",
            f': "${{{ENV_SECRET}:=$("$PY" -c "import secrets; print(secrets.token_hex(32))")}}"',
            f': "${{{ENV_API_KEY}:=$("$PY" -c "import secrets; print(secrets.token_hex(16))")}}"',
            f"export {ENV_SECRET} {ENV_API_KEY}",
        ]
    lines += ["", "# --- 2. inference servers"]
    for spec in plan.servers:
        lines += _step_function(cfg, spec)
    lines += ["", "# --- 3. trainer: torchrun per trainer node, rendezvous on the first trainer node (rank 0 binds "
              "the controller)"]
    for spec in plan.trainers:
        lines += _step_function(cfg, spec)
    lines += ["", "# --- 4. rollout workers"]
    for spec in plan.workers:
        lines += _step_function(cfg, spec)
    lines += ["", "# --- run: servers, wait for /health, trainer, workers; then supervise"]
    lines += [f"start_{_fn(s.name)}" for s in plan.servers]
    wait = [f'"$PY" -m areal_lite.launcher.slurm_step wait-health --timeout {cfg.server.startup_timeout:g}']
    wait += [f'    --server {s.name} "${{PID[{s.name}]}}" {sh(s.health_url)}' for s in plan.servers]
    lines.append(" \\\n".join(wait) + " || { stop_steps; exit 1; }")
    lines.append(f'echo "[job] {len(plan.servers)} server(s) healthy"')
    lines += [f"start_{_fn(s.name)}" for s in plan.trainers + plan.workers]
    lines.append(f"supervise {len(plan.trainers)}")
    return "\n".join(lines) + "\n"


def describe(sp: SlurmPlan) -> str:
    """--dry-run: the script, then every step's host, devices, environment and command."""
    return "\n".join([
        f"# sbatch script ({sp.script_path}):",
        sp.script,
        "# steps (${AREAL_NODE<i>} / ${AREAL_PORT_<k>} are resolved inside the job):",
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
        m = re.findall(r"^\[job\] error: step (\S+?):? (.*)$", text, re.M)
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
        from areal_lite.launcher.local import _progress

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
                self._say(_progress(json.loads(line), self.cfg))
            except ValueError:
                continue


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def submit(sp: SlurmPlan) -> str:
    """sbatch the script; the run's secrets travel in sbatch's environment (--export=ALL)."""
    env = dict(os.environ)
    for spec in sp.plan.trainers[:1]:
        env.update({k: v for k, v in spec.env.items() if k in SECRET_VARS})
    for spec in sp.plan.servers[:1]:
        env.update({k: v for k, v in spec.env.items() if k in SECRET_VARS})
    out = subprocess.run(["sbatch", "--parsable", "--export=ALL", sp.script_path],
                         capture_output=True, text=True, env=env, timeout=120)
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
    previous = {s: signal.signal(s, lambda signum, _f: stop.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_prepare(cfg, config_path, os.path.join(sp.plan.run_dir, "logs", "prepare.log"))
        if stop:
            return 128 + stop[0]
        job_id = submit(sp)
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
