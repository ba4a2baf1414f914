"""Math RL (GSM8K or the synthetic arithmetic task) with Dr.GRPO, GRPO, DAPO, ... chosen by config.

One script serves every role: the launcher starts it under torchrun as the trainer and as plain
processes for the rollout workers (AREAL_LITE_ROLE tells them apart).

    python -m areal_lite.launcher.local examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo_cpu.yaml
    python -m areal_lite.launcher.ray   examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo.yaml
    python -m areal_lite.launcher.slurm examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo.yaml

Copy it and edit: the dataset, the workflow and the reward are the parts meant to change; the
training loop below shows every phase of a step under a named timer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time

import torch
import torch.distributed as dist

from areal_lite.config import ExperimentConfig, exit_on_config_error, load_config
from areal_lite.config.schema import (
    resolved_loss_norm_constant,
    resolved_max_concurrent_rollouts,
    resolved_serving_dtype,
    resolved_tokenizer_path,
)
from areal_lite.data import load_prompt_records, load_tokenizer, prompt_token_ids
from areal_lite.inference.client import InferenceClient, SamplingParams, ServerAdmin
from areal_lite.reward.math import math_reward
from areal_lite.rollout.evaluate import aevaluate
from areal_lite.rollout.reward_pool import RewardPool
from areal_lite.rollout.worker import WorkerSettings, run_worker
from areal_lite.rollout.workflow import RLVRWorkflow, sampling_from_gconfig
from areal_lite.trainer.actor import PPOActor
from areal_lite.trainer.batch import batch_from_groups
from areal_lite.run.checkpoint import RecoverCheckpointer
from areal_lite.control.broadcast import broadcast_groups, broadcast_int
from areal_lite.control.controller import RolloutController
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.run.perf import perf_metrics
from areal_lite.run.stats import StatsLogger, Timer, batch_metrics
from areal_lite.run.weight_sync import build_weight_sync
from areal_lite.transport import Codec
from areal_lite.utils.distributed import init_trainer_dist, run_and_exit
from areal_lite.utils.runenv import RunEnv

logger = logging.getLogger("gsm8k_drgrpo")


# --------------------------------------------------------------------------------- the task


def build_workflow(cfg: ExperimentConfig, tokenizer, sampling: SamplingParams, n_samples: int, pool: RewardPool):
    """Single-turn RLVR: n answers per question, each scored 1/0 by exact answer match."""
    ds = cfg.train_dataset
    return RLVRWorkflow(
        prompt_fn=lambda record: prompt_token_ids(record, tokenizer, template=ds.prompt_template,
                                                  system_prompt=ds.system_prompt),
        decode_fn=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        reward_fn=math_reward,
        sampling=sampling,
        n_samples=n_samples,
        reward_pool=pool,
        reward_failure_policy=cfg.rollout.reward_failure_policy,
    )


def rollout_main(cfg: ExperimentConfig, env: RunEnv) -> int:
    tokenizer = load_tokenizer(resolved_tokenizer_path(cfg))
    pool = RewardPool(cfg.rollout.reward_workers, cfg.rollout.reward_timeout)
    workflow = build_workflow(cfg, tokenizer, sampling_from_gconfig(cfg.gconfig), cfg.gconfig.n_samples, pool)
    slots = math.ceil(resolved_max_concurrent_rollouts(cfg) / cfg.allocation.rollout.num_workers)
    settings = WorkerSettings(slots=slots, heartbeat_s=cfg.rollout.heartbeat_s,
                              request_timeout=cfg.rollout.request_timeout, request_retries=cfg.rollout.request_retries)
    try:
        return run_worker(env, workflow, settings)
    finally:
        pool.close()


# --------------------------------------------------------------------------------- training


def evaluate(cfg: ExperimentConfig, env: RunEnv, tokenizer, records: list[dict]) -> dict[str, float]:
    """Held-out accuracy through the servers (greedy when evaluator.temperature is 0)."""
    ev = cfg.evaluator
    sampling = sampling_from_gconfig(cfg.gconfig)
    sampling.temperature = ev.temperature
    pool = RewardPool(1, cfg.rollout.reward_timeout)
    workflow = build_workflow(cfg, tokenizer, sampling, ev.n_samples, pool)

    async def run() -> dict[str, float]:
        async with InferenceClient(env.server_addrs, api_key=env.api_key,
                                   request_timeout=cfg.rollout.request_timeout) as client:
            return await aevaluate(workflow, client, records)

    try:
        return asyncio.run(run())
    finally:
        pool.close()


def train_main(cfg: ExperimentConfig, env: RunEnv) -> int:
    d = init_trainer_dist(cfg.allocation.device, default_backend=env.default_backend)
    rank, world = d.rank, d.world_size
    tokenizer = load_tokenizer(resolved_tokenizer_path(cfg))
    batch_size = cfg.train_dataset.batch_size

    # Rank 0 owns the data cursor and the admission controller.
    controller = None
    records, _ = load_prompt_records(cfg.train_dataset, tokenizer) if rank == 0 else ([], {})
    n_records = broadcast_int(len(records), d.cpu_group)
    steps_per_epoch = max(1, n_records // batch_size)
    total_steps = cfg.total_train_steps or cfg.total_train_epochs * steps_per_epoch

    spec = EngineSpec.from_actor(cfg.actor, cfg.gconfig.temperature, export_dtype=resolved_serving_dtype(cfg))
    engine = FSDPEngine(spec, d, total_optimizer_steps=total_steps * cfg.actor.ppo_n_minibatches)
    engine.initialize()
    ref = None
    if cfg.actor.kl_ctl > 0:
        ref = FSDPEngine(spec, d, total_optimizer_steps=1)
        ref.initialize(with_optimizer=False)
    actor = PPOActor(cfg.actor, max_new_tokens=cfg.gconfig.max_new_tokens,
                     loss_norm_constant=resolved_loss_norm_constant(cfg), seed=cfg.seed)
    admin = ServerAdmin(env.server_addrs, api_key=env.api_key) if rank == 0 else None
    weight_sync = build_weight_sync(cfg.actor.weight_update_mode, admin=admin, run_dir=env.run_dir, env=env,
                                    device_type=d.device.type, tp_size=cfg.allocation.inference.tp_size)
    checkpointer = RecoverCheckpointer(os.path.join(env.run_dir, "recover"))
    stats = StatsLogger(cfg.stats_logger, run_dir=env.run_dir, run_name=f"{cfg.experiment_name}/{cfg.trial_name}",
                        config_dict=None, rank=rank, total_steps=total_steps)
    valid = None
    if rank == 0:
        controller = RolloutController(
            records=records, batch_size=batch_size, max_concurrent=resolved_max_concurrent_rollouts(cfg),
            max_head_offpolicyness=cfg.rollout.max_head_offpolicyness, codec=Codec(env.run_id, env.secret),
            bind_host=cfg.cluster.bind_host,
            ports=(env.trajectory_port, env.control_port, env.broadcast_port), seed=cfg.seed,
            shuffle=cfg.train_dataset.shuffle, num_epochs=cfg.total_train_epochs,
            dynamic_filter=cfg.rollout.dynamic_filter, heartbeat_s=cfg.rollout.heartbeat_s,
            worker_timeout_s=cfg.rollout.worker_timeout_s, ledger_path=os.path.join(env.run_dir, "ledger.jsonl"),
        )
        if cfg.evaluator.freq_steps > 0:
            valid, _ = load_prompt_records(cfg.valid_dataset, tokenizer)
            if cfg.evaluator.max_prompts:
                valid = valid[: cfg.evaluator.max_prompts]

    # Resume: same version, data position, buffer and admission counters; servers get our weights.
    start_step = 0
    latest = checkpointer.latest() if cfg.recover.mode != "disabled" else None
    if latest is not None:
        state = checkpointer.load(engine, latest)
        start_step = int(state["step"]) + 1
        if controller is not None:
            controller.load_state_dict(state["controller"])
        logger.info("resumed from %s at step %d", latest, start_step)
    weight_sync.connect(engine)
    if start_step > 0:
        weight_sync.update(engine, version=start_step)
    if controller is not None:
        controller.set_version(start_step)
        controller.start()

    # Held-out accuracy of the starting weights, logged with step 0, so a run shows where it began.
    initial_eval = evaluate(cfg, env, tokenizer, valid) if valid is not None and start_step == 0 else {}

    t_start = time.monotonic()
    paused_s = 0.0
    last_save = last_recover = time.monotonic()
    try:
        for step in range(start_step, total_steps):
            timer = Timer()
            t_step = time.monotonic()
            with timer("wait_data"):
                buffered = controller.wait_batch(batch_size) if controller is not None else None
                groups = broadcast_groups([b.group for b in buffered] if buffered else None, d.cpu_group)
            if groups is None:
                logger.info("no more prompts: stopping after %d steps", step)
                break
            batch = batch_from_groups(groups)

            with timer("prox_logp"):
                prox, entropy = actor.proximal(engine, batch)  # entropy only for entropy shaping
                ref_logp = actor.compute_logp(ref, batch) if ref is not None else None
            with timer("advantages"):
                kl = None
                if ref_logp is not None and cfg.actor.kl_in_reward:
                    kl = actor.kl_per_token(prox if prox is not None else batch.behav_logp, ref_logp)
                adv = actor.compute_advantages(batch, kl=kl, entropy=entropy)
            with timer("train"):
                train_stats = actor.ppo_update(engine, batch, adv, prox_logp=prox, ref_logp=ref_logp, step=step)
            with timer("weight_sync"):
                sync_stats = weight_sync.update(engine, version=step + 1)
                paused_s += sync_stats.get("time/weight_pause", 0.0)
            if controller is not None:
                controller.set_version(step + 1)
                controller.record_trained(step, buffered)

            with timer("checkpoint"):
                now = time.monotonic()
                rec = cfg.recover
                if rec.mode != "disabled" and ((rec.freq_steps and (step + 1) % rec.freq_steps == 0)
                                               or (rec.freq_secs and now - last_recover >= rec.freq_secs)):
                    state = {"step": step, "controller": controller.state_dict() if controller else None}
                    checkpointer.save(engine, state, step)
                    last_recover = now
                sv = cfg.saver
                if (sv.freq_steps and (step + 1) % sv.freq_steps == 0) or (sv.freq_secs and now - last_save >= sv.freq_secs):
                    engine.save_hf(os.path.join(env.run_dir, "checkpoints", f"step{step + 1}"),
                                   tokenizer_path=resolved_tokenizer_path(cfg))
                    last_save = now
            eval_stats, initial_eval = {f"{k}_initial": v for k, v in initial_eval.items()}, {}
            if valid is not None and (step + 1) % cfg.evaluator.freq_steps == 0:
                with timer("eval"):
                    eval_stats = evaluate(cfg, env, tokenizer, valid)
            if world > 1:
                dist.barrier(group=d.cpu_group)

            step_time = time.monotonic() - t_step
            metrics = {
                "version": step + 1,
                "time/step": step_time,
                **timer.times,
                **sync_stats,
                **train_stats,
                **adv.stats,
                **eval_stats,
                **_batch_metrics(batch, step, [b.head_version for b in buffered or []], step_time),
                "rollout/paused_fraction": paused_s / max(time.monotonic() - t_start, 1e-9),
            }
            if controller is not None:
                metrics.update(controller.stats())
            t_data = t_step + timer.times.get("time/wait_data", 0.0)  # when the batch was in hand
            metrics.update(perf_metrics(engine, buffered, admin, t_start, t_data))
            stats.commit(step, metrics)

        if cfg.saver.save_final:
            engine.save_hf(os.path.join(env.run_dir, "checkpoints", "final"), tokenizer_path=resolved_tokenizer_path(cfg))
    finally:
        if controller is not None:
            controller.shutdown()
        weight_sync.close()
        stats.close()
    return 0


def _batch_metrics(batch, step: int, head_versions: list[int], step_time: float) -> dict[str, float]:
    return batch_metrics(batch, step, head_versions, step_time)  # reward, length, staleness, throughput


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(argv)
    env = RunEnv.from_environ()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {env.role} %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if env.role == "rollout":
        return rollout_main(cfg, env)
    return train_main(cfg, env)  # run_and_exit tears the process group down


if __name__ == "__main__":
    run_and_exit(main)
