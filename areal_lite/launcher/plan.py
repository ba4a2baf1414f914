"""The placement plan: every process of a run, with its command line, environment, host and devices.

All launchers build the same plan from the config and differ only in how they start it (local
processes, Ray actors, Slurm steps). `--dry-run` prints it. Secrets are passed in the environment,
never on a command line we generate for our own processes, and are redacted when printed.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
import uuid
from dataclasses import dataclass, field

from areal_lite.config.placement import server_ranks
from areal_lite.config.schema import (
    ExperimentConfig,
    gpu_placement,
    resolved_mem_fraction,
    resolved_serving_dtype,
    resolved_trainer_world_size,
    run_dir,
)
from areal_lite.run.rundir import RunDir
from areal_lite.utils.net import free_port
from areal_lite.utils.runenv import ENV_API_KEY, ENV_MAX_THREADS, RunEnv, redact_env

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# `python -c` body running `sglang.launch_server` with `--api-key $AREAL_LITE_API_KEY` appended.
SGLANG_WITH_ENV_KEY = (
    "import os, runpy, sys; "
    f"sys.argv = ['sglang.launch_server', *sys.argv[1:], '--api-key', os.environ['{ENV_API_KEY}']]; "
    "runpy.run_module('sglang.launch_server', run_name='__main__', alter_sys=True)"
)


@dataclass
class ProcessSpec:
    name: str  # server0 | trainer | trainer-node1 | worker0 | prepare
    role: str  # server | trainer | rollout | prepare
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the launcher's environment
    host: str = "localhost"  # node label ("node0", ...) or hostname
    node_index: int = 0
    devices: list[int] = field(default_factory=list)
    port: int | None = None  # HTTP port of a server
    health_url: str | None = None
    weight_ranks: list[int] = field(default_factory=list)  # a server's ranks in the weight-update group

    def describe(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(redact_env(self.env).items()))
        devices = ",".join(map(str, self.devices)) if self.devices else "-"
        ranks = f" weight_ranks={','.join(map(str, self.weight_ranks))}" if self.weight_ranks else ""
        return (f"[{self.name}] role={self.role} host={self.host} devices={devices}{ranks}\n  env: {env}\n"
                f"  cmd: {shlex.join(self.cmd)}")


@dataclass
class Plan:
    run_id: str
    run_dir: str
    config_path: str
    servers: list[ProcessSpec]
    trainers: list[ProcessSpec]
    workers: list[ProcessSpec]
    server_urls: list[str]
    secret: bytes | None = None

    def all(self) -> list[ProcessSpec]:
        return [*self.servers, *self.trainers, *self.workers]

    def describe(self) -> str:
        lines = [
            f"run {self.run_id}: {len(self.servers)} server(s), {len(self.trainers)} trainer node(s), "
            f"{len(self.workers)} rollout worker(s)",
            f"run directory: {self.run_dir}",
            f"config: {self.config_path}",
        ]
        lines += [p.describe() for p in self.all()]
        return "\n".join(lines)


class PortPicker:
    """Distinct free ports for one launch (never the same port twice, even before it is bound)."""

    def __init__(self, host: str = "127.0.0.1", fixed: list[int] | None = None):
        self.host = host
        self.fixed = list(fixed or [])
        self.used: set[int] = set()

    def __call__(self) -> int:
        if self.fixed:
            port = self.fixed.pop(0)
        else:
            port = free_port(self.host)
            while port in self.used:
                port = free_port(self.host)
        self.used.add(port)
        return port


def reachable_host(host: str, bind: str) -> str:
    """The address other processes use for a process on `host` that binds `bind`: this machine's
    loopback, unless it binds one specific interface (then only that address answers)."""
    if host != "localhost":
        return host
    return bind if bind not in (*LOOPBACK, "0.0.0.0", "::", "") else "127.0.0.1"


def torchrun_command(python: str, master_addr: str, master_port: int, *, node_rank: int, nnodes: int,
                     nproc: int, local: bool) -> list[str]:
    """torchrun and its rendezvous options, up to the entry script. On this machine, its rendezvous store
    listens on the master address alone (launcher/torchrun.py; a plain torchrun's store listens on every
    interface)."""
    if local and nnodes == 1:
        endpoint = f"[{master_addr}]:{master_port}" if ":" in master_addr else f"{master_addr}:{master_port}"
        return [python, "-m", "areal_lite.launcher.torchrun", "--rdzv-backend", "static-bound",
                "--rdzv-endpoint", endpoint, "--rdzv-conf", f"rank={node_rank}", "--nnodes", "1",
                "--nproc-per-node", str(nproc), "--max-restarts", "0"]
    return [python, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
            "--node-rank", str(node_rank), "--master-addr", master_addr, "--master-port", str(master_port),
            "--max-restarts", "0"]


def multi_host(cfg: ExperimentConfig) -> bool:
    return cfg.cluster.n_nodes > 1 or cfg.cluster.bind_host not in LOOPBACK


def torch_threads(cfg: ExperimentConfig, cores: int) -> int:
    """Threads per torch-heavy process: the cores divided among servers and trainer ranks (CPU)."""
    if cfg.launcher.torch_threads > 0:
        return cfg.launcher.torch_threads
    heavy = cfg.allocation.inference.num_servers + resolved_trainer_world_size(cfg)
    return max(1, cores // max(1, heavy))


def elastic_threads_env(cfg: ExperimentConfig, cores: int) -> dict[str, str]:
    """The trainer's licence to take every core while no rollout is in flight (run/threads.py): one CPU
    rank sharing the node with the servers, threads not fixed by `launcher.torch_threads`."""
    if (cfg.allocation.device != "cpu" or not cfg.launcher.elastic_threads or cfg.launcher.torch_threads > 0
            or resolved_trainer_world_size(cfg) != 1 or cores <= torch_threads(cfg, cores)):
        return {}
    return {ENV_MAX_THREADS: str(cores)}


def server_command(cfg: ExperimentConfig, *, host: str, port: int, seed: int, weights_dir: str,
                   model_path: str | None = None, weight_version: int = 0) -> list[str]:
    """The command line of one inference server (embedded engine or SGLang).

    A `model_path` inside `weights_dir` (a restart from the trainer's newest weights) is pinned
    first: the trainer prunes old `v{N}` folders while the new server is still starting.
    """
    if model_path is not None and _inside(model_path, weights_dir):
        model_path, weight_version = RunDir(os.path.dirname(weights_dir)).pin_newest_weights(f"server-{port}")
    path = model_path or cfg.actor.path
    if cfg.allocation.inference.backend == "sglang":
        from areal_lite.inference.sglang import build_sglang_command

        cmd = build_sglang_command(cfg.sglang, cfg.server, model_path=path, host=host, port=port, seed=seed,
                                   tp_size=cfg.allocation.inference.tp_size, mem_fraction=resolved_mem_fraction(cfg),
                                   dtype=resolved_serving_dtype(cfg), weight_version=weight_version)
        # SGLang takes its key only as `--api-key`; add it from the environment inside the process
        # so that it never shows on a command line (`ps` lists those to every user).
        return [cmd[0], "-c", SGLANG_WITH_ENV_KEY, *cmd[3:]] if multi_host(cfg) else cmd
    slow = ["--debug-step-delay", str(cfg.server.debug_step_delay_s)] if cfg.server.debug_step_delay_s > 0 else []
    return [
        sys.executable, "-m", "areal_lite.inference.embedded.launch_server",
        "--model-path", path,
        "--host", host,
        "--port", str(port),
        "--skip-tokenizer-init",
        "--context-length", str(cfg.server.context_length),
        "--max-running-requests", str(cfg.server.max_running_requests),
        "--dtype", resolved_serving_dtype(cfg),
        "--random-seed", str(seed),
        "--device", cfg.allocation.device,
        "--weight-version", str(weight_version),
        "--allowed-weight-dir", weights_dir,
        *slow,
    ]


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


def build_plan(
    cfg: ExperimentConfig,
    entry: str,
    *,
    config_path: str,
    hosts: list[str] | None = None,
    ports: PortPicker | None = None,
    run_id: str | None = None,
    cores: int | None = None,
    python: str = sys.executable,
) -> Plan:
    """Place servers, trainer ranks and rollout workers on `hosts` (default: this machine).

    GPU placement: `areal_lite.config.placement` (servers first, tp_size devices each; the trainer on
    nodes with enough free devices for all its ranks; or colocated on the trainer's devices); on CPU
    everything shares the node.
    """
    hosts = hosts or ["localhost"]
    ports = ports or PortPicker()
    run_id = run_id or uuid.uuid4().hex[:12]
    cores = cores or cfg.cluster.n_cpus_per_node or os.cpu_count() or 1
    rdir = os.path.abspath(run_dir(cfg))
    spans_hosts = multi_host(cfg)
    secret = secrets.token_bytes(32) if spans_hosts else None
    api_key = secrets.token_hex(16) if spans_hosts else None
    gpu = cfg.allocation.device == "cuda"
    base_env = process_env(cfg, cores)
    placement = gpu_placement(cfg) if gpu else None
    servers, urls = server_specs(cfg, hosts, ports, placement, base_env, api_key,
                                 weights_dir=os.path.join(rdir, "weights"))

    # Trainer: the placement's nodes (GPU), or the first nodes (CPU).
    trainer_devices = placement.trainer if placement else [(n, []) for n in range(cfg.allocation.trainer.nnodes)]
    head = trainer_devices[0][0]
    head_host = reachable_host(hosts[head], cfg.cluster.bind_host)
    traj_port, ctrl_port, pub_port, master_port, sync_port = ports(), ports(), ports(), ports(), ports()
    run_env = RunEnv(role="trainer", run_id=run_id, run_dir=rdir, secret=secret, api_key=api_key, server_addrs=urls,
                     controller_host=head_host, trajectory_port=traj_port, control_port=ctrl_port,
                     broadcast_port=pub_port, weight_sync_port=sync_port)
    env = {**base_env, **run_env.to_environ()}
    trainer_env = {**env, **elastic_threads_env(cfg, cores)}
    trainers = trainer_specs(cfg, hosts, trainer_devices, trainer_env, head_host, master_port, python=python,
                             program=[entry, "--config", config_path])
    workers = [
        ProcessSpec(f"worker{i}", "rollout", [python, entry, "--config", config_path],
                    {**env, "OMP_NUM_THREADS": "1", "AREAL_LITE_ROLE": "rollout", "AREAL_LITE_WORKER_INDEX": str(i)},
                    hosts[head], head)
        for i in range(cfg.allocation.rollout.num_workers)
    ]
    return Plan(run_id, rdir, config_path, servers, trainers, workers, urls, secret)


def process_env(cfg: ExperimentConfig, cores: int) -> dict[str, str]:
    """The environment every process of the run starts with (before its role's own variables)."""
    gpu = cfg.allocation.device == "cuda"
    env = {
        "OMP_NUM_THREADS": str(torch_threads(cfg, cores)) if not gpu else "4",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    if gpu:
        # SGLang sets both to 0 in its servers unless they are set; the trainer's side of the NCCL
        # weight-update group must agree, and a colocated trainer fragments less with expandable segments.
        env.update(NCCL_CUMEM_ENABLE="0", NCCL_NVLS_ENABLE="0", PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    env.update({k: str(v) for k, v in cfg.launcher.env.items()})
    return env


def server_specs(cfg: ExperimentConfig, hosts: list[str], ports: PortPicker, placement, base_env: dict[str, str],
                 api_key: str | None, *, weights_dir: str) -> tuple[list[ProcessSpec], list[str]]:
    """One inference server per `allocation.inference.num_servers`, and the URLs clients reach them at."""
    al, bind = cfg.allocation, cfg.cluster.bind_host
    tp = al.inference.tp_size
    offsets, _ = server_ranks(al.inference.num_servers, tp)
    distributed = cfg.actor.weight_update_mode == "distributed"
    servers, urls = [], []
    for i in range(al.inference.num_servers):
        node, devices = placement.servers[i] if placement else (0, [])
        host, port = hosts[node], ports()
        env = dict(base_env)
        if placement:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        if api_key:
            env[ENV_API_KEY] = api_key
        cmd = server_command(cfg, host=bind, port=port, seed=cfg.seed * 1000 + i, weights_dir=weights_dir)
        url = f"http://{reachable_host(host, bind)}:{port}"
        urls.append(url)
        ranks = list(range(offsets[i], offsets[i] + tp)) if distributed else []
        servers.append(ProcessSpec(f"server{i}", "server", cmd, env, host, node, devices, port, f"{url}/health", ranks))
    return servers, urls


def trainer_specs(cfg: ExperimentConfig, hosts: list[str], trainer_devices: list[tuple[int, list[int]]],
                  env: dict[str, str], head_host: str, master_port: int, *, python: str,
                  program: list[str]) -> list[ProcessSpec]:
    """One torchrun per trainer node, `allocation.trainer.nproc_per_node` ranks each."""
    t = cfg.allocation.trainer
    trainers = []
    for k, (node, devices) in enumerate(trainer_devices):
        node_env = dict(env)
        if cfg.allocation.device == "cuda":
            node_env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        cmd = [*torchrun_command(python, head_host, master_port, node_rank=k, nnodes=t.nnodes,
                                 nproc=t.nproc_per_node, local=hosts[node] == "localhost"), *program]
        name = "trainer" if k == 0 else f"trainer-node{k}"
        trainers.append(ProcessSpec(name, "trainer", cmd, node_env, hosts[node], node, devices))
    return trainers
