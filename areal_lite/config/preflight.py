"""Checks against the machine, before anything starts: paths exist and are of the right kind, the
run directory is writable, the allocation fits this machine's cores and GPUs, the bind address is
one of its own. Each failure is a ConfigError naming the key; nothing is created (dry runs too).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile

from areal_lite.config.errors import ConfigError
from areal_lite.config.schema import ExperimentConfig, resolved_trainer_world_size, run_dir
from areal_lite.config.validate import check_cores, require

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def preflight(cfg: ExperimentConfig, *, check_devices: bool = True, local: bool = False) -> None:
    """Machine-level checks; ConfigError names the key and the problem.

    `check_devices`: the GPUs the allocation needs are visible here (off for dry runs and for
    launchers whose processes run elsewhere). `local`: the processes run on this machine (local
    launcher, a one-node Ray cluster it starts), so its cores and addresses count, dry runs included.
    """
    _check_model(cfg)
    _check_tokenizer(cfg)
    _check_datasets(cfg)
    _check_run_dir(cfg)
    if local and cfg.cluster.n_nodes == 1 and not cfg.launcher.ray.address:
        _check_cores_here(cfg)
        _check_bind_host(cfg.cluster.bind_host)
    if check_devices:
        _check_gpus(cfg)


def looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (`owner/name`)."""
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path) or not HUB_ID.match(path)


def _check_model(cfg: ExperimentConfig) -> None:
    path = cfg.actor.path
    if not looks_local(path):
        return
    full = os.path.expanduser(path)
    config_json = os.path.join(full, "config.json")
    require(not os.path.isfile(full), "actor.path", f"{path} is a file: give the model directory (with config.json)")
    if cfg.prepare.model != "none" and not os.path.isfile(config_json):
        return  # the launcher builds it there
    require(os.path.isdir(full), "actor.path", f"model directory not found: {path}")
    require(os.path.isfile(config_json), "actor.path", f"{path} has no config.json (not a transformers model directory)")
    if not cfg.tokenizer_path:
        require(any(os.path.isfile(os.path.join(full, f)) for f in TOKENIZER_FILES), "tokenizer_path",
                f"{path} holds no tokenizer ({', '.join(TOKENIZER_FILES)}): set tokenizer_path")
    try:
        with open(config_json) as fh:
            vocab = json.load(fh).get("vocab_size")
    except (OSError, ValueError) as e:
        raise ConfigError(f"actor.path: cannot read {config_json}: {e}") from None
    if isinstance(vocab, int):
        bad = [t for t in cfg.gconfig.stop_token_ids if t >= vocab]
        require(not bad, "gconfig.stop_token_ids",
                f"{bad[0] if bad else 0} is outside the vocabulary of {path} (vocab_size {vocab}: ids 0..{vocab - 1})")


def _check_tokenizer(cfg: ExperimentConfig) -> None:
    path = cfg.tokenizer_path
    if not path or not looks_local(path):
        return
    full = os.path.expanduser(path)
    require(os.path.exists(full), "tokenizer_path", f"tokenizer directory not found: {path}")
    require(os.path.isdir(full), "tokenizer_path", f"{path} is a file: give the directory that holds tokenizer.json")
    require(any(os.path.isfile(os.path.join(full, f)) for f in TOKENIZER_FILES), "tokenizer_path",
            f"{path} holds no tokenizer ({', '.join(TOKENIZER_FILES)})")


def _check_datasets(cfg: ExperimentConfig) -> None:
    from areal_lite.data.checks import SYNTHETIC_PREFIX, check_local_dataset
    from areal_lite.data.records import DatasetError

    sections = [("train_dataset", cfg.train_dataset)]
    if cfg.evaluator.freq_steps > 0 or cfg.valid_dataset.path:
        sections.append(("valid_dataset", cfg.valid_dataset))
    for key, ds in sections:
        if not ds.path or ds.path.startswith(SYNTHETIC_PREFIX) or not looks_local(ds.path):
            continue
        try:
            n = check_local_dataset(ds.path, ds.split)
        except DatasetError as e:
            raise ConfigError(f"{key}.{getattr(e, 'field', 'path')}: {e}") from None
        if key == "train_dataset" and n is not None:
            n = min(n, ds.max_records) if ds.max_records else n
            require(ds.batch_size <= n, "train_dataset.batch_size",
                    f"{ds.batch_size} prompts per step but {ds.path} holds {n} records: no step could be filled")


def _check_run_dir(cfg: ExperimentConfig) -> None:
    """The run directory can be created and written, found without creating it (a probe file is removed)."""
    rdir = os.path.abspath(os.path.expanduser(run_dir(cfg)))
    existing = rdir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    require(os.path.isdir(existing), "cluster.fileroot",
            f"cannot write the run directory {rdir}: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ConfigError(f"cluster.fileroot: cannot write the run directory {rdir}: "
                          f"{e.strerror} ({existing})") from None


def cores_here() -> int:
    """CPU cores this process may use (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_cores_here(cfg: ExperimentConfig) -> None:
    have, asked = cores_here(), cfg.cluster.n_cpus_per_node
    require(asked <= have, "cluster.n_cpus_per_node", f"{asked} cores asked but this machine has {have}")
    check_cores(cfg, asked or have, f"this machine's {asked or have}")


def _check_bind_host(host: str) -> None:
    """The address is one of this machine's (binding a port there works)."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind(addr)
    except OSError as e:
        raise ConfigError(f"cluster.bind_host: cannot bind {host} on this machine ({e.strerror or e}): use one of "
                          "its addresses, 127.0.0.1 or 0.0.0.0") from None


def _check_gpus(cfg: ExperimentConfig) -> None:
    al = cfg.allocation
    if al.device == "cuda":
        have = visible_gpus()
        per_server = al.inference.tp_size if al.inference.backend == "sglang" else 1
        need = al.inference.num_servers * per_server + resolved_trainer_world_size(cfg)
        if al.colocate:
            need = resolved_trainer_world_size(cfg)
        require(cfg.cluster.n_nodes > 1 or have >= need, "allocation",
                f"needs {need} GPUs on this machine but {have} are visible")
    if al.inference.backend == "sglang":
        require(shutil.which("nvidia-smi") is not None, "allocation.inference.backend",
                "sglang needs NVIDIA GPUs (nvidia-smi not found)")


def visible_gpus() -> int:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return sum(line.startswith("GPU ") for line in out.stdout.splitlines())
    except (OSError, subprocess.SubprocessError):
        return 0
