"""The rooms of the house and their doors (docs/architecture.md, "Layers"): every package imports
only what its row allows, the runtime never imports the tools, benchmarks, examples or launchers,
and no imports (module-level or inside functions) form a cycle. No exception list for single files."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# room -> rooms it may import (itself always allowed). A room is a package of areal_lite, the embedded
# inference server (inference.embedded, a program of its own), or one of the trees beside the package.
ALLOWED = {
    "options": set(),  # the option names: one home that algo, config and the trainer read
    "algo": {"options"},
    "utils": set(),
    "envs": set(),
    # data and envs to check dataset and environment names and options before launch
    "config": {"options", "data", "envs"},
    "transport": {"utils"},
    "data": {"utils"},
    "reward": {"utils"},
    "inference": {"utils", "config"},  # the client and the SGLang command line
    "inference.embedded": {"utils", "config", "algo", "inference"},
    "rollout": {"utils", "transport", "inference", "reward", "data", "envs", "config"},
    "control": {"utils", "transport", "config"},
    "trainer": {"utils", "options", "algo", "config", "transport"},
    "run": {"utils", "config", "inference"},
    "tiny": {"utils", "config", "data", "trainer"},
    "launcher": {"utils", "config", "inference", "run"},
    # tools.evaluate scores checkpoints with the training workflow, through an embedded server it starts
    "tools": {"utils", "config", "algo", "data", "reward", "envs", "inference", "inference.embedded", "rollout", "tiny",
              "run"},
    "examples": {"utils", "config", "algo", "transport", "data", "reward", "envs", "inference", "rollout", "control",
                 "trainer", "run", "tiny"},
}
ALLOWED["benchmarks"] = set(ALLOWED) | {"benchmarks"}  # developers' measurements may use any room
# What rollout and run may use of `inference`: the client only (the trainer side meets the servers over HTTP).
CLIENT_ONLY = {"rollout", "run"}
RUNTIME = {"options", "algo", "utils", "envs", "config", "transport", "data", "reward", "inference", "inference.embedded",
           "rollout", "control", "trainer", "run", "tiny"}


def _files():
    for root in ("areal_lite", "examples", "benchmarks"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            yield ".".join(rel.parts).removesuffix(".__init__"), path


def room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in ("examples", "benchmarks"):
        return parts[0]
    if parts[0] != "areal_lite" or len(parts) < 2:
        return None
    if parts[1] == "inference" and len(parts) > 2 and parts[2] == "embedded":
        return "inference.embedded"
    return parts[1]


def imports(path: Path) -> list[str]:
    """Every import of ours in the file, at module level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]  # `from areal_lite import algo`
    return [n for n in out if n.split(".")[0] in ("areal_lite", "benchmarks", "examples")]


def test_every_file_is_in_a_room():
    assert all(room(m) in ALLOWED for m, _ in _files() if m not in ("areal_lite",)), \
        sorted({m for m, _ in _files() if room(m) not in ALLOWED})


def test_rooms_import_only_through_their_doors():
    bad = []
    for module, path in _files():
        src = room(module)
        for target in imports(path):
            dst = room(target)
            if dst is None or dst == src:
                continue
            if dst not in ALLOWED[src]:
                bad.append(f"{module} imports {target}")
            elif src in CLIENT_ONLY and dst == "inference" and not target.startswith("areal_lite.inference.client"):
                bad.append(f"{module} imports {target} ({src} may use only the inference client)")
    assert not bad, "forbidden imports:\n" + "\n".join(sorted(set(bad)))


def test_the_runtime_never_imports_tools_benchmarks_examples_or_launchers():
    bad = [f"{m} imports {t}" for m, p in _files() if room(m) in RUNTIME for t in imports(p)
           if room(t) in ("tools", "benchmarks", "examples", "launcher")]
    assert not bad, bad


def test_no_import_cycles():
    modules = {m for m, _ in _files()}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {d for t in imports(p) if (d := resolve(t)) and d != m} for m, p in _files()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for d in graph.get(m, ()):
            # A package importing its own submodules (re-exports) is not a cycle through the package.
            if m.startswith(d + "."):
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


def test_algo_is_pure_torch():
    for module, path in _files():
        if room(module) == "algo":
            assert all(room(t) in ("algo", "options") for t in imports(path)), module
