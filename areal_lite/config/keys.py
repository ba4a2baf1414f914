"""Schema keys: is a dotted key valid, what did the user mean, and one-line descriptions of type errors."""

from __future__ import annotations

import difflib
import functools
from dataclasses import MISSING
from typing import Any

from omegaconf import DictConfig
from omegaconf import errors as oc_errors

from areal_lite.config.errors import ConfigError
from areal_lite.config.fields import default_of, group_class, iter_fields


@functools.lru_cache(maxsize=None)
def schema_keys(cls: type) -> dict[str, tuple[Any, type]]:
    """Every dotted key of `cls` (leaves and groups, in declaration order) -> (Field, owning class)."""
    return {key: (f, owner) for key, f, owner in iter_fields(cls)}


def is_group(cls: type, key: str) -> bool:
    entry = schema_keys(cls).get(key)
    return entry is not None and group_class(*entry) is not None


def is_free_dict(f) -> bool:
    """A `Dict[...]` field: its keys are the user's (environment variables, dataset options)."""
    return str(f.type).startswith(("Dict", "dict", "typing.Dict"))


def check_key(key: str, cls: type, *, source: str = "command line", group_ok: bool = False) -> None:
    """Raise ConfigError unless `key` is a schema key (a group only when `group_ok`) or lies in a free dict."""
    known = schema_keys(cls)
    if key in known:
        if is_group(cls, key) and not group_ok:
            raise ConfigError(f"{key} is a group of keys, not a value: set {key}.<key>=... ({source})")
        return
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        if parent not in known:
            continue
        if is_free_dict(known[parent][0]):
            return
        if not is_group(cls, parent):
            raise ConfigError(f"{parent} is a value, not a group: cannot set {key!r} ({source})")
    raise ConfigError(f"unknown config key {key!r} ({source}){suggest(key, cls)}")


def suggest(key: str, cls: type) -> str:
    """' (did you mean a.b?)' with up to three valid keys, or ''.

    Keys whose last name equals the typed one come first (`lr` and `actor.lr` find
    `actor.optimizer.lr`), then keys whose last name is close to it (`actor.lrr`), then keys close
    as a whole path; within each, keys of the same section first, then in schema order.
    """
    leaves = [k for k in schema_keys(cls) if not is_group(cls, k)]
    *_, leaf = key.split(".")
    top = key.split(".")[0]
    close_names = set(difflib.get_close_matches(leaf, {k.split(".")[-1] for k in leaves}, n=3, cutoff=0.75))
    ranked = [
        [k for k in leaves if k.split(".")[-1] == leaf],
        [k for k in leaves if k.split(".")[-1] in close_names],
        difflib.get_close_matches(key, leaves, n=3, cutoff=0.6),
    ]
    picks: list[str] = []
    for tier in ranked:
        for k in sorted(tier, key=lambda k: k.split(".")[0] != top):  # stable: schema order within
            if k not in picks:
                picks.append(k)
    return f" (did you mean {' or '.join(picks[:3])}?)" if picks else ""


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a raw config tree (descending into mappings only)."""
    if not isinstance(node, DictConfig):
        return [prefix] if prefix else []
    keys = []
    for k in node.keys():
        sub = node._get_node(k)
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(sub, DictConfig) and not sub._is_none() and not sub._is_missing():
            keys.extend(leaf_keys(sub, path) or [path])
        else:
            keys.append(path)
    return keys


def describe(e: oc_errors.OmegaConfBaseException, cls: type, *, source: str = "") -> str:
    """One line for an OmegaConf error: the key, what was expected and what was given."""
    key = getattr(e, "full_key", None) or ""
    value = getattr(e, "value", None)
    where = f" ({source})" if source else ""
    if isinstance(e, oc_errors.ConfigKeyError):
        return f"unknown config key {key!r}{where}{suggest(key, cls)}"
    entry = schema_keys(cls).get(key)
    if entry is None:
        return f"{key or 'config'}: {first_line(e)}{where}"
    f = entry[0]
    expected = type_name(f)
    if value is None and default_of(f) in (MISSING, ""):
        return f"{key}: required, got an empty value (expected {expected}){where}"
    if value is None:
        return f"{key}: null is not allowed (expected {expected}){where}"
    return f"{key}: expected {expected}, got {value!r}{where}"


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def type_name(f) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    t = str(t).replace("typing.", "")
    return t[len("Optional["):-1] if t.startswith("Optional[") else t
