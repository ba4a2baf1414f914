"""Typed, strict configuration: schema, loading with overrides, validation, docs."""

from areal_lite.config.loader import (
    ConfigError,
    exit_on_config_error,
    help_text,
    load_config,
    parse_argv,
    save_config,
    to_yaml,
)
from areal_lite.config.schema import ExperimentConfig

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "exit_on_config_error",
    "help_text",
    "load_config",
    "parse_argv",
    "save_config",
    "to_yaml",
]
