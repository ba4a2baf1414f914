"""Agent RL on a text environment (bandit, FrozenLake, Sokoban or your own): multi-turn episodes, PPO.

One script serves every role: the launcher starts it under torchrun as the trainer and as plain
processes for the rollout workers (AREAL_LITE_ROLE tells them apart).

    python -m areal_lite.launcher.local examples/agents/train_env.py --config examples/agents/frozenlake_cpu.yaml
    python -m areal_lite.launcher.local examples/agents/train_env.py --config examples/agents/bandit_cpu.yaml
    python -m areal_lite.launcher.ray   examples/agents/train_env.py --config examples/agents/frozenlake.yaml
    python -m areal_lite.launcher.slurm examples/agents/train_env.py --config examples/agents/frozenlake.yaml

Each record is an environment seed (one GRPO group: `gconfig.n_samples` episodes from the same
start); an episode is one token sequence whose environment tokens are context only
(areal_lite/rollout/multi_turn.py). To train on your own environment, `register_env` it in `main()`
below (both roles run main) and name it in the config: docs/agents.md.

TEMPORARY (until the config schema has its `env` section): the environment settings are read from
`train_dataset.synthetic` (a free dict today), e.g. `train_dataset.synthetic.name=frozenlake`;
`train_dataset.path` is `synthetic:env` only to pass the launcher's checks (no dataset is read).
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
from areal_lite.config.schema import resolved_max_concurrent_rollouts, resolved_serving_dtype, resolved_tokenizer_path
from areal_lite.data import load_tokenizer
from areal_lite.envs import make_env, register_env
from areal_lite.inference.client import InferenceClient, SamplingParams, ServerAdmin
from areal_lite.rollout.multi_turn import EnvWorkflow, seed_records
from areal_lite.rollout.worker import WorkerSettings, run_worker
from areal_lite.rollout.workflow import sampling_from_gconfig
from areal_lite.trainer.actor import PPOActor
from areal_lite.trainer.batch import batch_from_groups
from areal_lite.trainer.checkpoint import RecoverCheckpointer
from areal_lite.trainer.comm import broadcast_groups
from areal_lite.trainer.controller import RolloutController
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.trainer.perf import perf_metrics
from areal_lite.trainer.stats import StatsLogger, Timer, batch_metrics
from areal_lite.trainer.weight_sync import build_weight_sync
from areal_lite.transport import Codec
from areal_lite.utils.distributed import init_trainer_dist, run_and_exit
from areal_lite.utils.runenv import RunEnv
from episodes import (EnvSettings, EnvTokenGradProbe, aevaluate_env, env_metrics, env_settings,  # beside this script
                      episode_loss_norm_constant)
from guess_number import GuessNumberEnv
from warm_start import warm_start

logger = logging.getLogger("train_env")


# --------------------------------------------------------------------------------- the task


def build_workflow(env: EnvSettings, tokenizer, sampling: SamplingParams, n_samples: int) -> EnvWorkflow:
    """n episodes per seed, reward = Σ environment rewards + format penalties."""
    return EnvWorkflow(
        env_fn=lambda: make_env(env.name, **env.options),
        tokenizer=tokenizer,
        sampling=sampling,
        n_samples=n_samples,
        max_turns=env.max_turns,
        max_total_tokens=env.max_total_tokens,
        format_penalty=env.format_penalty,
        system_prompt=env.system_prompt or None,
        template_kwargs=env.template_kwargs,
    )


def rollout_main(cfg: ExperimentConfig, run: RunEnv) -> int:
    tokenizer = load_tokenizer(resolved_tokenizer_path(cfg))
    workflow = build_workflow(env_settings(cfg), tokenizer, sampling_from_gconfig(cfg.gconfig), cfg.gconfig.n_samples)
    slots = math.ceil(resolved_max_concurrent_rollouts(cfg) / cfg.allocation.rollout.num_workers)
    settings = WorkerSettings(slots=slots, heartbeat_s=cfg.rollout.heartbeat_s,
                              request_timeout=cfg.rollout.request_timeout, request_retries=cfg.rollout.request_retries)
    return run_worker(run, workflow, settings)


# --------------------------------------------------------------------------------- training


def evaluate(cfg: ExperimentConfig, run: RunEnv, env: EnvSettings, tokenizer) -> dict[str, float]:
    """Held-out seeds through the servers (greedy when evaluator.temperature is 0)."""
    sampling = sampling_from_gconfig(cfg.gconfig)
    sampling.temperature = cfg.evaluator.temperature
    workflow = build_workflow(env, tokenizer, sampling, 1)

    async def go() -> dict[str, float]:
        async with InferenceClient(run.server_addrs, api_key=run.api_key,
                                   request_timeout=cfg.rollout.request_timeout) as client:
            seeds = range(env.eval_seed_start, env.eval_seed_start + env.eval_num_seeds)
            return await aevaluate_env(workflow, client, list(seeds))

    return asyncio.run(go())


def train_main(cfg: ExperimentConfig, run: RunEnv) -> int:
    d = init_trainer_dist(cfg.allocation.device, default_backend=run.default_backend)
    rank, world = d.rank, d.world_size
    env = env_settings(cfg)
    tokenizer = load_tokenizer(resolved_tokenizer_path(cfg))
    batch_size = cfg.train_dataset.batch_size
    steps_per_epoch = max(1, env.num_seeds // batch_size)
    total_steps = cfg.total_train_steps or cfg.total_train_epochs * steps_per_epoch

    t_warm = time.monotonic()
    warm = warm_start(cfg, env, d, tokenizer)  # before the RL engine loads actor.path
    t_warm = time.monotonic() - t_warm
    spec = EngineSpec.from_actor(cfg.actor, cfg.gconfig.temperature, export_dtype=resolved_serving_dtype(cfg))
    engine = FSDPEngine(spec, d, total_optimizer_steps=total_steps * cfg.actor.ppo_n_minibatches)
    engine.initialize()
    probe = EnvTokenGradProbe(engine)  # the engine, measuring the gradient on environment tokens
    ref = None
    if cfg.actor.kl_ctl > 0:
        ref = FSDPEngine(spec, d, total_optimizer_steps=1)
        ref.initialize(with_optimizer=False)
    actor = PPOActor(cfg.actor, max_new_tokens=cfg.gconfig.max_new_tokens,
                     loss_norm_constant=episode_loss_norm_constant(cfg, env), seed=cfg.seed)
    admin = ServerAdmin(run.server_addrs, api_key=run.api_key) if rank == 0 else None
    weight_sync = build_weight_sync(cfg.actor.weight_update_mode, admin=admin, run_dir=run.run_dir, env=run,
                                    device_type=d.device.type, tp_size=cfg.allocation.inference.tp_size)
    checkpointer = RecoverCheckpointer(os.path.join(run.run_dir, "recover"))
    stats = StatsLogger(cfg.stats_logger, run_dir=run.run_dir, run_name=f"{cfg.experiment_name}/{cfg.trial_name}",
                        config_dict=None, rank=rank, total_steps=total_steps)
    controller = None
    if rank == 0:  # rank 0 owns the seed cursor and the admission controller
        controller = RolloutController(
            records=seed_records(env.num_seeds, env.seed_start), batch_size=batch_size,
            max_concurrent=resolved_max_concurrent_rollouts(cfg),
            max_head_offpolicyness=cfg.rollout.max_head_offpolicyness, codec=Codec(run.run_id, run.secret),
            bind_host=cfg.cluster.bind_host,
            ports=(run.trajectory_port, run.control_port, run.broadcast_port), seed=cfg.seed,
            shuffle=cfg.train_dataset.shuffle, num_epochs=cfg.total_train_epochs,
            dynamic_filter=cfg.rollout.dynamic_filter, heartbeat_s=cfg.rollout.heartbeat_s,
            worker_timeout_s=cfg.rollout.worker_timeout_s, ledger_path=os.path.join(run.run_dir, "ledger.jsonl"),
        )

    start_step = 0
    latest = checkpointer.latest() if cfg.recover.mode != "disabled" else None
    if latest is not None:
        state = checkpointer.load(engine, latest)
        start_step = int(state["step"]) + 1
        if controller is not None:
            controller.load_state_dict(state["controller"])
        logger.info("resumed from %s at step %d", latest, start_step)
    weight_sync.connect(engine)
    if start_step > 0 or warm:
        # NOTE: the servers loaded actor.path before the warm start replaced it: send them these weights.
        weight_sync.update(engine, version=start_step)
    if controller is not None:
        controller.set_version(start_step)
        controller.start()

    evaluating = env.eval_num_seeds > 0 and cfg.evaluator.freq_steps > 0
    initial_eval = evaluate(cfg, run, env, tokenizer) if evaluating and rank == 0 and start_step == 0 else {}
    initial_eval["time/warm_start"] = t_warm

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
                logger.info("no more seeds: stopping after %d steps", step)
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
                train_stats = actor.ppo_update(probe, batch, adv, prox_logp=prox, ref_logp=ref_logp, step=step)
            with timer("weight_sync"):
                sync_stats = weight_sync.update(engine, version=step + 1)
                paused_s += sync_stats.get("time/weight_pause", 0.0)
            if controller is not None:
                controller.set_version(step + 1)
                controller.record_trained(step, buffered)

            with timer("checkpoint"):
                now, rec, sv = time.monotonic(), cfg.recover, cfg.saver
                if rec.mode != "disabled" and ((rec.freq_steps and (step + 1) % rec.freq_steps == 0)
                                               or (rec.freq_secs and now - last_recover >= rec.freq_secs)):
                    state = {"step": step, "controller": controller.state_dict() if controller else None}
                    checkpointer.save(engine, state, step)
                    last_recover = now
                if (sv.freq_steps and (step + 1) % sv.freq_steps == 0) or (
                        sv.freq_secs and now - last_save >= sv.freq_secs):
                    engine.save_hf(os.path.join(run.run_dir, "checkpoints", f"step{step + 1}"),
                                   tokenizer_path=resolved_tokenizer_path(cfg))
                    last_save = now
            eval_stats, initial_eval = {f"{k}_initial" if k.startswith("eval/") else k: v
                                        for k, v in initial_eval.items()}, {}
            if evaluating and rank == 0 and (step + 1) % cfg.evaluator.freq_steps == 0:
                with timer("eval"):
                    eval_stats.update(evaluate(cfg, run, env, tokenizer))
            if world > 1:
                dist.barrier(group=d.cpu_group)

            step_time = time.monotonic() - t_step
            metrics = {"version": step + 1, "time/step": step_time, **timer.times, **sync_stats, **train_stats,
                       **adv.stats, **eval_stats, **env_metrics(groups), **probe.stats(),
                       **batch_metrics(batch, step, [b.head_version for b in buffered or []], step_time),
                       "rollout/paused_fraction": paused_s / max(time.monotonic() - t_start, 1e-9)}
            if controller is not None:
                metrics.update(controller.stats())
            t_data = t_step + timer.times.get("time/wait_data", 0.0)  # when the batch was in hand
            metrics.update(perf_metrics(engine, buffered, admin, t_start, t_data))
            stats.commit(step, metrics)

        if cfg.saver.save_final:
            engine.save_hf(os.path.join(run.run_dir, "checkpoints", "final"),
                           tokenizer_path=resolved_tokenizer_path(cfg))
    finally:
        if controller is not None:
            controller.shutdown()
        weight_sync.close()
        stats.close()
    return 0


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(argv)
    run = RunEnv.from_environ()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {run.role} %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # Your own environments: register them here, before anything makes one (docs/agents.md).
    register_env("guess_number", GuessNumberEnv, replace=True)
    env_settings(cfg)  # a bad env section fails here, in every role, with one line
    if run.role == "rollout":
        return rollout_main(cfg, run)
    return train_main(cfg, run)  # run_and_exit tears the process group down


if __name__ == "__main__":
    run_and_exit(main)
