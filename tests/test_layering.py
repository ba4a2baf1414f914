"""The layering of ../shared/ARCHITECTURE.md: layers import only downward, and no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "areal_lite"

# layer -> areal_lite layers it may import (itself always allowed)
ALLOWED = {
    "algo": set(),
    "utils": set(),
    "config": set(),
    "transport": {"utils"},
    "models": {"utils"},
    "data": {"utils"},
    "reward": {"utils"},
    "envs": set(),  # text environments: gymnasium and numpy only
    "inference": {"utils", "algo", "config"},
    "rollout": {"utils", "transport", "inference", "reward", "data", "envs"},
    "trainer": {"utils", "algo", "transport", "inference", "config", "data", "models"},
    "launcher": {"utils", "config", "inference", "models"},
    "bench": {"utils", "algo", "transport", "inference", "rollout", "trainer", "config", "models", "data", "reward",
              "envs"},
}
# rollout and trainer meet only through transport messages; trainer may use the inference client only.
ALLOWED_INFERENCE_FROM_TRAINER = {"areal_lite.inference.client"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [n for n in names if n == "areal_lite" or n.startswith("areal_lite.")]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        yield ".".join(rel.parts).removesuffix(".__init__"), path


def test_layers_import_only_downward():
    bad = []
    for module, path in _modules():
        layer = _layer(module)
        if layer is None or layer not in ALLOWED:
            continue
        for target in _imports(path):
            tl = _layer(target)
            if tl is None or tl == layer:
                continue
            if tl not in ALLOWED[layer]:
                bad.append(f"{module} imports {target}")
            elif layer == "trainer" and tl == "inference" and target not in ALLOWED_INFERENCE_FROM_TRAINER:
                bad.append(f"{module} imports {target} (the trainer may use only the inference client)")
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_nothing_imports_launcher_or_examples():
    bad = [
        f"{m} imports {t}"
        for m, p in _modules()
        if _layer(m) != "launcher"
        for t in _imports(p)
        if _layer(t) == "launcher"
    ]
    assert not bad, bad


def test_no_module_level_import_cycles():
    graph: dict[str, set[str]] = {}
    for module, path in _modules():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:  # module level only: function-level imports cannot cycle at import time
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("areal_lite.")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("areal_lite"):
                deps.add(node.module)
        graph[module] = {d for d in deps if d != module}
    modules = set(graph)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for d in graph.get(m, ()):
            d = resolve(d)
            if d is None or d == m:
                continue
            # A package importing its own submodule (re-exports) is not a cycle through the package.
            if m.startswith(d + ".") and d + "." in m + ".":
                continue
            if state.get(d) == 1:
                cycle.extend(stack + [m, d])
                return True
            if state.get(d) is None and visit(d, stack + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(modules):
        if state.get(m) is None and visit(m, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_algo_imports_nothing_else_from_areal_lite():
    for module, path in _modules():
        if _layer(module) == "algo":
            assert all(_layer(t) == "algo" for t in _imports(path)), module
