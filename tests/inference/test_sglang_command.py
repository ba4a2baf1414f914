"""The SGLang server command line built from the config (never run here: SGLang needs GPUs)."""

from __future__ import annotations

from areal_lite.config.schema import ExperimentConfig
from areal_lite.inference.sglang import build_sglang_command


def test_default_config_command():
    cfg = ExperimentConfig()
    cmd = build_sglang_command(cfg, model_path="/m", host="10.0.0.2", port=31000, seed=7, python="py")
    assert cmd == [
        "py", "-m", "sglang.launch_server", "--model-path", "/m", "--host", "10.0.0.2", "--port", "31000",
        "--tp-size", "1", "--mem-fraction-static", "0.8", "--context-length", "1024",
        "--max-running-requests", "64", "--random-seed", "7", "--skip-tokenizer-init", "--disable-radix-cache",
    ]


def test_sglang_section_overrides_and_passthrough():
    cfg = ExperimentConfig()
    cfg.allocation.inference.tp_size = 2
    cfg.server.dtype = "bfloat16"
    cfg.sglang.context_length, cfg.sglang.max_running_requests = 4096, 128
    cfg.sglang.attention_backend, cfg.sglang.chunked_prefill_size = "fa3", 8192
    cfg.sglang.disable_radix_cache = False
    cfg.sglang.extra_args = ["--enable-metrics", "--log-level", "warning"]
    cmd = build_sglang_command(cfg, model_path="/m", host="h", port=1, seed=0, weight_version=3, python="py")
    assert cmd[cmd.index("--tp-size") + 1] == "2"
    assert cmd[cmd.index("--context-length") + 1] == "4096"
    assert cmd[cmd.index("--max-running-requests") + 1] == "128"
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert cmd[cmd.index("--attention-backend") + 1] == "fa3"
    assert cmd[cmd.index("--chunked-prefill-size") + 1] == "8192"
    assert cmd[cmd.index("--weight-version") + 1] == "3"
    assert "--disable-radix-cache" not in cmd
    assert cmd[-3:] == ["--enable-metrics", "--log-level", "warning"]
