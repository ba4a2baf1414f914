"""Math RL (GSM8K or the synthetic arithmetic task) with Dr.GRPO, GRPO, DAPO, ... chosen by config.

One script serves every role: the launcher starts it under torchrun as the trainer and as plain
processes for the rollout workers (AREAL_LITE_ROLE tells them apart).

    python -m areal_lite.launcher.local examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo_cpu.yaml
    python -m areal_lite.launcher.ray   examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo.yaml
    python -m areal_lite.launcher.slurm examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo.yaml

Copy it and edit: the dataset, the workflow and the reward are the parts meant to change; the
training loop below shows every phase of a step under a named timer, the same on every rank.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time

import torch

from areal_lite.config import ExperimentConfig, load_config
from areal_lite.config.schema import (
    resolved_loss_norm_constant,
    resolved_max_concurrent_rollouts,
    resolved_serving_dtype,
    resolved_tokenizer_path,
)
from areal_lite.control.source import build_batch_source, steps_per_epoch
from areal_lite.data import load_prompt_records, load_tokenizer, prompt_token_ids
from areal_lite.inference.client import SamplingParams, ServerAdmin
from areal_lite.reward.math import math_reward
from areal_lite.rollout.evaluate import Evaluator
from areal_lite.rollout.reward_pool import RewardPool
from areal_lite.rollout.worker import WorkerSettings, run_worker
from areal_lite.rollout.workflow import RLVRWorkflow, sampling_from_gconfig
from areal_lite.run.checkpoint import RecoverCheckpointer, resume, save_recover
from areal_lite.run.perf import perf_metrics
from areal_lite.run.rundir import RunDir
from areal_lite.run.schedule import Schedule
from areal_lite.run.stats import ProgressFile, StatsLogger, Timer, batch_metrics
from areal_lite.run.threads import elastic_threads
from areal_lite.run.weight_sync import build_weight_sync
from areal_lite.trainer.batch import batch_from_groups
from areal_lite.trainer.critic import build_critic, with_critic
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.trainer.ppo import PPOActor
from areal_lite.utils.distributed import init_trainer_dist, run_and_exit
from areal_lite.utils.runenv import RunEnv

logger = logging.getLogger("gsm8k_drgrpo")


# --------------------------------------------------------------------------------- the task


def build_workflow(cfg: ExperimentConfig, tokenizer, sampling: SamplingParams, n_samples: int, pool: RewardPool,
                   greedy_baseline: bool = False):
    """Single-turn RLVR: n answers per question, each scored 1/0 by exact answer match (and with
    `greedy_baseline` one greedy answer, ReMax's baseline)."""
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
        greedy_baseline=greedy_baseline,
    )


def rollout_main(cfg: ExperimentConfig, env: RunEnv) -> int:
    tokenizer = load_tokenizer(resolved_tokenizer_path(cfg))
    pool = RewardPool(cfg.rollout.reward_workers, cfg.rollout.reward_timeout)
    workflow = build_workflow(cfg, tokenizer, sampling_from_gconfig(cfg.gconfig), cfg.gconfig.n_samples, pool,
                              greedy_baseline=cfg.actor.adv_estimator == "remax")
    slots = math.ceil(resolved_max_concurrent_rollouts(cfg) / cfg.allocation.rollout.num_workers)
    settings = WorkerSettings(slots=slots, heartbeat_s=cfg.rollout.heartbeat_s,
                              request_timeout=cfg.rollout.request_timeout, request_retries=cfg.rollout.request_retries)
    try:
        return run_worker(env, workflow, settings)
    finally:
        pool.close()


def build_evaluator(cfg: ExperimentConfig, env: RunEnv, tokenizer, rank: int) -> Evaluator:
    """Held-out accuracy through the servers (greedy when evaluator.temperature is 0), on rank 0:
    valid_dataset as eval/*, each of evaluator.extra_datasets as eval/<name>/*."""
    ev = cfg.evaluator
    enabled = rank == 0 and ev.freq_steps > 0
    workflow, sets = None, {}
    if enabled:
        sampling = sampling_from_gconfig(cfg.gconfig)
        sampling.temperature = ev.temperature
        workflow = build_workflow(cfg, tokenizer, sampling, ev.n_samples, RewardPool(1, cfg.rollout.reward_timeout))
        for name, path in {"": cfg.valid_dataset.path, **ev.extra_datasets}.items():
            ds = dataclasses.replace(cfg.valid_dataset, path=path)
            sets[name] = load_prompt_records(ds, tokenizer)[0][: ev.max_prompts or None]
    return Evaluator(workflow, sets, server_addrs=env.server_addrs, api_key=env.api_key,
                     request_timeout=cfg.rollout.request_timeout, schedule=Schedule.of(ev), enabled=enabled,
                     progress_fn=ProgressFile(env.run_dir))


# --------------------------------------------------------------------------------- training


def train_main(cfg: ExperimentConfig, env: RunEnv) -> int:
    d = init_trainer_dist(cfg.allocation.device, default_backend=env.default_backend)
    run = RunDir(env.run_dir)
    tokenizer = load_tokenizer(resolved_tokenizer_path(cfg))
    records = load_prompt_records(cfg.train_dataset, tokenizer)[0] if d.rank == 0 else None
    source = build_batch_source(cfg, env, d, records, run.ledger_path)  # rank 0 runs the controller
    total_steps = cfg.total_train_steps or cfg.total_train_epochs * steps_per_epoch(source)

    spec = EngineSpec.from_actor(cfg.actor, cfg.gconfig.temperature, export_dtype=resolved_serving_dtype(cfg))
    engine = FSDPEngine(spec, d, total_optimizer_steps=total_steps * cfg.actor.ppo_n_minibatches)
    engine.initialize()
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
                           loss_norm_constant=resolved_loss_norm_constant(cfg), seed=cfg.seed, critic=critic)
    trained = with_critic(engine, critic)  # what the recover checkpoint holds
    admin = ServerAdmin(env.server_addrs, api_key=env.api_key) if d.rank == 0 else None
    weight_sync = build_weight_sync(cfg.actor.weight_update_mode, admin=admin, run_dir=run, env=env,
                                    device_type=d.device.type, tp_size=cfg.allocation.inference.tp_size)
    checkpointer = RecoverCheckpointer(run.recover_dir)
    recover_every, save_every = Schedule.of(cfg.recover), Schedule.of(cfg.saver)
    evaluator = build_evaluator(cfg, env, tokenizer, d.rank)
    stats = StatsLogger(cfg.stats_logger, run_dir=run.root, run_name=f"{cfg.experiment_name}/{cfg.trial_name}",
                        config_dict=dataclasses.asdict(cfg), rank=d.rank, total_steps=total_steps)

    # Every piece of the run agrees on the start: model, controller, ledger, metrics, served weights.
    start_step = resume(cfg.recover.mode, checkpointer, trained, source, run)
    weight_sync.connect(engine)
    if start_step > 0 or env.restarts > 0:  # the servers may hold weights the trainer no longer has
        weight_sync.update(engine, version=start_step)
    source.start(version=start_step)
    initial_eval = evaluator.initial() if start_step == 0 else {}

    t_start, paused_s, recover_stats = time.monotonic(), 0.0, {}
    try:
        for step in range(start_step, total_steps):
            timer, t_step = Timer(), time.monotonic()
            with timer("wait_data"):
                batch = source.next_batch(while_waiting=lambda: weight_sync.catch_up(engine, version=step))
            if batch is None:
                logger.info("no more prompts: stopping after %d steps", step)
                break
            seqs = batch_from_groups(batch.groups)
            with timer("prox_logp"):
                rows = actor.step_rows(engine, seqs, ref=ref)  # proximal (+ reference) log-probs
            with timer("advantages"):
                adv = actor.advantage_fn(seqs, rows, kl=actor.kl_rows(rows))
            with timer("train"):
                train_stats = actor.ppo_update(engine, seqs, rows, adv, step=step)
            with timer("weight_sync"):
                sync_stats = weight_sync.update(engine, version=step + 1)
                paused_s += sync_stats.get("time/weight_pause", 0.0)
            source.set_version(step + 1)
            source.record_trained(step, batch)
            with timer("save"):
                if save_every.due(step):
                    engine.save_hf(run.checkpoint_path(f"step{step + 1}"), tokenizer_path=resolved_tokenizer_path(cfg))
            with timer("eval"):
                eval_stats, initial_eval = {**initial_eval, **evaluator.after(step)}, {}

            step_time = time.monotonic() - t_step
            stats.commit(step, {
                "version": step + 1, "time/step": step_time, **timer.times, **sync_stats, **train_stats,
                **adv.stats, **eval_stats, **batch_metrics(seqs, step, batch.head_versions, step_time),
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
    env = RunEnv.from_environ()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {env.role} %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if env.role == "rollout":
        return rollout_main(cfg, env)
    return train_main(cfg, env)  # run_and_exit tears the process group down


if __name__ == "__main__":
    # A configuration or environment error is recorded in the run directory: the launcher then ends
    # the run with it instead of restarting this process into the same error.
    run_and_exit(main, on_user_error=RunDir.record_fatal)
