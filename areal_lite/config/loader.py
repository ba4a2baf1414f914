"""Loading configs: `--config X.yaml`, Hydra's override grammar and config groups, our strict schema.

    load_config(["--config", "task.yaml", "algo=dapo", "actor.optimizer.lr=3e-6", "~actor.kl_clamp"])

1. The arguments are parsed with Hydra's override parser (quoting, `key=[a,b]`, `key={a: 1}`,
   `+key=`, `++key=`, `~key`). Sweeps (`key=a,b`) are refused: one launch is one run.
2. Hydra's compose API builds the YAML file with its `defaults` list and the config-group
   choices of the command line (`algo=drgrpo`; presets in `areal_lite.config.presets`, your
   own groups in folders beside the YAML).
3. The result is merged into the schema (`ExperimentConfig`): unknown keys, wrong types and
   invalid combinations raise `ConfigError`, one line naming the key.
4. Value overrides are applied in order. Every schema key can be set without a `+` (`+` and `++`
   are accepted and mean the same); `~key` resets a key to its default.

`--cfg job` prints the resolved config (what the run directory's config.yaml will hold) and exits 0.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from areal_lite.config.errors import ConfigError
from areal_lite.config.fields import default_of, group_class
from areal_lite.config.keys import check_key, describe, first_line, is_group, leaf_keys, schema_keys
from areal_lite.config.presets import register_presets
from areal_lite.config.schema import ExperimentConfig
from areal_lite.config.validate import validate

T = TypeVar("T")
PRIMARY = "areal_lite_primary"  # the --config file's name in Hydra's ConfigStore


@dataclass
class Args:
    config_path: str | None
    overrides: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    print_config: bool = False


def parse_argv(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """Split argv into (config path, overrides, other --flags); `--cfg job` comes back as the flag `--cfg=job`."""
    args = _split(argv)
    return args.config_path, args.overrides, args.flags + (["--cfg=job"] if args.print_config else [])


def load_config(argv: Sequence[str], cls: type[T] = ExperimentConfig, *, allow_flags: Sequence[str] = ()) -> T:
    """Build a validated config of type `cls` from `--config PATH` and overrides (ConfigError on misuse).

    `allow_flags` are other `--flags` the caller handles (e.g. `--dry-run`); `--cfg job` prints the
    resolved config to stdout and raises SystemExit(0).
    """
    args = _split(argv)
    for flag in args.flags:
        if flag.split("=", 1)[0] not in allow_flags:
            raise ConfigError(f"unknown option {flag!r}")
    parsed = _parse_overrides(args.overrides)
    groups, values = _split_groups(parsed, args.config_path, cls)
    composed = _compose(args.config_path, groups)
    merged = _merge_checked(_schema(cls), composed, cls, source=args.config_path or "config groups")
    merged = _apply(merged, values, cls)
    try:
        cfg = OmegaConf.to_object(merged)
    except oc_errors.MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key}: a value is required") from None
    except oc_errors.OmegaConfBaseException as e:
        raise ConfigError(describe(e, cls)) from None
    validate(cfg)
    if args.print_config:
        print(to_yaml(cfg), end="", flush=True)
        raise SystemExit(0)
    return cfg


def to_yaml(cfg: Any) -> str:
    """The fully resolved config as YAML (what the run directory's config.yaml holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(to_yaml(cfg))
    os.replace(tmp, path)


def exit_on_config_error(fn: Callable[..., int]) -> Callable[..., int]:
    """Decorator for `main(argv)`: a user error becomes `error: <line>` on stderr and exit status 2.

    User errors are ConfigError and exceptions carrying `exit_code = 2`; anything else propagates.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            # ConfigError, and any user-input error that declares exit_code 2 (e.g. data.DatasetError).
            if getattr(e, "exit_code", None) != 2:
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper


# ---------------------------------------------------------------------------------------------
# Arguments and overrides
# ---------------------------------------------------------------------------------------------


def _split(argv: Sequence[str]) -> Args:
    args, rest = Args(None), list(argv)
    while rest:
        a = rest.pop(0)
        if a in ("--config", "--cfg", "-c"):
            if not rest:
                raise ConfigError(f"{a} needs a value" + (" (a path)" if a == "--config" else " (job)"))
            a = f"{a}={rest.pop(0)}"
        name, _, value = a.partition("=")
        if name == "--config":
            args.config_path = value
        elif name in ("--cfg", "-c"):
            if value != "job":
                raise ConfigError(f"{name} {value}: only '{name} job' is supported (prints the resolved config)")
            args.print_config = True
        elif a.startswith("-"):
            args.flags.append(a)
        elif "=" in a or a.startswith("~"):
            args.overrides.append(a)
        else:
            raise ConfigError(f"unexpected argument {a!r} (overrides are key=value, e.g. actor.optimizer.lr=1e-5)")
    return args


def _parse_overrides(overrides: list[str]) -> list:
    if not overrides:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for item in overrides:
        try:
            (o,) = parser.parse_overrides([item])
        except HydraException as e:
            raise ConfigError(f"cannot parse override {item!r}: {_hydra_reason(e)}") from None
        if not o.key_or_group:
            raise ConfigError(f"override {item!r} has no key")
        if o.is_sweep_override():
            raise ConfigError(
                f"{item!r} is a sweep (several values), but a launch is one run: quote a value that holds a "
                f"comma ({o.key_or_group}='a,b'), write a list as [a,b], or see 'Sweeps' in docs/config.md"
            )
        parsed.append(o)
    return parsed


def _hydra_reason(e: Exception) -> str:
    if "LexerNoViableAlt" in str(e) or "token recognition error" in str(e):
        return "a character the override grammar does not allow unquoted: quote the value (key='...')"
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.startswith("See http")]
    lines = [line for line in lines if not line.startswith("Error parsing override")]
    return lines[0] if lines else type(e).__name__


def _split_groups(parsed: list, config_path: str | None, cls: type) -> tuple[list, list]:
    """(config-group overrides for Hydra, value overrides for the schema), each in command-line order.

    A key is a config group when it names one (`algo`, or a folder beside the YAML) and is not a
    schema key; `group/sub=x` and `group@package=x` are always groups.
    """
    known = schema_keys(cls)
    unknown = {o.key_or_group for o in parsed if o.key_or_group not in known and "." not in o.key_or_group}
    group_names: set[str] = set()
    if unknown:
        with _hydra(config_path) as loader:
            group_names = {k for k in unknown if loader.get_group_options(k)}
    is_group_override = [o.package is not None or "/" in o.key_or_group or o.key_or_group in group_names
                         for o in parsed]
    groups = [o for o, g in zip(parsed, is_group_override) if g]
    # A later choice of the same group replaces an earlier one (Hydra would refuse two `+group=`).
    last = {(o.key_or_group, o.package): i for i, o in enumerate(groups) if not o.is_delete()}
    groups = [o for i, o in enumerate(groups) if o.is_delete() or last[(o.key_or_group, o.package)] == i]
    return groups, [o for o, g in zip(parsed, is_group_override) if not g]


# ---------------------------------------------------------------------------------------------
# Composition (Hydra) and merging into the schema
# ---------------------------------------------------------------------------------------------


class _hydra:
    """Hydra initialised with the --config file's folder (for its groups) and our presets; yields the config loader.

    A Hydra app that loads an areal_lite config gets its own Hydra state back afterwards.
    """

    def __init__(self, config_path: str | None):
        self.config_dir = os.path.dirname(os.path.abspath(config_path)) if config_path else None

    def __enter__(self):
        from hydra import initialize, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.initialize import get_gh_backup

        register_presets()
        self.outer = get_gh_backup()
        GlobalHydra.instance().clear()
        if self.config_dir is None:
            self.ctx = initialize(config_path=None, version_base=None, job_name="areal_lite")
        else:
            self.ctx = initialize_config_dir(config_dir=self.config_dir, version_base=None, job_name="areal_lite")
        self.ctx.__enter__()
        return GlobalHydra.instance().config_loader()

    def __exit__(self, *exc):
        from hydra.initialize import restore_gh_from_backup

        self.ctx.__exit__(*exc)
        restore_gh_from_backup(self.outer)
        return False


def _compose(config_path: str | None, groups: list) -> DictConfig:
    """The YAML file with its defaults list and the command line's group choices, as one raw config."""
    primary = _load_yaml(config_path) if config_path else OmegaConf.create({})
    if not groups and "defaults" not in primary and "hydra" not in primary:
        return primary  # a file without a defaults list composes to itself
    from hydra import compose
    from hydra.core.config_store import ConfigStore
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    ConfigStore.instance().store(name=PRIMARY, node=primary)
    with _hydra(config_path):
        try:
            chosen = set(compose(config_name=PRIMARY, return_hydra_config=True).hydra.runtime.choices) if groups else ()
            # Hydra wants `+group=x` for a group no defaults list names; `group=x` works for both here.
            lines = [f"+{o.input_line}" if o.type == OverrideType.CHANGE and o.key_or_group not in chosen
                     else o.input_line for o in groups]
            return compose(config_name=PRIMARY, overrides=lines)
        except (HydraException, oc_errors.OmegaConfBaseException) as e:
            raise ConfigError(_group_error(e, config_path)) from None


def _group_error(e: Exception, config_path: str | None) -> str:
    text = str(e)
    where = f" ({config_path})" if config_path else ""
    if "Could not find" in text and "Available options in" in text:
        missing = text.split("Could not find '", 1)[1].split("'", 1)[0]
        group, _, name = missing.rpartition("/")
        listing = text.split("Available options in", 1)[1].split("Config search path", 1)[0]
        options = [line.strip() for line in listing.splitlines()[1:] if line.strip()]
        return f"{group}: no config {name!r} in group {group!r} (choices: {', '.join(options)}){where}"
    for marker in ("Could not find '", "Could not load '"):
        if marker in text:
            missing = text.split(marker, 1)[1].split("'", 1)[0]
            return f"defaults: config {missing!r} not found beside the config file{where}"
    return f"config composition: {_hydra_reason(e)}{where}"


def _load_yaml(path: str) -> DictConfig:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # YAML scanner/parser errors come from PyYAML
        raise ConfigError(f"cannot parse {path}: {first_line(e)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of config groups")
    return loaded


def _merge_checked(base: DictConfig, patch: DictConfig, cls: type, *, source: str) -> DictConfig:
    for key in leaf_keys(patch):
        check_key(key, cls, source=source)
    try:
        return OmegaConf.merge(base, patch)
    except oc_errors.OmegaConfBaseException as e:
        raise ConfigError(describe(e, cls, source=source)) from None


@functools.lru_cache(maxsize=None)
def _schema(cls: type) -> DictConfig:
    """The schema with its defaults as a typed config (built once: merges copy it, never change it)."""
    return OmegaConf.structured(cls)


def _apply(merged: DictConfig, overrides: list, cls: type) -> DictConfig:
    """The value overrides, in order, as one patch merged into `merged` (merges copy the whole config).

    `key=value` sets a key (a mapping value sets a group's keys); `~key` resets it to its default
    (`~key=value` only if it currently holds that value); `~dict.key` removes a free dict's entry.
    """
    if not overrides:
        return merged
    patch, removed = OmegaConf.create(), []
    for o in overrides:
        key, value = o.key_or_group, o.value()
        check_key(key, cls, group_ok=o.is_delete() or isinstance(value, dict))
        removed = [k for k in removed if k != key]
        if not o.is_delete():
            OmegaConf.update(patch, key, value, force_add=True)
            continue
        current = OmegaConf.select(patch, key, default=OmegaConf.select(merged, key, default=None))
        if value is not None and value != current:
            raise ConfigError(f"~{key}={value}: {key} is {current!r}, not {value!r} (command line)")
        entry = schema_keys(cls).get(key)
        if entry is None:  # an entry of a free dict (launcher.env.X)
            removed.append(key)
            continue
        default = OmegaConf.structured(group_class(*entry)) if is_group(cls, key) else default_of(entry[0])
        OmegaConf.update(patch, key, default, merge=False, force_add=True)
    merged = _merge_checked(merged, patch, cls, source="command line")
    for key in removed:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(merged, parent)
        if node is not None and name in node:
            del node[name]
    return merged
