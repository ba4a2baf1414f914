"""Run under torchrun by test_weight_sync.py: real PPO updates pushed to a real inference server.

For each mode (disk, then distributed): greedy generation before; one PPO update; weight sync to the
next version while a background client keeps generating; greedy generation after, with the server's
log-probs, and the trainer's log-probs of the same tokens under its (sharded) weights. Rank 0 writes
`{out}/result.json`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import httpx
import msgpack
import numpy as np
import torch

from areal_lite.config.schema import ActorConfig
from areal_lite.inference.client import ServerAdmin
from areal_lite.run.rundir import RunDir
from areal_lite.trainer.ppo import PPOActor
from areal_lite.trainer.batch import SeqBatch
from areal_lite.control.broadcast import broadcast_bytes
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.utils.distributed import init_trainer_dist
from areal_lite.run.stats import Timer
from areal_lite.run.weight_sync import DiskWeightSync, DistributedWeightSync
from areal_lite.utils.distributed import run_and_exit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layout_update_worker import make_batch  # noqa: E402

PROMPT = [7, 8, 9, 10, 11]
N = 12


def generate(url: str, n: int = N, prompt=PROMPT) -> dict:
    r = httpx.post(f"{url}/generate", json={
        "input_ids": prompt, "return_logprob": True,
        "sampling_params": {"max_new_tokens": n, "temperature": 0.0, "ignore_eos": True},
    }, timeout=120)
    r.raise_for_status()
    return r.json()


def server_info(url: str) -> dict:
    return httpx.get(f"{url}/get_server_info", timeout=30).json()


class Load(threading.Thread):
    """Keeps one generation request in flight and records when each one finished and how."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.done: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop.is_set():
            body = generate(self.url, n=8, prompt=[int(x) for x in rng.integers(3, 200, 6)])
            self.done.append((time.monotonic(), body["meta_info"]["finish_reason"]["type"]))


def trainer_logp(actor: PPOActor, engine: FSDPEngine, ids: list[int], prompt_len: int) -> list[float]:
    """Log-probs of `ids[prompt_len:]` under the trainer's weights (collective)."""
    n = len(ids)
    batch = SeqBatch(
        input_ids=np.asarray(ids, np.int64), loss_mask=np.arange(n) >= prompt_len,
        behav_logp=np.zeros(n, np.float32), versions=np.zeros(n, np.int32), seqlens=np.asarray([n]),
        prompt_lens=np.asarray([prompt_len]), rewards=np.zeros(1), group_ids=np.zeros(1, np.int64),
        truncated=np.zeros(1, bool), prompt_ids=["p"],
    )
    return actor.compute_logp(engine, batch)[0, prompt_len:].tolist()


def main() -> int:
    model, url, weights_dir, out, sync_port = sys.argv[1:6]
    torch.set_num_threads(1)
    d = init_trainer_dist("cpu")
    rank, world = d.rank, d.world_size
    spec = EngineSpec(path=model, lr=3e-2, weight_decay=0.0, max_tokens_per_mb=256)
    engine = FSDPEngine(spec, d, total_optimizer_steps=8)
    engine.initialize()
    actor = PPOActor.build(ActorConfig(path=model, ppo_n_minibatches=2), max_new_tokens=32, loss_norm_constant=32.0,
                           seed=0)
    admin = ServerAdmin([url]) if rank == 0 else None
    syncs = {
        "disk": DiskWeightSync(admin, RunDir(os.path.dirname(weights_dir))),
        "distributed": DistributedWeightSync(admin, master_address="127.0.0.1", master_port=int(sync_port),
                                             bucket_bytes=64 << 10, timeout_s=120),
    }
    results: dict = {"world_size": world}
    for version, mode in enumerate(["disk", "distributed"], start=1):
        sync = syncs[mode]
        sync.connect(engine)
        r: dict = {}
        load = None
        if rank == 0:
            r["before"] = generate(url)
            r["info_before"] = server_info(url)
            load = Load(url)
            load.start()
            time.sleep(0.3)
        timer = Timer()
        t0 = time.monotonic()
        batch = make_batch(vocab=200, seed=version)
        with timer("train"):
            rows = actor.step_rows(engine, batch)
            actor.ppo_update(engine, batch, rows, actor.advantage_fn(batch, rows), step=version - 1)
        t_train = time.monotonic()
        with timer("weight_sync"):
            stats = sync.update(engine, version=version)
        t_sync = time.monotonic()
        if rank == 0:
            time.sleep(0.3)
            load.stop.set()
            load.join(timeout=60)
            wall = time.monotonic() - t0
            r["info_after"] = server_info(url)
            r["after"] = generate(url)
            paused = r["info_after"]["paused_time_s"] - r["info_before"]["paused_time_s"]
            r.update({
                **timer.times, **stats, "wall_s": wall, "server_paused_s": paused,
                "rollout/paused_fraction": paused / wall,
                "t_train_end": t_train - t0, "t_sync_end": t_sync - t0,
                "load": [(t - t0, reason) for t, reason in load.done],
            })
        ids = msgpack.unpackb(broadcast_bytes(
            msgpack.packb(PROMPT + r["after"]["output_ids"]) if rank == 0 else None, d.cpu_group))
        r["trainer_logp"] = trainer_logp(actor, engine, ids, len(PROMPT))
        results[mode] = r
    syncs["distributed"].close()
    if rank == 0:
        with open(os.path.join(out, "result.json"), "w") as fh:
            json.dump(results, fh)
    return 0


if __name__ == "__main__":
    run_and_exit(main)
