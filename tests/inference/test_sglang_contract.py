"""Field contract with SGLang: every field we accept or send exists in SGLang under the same name.

The pinned SGLang wheel is downloaded (`pip download --no-deps`, ~40 MB, cached) and its sources are
read with `ast` straight from the zip: SGLang is never imported or installed. Skipped only when
the download itself fails (no index reachable).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from areal_lite.inference import protocol as P

SGLANG_PIN = "0.5.23"
# One fixed wheel, whatever machine runs the test (the sources are the same in every wheel).
WHEEL_PLATFORM = ["--platform", "manylinux_2_34_x86_64", "--python-version", "311", "--implementation", "cp"]
# Our defaults that differ from SGLang's on purpose (SGLang's top_k default is a named constant, TOP_K_ALL).
KNOWN_DEFAULT_DIFFERENCES = {("SamplingParams", "top_k")}


def _cache_dir() -> Path:
    root = os.environ.get("AREAL_LITE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "areal_lite"
    )
    return Path(root) / "sglang" / SGLANG_PIN


@pytest.fixture(scope="module")
def wheel() -> zipfile.ZipFile:
    cache = _cache_dir()
    found = sorted(cache.glob(f"sglang-{SGLANG_PIN}-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *WHEEL_PLATFORM,
               f"sglang=={SGLANG_PIN}", "-d", str(cache), "--quiet"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip download sglang=={SGLANG_PIN} timed out")
        found = sorted(cache.glob(f"sglang-{SGLANG_PIN}-*.whl"))
        if r.returncode != 0 or not found:
            pytest.skip(f"could not download sglang=={SGLANG_PIN}: {r.stderr.strip()[-300:]}")
    with zipfile.ZipFile(found[0]) as zf:
        yield zf


def _source(wheel: zipfile.ZipFile, path: str) -> ast.Module:
    return ast.parse(wheel.read(f"sglang/{path}").decode())


def _class_fields(module: ast.Module) -> dict[str, dict[str, ast.expr | None]]:
    """Class name -> {field: default expression} from annotated class attributes, bases in the module included."""
    classes = {n.name: n for n in module.body if isinstance(n, ast.ClassDef)}

    def fields(name: str, seen=()) -> dict[str, ast.expr | None]:
        node = classes[name]
        out: dict[str, ast.expr | None] = {}
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
                out.update(fields(base.id, (*seen, name)))
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                out[stmt.target.id] = stmt.value
        return out

    return {name: fields(name) for name in classes}


def _default(expr: ast.expr | None):
    """The literal default of a field (`x = 1` or `x = field(default=1)`), or a marker when not literal."""
    if isinstance(expr, ast.Call) and getattr(expr.func, "id", None) == "field":
        expr = next((k.value for k in expr.keywords if k.arg == "default"), None)
    if expr is None:
        return "<required>"
    try:
        return ast.literal_eval(expr)
    except ValueError:
        return "<not literal>"


@pytest.fixture(scope="module")
def io_struct(wheel):
    return _class_fields(_source(wheel, "srt/managers/io_struct.py"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("endpoint", sorted(P.SGLANG_CONTRACT))
def test_request_fields_exist_in_sglang(io_struct, endpoint):
    model, sglang_name = P.SGLANG_CONTRACT[endpoint]
    assert sglang_name in io_struct, f"{sglang_name} not in SGLang {SGLANG_PIN} io_struct.py"
    theirs = io_struct[sglang_name]
    missing = sorted(set(model.model_fields) - set(theirs))
    assert not missing, f"{endpoint}: {missing} not fields of SGLang's {sglang_name}"
    for name, info in model.model_fields.items():
        want = _default(theirs[name])
        if want in ("<not literal>",) or (sglang_name, name) in KNOWN_DEFAULT_DIFFERENCES:
            continue
        ours = "<required>" if info.is_required() else info.default
        assert ours == want, f"{endpoint}.{name}: default {ours!r}, SGLang's is {want!r}"


@pytest.mark.timeout(900)
def test_sampling_params_fields_exist_in_sglang(wheel):
    for field, (model, sglang_name, path) in P.SGLANG_NESTED_CONTRACT.items():
        theirs = _class_fields(_source(wheel, f"srt/{path}"))[sglang_name]
        missing = sorted(set(model.model_fields) - set(theirs))
        assert not missing, f"{field}: {missing} not fields of SGLang's {sglang_name}"
        for name, info in model.model_fields.items():
            want = _default(theirs[name])
            if want != "<not literal>" and (sglang_name, name) not in KNOWN_DEFAULT_DIFFERENCES:
                assert info.default == want, f"{field}.{name}: default {info.default!r}, SGLang's is {want!r}"


@pytest.mark.timeout(900)
def test_response_meta_info_keys_exist_in_sglang(wheel):
    meta = _class_fields(_source(wheel, "api/v1/api_types.py"))["GenerateMetaInfo"]
    assert not sorted(set(P.GENERATE_META_INFO_FIELDS) - set(meta))


@pytest.mark.timeout(900)
def test_client_fields_exist_in_sglang(wheel, io_struct):
    client = pytest.importorskip("areal_lite.inference.client", reason="client module not written yet")
    sampling = _class_fields(_source(wheel, "srt/sampling/sampling_params.py"))["SamplingParams"]
    assert not sorted(set(client.CLIENT_GENERATE_FIELDS) - set(io_struct["GenerateReqInput"]))
    assert not sorted(set(client.CLIENT_SAMPLING_FIELDS) - set(sampling))
    # ...and our server accepts everything the client sends.
    assert not sorted(set(client.CLIENT_GENERATE_FIELDS) - set(P.GenerateReqInput.model_fields))
    assert not sorted(set(client.CLIENT_SAMPLING_FIELDS) - set(P.SamplingParams.model_fields))


@pytest.mark.timeout(900)
def test_endpoints_exist_in_sglang_http_server(wheel):
    routes = set()
    for node in ast.walk(_source(wheel, "srt/entrypoints/http_server.py")):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("get", "post", "put", "api_route"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                routes.add(node.args[0].value)
    ours = set(P.SGLANG_CONTRACT) | {"/health", "/health_generate", "/model_info", "/get_model_info",
                                     "/server_info", "/get_server_info", "/flush_cache"}
    assert not sorted(ours - routes)


@pytest.mark.timeout(900)
def test_launch_flags_exist_in_sglang_server_args(wheel):
    from areal_lite.config.schema import ExperimentConfig
    from areal_lite.inference.launch_server import build_parser
    from areal_lite.inference.sglang import build_sglang_command

    names: set[str] = set()
    for path in wheel.namelist():
        if path.startswith("sglang/srt/arg_groups/") and path.endswith(".py") or path == "sglang/srt/server_args.py":
            for node in ast.walk(ast.parse(wheel.read(path).decode())):
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names.add(node.target.id)
    # Embedded-engine-only flags: the weight-folder restriction and the test knob that slows decoding.
    ours_only = {"allowed_weight_dir", "debug_step_delay"}
    flags = {a.dest for a in build_parser()._actions if a.option_strings and a.dest != "help"}
    assert not sorted(flags - ours_only - names)
    cfg = ExperimentConfig()
    cfg.sglang.attention_backend, cfg.sglang.chunked_prefill_size = "fa3", 4096
    cmd = build_sglang_command(cfg, model_path="m", host="127.0.0.1", port=1, seed=0, weight_version=3)
    used = {a[2:].replace("-", "_") for a in cmd if a.startswith("--")}
    assert not sorted(used - names)
