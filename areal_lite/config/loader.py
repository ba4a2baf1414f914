"""Loading configs: `--config X.yaml` plus `key=value` overrides, strict, with one-line errors.

Every schema key can be overridden without a `+` prefix (there is no separate raw-YAML composition
step that could reject it). Unknown keys, wrong types and invalid combinations raise `ConfigError`;
entry points turn it into one line on stderr and exit status 2 (`exit_on_config_error`).
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Callable, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from areal_lite.config.schema import ExperimentConfig, iter_fields

T = TypeVar("T")


class ConfigError(Exception):
    """A user mistake in the configuration; its message is one line naming the key and the problem."""

    exit_code = 2  # what the CLIs exit with; no restart can fix it (utils.distributed.run_and_exit)


def parse_argv(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """Split argv into (config path, key=value overrides, other --flags)."""
    config_path = None
    overrides: list[str] = []
    flags: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a path")
            config_path = args[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            config_path = a.split("=", 1)[1]
        elif a.startswith("-"):
            flags.append(a)
        elif "=" in a:
            overrides.append(a)
        else:
            raise ConfigError(f"unexpected argument {a!r} (overrides are key=value, e.g. actor.optimizer.lr=1e-5)")
        i += 1
    return config_path, overrides, flags


def load_config(
    argv: Sequence[str], cls: type[T] = ExperimentConfig, *, allow_flags: Sequence[str] = ()
) -> T:
    """Build a validated config of type `cls` from `--config PATH` and `key=value` overrides."""
    config_path, overrides, flags = parse_argv(argv)
    for flag in flags:
        if flag.split("=", 1)[0] not in allow_flags:
            raise ConfigError(f"unknown option {flag!r}")
    merged = OmegaConf.structured(cls)
    if config_path is not None:
        merged = _merge_checked(merged, _load_yaml(config_path), cls, source=config_path)
    for item in overrides:
        key, _, raw = item.partition("=")
        key = key.lstrip("+")
        if not key:
            raise ConfigError(f"override {item!r} has no key")
        _check_key(key, cls)
        try:
            patch = OmegaConf.from_dotlist([f"{key}={raw}"])
        except Exception as e:  # omegaconf's grammar errors carry no common base class
            raise ConfigError(f"cannot parse override {item!r}: {_first_line(e)}") from None
        merged = _merge_checked(merged, patch, cls, source="command line")
    try:
        cfg = OmegaConf.to_object(merged)
    except oc_errors.MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key}: a value is required") from None
    except oc_errors.OmegaConfBaseException as e:
        raise ConfigError(_describe(e, cls)) from None
    from areal_lite.config.validate import validate

    validate(cfg)
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
            if not isinstance(e, ConfigError) and getattr(e, "exit_code", None) != 2:
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper


def help_text(cls: type = ExperimentConfig, group: str | None = None) -> str:
    """`--help`: the groups with their help, or the keys of one group with types, defaults and help."""
    if group is None:
        lines = ["Config groups (`--help GROUP` lists a group's keys; see docs/config.md):"]
        for f in fields(cls):
            kind = "group" if is_dataclass(f.type) or _is_group(cls, f.name) else _type_name(f)
            lines.append(f"  {f.name:<22} {f.metadata.get('help', '')}" + ("" if kind == "group" else f" [{kind}]"))
        return "\n".join(lines)
    lines = []
    for key, f, _ in iter_fields(cls):
        if key == group or key.startswith(group + "."):
            if _is_group_field(f):
                continue
            default = _default_repr(f)
            choices = f.metadata.get("choices")
            extra = f" choices: {', '.join(choices)}." if choices else ""
            lines.append(f"  {key} ({_type_name(f)}, default {default}): {f.metadata.get('help', '')}{extra}")
    if not lines:
        raise ConfigError(f"no config group {group!r}{_suggest(group, cls)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _load_yaml(path: str) -> DictConfig:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # YAML scanner/parser errors come from PyYAML
        raise ConfigError(f"cannot parse {path}: {_first_line(e)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of config groups")
    return loaded


def _merge_checked(base: DictConfig, patch: DictConfig, cls: type, *, source: str) -> DictConfig:
    for key in _leaf_keys(patch):
        _check_key(key, cls, source=source)
    try:
        return OmegaConf.merge(base, patch)
    except oc_errors.OmegaConfBaseException as e:
        raise ConfigError(_describe(e, cls, source=source)) from None


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a raw config tree (descending into mappings only)."""
    if not isinstance(node, DictConfig):
        return [prefix] if prefix else []
    keys = []
    for k in node.keys():
        sub = node._get_node(k)
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(sub, DictConfig) and not sub._is_none() and not sub._is_missing():
            child = _leaf_keys(sub, path)
            keys.extend(child or [path])
        else:
            keys.append(path)
    return keys


def _schema_keys(cls: type) -> dict[str, Any]:
    return {key: f for key, f, _ in iter_fields(cls)}


def _check_key(key: str, cls: type, *, source: str = "command line") -> None:
    """Raise ConfigError unless `key` is a schema key or lies inside a free-form dict field."""
    known = _schema_keys(cls)
    if key in known:
        if _is_group_field(known[key]):
            raise ConfigError(f"{key} is a group of keys, not a value: set {key}.<key>=... ({source})")
        return
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        f = known.get(parent)
        if f is not None and _is_free_dict(f):
            return
        if f is not None and not _is_group_field(f):
            raise ConfigError(f"{parent} is a value, not a group: cannot set {key!r} ({source})")
    raise ConfigError(f"unknown config key {key!r} ({source}){_suggest(key, cls)}")


def _suggest(key: str, cls: type) -> str:
    """' (did you mean a.b?)' with the nearest valid keys, or ''."""
    schema = _schema_keys(cls)
    known = [k for k, f in schema.items() if not _is_group_field(f)]
    leaf = key.split(".")[-1]
    top = key.split(".")[0]
    by_leaf = [k for k in known if k.split(".")[-1] == leaf]
    same_top = [k for k in by_leaf if k.split(".")[0] == top]
    by_leaf = sorted(same_top or by_leaf, key=len)
    leaves = {k.split(".")[-1] for k in known}
    close_leaves = difflib.get_close_matches(leaf, list(leaves), n=3, cutoff=0.75)
    by_close_leaf = [k for k in known if k.split(".")[-1] in close_leaves and k.split(".")[0] == top]
    by_path = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    picks: list[str] = []
    for k in [*by_leaf, *by_path, *by_close_leaf]:
        if k not in picks:
            picks.append(k)
    if not picks:
        return ""
    return f" (did you mean {' or '.join(picks[:3])}?)"


def _describe(e: oc_errors.OmegaConfBaseException, cls: type, *, source: str = "") -> str:
    key = getattr(e, "full_key", None) or ""
    value = getattr(e, "value", None)
    where = f" ({source})" if source else ""
    if isinstance(e, oc_errors.ConfigKeyError):
        return f"unknown config key {key!r}{where}{_suggest(key, cls)}"
    f = _schema_keys(cls).get(key)
    if f is not None:
        expected = _type_name(f)
        if value is None and _default_repr(f) in ("required", "''"):
            return f"{key}: required, got an empty value (expected {expected}){where}"
        if value is None:
            return f"{key}: null is not allowed (expected {expected}){where}"
        return f"{key}: expected {expected}, got {value!r}{where}"
    return f"{key or 'config'}: {_first_line(e)}{where}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _type_name(f) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return str(t).replace("typing.", "").replace("Optional[", "").rstrip("]") if "Optional" in str(t) else str(t)


def _is_group_field(f) -> bool:
    from areal_lite.config.schema import _dataclass_type

    return _dataclass_type(f) is not None


def _is_group(cls: type, name: str) -> bool:
    return any(f.name == name and _is_group_field(f) for f in fields(cls))


def _is_free_dict(f) -> bool:
    return str(f.type).startswith(("Dict", "dict", "typing.Dict"))


def _default_repr(f) -> str:
    if f.default is not MISSING:
        return repr(f.default)
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "required"
