"""The SGLang backend (GPU machines): the `sglang.launch_server` command line from the config.

SGLang is never imported here (it cannot run on CPU); the launchers start the command this module
builds, wait for `/health`, and stop the process group. `python -m areal_lite.launcher.local ...
--dry-run` prints it, or directly:

    python -m areal_lite.inference.sglang --config CFG.yaml [key=value ...]   # prints the command

Mapping (config → flag): actor.path → --model-path; allocation.inference.tp_size → --tp-size;
sglang.mem_fraction_static → --mem-fraction-static; sglang.context_length (else
server.context_length) → --context-length; sglang.max_running_requests (else
server.max_running_requests) → --max-running-requests; server.dtype (unless auto) → --dtype;
sglang.attention_backend → --attention-backend; sglang.chunked_prefill_size →
--chunked-prefill-size; sglang.disable_radix_cache → --disable-radix-cache; seed → --random-seed;
then sglang.extra_args verbatim. Always --skip-tokenizer-init (the client sends token ids).
"""

from __future__ import annotations

import shlex
import sys
from typing import Any, Sequence


def build_sglang_command(
    cfg: Any,
    *,
    model_path: str,
    host: str,
    port: int,
    seed: int,
    weight_version: int | str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """`python -m sglang.launch_server ...` for one server of the run described by `cfg`."""
    sg, server = cfg.sglang, cfg.server
    cmd = [
        python, "-m", "sglang.launch_server",
        "--model-path", str(model_path),
        "--host", host,
        "--port", str(port),
        "--tp-size", str(cfg.allocation.inference.tp_size),
        "--mem-fraction-static", str(sg.mem_fraction_static),
        "--context-length", str(sg.context_length if sg.context_length is not None else server.context_length),
        "--max-running-requests",
        str(sg.max_running_requests if sg.max_running_requests is not None else server.max_running_requests),
        "--random-seed", str(seed),
        "--skip-tokenizer-init",
    ]
    if server.dtype != "auto":
        cmd += ["--dtype", server.dtype]
    if sg.attention_backend:
        cmd += ["--attention-backend", sg.attention_backend]
    if sg.chunked_prefill_size is not None:
        cmd += ["--chunked-prefill-size", str(sg.chunked_prefill_size)]
    if sg.disable_radix_cache:
        cmd.append("--disable-radix-cache")
    if weight_version is not None:
        cmd += ["--weight-version", str(weight_version)]
    cmd += [str(a) for a in sg.extra_args]
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    """Print the SGLang command for server 0 of a config (host/port/seed as the first server would get)."""
    import argparse

    from areal_lite.config.loader import load_config

    parser = argparse.ArgumentParser(prog="areal_lite.inference.sglang", description=main.__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(["--config", args.config, *args.overrides])
    cmd = build_sglang_command(cfg, model_path=cfg.actor.path, host=cfg.cluster.bind_host, port=args.port, seed=cfg.seed)
    print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
