"""Every SGLang command line we emit parses with SGLang's own `prepare_server_args` (the function its
`launch_server` runs) into the server we meant: model, port, TP size, memory share, serving dtype,
weight version, token-ids-only mode, API key. Commands come from the launchers' real plans of every
GPU recipe on one GPU (colocated), one 8-GPU node and two 8-GPU nodes, and from a server restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_lite.config import load_config
from areal_lite.config.schema import resolved_mem_fraction, resolved_serving_dtype
from areal_lite.inference.embedded.launch_server import build_parser
from areal_lite.launcher.plan import SGLANG_WITH_ENV_KEY, build_plan, server_command
from tests.launcher.test_gpu_layouts import ENTRY, LAYOUTS, RECIPES

REPO = Path(__file__).resolve().parents[2]


def sglang_argv(cmd: list[str]) -> list[str]:
    """What `sglang.launch_server` sees: the flags, plus `--api-key` where the shim adds it from the environment."""
    if cmd[1:3] == ["-m", "sglang.launch_server"]:
        return cmd[3:]
    assert cmd[1:3] == ["-c", SGLANG_WITH_ENV_KEY], cmd
    return [*cmd[3:], "--api-key", "key-from-env"]


def plans():
    for recipe in RECIPES:
        for layout, overrides in LAYOUTS.items():
            cfg = load_config(["--config", str(REPO / "examples" / "math" / recipe), *overrides])
            plan = build_plan(cfg, ENTRY, config_path="/run/config.yaml", hosts=[f"n{i}" for i in range(cfg.cluster.n_nodes)])
            yield f"{recipe}:{layout}", cfg, plan


@pytest.mark.timeout(300)
def test_every_planned_sglang_command_parses_as_intended(sglang_run, tmp_path):
    cases = []
    for name, cfg, plan in plans():
        for spec in plan.servers:
            cases.append((name, cfg, spec.port, 0, sglang_argv(spec.cmd)))
    # A server restarted from the trainer's newest weights starts at their version.
    cfg = load_config(["--config", str(REPO / "examples" / "math" / RECIPES[0])])
    weights = tmp_path / "weights"
    (weights / "v12").mkdir(parents=True)
    (weights / "v12" / "config.json").write_text("{}")
    cmd = server_command(cfg, host="127.0.0.1", port=31234, seed=5, weights_dir=str(weights),
                         model_path=str(weights / "v12"), weight_version=12)
    cases.append(("restart", cfg, 31234, 12, sglang_argv(cmd)))

    parsed = sglang_run("server-args", [argv for *_, argv in cases])["parsed"]
    assert len(parsed) == len(cases)
    for (name, cfg, port, version, argv), got in zip(cases, parsed):
        assert "error" not in got, (name, argv, got)
        assert got["port"] == port and got["tp_size"] == cfg.allocation.inference.tp_size, name
        assert got["dtype"] == resolved_serving_dtype(cfg) == "bfloat16", name
        assert got["mem_fraction_static"] == resolved_mem_fraction(cfg), name
        assert got["weight_version"] == str(version), name
        assert got["skip_tokenizer_init"] is True and got["disable_radix_cache"] is cfg.sglang.disable_radix_cache
        assert got["random_seed"] == int(argv[argv.index("--random-seed") + 1])
        assert got["api_key"] == ("key-from-env" if cfg.cluster.n_nodes > 1 else None), name
        if name == "restart":
            assert got["model_path"].startswith(str(weights / "pinned")), got
    colocated = [got for (name, *_), got in zip(cases, parsed) if name.endswith("1gpu_colocated")]
    assert colocated and all(g["mem_fraction_static"] == 0.4 for g in colocated)


@pytest.mark.timeout(300)
def test_embedded_server_flags_mean_the_same_in_sglang(sglang_run):
    """The embedded launch_server's flags that SGLang also has parse in SGLang to the same values."""
    ours_only = {"--allowed-weight-dir", "--debug-step-delay", "--device", "--max-prefill-tokens"}
    argv = ["--model-path", "/m", "--host", "127.0.0.1", "--port", "30001", "--skip-tokenizer-init",
            "--context-length", "512", "--max-running-requests", "8", "--dtype", "float32", "--random-seed", "3",
            "--tp-size", "1", "--weight-version", "4", "--log-level", "warning"]
    flags = {s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")}
    assert {a for a in argv if a.startswith("--")} | ours_only | {"--help", "--api-key"} == flags
    got = sglang_run("server-args", [argv])["parsed"][0]
    assert "error" not in got, got
    assert (got["context_length"], got["max_running_requests"], got["dtype"], got["random_seed"],
            got["weight_version"]) == (512, 8, "float32", 3, "4")
