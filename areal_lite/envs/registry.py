"""Environments by name: `make_env("frozenlake", size=4)` builds one; `register_env` adds your own.

    from areal_lite.envs import register_env, make_env
    register_env("maze", MazeEnv)              # a TextEnv subclass, or any factory returning one
    env = make_env("maze", width=9)            # options are the factory's keyword arguments

The built-in environments are imported when first made, so naming one never imports another's
dependencies. Registration is per process: register in `main()` of the script that both the
trainer and the rollout workers run.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any, Callable

from areal_lite.envs.base import EnvError, TextEnv

EnvFactory = Callable[..., TextEnv]

BUILTIN_ENVS = {
    "bandit": "areal_lite.envs.bandit:BanditEnv",
    "frozenlake": "areal_lite.envs.frozenlake:FrozenLakeEnv",
    "sokoban": "areal_lite.envs.sokoban:SokobanEnv",
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_registry: dict[str, EnvFactory | str] = dict(BUILTIN_ENVS)


def register_env(name: str, factory: EnvFactory, *, replace: bool = False) -> None:
    """Make `factory(**options)` available as `make_env(name, **options)`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise EnvError(f"env name {name!r} must start with a letter and hold only letters, digits, '_', '.', '-'")
    if not callable(factory):
        raise EnvError(f"env {name!r}: the factory must be callable, got {type(factory).__name__}")
    if name in _registry and not replace:
        raise EnvError(f"env {name!r} is already registered (pass replace=True to replace it)")
    _registry[name] = factory


def registered_envs() -> list[str]:
    """The names `make_env` accepts, sorted."""
    return sorted(_registry)


def env_factory(name: str) -> EnvFactory:
    """The factory registered as `name` (a built-in's module is imported here)."""
    entry = _registry.get(name)
    if entry is None:
        close = difflib.get_close_matches(str(name), list(_registry), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EnvError(f"unknown env {name!r}{hint}; registered: {', '.join(registered_envs())}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


def env_options(name: str) -> dict[str, Any]:
    """The options of env `name` and their defaults (`inspect.Parameter.empty` where required)."""
    params = _keyword_params(env_factory(name))
    return {} if params is None else {p.name: p.default for p in params}


def make_env(name: str, /, **options: Any) -> TextEnv:
    """A new environment `name` built with `options`; a wrong name or option raises EnvError."""
    factory = env_factory(name)
    check_env_options(name, options)
    env = factory(**options)
    if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
        raise EnvError(f"env {name!r}: the factory returned {type(env).__name__}, which has no reset/step")
    return env


def check_env_options(name: str, options: dict[str, Any]) -> None:
    """Raise EnvError for an option env `name` does not take, or a required one that is missing."""
    params = _keyword_params(env_factory(name))
    if params is None:  # the factory takes **kwargs: it checks its own options
        return
    known = {p.name: p for p in params}
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listed = ", ".join(known) or "none"
            raise EnvError(f"env {name!r} has no option {key!r}{hint}; its options: {listed}")
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise EnvError(f"env {name!r} needs option(s) {', '.join(missing)}")


def _keyword_params(factory: EnvFactory) -> list[inspect.Parameter] | None:
    """The parameters options can fill, or None when the factory accepts any keyword."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    params = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            params.append(p)
    return params
