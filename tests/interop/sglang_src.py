"""SGLang's own code, runnable on a CPU machine, for the interoperability tests.

The pinned `sglang` wheel is downloaded once (`pip download --no-deps`, ~40 MB, cached under
~/.cache/areal_lite/sglang/<pin>/) and unpacked with a blank `sglang/__init__.py` (the real one
starts the whole runtime). Its pure-Python modules then import with three small dependencies
(msgspec, orjson, pybase64: the `test` extra) and SGLang's own Triton stand-in
(`sglang/_platform_stubs.py`, which SGLang ships for machines without Triton). Everything runs in
subprocesses (`python -m tests.interop.sglang_worker`), so the stand-in never enters the test process.

Functions whose module cannot be imported here (their package pulls in vision libraries) are read
out of SGLang's source with `ast` and executed verbatim with the globals of the modules that do
import: `sglang_function`. Nothing of SGLang is committed; the tests use the copy in the cache.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

SGLANG_PIN = "0.5.23"
# One fixed wheel, whatever machine runs the test (the Python sources are the same in every wheel).
WHEEL_PLATFORM = ["--platform", "manylinux_2_34_x86_64", "--python-version", "311", "--implementation", "cp"]


class Unavailable(RuntimeError):
    """The wheel could not be downloaded (no package index reachable)."""


def cache_dir() -> Path:
    root = os.environ.get("AREAL_LITE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "areal_lite"
    )
    return Path(root) / "sglang" / SGLANG_PIN


def wheel_path() -> Path:
    cache = cache_dir()
    found = sorted(cache.glob(f"sglang-{SGLANG_PIN}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *WHEEL_PLATFORM,
           f"sglang=={SGLANG_PIN}", "-d", str(cache), "--quiet"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise Unavailable(f"pip download sglang=={SGLANG_PIN} timed out") from e
    found = sorted(cache.glob(f"sglang-{SGLANG_PIN}-*.whl"))
    if r.returncode != 0 or not found:
        raise Unavailable(f"could not download sglang=={SGLANG_PIN}: {r.stderr.strip()[-300:]}")
    return found[0]


def source_tree() -> Path:
    """The unpacked wheel (its `sglang/` package with a blank `__init__.py`), made once and cached."""
    root = cache_dir() / "src"
    if (root / "sglang" / "srt" / "server_args.py").is_file():
        return root
    tmp = cache_dir() / f"src.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel_path()) as zf:
        zf.extractall(tmp, [n for n in zf.namelist() if n.startswith("sglang/")])
    (tmp / "sglang" / "__init__.py").write_text('"""Blank: the real one starts the runtime."""\n')
    try:
        os.replace(tmp, root)
    except OSError:  # another process unpacked it first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def bootstrap(src: str | Path) -> None:
    """Make `import sglang...` work in this process: the source tree first on sys.path, Triton stood in."""
    sys.path.insert(0, str(src))
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        from sglang import _platform_stubs as stubs  # SGLang's own stand-in for machines without Triton

        sys.meta_path.insert(0, stubs._TritonFinder())
        triton = stubs._make_mock("triton")
        triton.__version__ = "3.0.0"
        triton.cdiv, triton.next_power_of_2, triton.Config = stubs._cdiv, stubs._next_power_of_2, stubs._Config
        triton.language = stubs._make_mock("triton.language")


def sglang_function(src: str | Path, relpath: str, qualname: str, namespace: dict):
    """The function `qualname` ("Class.method" or "func") of `sglang/<relpath>`, executed from its
    source text verbatim in `namespace` (the globals it needs, taken from modules that import)."""
    text = (Path(src) / "sglang" / relpath).read_text()
    node: ast.AST = ast.parse(text)
    for part in qualname.split("."):
        node = next(n for n in ast.iter_child_nodes(node)
                    if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part)
    code = textwrap.dedent(ast.get_source_segment(text, node))
    exec(compile("from __future__ import annotations\n" + code, f"sglang/{relpath}", "exec"), namespace)
    return namespace[qualname.split(".")[-1]]
