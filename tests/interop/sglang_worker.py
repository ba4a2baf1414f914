"""Runs SGLang's own code for the interoperability tests (a subprocess; see sglang_src.py).

    python -m tests.interop.sglang_worker SRC COMMAND [ARGS] < payload.json   → one JSON line on stdout

server-args      payload: list of argv lists (what follows `python -m sglang.launch_server`); each is
                 parsed by SGLang's `prepare_server_args`, the function its launch_server runs.
decode-generate  payload: list of /generate bodies; each decoded by `GenerateRequest.from_json_value`,
                 the contract gate of SGLang's HTTP server (api_contract.generate_contract_error).
decode-response  payload: list of /generate responses; each decoded by `GenerateResponse.from_json_value`.
config-dtype     payload: list of config.json paths; the dtype SGLang serves each in with --dtype auto
                 (`_get_and_verify_dtype` of sglang/srt/configs/model_config.py).
group-member     ARGS: master_address master_port rank_offset world_size group_name tp_rank tp_size tp_port;
                 forms the server's own default group of its tp_size ranks (as SGLang's TP workers
                 have), joins the weight-update group through SGLang's `WeightUpdater.init_weights_update_group`, then
                 receives one bucket (payload: {"names", "dtypes", "shapes"}) through its
                 `receive_weights_from_distributed`; prints each tensor's float64 sum.
"""

from __future__ import annotations

import json
import logging
import sys

from tests.interop.sglang_src import bootstrap, sglang_function


def server_args(argvs: list[list[str]]) -> dict:
    from sglang.srt.server_args import prepare_server_args

    out = []
    for argv in argvs:
        try:
            sa = prepare_server_args(list(argv))
        except SystemExit as e:  # argparse refused the command line
            out.append({"error": f"exit {e.code}"})
            continue
        keys = ("model_path", "host", "port", "tp_size", "mem_fraction_static", "context_length",
                "max_running_requests", "random_seed", "dtype", "weight_version", "skip_tokenizer_init",
                "disable_radix_cache", "attention_backend", "chunked_prefill_size", "api_key")
        out.append({k: getattr(sa, k) for k in keys})
    return {"parsed": out}


def decode(kind: str, bodies: list) -> dict:
    from sglang.api.v1 import api_types as T

    cls = T.GenerateRequest if kind == "request" else T.GenerateResponse
    errors = []
    for body in bodies:
        try:
            cls.from_json_value(body)
            errors.append(None)
        except T.JsonContractError as e:
            errors.append(str(e))
    return {"errors": errors}


def config_dtype(paths: list[str]) -> dict:
    import torch
    from transformers import AutoConfig

    ns = {"torch": torch, "logger": logging.getLogger("sglang"), "PretrainedConfig": object, "Union": object}
    # The module-level table the function reads, evaluated from SGLang's source as well.
    sglang_function_table(ns)
    verify = sglang_function(SRC, "srt/configs/model_config.py", "_get_and_verify_dtype", ns)
    return {"dtypes": [str(verify(AutoConfig.from_pretrained(p), "auto")).removeprefix("torch.") for p in paths]}


def sglang_function_table(ns: dict) -> None:
    import ast
    from pathlib import Path

    text = (Path(SRC) / "sglang" / "srt" / "configs" / "model_config.py").read_text()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", "") == "_STR_DTYPE_TO_TORCH_DTYPE" for t in targets):
                exec(compile(ast.Module([node], []), "model_config.py", "exec"), ns)


def group_member(args: list[str], bucket: dict) -> dict:
    import types

    import torch
    from sglang.srt.utils.common import init_custom_process_group
    from sglang.srt.utils.network import NetworkAddress

    master_address, master_port, rank_offset, world_size, group_name, tp_rank, tp_size, tp_port = args
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{tp_port}", rank=int(tp_rank),
                                         world_size=int(tp_size))
    ns = {"torch": torch, "init_custom_process_group": init_custom_process_group,
          "NetworkAddress": NetworkAddress, "logger": logging.getLogger("sglang")}
    path = "srt/model_executor/model_runner_components/weight_updater.py"
    init = sglang_function(SRC, path, "WeightUpdater.init_weights_update_group", dict(ns))
    receive = sglang_function(SRC, path, "WeightUpdater.receive_weights_from_distributed", dict(ns))
    # The attributes these two methods read of SGLang's (frozen dataclass) WeightUpdater.
    updater = types.SimpleNamespace(tp_rank=int(tp_rank), device="cpu", _model_update_group={})
    ok, message = init(updater, master_address, int(master_port), int(rank_offset), int(world_size), group_name,
                       backend="gloo")
    if not ok:
        return {"ok": False, "message": message}
    weights = receive(updater, names=bucket["names"], dtypes=bucket["dtypes"], shapes=bucket["shapes"],
                      group_name=group_name)
    group = updater._model_update_group[group_name]
    result = {"ok": True, "rank": group.rank(),
              "sums": {n: float(t.double().sum()) for n, t in weights},
              "dtypes": {n: str(t.dtype).removeprefix("torch.") for n, t in weights}}
    torch.distributed.destroy_process_group(group)
    torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    SRC, command, *extra = sys.argv[1:]
    bootstrap(SRC)
    payload = json.loads(sys.stdin.read() or "null")
    if command == "server-args":
        result = server_args(payload)
    elif command in ("decode-generate", "decode-response"):
        result = decode("request" if command == "decode-generate" else "response", payload)
    elif command == "config-dtype":
        result = config_dtype(payload)
    elif command == "group-member":
        result = group_member(extra, payload)
    else:
        raise SystemExit(f"unknown command {command!r}")
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
