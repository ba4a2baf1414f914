"""Security: API key from the environment, weight-path confinement, secrets off command lines and out of
logs, no code-executing deserialization anywhere in the package."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from areal_lite.config.schema import ExperimentConfig
from areal_lite.inference.embedded.local_server import start_local_server
from areal_lite.launcher.plan import build_plan
from areal_lite.tiny.model import TinyModelSpec, build_tiny_model_dir
from areal_lite.utils.runenv import ENV_API_KEY, ENV_SECRET

PACKAGE = Path(__file__).resolve().parents[2] / "areal_lite"
KEY = "k3y-" + "9f1c" * 8
BODY = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 2, "temperature": 0.0}}


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.timeout(180)
def test_api_key_from_environment_refuses_and_logs_unauthenticated(tiny_model_dir, tmp_path):
    log = tmp_path / "server.log"
    args = ["--skip-tokenizer-init", "--context-length", "64", "--log-level", "info"]
    with start_local_server(tiny_model_dir, extra_args=args, env={ENV_API_KEY: KEY}, log_path=log,
                            startup_timeout=150) as server:
        assert KEY not in _cmdline(server.proc.pid)
        refused = [
            httpx.post(server.url + "/generate", json=BODY, timeout=10),
            httpx.post(server.url + "/generate", json=BODY, headers={"Authorization": "Bearer wrong"}, timeout=10),
            httpx.post(server.url + "/update_weights_from_disk", json={"model_path": str(tiny_model_dir)}, timeout=10),
            httpx.get(server.url + "/get_server_info", timeout=10),
        ]
        assert [r.status_code for r in refused] == [401] * 4
        good = {"Authorization": f"Bearer {KEY}"}
        assert httpx.post(server.url + "/generate", json=BODY, headers=good, timeout=60).status_code == 200
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # probes need no key
        info = httpx.get(server.url + "/get_server_info", headers=good, timeout=10).json()
        assert info["unauthorized_requests"] == 4
        assert KEY not in json.dumps(info)
    text = log.read_text()
    assert text.count(" 401 ") + text.count("401 POST") + text.count("401 GET") >= 4, text[-2000:]
    assert KEY not in text


@pytest.fixture(scope="module")
def confined_server(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("confined")
    weights = root / "run" / "weights"
    weights.mkdir(parents=True)
    outside = build_tiny_model_dir(root / "outside", TinyModelSpec(seed=7))
    args = ["--skip-tokenizer-init", "--context-length", "64", "--allowed-weight-dir", str(weights),
            "--log-level", "warning"]
    with start_local_server(tiny_model_dir, extra_args=args, startup_timeout=150) as server:
        yield server, weights, outside


def _update(server, path) -> httpx.Response:
    return httpx.post(server.url + "/update_weights_from_disk", json={"model_path": str(path), "weight_version": "evil"},
                      timeout=60)


@pytest.mark.timeout(180)
def test_weight_updates_only_from_the_run_weight_folder(confined_server):
    server, weights, outside = confined_server
    before = httpx.post(server.url + "/generate", json=BODY, timeout=60).json()["output_ids"]
    (weights / "link_out").symlink_to(outside, target_is_directory=True)
    (weights / "v1").mkdir()
    (weights / "v1" / "model").symlink_to(outside, target_is_directory=True)
    attempts = [
        outside,                                         # absolute path elsewhere
        weights / ".." / ".." / "outside",               # `..` traversal to a real model
        f"{weights}/v1/../../../outside",                # traversal through an existing subfolder
        weights / "link_out",                            # symlink inside pointing outside
        weights / "v1" / "model",                        # nested symlink
        os.path.relpath(outside),                        # relative path (the server's cwd is not the root)
        str(weights) + "_evil",                          # sibling sharing the root's name as a prefix
        "/",
    ]
    build_tiny_model_dir(Path(str(weights) + "_evil"), TinyModelSpec(seed=8))
    for path in attempts:
        r = _update(server, path)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["field"] == "model_path", (path, r.text)
    info = httpx.get(server.url + "/get_server_info", timeout=10).json()
    assert info["weight_version"] != "evil" and info["rejected_requests"] >= len(attempts)
    after = httpx.post(server.url + "/generate", json=BODY, timeout=60).json()
    assert after["output_ids"] == before
    # The same model copied inside the folder loads: the refusals above are about the path only.
    inside = build_tiny_model_dir(weights / "v2", TinyModelSpec(seed=7))
    r = _update(server, inside)
    assert r.status_code == 200 and r.json()["success"], r.text


def _multi_host_cfg(tmp_path, backend="embedded") -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.cluster.fileroot = str(tmp_path)
    cfg.cluster.bind_host = "0.0.0.0"
    cfg.actor.path = str(tmp_path / "model")
    cfg.allocation.inference.backend = backend
    if backend == "sglang":
        cfg.allocation.device = "cuda"
        cfg.cluster.n_gpus_per_node = 2
        cfg.allocation.inference.num_servers = 1
        cfg.allocation.trainer.nproc_per_node = 1
    return cfg


def test_plan_secrets_are_per_run_in_env_never_argv(tmp_path):
    plans = [build_plan(_multi_host_cfg(tmp_path), "entry.py", config_path="c.yaml", cores=2) for _ in range(2)]
    assert plans[0].secret != plans[1].secret and len(plans[0].secret) == 32
    for plan in plans:
        key = plan.servers[0].env[ENV_API_KEY]
        secrets_ = [plan.secret.hex(), key]
        for spec in plan.all():
            assert not any(s in " ".join(spec.cmd) for s in secrets_), spec.name
        for spec in [*plan.trainers, *plan.workers]:
            assert spec.env[ENV_SECRET] == plan.secret.hex() and spec.env[ENV_API_KEY] == key
        text = plan.describe()
        assert "<redacted>" in text and not any(s in text for s in secrets_)
    local = ExperimentConfig()
    local.actor.path = "m"
    local.cluster.fileroot = str(tmp_path)
    plan = build_plan(local, "entry.py", config_path="c.yaml", cores=2)
    assert plan.secret is None and all(ENV_API_KEY not in p.env for p in plan.all())
    assert all(p.cmd[p.cmd.index("--host") + 1] == "127.0.0.1" for p in plan.servers)


@pytest.mark.timeout(60)
def test_sglang_gets_the_key_from_env_not_argv(tmp_path):
    """The SGLang command runs through a shim that appends `--api-key` inside the process; a stand-in
    `sglang.launch_server` module records the argv it sees and the process command line."""
    fake = tmp_path / "fake" / "sglang"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    out = tmp_path / "seen.json"
    (fake / "launch_server.py").write_text(
        "import json, os, sys\n"
        "cmdline = open('/proc/self/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
        f"json.dump({{'argv': sys.argv, 'cmdline': cmdline}}, open({str(out)!r}, 'w'))\n"
    )
    plan = build_plan(_multi_host_cfg(tmp_path, "sglang"), "entry.py", config_path="c.yaml", cores=2)
    spec = plan.servers[0]
    env = {**os.environ, **spec.env, "PYTHONPATH": str(fake.parent)}
    subprocess.run([sys.executable, *spec.cmd[1:]], env=env, check=True, timeout=30)
    seen = json.loads(out.read_text())
    key = spec.env[ENV_API_KEY]
    assert seen["argv"][-2:] == ["--api-key", key] and "--model-path" in seen["argv"]
    assert key not in seen["cmdline"] and key not in " ".join(spec.cmd)


# --- no code-executing deserialization --------------------------------------------------------

FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}
FORBIDDEN_CALLS = {"eval", "exec"}


def _violations(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            out.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if isinstance(fn, ast.Name) and name in FORBIDDEN_CALLS:
                out.append(f"{where} {name}()")
            if name == "load" and isinstance(fn, ast.Attribute) and getattr(fn.value, "id", "") == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    out.append(f"{where} torch.load without weights_only=True")
            if name in ("loads", "load", "Unpickler") and getattr(fn.value, "id", "") in FORBIDDEN_MODULES:
                out.append(f"{where} {fn.value.id}.{name}()")
            if name == "unpackb" or name == "Unpacker":
                # A hook that builds objects from bytes is a deserialization gadget; one that refuses
                # extension types (transport's `_reject_ext`) is the opposite.
                hooks = [k.value for k in node.keywords if k.arg in ("ext_hook", "object_hook", "list_hook")]
                if any(not (isinstance(h, ast.Name) and h.id.startswith("_reject")) for h in hooks):
                    out.append(f"{where} msgpack with a custom object hook")
            if name in ("load", "unsafe_load", "full_load") and getattr(fn.value, "id", "") == "yaml":
                kw = {k.arg: k.value for k in node.keywords}
                loader = kw.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
                if name != "load" or not (isinstance(loader, ast.Attribute) and loader.attr == "SafeLoader"):
                    out.append(f"{where} yaml.{name} (not safe_load)")
    return out


def test_no_pickle_eval_or_unsafe_load_in_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40
    bad = [v for f in files for v in _violations(f)]
    assert not bad, "\n".join(bad)


def test_the_scanner_catches_what_it_forbids(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import pickle\nimport torch, yaml\nx = eval('1')\ntorch.load('f')\n"
                      "torch.load('f', weights_only=False)\nyaml.load('a')\nimport msgpack\n"
                      "msgpack.unpackb(b'', ext_hook=None)\n")
    got = _violations(sample, tmp_path)
    assert len(got) == 6, got
