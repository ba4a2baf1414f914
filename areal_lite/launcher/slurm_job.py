"""Inside a Slurm allocation: the run's supervisor, each process one `srun` step.

    python -m areal_lite.launcher.slurm_job ENTRY.py --config RUN_DIR/config.yaml

The sbatch script that `areal_lite.launcher.slurm` writes runs this one command. It expands the
job's node list, picks every port free on the node that binds it (ports of other nodes are picked
there by a one-task `srun`), builds the same plan as every launcher (`plan.build_plan`) and runs
the one supervisor (launcher/supervisor.py: start order, health, restart policy, stopping) with
`SlurmSteps` as its process backend. Its console lines start with `[job]`; the launcher on the login
node relays them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from areal_lite.config import exit_on_config_error, load_config
from areal_lite.config.schema import ExperimentConfig
from areal_lite.launcher.common import kill_process_tree
from areal_lite.launcher.plan import LOOPBACK, Plan, build_plan
from areal_lite.launcher.slurm import ShellPorts, container_prefix, plan_hosts
from areal_lite.launcher.slurm_step import job_hostnames, ports_on_node
from areal_lite.launcher.supervisor import Backend, Child, Supervisor
from areal_lite.utils.net import free_ports


class SlurmSteps(Backend):
    """Each process an `srun --overlap` step on its node (its whole process tree is the step's)."""

    where = "Slurm nodes"

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.job_id = os.environ.get("SLURM_JOB_ID", "")

    def start(self, child: Child) -> subprocess.Popen:
        spec, sc = child.spec, self.cfg.launcher.slurm
        srun = ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={spec.host}",
                f"--cpus-per-task={os.environ.get('SLURM_CPUS_ON_NODE', '1')}", f"--job-name={spec.name}",
                f"--output={child.log_path}", "--open-mode=append", "--kill-on-bad-exit=1"]
        if spec.devices:  # the step sees the node's GPUs; CUDA_VISIBLE_DEVICES picks its own
            srun.append(f"--gres=gpu:{self.cfg.cluster.n_gpus_per_node}")
        srun += [str(a) for a in sc.srun_extra_args]
        cmd = [*srun, *container_prefix(self.cfg), *spec.cmd]
        return subprocess.Popen(cmd, env={**os.environ, **spec.env}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def kill_tree(self, child: Child, sig: int) -> None:
        """srun forwards SIGTERM to the step's tasks; SIGKILL goes to the step itself (every process
        Slurm started for it, wherever it runs) and to srun."""
        if sig == signal.SIGKILL and self.job_id:
            for step in self._steps(child.spec.name):
                subprocess.run(["scancel", "--signal=KILL", step], capture_output=True, timeout=30)
        kill_process_tree(child.handle.pid, sig)

    def _steps(self, name: str) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-s", "-j", self.job_id, "-o", "%i %j"], capture_output=True,
                             text=True, timeout=30)
        return [s for s, n in (line.split(maxsplit=1) for line in out.stdout.splitlines() if " " in line)
                if n.strip() == name]


def plan_in_job(cfg: ExperimentConfig, entry: str, config_path: str) -> Plan:
    """The run's plan on the job's nodes, every port free on the node that binds it."""
    hosts = plan_hosts(cfg)
    if hosts != ["localhost"]:
        names = job_hostnames()
        if len(names) < len(hosts):
            raise RuntimeError(f"the job has {len(names)} node(s) ({', '.join(names)}) but the plan needs {len(hosts)}")
        hosts = names[: len(hosts)]
    # Which node binds each port the plan asks for: a first plan with placeholder ports says.
    placeholders = ShellPorts()
    draft = build_plan(cfg, entry, config_path=config_path, hosts=hosts, ports=placeholders, run_id="draft")
    binders = [draft.trainers[0].node_index] * len(placeholders.picked)
    for s in draft.servers:
        binders[s.port.k] = s.node_index
    here = {os.uname().nodename.split(".")[0], "localhost"}
    chosen = [0] * len(binders)
    for node in sorted(set(binders)):
        ks = [k for k, n in enumerate(binders) if n == node]
        local = hosts[node].split(".")[0] in here
        for k, port in zip(ks, free_ports(len(ks)) if local else ports_on_node(hosts[node], len(ks))):
            chosen[k] = port
    fixed = iter(chosen)
    return build_plan(cfg, entry, config_path=config_path, hosts=hosts, ports=lambda: next(fixed),
                      cores=cfg.cluster.n_cpus_per_node or int(os.environ.get("SLURM_CPUS_ON_NODE", "1")))


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    entry, rest = argv[0], argv[1:]
    cfg = load_config(rest)
    config_path = rest[rest.index("--config") + 1]
    say = lambda msg: print(f"[job] {msg}", flush=True)  # noqa: E731
    say(f"{os.environ.get('SLURM_JOB_ID', '?')} on {os.environ.get('SLURM_JOB_NODELIST', '?')} "
        f"({time.strftime('%Y-%m-%dT%H:%M:%S')})")
    try:
        plan = plan_in_job(cfg, entry, config_path)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        say(f"error: resolve {e}")
        return 1
    if cfg.cluster.bind_host in LOOPBACK and len({s.host for s in plan.all()}) > 1:
        say("error: resolve processes on several nodes need cluster.bind_host=0.0.0.0")
        return 1
    supervisor = Supervisor(cfg, plan, SlurmSteps(cfg), say=say)
    supervisor.handle_signals()
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
