"""The SGLang backend (GPU machines): the `sglang.launch_server` command line from the config.

SGLang is never imported here (it cannot run on CPU); the launchers start the command this module
builds, wait for `/health`, and stop the process group. `python -m areal_lite.launcher.local ...
--dry-run` prints it, or directly:

    python -m areal_lite.inference.sglang --config CFG.yaml [key=value ...]   # prints the command

Mapping (config → flag): actor.path (or the newest weights, on a restart) → --model-path;
allocation.inference.tp_size → --tp-size; sglang.mem_fraction_static (null: 0.8, or 0.4 colocated) →
--mem-fraction-static;
sglang.context_length (else server.context_length) → --context-length; sglang.max_running_requests
(else server.max_running_requests) → --max-running-requests; the serving dtype (server.dtype, auto:
bfloat16 on GPU) → --dtype; the weight version the server starts with → --weight-version;
sglang.attention_backend → --attention-backend; sglang.chunked_prefill_size → --chunked-prefill-size;
sglang.disable_radix_cache → --disable-radix-cache; seed → --random-seed; then sglang.extra_args
verbatim. Always --skip-tokenizer-init (the client sends token ids). Every flag is checked against
SGLang's own argument parser by tests/interop/test_sglang_server_args.py.
"""

from __future__ import annotations

import shlex
import sys
from typing import Sequence

from areal_lite.config.schema import ServerConfig, SGLangConfig


def build_sglang_command(
    sglang: SGLangConfig,
    server: ServerConfig,
    *,
    model_path: str,
    host: str,
    port: int,
    seed: int,
    tp_size: int = 1,
    mem_fraction: float = 0.8,
    dtype: str = "bfloat16",
    weight_version: int | str = 0,
    python: str = sys.executable,
) -> list[str]:
    """`python -m sglang.launch_server ...` for one server.

    `dtype` is the resolved serving dtype (never `auto`: SGLang's auto serves a float32 checkpoint in
    float16). `weight_version` is the version of the weights at `model_path`, which the server reports
    with every output until the trainer's next update (0: the initial model).
    """
    cmd = [
        python, "-m", "sglang.launch_server",
        "--model-path", str(model_path),
        "--host", host,
        "--port", str(port),
        "--tp-size", str(tp_size),
        "--mem-fraction-static", str(mem_fraction),
        "--context-length", str(sglang.context_length if sglang.context_length is not None else server.context_length),
        "--max-running-requests",
        str(sglang.max_running_requests if sglang.max_running_requests is not None else server.max_running_requests),
        "--random-seed", str(seed),
        "--dtype", dtype,
        "--weight-version", str(weight_version),
        "--skip-tokenizer-init",
    ]
    if sglang.attention_backend:
        cmd += ["--attention-backend", sglang.attention_backend]
    if sglang.chunked_prefill_size is not None:
        cmd += ["--chunked-prefill-size", str(sglang.chunked_prefill_size)]
    if sglang.disable_radix_cache:
        cmd.append("--disable-radix-cache")
    cmd += [str(a) for a in sglang.extra_args]
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    """Print the SGLang command for server 0 of a config (host/port/seed as the first server would get)."""
    import argparse

    from areal_lite.config.loader import load_config
    from areal_lite.config.schema import resolved_mem_fraction, resolved_serving_dtype

    parser = argparse.ArgumentParser(prog="areal_lite.inference.sglang", description=main.__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(["--config", args.config, *args.overrides])
    cmd = build_sglang_command(cfg.sglang, cfg.server, model_path=cfg.actor.path, host=cfg.cluster.bind_host,
                               port=args.port, seed=cfg.seed, tp_size=cfg.allocation.inference.tp_size,
                               mem_fraction=resolved_mem_fraction(cfg), dtype=resolved_serving_dtype(cfg))
    print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
