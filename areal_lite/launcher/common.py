"""What every launcher does before starting anything: parse, validate, preflight, prepare.

User mistakes found here (unknown keys, a missing model or dataset, an allocation that does not fit
the machine) exit with status 2 and one line, before any process starts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from areal_lite.config import ConfigError, ExperimentConfig, load_config, save_config
from areal_lite.config.schema import resolved_trainer_world_size, run_dir

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LaunchArgs:
    entry: str
    cfg: ExperimentConfig
    dry_run: bool
    argv: list[str]


def parse_launch_args(argv: list[str], prog: str) -> LaunchArgs:
    """`ENTRY.py --config X.yaml key=value ... [--dry-run]` → validated LaunchArgs (ConfigError on misuse)."""
    if not argv or argv[0] in ("-h", "--help"):
        from areal_lite.config import help_text

        group = argv[1] if len(argv) > 1 and argv[0] in ("-h", "--help") else None
        print(f"usage: python -m {prog} ENTRY.py --config CFG.yaml [key=value ...] [--dry-run]\n")
        print(help_text(group=group))
        raise SystemExit(0)
    entry, rest = argv[0], argv[1:]
    if not entry.endswith(".py"):
        raise ConfigError(f"the first argument must be the entry script (ENTRY.py), got {entry!r}")
    if not os.path.isfile(entry):
        raise ConfigError(f"entry script not found: {entry}")
    cfg = load_config(rest, allow_flags=("--dry-run",))
    return LaunchArgs(os.path.abspath(entry), cfg, "--dry-run" in rest, rest)


def looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path) or not HUB_ID.match(path)


def preflight(cfg: ExperimentConfig, *, check_devices: bool = True) -> None:
    """Machine-level checks; ConfigError names the key and the problem."""
    actor = cfg.actor.path
    if cfg.prepare.model == "none" and looks_local(actor):
        if not os.path.isdir(os.path.expanduser(actor)):
            raise ConfigError(f"actor.path: model directory not found: {actor}")
        if not os.path.isfile(os.path.join(os.path.expanduser(actor), "config.json")):
            raise ConfigError(f"actor.path: {actor} has no config.json (not a transformers model directory)")
    for key, ds in (("train_dataset", cfg.train_dataset), ("valid_dataset", cfg.valid_dataset)):
        path = ds.path
        if not path or path.startswith("synthetic:"):
            continue
        if looks_local(path) and not os.path.exists(os.path.expanduser(path)):
            raise ConfigError(f"{key}.path: dataset not found: {path}")
    if check_devices and cfg.allocation.device == "cuda":
        have = _visible_gpus()
        need = cfg.allocation.inference.num_servers * (
            cfg.allocation.inference.tp_size if cfg.allocation.inference.backend == "sglang" else 1
        ) + resolved_trainer_world_size(cfg)
        if cfg.cluster.n_nodes == 1 and have < need:
            raise ConfigError(f"allocation: needs {need} GPUs on this machine but {have} are visible")
    if cfg.allocation.inference.backend == "sglang" and check_devices and shutil.which("nvidia-smi") is None:
        raise ConfigError("allocation.inference.backend: sglang needs NVIDIA GPUs (nvidia-smi not found)")


def _visible_gpus() -> int:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return sum(line.startswith("GPU ") for line in out.stdout.splitlines())
    except (OSError, subprocess.SubprocessError):
        return 0


def write_run_config(cfg: ExperimentConfig) -> str:
    """Create the run directory and write the resolved config; returns its path."""
    rdir = os.path.abspath(run_dir(cfg))
    try:
        os.makedirs(os.path.join(rdir, "logs"), exist_ok=True)
        os.makedirs(os.path.join(rdir, "weights"), exist_ok=True)
        path = os.path.join(rdir, "config.yaml")
        save_config(cfg, path)
    except OSError as e:
        raise ConfigError(f"cluster.fileroot: cannot write the run directory {rdir}: {e.strerror}") from None
    return path


def run_prepare(cfg: ExperimentConfig, config_path: str, log_path: str, *, env: dict[str, str] | None = None) -> None:
    """Build the tiny model (and its SFT warm start) at actor.path when the config asks and it is missing."""
    if cfg.prepare.model == "none" or os.path.isfile(os.path.join(cfg.actor.path, "config.json")):
        return
    t0 = time.time()
    print(f"[launcher] preparing the model at {cfg.actor.path} (log: {log_path})", flush=True)
    with open(log_path, "ab") as log:
        rc = subprocess.call(
            [sys.executable, "-m", "areal_lite.tiny.prepare", "--config", config_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    if rc != 0:
        raise RuntimeError(f"model preparation failed (exit {rc}); see {log_path}:\n{tail(log_path)}")
    print(f"[launcher] model ready in {time.time() - t0:.0f}s", flush=True)


def read_from(path: str, pos: int) -> str:
    """The text of `path` from byte offset `pos` ('' while the file does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(pos)
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def tail(path: str, n: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in lines[-n:])


def load_for_launcher(argv: list[str], prog: str) -> LaunchArgs:
    args = parse_launch_args(argv, prog)
    preflight(args.cfg, check_devices=not args.dry_run)
    return args
