"""Field contract with SGLang: every field we accept or send exists in SGLang under the same name.

The pinned SGLang wheel (tests/interop/sglang_src.py) is read with `ast` straight from the zip.
Skipped only when the download itself fails (no index reachable). The launch flags are checked by
SGLang's own parser in test_sglang_server_args.py.
"""

from __future__ import annotations

import ast
import zipfile

import pytest

from areal_lite.inference.embedded import protocol as P
from tests.interop.sglang_src import SGLANG_PIN, Unavailable, wheel_path

# Our defaults that differ from SGLang's on purpose (SGLang's top_k default is a named constant, TOP_K_ALL).
KNOWN_DEFAULT_DIFFERENCES = {("SamplingParams", "top_k")}


@pytest.fixture(scope="module")
def wheel() -> zipfile.ZipFile:
    try:
        path = wheel_path()
    except Unavailable as e:
        pytest.skip(str(e))
    with zipfile.ZipFile(path) as zf:
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
