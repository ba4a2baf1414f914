"""`areal_lite.algo` imports nothing else from areal_lite (but the dependency-free leaf of option
names, `areal_lite.options`) and has no import-time side effects."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import areal_lite.algo

ALGO_DIR = Path(areal_lite.algo.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            names.add("." * node.level + (node.module or ""))
    return names


def test_algo_sources_import_only_algo_and_torch_stdlib():
    files = sorted(ALGO_DIR.glob("*.py"))
    assert len(files) >= 5
    allowed_third_party = {"torch"}
    for f in files:
        for name in _imported_modules(f):
            assert not name.startswith("."), f"{f.name}: use absolute imports ({name})"
            root = name.split(".")[0]
            if root == "areal_lite":
                assert name.startswith("areal_lite.algo") or name == "areal_lite.options", f"{f.name} imports {name}"
            else:
                assert root in allowed_third_party or root in sys.stdlib_module_names, f"{f.name} imports {name}"


def test_importing_algo_loads_no_other_areal_lite_module():
    code = (
        "import sys, areal_lite.algo; "
        "print(sorted(m for m in sys.modules if m.startswith('areal_lite') and not m.startswith('areal_lite.algo')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['areal_lite', 'areal_lite.options']"
