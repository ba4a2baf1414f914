"""Typed, strict configuration: schema, loading (Hydra's grammar and config groups), validation,
machine checks before launch, docs.

    cfg = load_config(["--config", "task.yaml", "algo=drgrpo", "actor.optimizer.lr=1e-6"])
    preflight(cfg, check_devices=True, local=True)     # launchers: paths, cores, GPUs, bind address
"""

from areal_lite.config.errors import ConfigError
from areal_lite.config.help import help_text
from areal_lite.config.loader import exit_on_config_error, load_config, parse_argv, save_config, to_yaml
from areal_lite.config.preflight import preflight
from areal_lite.config.schema import ExperimentConfig

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "exit_on_config_error",
    "help_text",
    "load_config",
    "parse_argv",
    "preflight",
    "save_config",
    "to_yaml",
]
