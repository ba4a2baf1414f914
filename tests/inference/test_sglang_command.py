"""The SGLang server command line built from the config (never run here: SGLang needs GPUs).

That SGLang's own argument parser accepts every command we build is tests/interop/test_sglang_server_args.py.
"""

from __future__ import annotations

from areal_lite.config.schema import ExperimentConfig, resolved_mem_fraction, resolved_serving_dtype
from areal_lite.inference.sglang import build_sglang_command
from areal_lite.launcher.plan import server_command


def test_default_config_command():
    cfg = ExperimentConfig()
    cmd = build_sglang_command(cfg.sglang, cfg.server, model_path="/m", host="10.0.0.2", port=31000, seed=7,
                               python="py")
    assert cmd == [
        "py", "-m", "sglang.launch_server", "--model-path", "/m", "--host", "10.0.0.2", "--port", "31000",
        "--tp-size", "1", "--mem-fraction-static", "0.8", "--context-length", "1024",
        "--max-running-requests", "64", "--random-seed", "7", "--dtype", "bfloat16", "--weight-version", "0",
        "--skip-tokenizer-init", "--disable-radix-cache",
    ]


def test_sglang_section_overrides_and_passthrough():
    cfg = ExperimentConfig()
    cfg.sglang.context_length, cfg.sglang.max_running_requests = 4096, 128
    cfg.sglang.attention_backend, cfg.sglang.chunked_prefill_size = "fa3", 8192
    cfg.sglang.disable_radix_cache = False
    cfg.sglang.extra_args = ["--enable-metrics", "--log-level", "warning"]
    cmd = build_sglang_command(cfg.sglang, cfg.server, model_path="/m", host="h", port=1, seed=0, tp_size=2,
                               dtype="float16", weight_version=3, python="py")
    assert cmd[cmd.index("--tp-size") + 1] == "2"
    assert cmd[cmd.index("--context-length") + 1] == "4096"
    assert cmd[cmd.index("--max-running-requests") + 1] == "128"
    assert cmd[cmd.index("--dtype") + 1] == "float16"
    assert cmd[cmd.index("--attention-backend") + 1] == "fa3"
    assert cmd[cmd.index("--chunked-prefill-size") + 1] == "8192"
    assert cmd[cmd.index("--weight-version") + 1] == "3"
    assert "--disable-radix-cache" not in cmd
    assert cmd[-3:] == ["--enable-metrics", "--log-level", "warning"]


def test_serving_dtype_and_memory_share_resolve_from_the_placement():
    cfg = ExperimentConfig()
    assert resolved_serving_dtype(cfg) == "float32"  # CPU: bf16 is emulated on most processors
    cfg.allocation.device = "cuda"
    assert resolved_serving_dtype(cfg) == "bfloat16"  # never SGLang's auto (float16 for a float32 config)
    cfg.server.dtype = "float16"
    assert resolved_serving_dtype(cfg) == "float16"
    assert resolved_mem_fraction(cfg) == 0.8
    cfg.allocation.colocate = True
    assert resolved_mem_fraction(cfg) == 0.4  # the trainer shares the GPU
    cfg.sglang.mem_fraction_static = 0.3
    assert resolved_mem_fraction(cfg) == 0.3


def test_a_restarted_sglang_server_reports_the_version_of_its_weights(tmp_path):
    """A server restarted from weights/v7 starts at weight version 7, not 0 (its groups would look stale)."""
    cfg = ExperimentConfig()
    cfg.allocation.device, cfg.allocation.inference.backend = "cuda", "sglang"
    weights = tmp_path / "weights"
    (weights / "v7").mkdir(parents=True)
    (weights / "v7" / "config.json").write_text("{}")
    fresh = server_command(cfg, host="127.0.0.1", port=5, seed=0, weights_dir=str(weights))
    assert fresh[fresh.index("--weight-version") + 1] == "0"
    restarted = server_command(cfg, host="127.0.0.1", port=5, seed=0, weights_dir=str(weights),
                               model_path=str(weights / "v7"), weight_version=7)
    assert restarted[restarted.index("--weight-version") + 1] == "7"
    assert restarted[restarted.index("--model-path") + 1].startswith(str(weights / "pinned"))
