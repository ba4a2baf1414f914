"""Run under torchrun (1 rank) by test_weight_sync_restart.py: distributed weight sync in bf16 across a
server restart and across a trainer that died inside SGLang's begin/end weight-update session.

Rank 0 starts its own embedded server (bf16, as the GPU default serves) so that it can restart it.
Writes `{out}/result.json`.
"""

from __future__ import annotations

import json
import os
import sys

import httpx
import torch

from areal_lite.config.schema import ActorConfig
from areal_lite.inference.client import ServerAdmin
from areal_lite.inference.embedded.local_server import free_port, start_local_server
from areal_lite.trainer.ppo import PPOActor
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.run.weight_sync import DistributedWeightSync
from areal_lite.utils.distributed import init_trainer_dist, run_and_exit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layout_update_worker import make_batch  # noqa: E402


def version(url: str) -> str:
    return httpx.get(f"{url}/model_info", timeout=30).json()["weight_version"]


def greedy(url: str) -> list[int]:
    r = httpx.post(f"{url}/generate", json={"input_ids": [7, 8, 9], "sampling_params": {
        "max_new_tokens": 8, "temperature": 0.0, "ignore_eos": True}}, timeout=60)
    r.raise_for_status()
    return r.json()["output_ids"]


def main() -> int:
    model, out = sys.argv[1:3]
    torch.set_num_threads(1)
    d = init_trainer_dist("cpu")
    engine = FSDPEngine(EngineSpec(path=model, lr=3e-2, weight_decay=0.0, max_tokens_per_mb=256,
                                   export_dtype="bfloat16"), d, total_optimizer_steps=8)
    engine.initialize()
    actor = PPOActor.build(ActorConfig(path=model), max_new_tokens=32, loss_norm_constant=32.0, seed=0)
    port = free_port()
    args = ["--skip-tokenizer-init", "--context-length", "128", "--weight-version", "0", "--dtype", "bfloat16",
            "--log-level", "warning"]
    server = start_local_server(model, port=port, extra_args=args, log_path=os.path.join(out, "a.log"),
                                startup_timeout=120)
    url = server.url
    admin = ServerAdmin([url], timeout=120)
    r: dict = {"fp32_bytes": sum(p.numel() * 4 for p in engine.model.parameters())}

    def train_and_sync(sync, v: int) -> dict:
        batch = make_batch(vocab=200, seed=v)
        rows = actor.step_rows(engine, batch)
        actor.ppo_update(engine, batch, rows, actor.advantage_fn(batch, rows), step=v)
        return sync.update(engine, version=v)

    sync = DistributedWeightSync(admin, master_address="127.0.0.1", master_port=free_port(), timeout_s=120)
    try:
        sync.connect(engine)
        r["v1_stats"] = train_and_sync(sync, 1)
        r["v1_version"], r["v1_output"] = version(url), greedy(url)
        # The launcher restarts a dead server on the same port, from the initial model, at version 0.
        server.stop()
        server = start_local_server(model, port=port, extra_args=args, log_path=os.path.join(out, "b.log"),
                                    startup_timeout=120)
        r["restarted_version"] = version(url)
        r["v2_stats"] = train_and_sync(sync, 2)
        r["v2_version"], r["groups_formed"] = version(url), sync.generation
        # A trainer killed between /begin_weight_update and /end_weight_update leaves the session open.
        r["begin_reply"] = httpx.post(f"{url}/begin_weight_update", json={}, timeout=30).json()
        sync.close()
        sync = DistributedWeightSync(admin, master_address="127.0.0.1", master_port=free_port(), timeout_s=120)
        sync.connect(engine)
        r["v3_stats"] = train_and_sync(sync, 3)
        r["v3_version"] = version(url)
    finally:
        sync.close()
        server.stop()
    with open(os.path.join(out, "result.json"), "w") as fh:
        json.dump(r, fh)
    return 0


if __name__ == "__main__":
    run_and_exit(main)
