"""The peers' released code, fetched and run (never committed, never installed).

Each peer is one pinned release from the package index, downloaded once with
`pip download --no-deps` into ~/.cache/areal_lite/peers/<name>/<version>/ (or $AREAL_LITE_CACHE).
Their functions are read from the wheel with `ast` and executed verbatim in a namespace holding
torch, numpy and whatever other peer functions they call: importing the packages would pull in
Ray, vLLM, DeepSpeed and the like. A test skips only when the download itself fails.
"""

from __future__ import annotations

import __future__
import ast
import math
import os
import subprocess
import sys
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

_PURE = ["--only-binary=:all:", "--implementation", "py", "--platform", "any"]
# name → (distribution, version, pip download arguments selecting one wheel). oat and SkyRL
# declare exact Python versions, so the download names one they accept; OpenRLHF ships a
# CPython/manylinux wheel whose Python sources are the same on every platform.
PEERS = {
    "areal": ("areal", "1.0.4", [*_PURE, "--python-version", "311"]),
    "verl": ("verl", "0.9.1", [*_PURE, "--python-version", "311"]),
    "trl": ("trl", "1.16.0", [*_PURE, "--python-version", "311"]),
    "openrlhf": ("openrlhf", "0.11.2", ["--only-binary=:all:", "--implementation", "cp",
                                        "--platform", "manylinux1_x86_64", "--python-version", "311"]),
    "skyrl": ("skyrl-train", "0.3.1", [*_PURE, "--python-version", "312"]),
    "oat": ("oat-llm", "0.2.4", [*_PURE, "--python-version", "310"]),
}
VERSIONS = {name: f"{dist}=={ver}" for name, (dist, ver, _) in PEERS.items()}


def _cache_root() -> Path:
    root = os.environ.get("AREAL_LITE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "areal_lite"
    )
    return Path(root) / "peers"


def wheel_path(name: str) -> Path:
    """The cached wheel of peer `name`, downloaded on first use; pytest.skip if that fails."""
    dist, version, args = PEERS[name]
    cache = _cache_root() / name / version
    stem = dist.replace("-", "_")
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *args, f"{dist}=={version}",
               "-d", str(cache), "--quiet"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip download {dist}=={version} timed out")
        found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
        if r.returncode != 0 or not found:
            pytest.skip(f"could not download {dist}=={version}: {r.stderr.strip()[-300:]}")
    return found[0]


def _base_namespace() -> dict:
    ns = {"torch": torch, "np": np, "numpy": np, "math": math, "nn": torch.nn, "F": torch.nn.functional,
          "dist": torch.distributed}
    ns.update({k: getattr(typing, k) for k in ("Any", "Callable", "Optional", "Union", "Tuple", "List", "Dict")})
    return ns


class Peer:
    """One peer release: read its source files, execute selected top-level functions or classes."""

    def __init__(self, name: str):
        self.name = name
        self.version = PEERS[name][1]
        self._zip = zipfile.ZipFile(wheel_path(name))
        self._names = self._zip.namelist()
        self.ns = _base_namespace()

    def source(self, path: str) -> str:
        """Text of `path` (e.g. "verl/trainer/ppo/core_algos.py"), wherever the wheel stores it."""
        hits = [n for n in self._names if n == path or n.endswith("/" + path)]
        if len(hits) != 1:
            raise FileNotFoundError(f"{self.name}: {path} matches {hits}")
        return self._zip.read(hits[0]).decode()

    def node(self, path: str, name: str) -> ast.AST:
        """The top-level def/class `name` of `path`, or `Class.method`."""
        tree = ast.parse(self.source(path))
        body = tree.body
        for part in name.split("."):
            node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
            if node is None:
                raise LookupError(f"{self.name}: no {name} in {path}")
            body = node.body
        return node

    def load(self, path: str, *names: str, **extra) -> dict:
        """Execute the named top-level functions/classes of `path` (their decorators dropped) into
        this peer's namespace, with `extra` names added first; returns the namespace."""
        self.ns.update(extra)
        for name in names:
            node = self.node(path, name)
            node.decorator_list = [d for d in node.decorator_list if _keep_decorator(d)]
            self._exec(ast.Module(body=[node], type_ignores=[]), f"{path}:{name}")
        return self.ns

    def function(self, path: str, name: str, **extra):
        """One function or class of `path`, executed verbatim (see `load`)."""
        return self.load(path, name, **extra)[name.split(".")[-1]]

    def run_statement(self, path: str, qualname: str, prefix: str, local: dict) -> dict:
        """Execute the first statement inside function `qualname` whose source starts with `prefix`
        (e.g. one `if` chain of a long method), with `local` as its variables; returns them after."""
        src = self.source(path)
        func = self.node(path, qualname)
        for node in ast.walk(func):
            if isinstance(node, ast.stmt) and node is not func:
                text = ast.get_source_segment(src, node) or ""
                if text.startswith(prefix):
                    scope = {**self.ns, **local}
                    exec(compile(ast.Module(body=[node], type_ignores=[]), f"<{self.name} {qualname}>", "exec",
                                 flags=__future__.annotations.compiler_flag, dont_inherit=True), scope)
                    return scope
        raise LookupError(f"{self.name}: no statement starting {prefix!r} in {qualname}")

    def _exec(self, module: ast.Module, label: str) -> None:
        # NOTE: postponed annotations: their type hints name classes we do not load.
        code = compile(module, f"<{self.name}-{self.version} {label}>", "exec",
                       flags=__future__.annotations.compiler_flag, dont_inherit=True)
        exec(code, self.ns)


def _keep_decorator(d: ast.expr) -> bool:
    """Keep staticmethod/classmethod (they change call semantics); drop registries, no_grad, profiling."""
    return isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod")


@pytest.fixture(scope="session")
def peer_factory():
    cache: dict[str, Peer] = {}

    def get(name: str) -> Peer:
        if name not in cache:
            cache[name] = Peer(name)
        return cache[name]

    return get
