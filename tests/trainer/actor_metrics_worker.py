"""Run by test_actor_metrics.py (one gloo rank, or more under torchrun): PPO steps of the real actor on
a tiny model under several algorithm configurations, logged through the real StatsLogger.

Writes `{out}/{case}/metrics.jsonl` (rank 0) and `{out}/engine.json` (optimizer/schedule facts, and
the parameter difference between an update with and without gradient checkpointing).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from areal_lite.config.schema import ActorConfig, StatsLoggerConfig
from areal_lite.trainer.ppo import PPOActor
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.utils.distributed import init_trainer_dist
from areal_lite.run.stats import StatsLogger, Timer, batch_metrics
from areal_lite.utils.distributed import run_and_exit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layout_update_worker import make_batch  # noqa: E402


def batch_for(step: int):
    """make_batch with group reward spreads that differ (so soft reweighting has something to weigh)."""
    batch = make_batch(vocab=200, seed=step)
    batch.rewards = np.asarray([1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1], np.float64)
    return batch


def actor_cfg(model: str, case: str) -> ActorConfig:
    cfg = ActorConfig(path=model, behav_weight_cap=2.0, ppo_n_minibatches=2)
    cfg.group_filter.soft_reweight = True
    if case == "gtpo":
        cfg.entropy_shaping.mode = "token"
    elif case == "grpo_s":
        cfg.entropy_shaping.mode = "sequence"
    elif case == "kl_in_reward":
        cfg.kl_ctl, cfg.kl_in_reward, cfg.kl_estimator = 0.1, True, "k3"
        cfg.group_filter.soft_reweight = False
    return cfg


def engine_spec(model: str, **kw) -> EngineSpec:
    base = dict(path=model, lr=1e-3, lr_scheduler_type="cosine", warmup_steps_proportion=0.25, min_lr_ratio=0.1,
                gradient_clipping=0.5, max_tokens_per_mb=96, max_row_tokens=96)  # one row per micro-batch
    return EngineSpec(**{**base, **kw})


def run_case(model: str, out: str, case: str, device, steps: int = 2) -> None:
    cfg = actor_cfg(model, case)
    engine = FSDPEngine(engine_spec(model), device, total_optimizer_steps=steps * cfg.ppo_n_minibatches)
    engine.initialize()
    ref = None
    if cfg.kl_ctl > 0:
        ref = FSDPEngine(engine_spec(model), device, total_optimizer_steps=1)
        ref.initialize(with_optimizer=False)
    actor = PPOActor.build(cfg, max_new_tokens=32, loss_norm_constant=32.0, seed=0)
    logger = StatsLogger(StatsLoggerConfig(console=False), run_dir=os.path.join(out, case), run_name=case,
                         config_dict=None, rank=dist.get_rank(), total_steps=steps)
    for step in range(steps):
        timer = Timer()
        t0 = time.monotonic()
        batch = batch_for(step)
        with timer("prox_logp"):
            rows = actor.step_rows(engine, batch, ref=ref)
        with timer("advantages"):
            adv = actor.advantage_fn(batch, rows, kl=actor.kl_rows(rows))
        with timer("train"):
            train = actor.ppo_update(engine, batch, rows, adv, step=step)
        step_time = time.monotonic() - t0
        logger.commit(step, {"version": step + 1, "time/step": step_time, **timer.times, **train, **adv.stats,
                             **batch_metrics(batch, step, [max(0, step - 1)] * 3, step_time)})
    logger.close()


def gradient_checkpointing_delta(model: str, device) -> dict:
    """One identical update with and without activation recomputation: the parameters must agree."""
    results = {}
    for gc in (False, True):
        engine = FSDPEngine(engine_spec(model, gradient_checkpointing=gc), device, total_optimizer_steps=4)
        engine.initialize()
        actor = PPOActor.build(actor_cfg(model, "default"), max_new_tokens=32, loss_norm_constant=32.0, seed=0)
        batch = batch_for(0)
        rows = actor.step_rows(engine, batch)
        actor.ppo_update(engine, batch, rows, actor.advantage_fn(batch, rows), step=0)
        results[gc] = {k: v.clone() for k, v in engine.full_state_dict().items()}
        if gc:
            opt = engine.optimizer
            facts = {
                "is_gradient_checkpointing": bool(getattr(engine.model, "is_gradient_checkpointing", False)),
                "optimizer": type(opt).__name__,
                "betas": list(opt.param_groups[0]["betas"]),
                "weight_decay": opt.param_groups[0]["weight_decay"],
                "lr_after_2_steps": engine.scheduler.get_last_lr()[0],
            }
    if dist.get_rank() != 0:
        return {}
    diff = max(float((results[True][k] - results[False][k]).abs().max()) for k in results[False])
    return {**facts, "gc_max_param_diff": diff}


def main() -> int:
    model, out, cases = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    torch.set_num_threads(1)
    device = init_trainer_dist("cpu")  # the TrainerDist
    for case in cases:
        run_case(model, out, case, device)
    facts = gradient_checkpointing_delta(model, device)
    if dist.get_rank() == 0:
        with open(os.path.join(out, "engine.json"), "w") as fh:
            json.dump(facts, fh)
    return 0


if __name__ == "__main__":
    run_and_exit(main)
