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

The environment section is `train_dataset.synthetic` of the dataset `synthetic:env`, whose records are
environment seeds (areal_lite/envs/settings.py: keys, defaults, checks).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import sys
import time

import torch

from areal_lite.config import ExperimentConfig, load_config
from areal_lite.config.schema import resolved_max_concurrent_rollouts, resolved_serving_dtype, resolved_tokenizer_path
from areal_lite.control.source import build_batch_source, steps_per_epoch
from areal_lite.data import load_tokenizer
from areal_lite.envs import make_env, register_env
from areal_lite.inference.client import InferenceClient, SamplingParams, ServerAdmin
from areal_lite.rollout.multi_turn import EnvWorkflow, seed_records
from areal_lite.rollout.worker import WorkerSettings, run_worker
from areal_lite.rollout.workflow import sampling_from_gconfig
from areal_lite.run.checkpoint import RecoverCheckpointer, resume, save_recover
from areal_lite.run.perf import perf_metrics
from areal_lite.run.rundir import RunDir
from areal_lite.run.schedule import Schedule
from areal_lite.run.stats import StatsLogger, Timer, batch_metrics
from areal_lite.run.threads import elastic_threads
from areal_lite.run.weight_sync import build_weight_sync
from areal_lite.trainer.batch import batch_from_groups
from areal_lite.trainer.critic import build_critic, with_critic
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.trainer.ppo import PPOActor
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


def rollout_main(cfg: ExperimentConfig, run_env: RunEnv) -> int:
    tokenizer = load_tokenizer(resolved_tokenizer_path(cfg))
    workflow = build_workflow(env_settings(cfg), tokenizer, sampling_from_gconfig(cfg.gconfig), cfg.gconfig.n_samples)
    slots = math.ceil(resolved_max_concurrent_rollouts(cfg) / cfg.allocation.rollout.num_workers)
    settings = WorkerSettings(slots=slots, heartbeat_s=cfg.rollout.heartbeat_s,
                              request_timeout=cfg.rollout.request_timeout, request_retries=cfg.rollout.request_retries)
    return run_worker(run_env, workflow, settings)


def evaluate(cfg: ExperimentConfig, run_env: RunEnv, env: EnvSettings, tokenizer) -> dict[str, float]:
    """One episode per held-out seed through the servers (greedy when evaluator.temperature is 0)."""
    sampling = sampling_from_gconfig(cfg.gconfig)
    sampling.temperature = cfg.evaluator.temperature
    workflow = build_workflow(env, tokenizer, sampling, 1)

    async def go() -> dict[str, float]:
        async with InferenceClient(run_env.server_addrs, api_key=run_env.api_key,
                                   request_timeout=cfg.rollout.request_timeout) as client:
            seeds = range(env.eval_seed_start, env.eval_seed_start + env.eval_num_seeds)
            return await aevaluate_env(workflow, client, list(seeds))

    return asyncio.run(go())


# --------------------------------------------------------------------------------- training


def train_main(cfg: ExperimentConfig, run_env: RunEnv) -> int:
    """The math example's loop (examples/math/gsm8k_drgrpo.py) over environment seeds, with the warm
    start, the environment-token gradient probe and success-rate evaluation."""
    d = init_trainer_dist(cfg.allocation.device, default_backend=run_env.default_backend)
    run, env = RunDir(run_env.run_dir), env_settings(cfg)
    tokenizer = load_tokenizer(resolved_tokenizer_path(cfg))
    records = seed_records(env.num_seeds, env.seed_start) if d.rank == 0 else None
    source = build_batch_source(cfg, run_env, d, records, run.ledger_path)  # rank 0 runs the controller
    total_steps = cfg.total_train_steps or cfg.total_train_epochs * steps_per_epoch(source)

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
    critic = build_critic(cfg.actor, d, total_optimizer_steps=total_steps * cfg.actor.ppo_n_minibatches)  # GAE only
    threads = elastic_threads(source.rollouts_in_flight)  # CPU: all cores while no rollout runs
    for e in (engine, ref, critic and critic.engine):
        if e is not None:
            e.before_microbatch = threads
    actor = PPOActor.build(cfg.actor, max_new_tokens=cfg.gconfig.max_new_tokens,
                           loss_norm_constant=episode_loss_norm_constant(cfg, env), seed=cfg.seed, critic=critic)
    trained = with_critic(engine, critic)
    admin = ServerAdmin(run_env.server_addrs, api_key=run_env.api_key) if d.rank == 0 else None
    weight_sync = build_weight_sync(cfg.actor.weight_update_mode, admin=admin, run_dir=run, env=run_env,
                                    device_type=d.device.type, tp_size=cfg.allocation.inference.tp_size)
    checkpointer = RecoverCheckpointer(run.recover_dir)
    recover_every, save_every, eval_every = Schedule.of(cfg.recover), Schedule.of(cfg.saver), Schedule.of(cfg.evaluator)
    stats = StatsLogger(cfg.stats_logger, run_dir=run.root, run_name=f"{cfg.experiment_name}/{cfg.trial_name}",
                        config_dict=dataclasses.asdict(cfg), rank=d.rank, total_steps=total_steps)

    start_step = resume(cfg.recover.mode, checkpointer, trained, source, run)
    weight_sync.connect(engine)
    if start_step > 0 or warm or run_env.restarts > 0:
        # NOTE: the servers loaded actor.path before the warm start replaced it: send them these weights.
        weight_sync.update(engine, version=start_step)
    source.start(version=start_step)
    evaluating = d.rank == 0 and env.eval_num_seeds > 0 and cfg.evaluator.freq_steps > 0
    initial_eval = {f"{k}_initial": v for k, v in evaluate(cfg, run_env, env, tokenizer).items()} \
        if evaluating and start_step == 0 else {}
    initial_eval["time/warm_start"] = t_warm

    t_start, paused_s, recover_stats = time.monotonic(), 0.0, {}
    try:
        for step in range(start_step, total_steps):
            timer, t_step = Timer(), time.monotonic()
            with timer("wait_data"):
                batch = source.next_batch(while_waiting=lambda: weight_sync.catch_up(engine, version=step))
            if batch is None:
                logger.info("no more seeds: stopping after %d steps", step)
                break
            seqs = batch_from_groups(batch.groups)
            with timer("prox_logp"):
                rows = actor.step_rows(engine, seqs, ref=ref)
            with timer("advantages"):
                adv = actor.advantage_fn(seqs, rows, kl=actor.kl_rows(rows))
            with timer("train"):
                train_stats = actor.ppo_update(probe, seqs, rows, adv, step=step)
            with timer("weight_sync"):
                sync_stats = weight_sync.update(engine, version=step + 1)
                paused_s += sync_stats.get("time/weight_pause", 0.0)
            source.set_version(step + 1)
            source.record_trained(step, batch)
            with timer("save"):
                if save_every.due(step):
                    engine.save_hf(run.checkpoint_path(f"step{step + 1}"), tokenizer_path=resolved_tokenizer_path(cfg))
            with timer("eval"):
                eval_stats, initial_eval = initial_eval, {}
                if evaluating and eval_every.due(step):
                    eval_stats.update(evaluate(cfg, run_env, env, tokenizer))

            step_time = time.monotonic() - t_step
            stats.commit(step, {
                "version": step + 1, "time/step": step_time, **timer.times, **sync_stats, **train_stats,
                **adv.stats, **eval_stats, **env_metrics(batch.groups), **probe.stats(),
                **batch_metrics(seqs, step, batch.head_versions, step_time),
                "rollout/paused_fraction": paused_s / max(time.monotonic() - t_start, 1e-9), **source.stats(),
                **perf_metrics(engine, batch.buffered, admin, t_start, t_step + timer.times["time/wait_data"]),
                **(threads.stats() if threads else {}), **recover_stats,
            })
            # The recover checkpoint comes last: a trainer killed before it replays the step (its row
            # is dropped on resume), one killed after it has written everything of the step. Its
            # seconds go in the next step's row.
            recover_stats = save_recover(cfg.recover.mode, checkpointer, recover_every, trained, source, step)
        if cfg.saver.save_final:
            engine.save_hf(run.checkpoint_path("final"), tokenizer_path=resolved_tokenizer_path(cfg))
    finally:
        source.close()
        weight_sync.close()
        stats.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(argv)
    run_env = RunEnv.from_environ()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {run_env.role} %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # Your own environments: register them here, before anything makes one (docs/agents.md).
    register_env("guess_number", GuessNumberEnv, replace=True)
    env_settings(cfg)  # a bad env section fails here, in every role, with one line
    if run_env.role == "rollout":
        return rollout_main(cfg, run_env)
    return train_main(cfg, run_env)  # run_and_exit tears the process group down


if __name__ == "__main__":
    # A configuration error is recorded in the run directory: the launcher ends the run with it
    # instead of restarting this process into the same error.
    run_and_exit(main, on_user_error=RunDir.record_fatal)
