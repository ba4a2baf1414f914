"""Start the embedded inference server: SGLang's HTTP API over `engine.Engine`.

    python -m areal_lite.inference.embedded.launch_server --model-path PATH [--host 127.0.0.1] [--port 30000] \
        [--skip-tokenizer-init] [--api-key K] [--context-length N] [--max-running-requests N] \
        [--dtype auto|float32|bfloat16|float16] [--random-seed S] [--tp-size 1] [--device cpu|cuda] \
        [--weight-version V] [--allowed-weight-dir DIR] [--debug-step-delay S] [--log-level info]

Flag names are `sglang.launch_server`'s where they overlap. `--allowed-weight-dir` is ours: when set,
`/update_weights_from_disk` refuses any `model_path` that does not resolve inside it. The API key is
read from `AREAL_LITE_API_KEY` when `--api-key` is not given: the launchers pass it that way, since a
command line is visible to every user of the machine (`ps`). The launchers
(local, Ray, Slurm) build this command line in `areal_lite.launcher.plan.server_command`.
SIGTERM or SIGINT stops the server cleanly (exit 0); bad flags exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Sequence

from areal_lite.utils.runenv import ENV_API_KEY


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="areal_lite.inference.embedded.launch_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", required=True, help="HF model directory (safetensors, or a config alone).")
    p.add_argument("--host", default="127.0.0.1", help="Interface to bind (default loopback).")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--skip-tokenizer-init", action="store_true", help="Token ids only; no tokenizer is loaded.")
    p.add_argument("--api-key", default=None,
                   help=f"Require 'Authorization: Bearer KEY' (not on /health); default: ${ENV_API_KEY} if set.")
    p.add_argument("--context-length", type=int, default=None, help="Longest prompt + output (default: the model's).")
    p.add_argument("--max-running-requests", type=int, default=64, help="Requests decoded together.")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--random-seed", type=int, default=0, help="Seed of the sampling generator.")
    p.add_argument("--tp-size", type=int, default=1, help="Tensor parallelism (the embedded engine: 1).")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--weight-version", default="default", help="Initial weight version string.")
    p.add_argument("--allowed-weight-dir", default=None, help="Only load weight updates from inside this directory.")
    p.add_argument("--max-prefill-tokens", type=int, default=8192, help="Padded prompt tokens prefilled per step.")
    p.add_argument("--debug-step-delay", type=float, default=0.0,
                   help="Testing only: seconds to sleep after every decode step (a slow server).")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"])
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.api_key is None:
        args.api_key = os.environ.get(ENV_API_KEY) or None
    if args.tp_size != 1:
        parser.error("--tp-size: the embedded engine runs on one device; use SGLang for tensor parallelism")
    if args.context_length is not None and args.context_length < 2:
        parser.error("--context-length must be at least 2")
    if args.max_running_requests < 1:
        parser.error("--max-running-requests must be at least 1")
    if args.debug_step_delay < 0:
        parser.error("--debug-step-delay must be >= 0")
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} out of range")
    if not os.path.isfile(os.path.join(args.model_path, "config.json")):
        parser.error(f"--model-path {args.model_path!r} has no config.json")
    return args


def _exit_cleanly(signum, frame):
    # Outside uvicorn's own handlers (model loading, and uvicorn re-raising the signal after its
    # graceful shutdown): unwind through main's `finally` and exit 0.
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    log = logging.getLogger("areal_lite.launch_server")

    import uvicorn

    from areal_lite.inference.embedded.engine import Engine, EngineConfig
    from areal_lite.inference.embedded.server import build_app

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.stderr.write("launch_server: error: --device cuda but no CUDA device is available\n")
            return 2
    engine = None
    try:
        engine = Engine(
            EngineConfig(
                model_path=args.model_path,
                dtype=args.dtype,
                device=args.device,
                context_length=args.context_length,
                max_running_requests=args.max_running_requests,
                max_prefill_tokens=args.max_prefill_tokens,
                random_seed=args.random_seed,
                skip_tokenizer_init=args.skip_tokenizer_init,
                weight_version=args.weight_version,
                debug_step_delay_s=args.debug_step_delay,
            )
        ).start()
        server_args = {k: v for k, v in vars(args).items() if k != "api_key"}
        app = build_app(engine, api_key=args.api_key, allowed_weight_dir=args.allowed_weight_dir, server_args=server_args)
        config = uvicorn.Config(
            app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, timeout_keep_alive=60
        )
        log.info("serving %s on http://%s:%d (context %d)", args.model_path, args.host, args.port, engine.context_length)
        # uvicorn turns SIGINT/SIGTERM into a graceful shutdown and returns here.
        uvicorn.Server(config).run()
        return 0
    finally:
        if engine is not None:
            engine.shutdown()
        log.info("server stopped")


if __name__ == "__main__":
    sys.exit(main())
