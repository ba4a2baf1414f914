"""Run on a Ray cluster: `python -m areal_lite.launcher.ray ENTRY.py --config X.yaml k=v ...`

    # a local Ray cluster, started and shut down by the launcher
    python -m areal_lite.launcher.ray examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo_cpu.yaml
    # join a running cluster (`ray start --head` here, `ray start --address=HEAD:6379` on the others)
    python -m areal_lite.launcher.ray examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo.yaml \\
        launcher.ray.address=auto cluster.n_nodes=2 cluster.n_gpus_per_node=8 cluster.bind_host=0.0.0.0
    # the plan and the placement groups, nothing started (no Ray needed)
    python -m areal_lite.launcher.ray ... --dry-run

The same plan as the local launcher (`plan.build_plan`) and the same supervisor (start order,
supervision, restarts, progress line, exit codes: launcher/supervisor.py); only process control
goes through Ray (`RayActors`). Every process of the plan is a subprocess of one `ProcessHost`
actor, in its own session, its output in `{run}/logs/<name>.log` on the actor's node:

- placement: one placement group per role (servers, trainer, rollout workers); each bundle is pinned
  to the node the plan chose for its process (`node:<ip>` resource), holds the process's GPUs
  (whole devices: tensor-parallel and FSDP ranks need their own) and a share of the node's CPUs
  scaled down to fit (fractional CPUs);
- devices: Ray picks the GPUs inside a bundle and sets the actor's CUDA_VISIBLE_DEVICES; the child
  gets that value (the plan's device numbers are the per-node counts the dry run shows);
- trainer: one actor per trainer node runs torchrun (the command the local and Slurm launchers run;
  torchrun sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT for its ranks);
- addresses: the plan's ports are free on every chosen node (checked by a probe on each node) and
  travel to the processes in their environment; the resolved config is written by the actors, so
  no shared filesystem is needed to start (disk weight sync needs one between trainer and servers);
- supervision: each actor is polled every 0.2 s, so a dead process (or a dead actor, e.g. a lost
  node) is noticed within a second; stopping sends SIGTERM then SIGKILL to each process group from
  its actor (or directly when the actor is gone and the process runs on this machine), then kills
  the actors, removes the placement groups and shuts down the Ray cluster if the launcher started it.

Ray's token authentication stays on: for a cluster it starts, the launcher creates a per-run token
(`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN`) unless those are set; to join a cluster, Ray finds the
token in `RAY_AUTH_TOKEN` or `~/.ray/auth_token`. The token is removed from the children's
environment.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from areal_lite.config import ConfigError, exit_on_config_error
from areal_lite.config.schema import ExperimentConfig, run_dir
from areal_lite.launcher.common import Stopped, kill_process_tree, load_for_launcher, run_prepare, tail, write_run_config
from areal_lite.launcher.plan import LOOPBACK, Plan, PortPicker, ProcessSpec, build_plan, torch_threads
from areal_lite.launcher.ray_host import ProcessHost
from areal_lite.launcher.supervisor import STOP_SIGNALS, Backend, Child, LaunchError, Supervisor

RPC_S = 30.0  # a ProcessHost call that takes longer means its node is in trouble
START_S = 180.0  # a new actor: a Ray worker process starts first
READY_S = 120.0  # placement groups must be reserved within this
MIN_CPU = 0.01
ROLE_GROUPS = (("server", "servers"), ("trainer", "trainer"), ("rollout", "rollout workers"))


# ---------------------------------------------------------------------------------------------
# Placement: hosts, ports, bundles
# ---------------------------------------------------------------------------------------------


@dataclass
class Bundle:
    spec: ProcessSpec
    cpus: float
    gpus: int

    def resources(self, node_ip: str | None) -> dict[str, float]:
        res: dict[str, float] = {"CPU": self.cpus}
        if self.gpus:
            res["GPU"] = float(self.gpus)
        if node_ip:
            res[f"node:{node_ip}"] = 0.001  # pins the bundle to the node the plan chose
        return res


def check_topology(cfg: ExperimentConfig) -> None:
    if cfg.cluster.n_nodes > 1 and cfg.cluster.bind_host in LOOPBACK:
        raise ConfigError(f"cluster.bind_host: {cfg.cluster.bind_host} cannot be reached from other nodes; "
                          f"a run on {cfg.cluster.n_nodes} nodes needs e.g. cluster.bind_host=0.0.0.0")


def bundles(cfg: ExperimentConfig, plan: Plan, cpus_per_node: float) -> list[Bundle]:
    """CPU and GPU requests of every process; CPU shares are scaled down per node to fit (fractional)."""
    threads = torch_threads(cfg, int(cpus_per_node) or 1)
    out: list[Bundle] = []
    for spec in plan.all():
        weight = {"server": threads, "trainer": threads * cfg.allocation.trainer.nproc_per_node}.get(spec.role, 1)
        out.append(Bundle(spec, float(weight), len(spec.devices)))
    for node in {b.spec.node_index for b in out}:
        on_node = [b for b in out if b.spec.node_index == node]
        scale = min(1.0, cpus_per_node / sum(b.cpus for b in on_node))
        for b in on_node:
            b.cpus = max(MIN_CPU, int(b.cpus * scale * 100) / 100)
    return out


def describe_groups(groups: dict[str, list[Bundle]]) -> str:
    lines = ["Ray placement groups (one per role; each bundle pinned to its process's node):"]
    for role, title in ROLE_GROUPS:
        if groups.get(role):
            shown = ", ".join(f"{b.spec.name}@{b.spec.host}{{CPU: {b.cpus:g}, GPU: {b.gpus}}}" for b in groups[role])
            lines.append(f"  {title}: {shown}")
    return "\n".join(lines)


def by_role(all_bundles: list[Bundle]) -> dict[str, list[Bundle]]:
    return {role: [b for b in all_bundles if b.spec.role == role] for role, _ in ROLE_GROUPS}


class ClusterPortPicker(PortPicker):
    """Ports free on every node of the run: candidates from the first node, checked on the others."""

    def __init__(self, hosts_actors: list, need: int):
        import ray

        first, rest = hosts_actors[0], hosts_actors[1:]
        candidates = ray.get(first.free_ports.remote(2 * need + 8), timeout=RPC_S)
        ok = [True] * len(candidates)
        for actor in rest:
            for i, free in enumerate(ray.get(actor.ports_free.remote(candidates), timeout=RPC_S)):
                ok[i] = ok[i] and free
        super().__init__(fixed=[p for p, good in zip(candidates, ok) if good])


def choose_nodes(cfg: ExperimentConfig) -> tuple[list[str], float]:
    """IPs of the nodes the run uses (this machine's first) and the CPUs per node to plan with."""
    import ray

    here = ray.util.get_node_ip_address()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    need_gpus = cfg.cluster.n_gpus_per_node if cfg.allocation.device == "cuda" else 0
    fit = [n for n in nodes if n["Resources"].get("GPU", 0) >= need_gpus]
    fit.sort(key=lambda n: (n["NodeManagerAddress"] != here, n["NodeManagerAddress"]))
    if len(fit) < cfg.cluster.n_nodes:
        raise ConfigError(f"cluster.n_nodes: needs {cfg.cluster.n_nodes} Ray node(s) with {need_gpus} GPU(s) each, "
                          f"the cluster has {len(fit)} of {len(nodes)} alive node(s) that fit")
    chosen = fit[: cfg.cluster.n_nodes]
    cpus = min(n["Resources"].get("CPU", 0) for n in chosen)
    if cfg.cluster.n_cpus_per_node:
        cpus = min(cpus, cfg.cluster.n_cpus_per_node)
    if cpus < 1:
        raise ConfigError("the Ray nodes offer no CPU (start them with --num-cpus)")
    return [n["NodeManagerAddress"] for n in chosen], cpus


# ---------------------------------------------------------------------------------------------
# Supervision: the local supervisor with process control through actors
# ---------------------------------------------------------------------------------------------


class RayProcess:
    """A Popen-like view (poll, wait, pid) of the process a ProcessHost actor runs."""

    def __init__(self, actor, pid: int):
        self.actor = actor
        self.pid = pid
        self.returncode: int | None = None
        self.lost = False

    def poll(self) -> int | None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        if self.returncode is None:
            try:
                self.returncode = ray.get(self.actor.poll.remote(), timeout=RPC_S)
            except GetTimeoutError:
                return None
            except RayActorError:  # the actor (or its node) died: so did its process
                self.lost = True
                self.returncode = -signal.SIGKILL
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("process", timeout)
            time.sleep(0.1)
        return self.returncode


class RayActors(Backend):
    """Each process of the plan a subprocess of one `ProcessHost` actor, in its placement-group bundle."""

    where = "Ray nodes"

    def __init__(self, plan: Plan, placed: dict[str, tuple[object, list[Bundle]]], files: dict[str, str], here: str):
        self.plan = plan
        self.placed = placed  # role → (placement group, bundles in plan order)
        self.files = files
        self.here = here  # this machine's IP (processes placed here can be signalled directly)
        self.actors: dict[str, object] = {}

    def _bundle(self, spec: ProcessSpec) -> tuple[object, int, Bundle]:
        pg, bs = self.placed[spec.role]
        i = next(k for k, b in enumerate(bs) if b.spec.name == spec.name)
        return pg, i, bs[i]

    def _actor(self, child: Child):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        old = self.actors.get(child.spec.name)
        if old is not None and not (isinstance(child.handle, RayProcess) and child.handle.lost):
            return old
        if old is not None:
            ray.kill(old, no_restart=True)
        pg, index, b = self._bundle(child.spec)
        actor = ray.remote(ProcessHost).options(
            name=f"areal_lite-{self.plan.run_id}-{child.spec.name}-{child.restarts}",
            num_cpus=b.cpus, num_gpus=b.gpus, max_restarts=0, max_concurrency=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
        ).remote()
        self.actors[child.spec.name] = actor
        return actor

    def start(self, child: Child) -> RayProcess:
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        actor = self._actor(child)
        dirs = [os.path.dirname(child.log_path), os.path.join(self.plan.run_dir, "weights")]
        try:
            pid = ray.get(actor.start.remote(child.spec.cmd, child.spec.env, child.log_path, self.files, dirs,
                                             bool(child.spec.devices)), timeout=START_S)
        except (RayError, GetTimeoutError) as e:
            raise LaunchError(f"could not start {child.spec.name} on {child.spec.host}: {e}") from None
        return RayProcess(actor, pid)

    def _on_this_machine(self, child: Child) -> bool:
        return child.spec.host in ("localhost", self.here)

    def kill_tree(self, child: Child, sig: int) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            ray.get(child.handle.actor.kill_tree.remote(sig), timeout=RPC_S)
            return
        except (RayActorError, GetTimeoutError):
            pass
        if self._on_this_machine(child):  # the actor is gone; its processes may not be
            kill_process_tree(child.handle.pid, sig)

    def tail(self, child: Child) -> str:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        if child.handle is not None and not child.handle.lost:
            try:
                return ray.get(child.handle.actor.tail.remote(), timeout=RPC_S)
            except (RayActorError, GetTimeoutError):
                pass
        return tail(child.log_path) if self._on_this_machine(child) else "(the log is on a lost node)"

    def read_file(self, path: str, pos: int) -> str:
        """The trainer's node writes the metrics: read them through its actor."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        actor = self.actors.get(self.plan.trainers[0].name)
        if actor is None:
            return ""
        try:
            return ray.get(actor.read_from.remote(path, pos), timeout=RPC_S)
        except (RayActorError, GetTimeoutError):
            return ""

    def release(self) -> None:
        """Kill the actors (after the supervisor stopped their processes)."""
        import ray

        for actor in self.actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - best effort while tearing down
                pass


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def set_local_auth(cfg: ExperimentConfig) -> None:
    """A per-run token keeps Ray's token auth on for a cluster we start, without writing ~/.ray/auth_token.

    NOTE: must run before `import ray`: Ray reads RAY_AUTH_MODE when it is imported.
    """
    if not cfg.launcher.ray.address and "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def connect(cfg: ExperimentConfig) -> bool:
    """Join the configured cluster or start a local one; True when this launcher started it."""
    import ray

    address = cfg.launcher.ray.address
    opts = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    if address:
        ray.init(address=address, **opts)
        return False
    cores = os.cpu_count() or 1
    num_cpus = cfg.launcher.ray.num_cpus or cores
    if num_cpus > cores:
        raise ConfigError(f"launcher.ray.num_cpus: {num_cpus} exceeds this machine's {cores} cores")
    if cfg.cluster.n_nodes > 1:
        raise ConfigError(f"cluster.n_nodes={cfg.cluster.n_nodes} needs a running multi-node Ray cluster: "
                          "set launcher.ray.address (e.g. auto)")
    # The launcher's actors pass almost nothing through the object store.
    ray.init(address="local", num_cpus=num_cpus, object_store_memory=128 * 1024**2, **opts)
    return True


def reserve(all_bundles: list[Bundle], hosts: list[str], *, pin: bool,
            run_id: str) -> dict[str, tuple[object, list[Bundle]]]:
    """One placement group per role; raises LaunchError naming the role that cannot be placed."""
    from ray.util.placement_group import placement_group

    placed = {}
    for role, title in ROLE_GROUPS:
        bs = [b for b in all_bundles if b.spec.role == role]
        if not bs:
            continue
        pg = placement_group([b.resources(hosts[b.spec.node_index] if pin else None) for b in bs], strategy="PACK",
                             name=f"areal_lite-{run_id}-{role}")
        placed[role] = (pg, bs)
    for role, (pg, bs) in placed.items():
        if not pg.wait(READY_S):
            title = dict(ROLE_GROUPS)[role]
            raise LaunchError(f"the placement group of the {title} was not reserved within {READY_S:.0f}s "
                              f"({describe_groups({role: bs}).splitlines()[1].strip()}); is the cluster busy?")
    return placed


def plan_on_cluster(cfg: ExperimentConfig, entry: str, config_path: str) -> tuple[Plan, list[Bundle], list[str], str]:
    import ray

    hosts, cpus = choose_nodes(cfg)
    here = ray.util.get_node_ip_address()
    ports = PortPicker()
    if hosts != [here]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node_ids = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
        probes = [ray.remote(ProcessHost).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_ids[ip], soft=False)).remote()
            for ip in hosts]
        ports = ClusterPortPicker(probes, cfg.allocation.inference.num_servers + 5)
        for p in probes:
            ray.kill(p)
    plan_hosts = ["localhost"] if hosts == [here] else hosts
    if plan_hosts != ["localhost"] and cfg.cluster.bind_host in LOOPBACK:
        raise ConfigError(f"cluster.bind_host: {cfg.cluster.bind_host} is not reachable from the Ray node(s) "
                          f"{', '.join(hosts)}; set cluster.bind_host=0.0.0.0")
    plan = build_plan(cfg, entry, config_path=config_path, hosts=plan_hosts, ports=ports, cores=int(cpus))
    return plan, bundles(cfg, plan, cpus), hosts, here


def dry_run(cfg: ExperimentConfig, entry: str, config_path: str) -> int:
    """Print the plan and the placement groups it would reserve on `cluster.n_nodes` nodes."""
    n = cfg.cluster.n_nodes
    cpus = cfg.cluster.n_cpus_per_node or cfg.launcher.ray.num_cpus or os.cpu_count() or 1
    hosts = [f"node{i}" for i in range(n)] if n > 1 else None
    plan = build_plan(cfg, entry, config_path=config_path, hosts=hosts, cores=cpus)
    print(plan.describe())
    print(describe_groups(by_role(bundles(cfg, plan, cpus))))
    return 0


def release_cluster(placed: dict[str, tuple[object, list[Bundle]]], started: bool) -> None:
    """Remove this run's placement groups and disconnect; stops the local cluster if this launcher started it."""
    import ray
    from ray.util.placement_group import remove_placement_group

    for pg, _ in placed.values():
        try:
            remove_placement_group(pg)
        except Exception:  # noqa: BLE001 - best effort while tearing down
            pass
    if ray.is_initialized():
        ray.shutdown()
    if started:
        print("[launcher] local Ray cluster stopped", flush=True)


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = load_for_launcher(argv, "areal_lite.launcher.ray")
    cfg = args.cfg
    check_topology(cfg)
    config_path = os.path.join(os.path.abspath(run_dir(cfg)), "config.yaml")
    if args.dry_run:
        return dry_run(cfg, args.entry, config_path)

    received: list[int] = []
    supervisor: Supervisor | None = None

    def on_signal(signum, _frame):
        received.append(signum)
        if supervisor is not None:
            supervisor.stop_signal = signum

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    set_local_auth(cfg)
    import ray

    started = False
    placed: dict[str, tuple[object, list[Bundle]]] = {}
    try:
        started = connect(cfg)
        # NOTE: ray.init installs its own SIGTERM handler (sys.exit); ours must come after it.
        for sig in STOP_SIGNALS:
            signal.signal(sig, on_signal)
        res = ray.cluster_resources()
        print(f"[launcher] Ray cluster: {'started locally' if started else cfg.launcher.ray.address}, "
              f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU", flush=True)
        plan, all_bundles, hosts, here = plan_on_cluster(cfg, args.entry, config_path)
        write_run_config(cfg)
        print(describe_groups(by_role(all_bundles)), flush=True)
        if received:
            raise Stopped(received[0])
        run_prepare(cfg, config_path, os.path.join(plan.run_dir, "logs", "prepare.log"),
                    stop=lambda: received[0] if received else None)
        placed = reserve(all_bundles, hosts, pin=plan.all()[0].host != "localhost", run_id=plan.run_id)
        with open(config_path) as fh:
            files = {config_path: fh.read()}
        supervisor = Supervisor(cfg, plan, RayActors(plan, placed, files, here))
        if received:
            raise Stopped(received[0])
        return supervisor.run()
    except (LaunchError, RuntimeError) as e:
        print(f"[launcher] error: {e}", flush=True)
        return 1
    except Stopped as e:
        print(f"[launcher] received {signal.Signals(e.signum).name}: stopping", flush=True)
        return 128 + e.signum
    finally:
        release_cluster(placed, started)


if __name__ == "__main__":
    sys.exit(main())
