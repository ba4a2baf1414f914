"""SFT warm start of a tiny model on scripted episodes of an environment (see train_env.py).

A randomly initialised tiny model never writes a parseable action, so RL alone has no signal. Before
RL, the trainer fine-tunes the model at `actor.path` on `episodes` scripted episodes
(areal_lite.envs.demos: replies in the environment's format, each action optimal with probability
`optimal_prob`, else random), each laid out exactly as EnvWorkflow lays out a sampled episode
(ChatTurns.episode_ids: the chat template around the observations as context, the replies and
their end-of-turn token trained). The result replaces the model at `actor.path`, with a marker
file naming the recipe, so the next run with the same path starts from it without training again.

NOTE: this belongs in the launcher's preparation step (`areal_lite.trainer.prepare`, as the math
quickstart's SFT does); it lives here until `prepare.sft` can read environment demonstrations.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from typing import Any

import numpy as np
import torch

from areal_lite.config import ConfigError
from areal_lite.envs import make_env
from areal_lite.envs.demos import play_demo
from areal_lite.rollout.multi_turn import ChatTurns
from areal_lite.trainer.batch import SeqBatch, balance_across_ranks
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.trainer.sft import sft_loss_fn
from areal_lite.utils.distributed import broadcast_int

logger = logging.getLogger("warm_start")
MARKER = "areal_lite_env_warm_start.json"
# episodes: scripted episodes (0: no warm start); optimal_prob: chance each action is optimal;
# seed: the demonstrations' draws and the SFT order (independent of the RL run's seed).
DEFAULTS = {"episodes": 0, "optimal_prob": 0.0, "epochs": 1, "batch_size": 32, "lr": 3e-3, "seed": 1,
            "seed_start": 5_000_000}


def warm_start_recipe(env) -> dict[str, Any]:
    """Everything the warm-started weights depend on (compared with the marker of a cached model)."""
    unknown = sorted(set(env.warm_start) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"env warm_start: unknown key(s) {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
    ws = {**DEFAULTS, **env.warm_start}
    return {"env": env.name, "options": env.options, "max_turns": env.max_turns,
            "system_prompt": env.system_prompt, "template_kwargs": env.template_kwargs, **ws}


def demo_examples(recipe: dict, tokenizer) -> tuple[list[tuple[list[int], list[int]]], dict[str, float]]:
    """(ids, loss_mask) of the scripted episodes, and their mean reward and success."""
    turns = ChatTurns(tokenizer, recipe["system_prompt"] or None, recipe["template_kwargs"])
    rng = np.random.default_rng(recipe["seed"])
    examples, rewards, wins = [], [], []
    for k in range(recipe["episodes"]):
        env = make_env(recipe["env"], **recipe["options"])
        ep = play_demo(env, recipe["seed_start"] + k, rng, optimal_prob=recipe["optimal_prob"],
                       max_turns=recipe["max_turns"])
        examples.append(turns.episode_ids(ep["observations"], ep["replies"]))
        rewards.append(ep["reward"])
        wins.append(ep["success"])
    return examples, {"demo_reward": float(np.mean(rewards)), "demo_success": float(np.mean(wins))}


def episode_batch(examples: list[tuple[list[int], list[int]]]) -> SeqBatch:
    """A SeqBatch of whole episodes whose loss mask covers the replies only."""
    n = len(examples)
    flat = np.concatenate([np.asarray(ids, np.int64) for ids, _ in examples])
    return SeqBatch(
        input_ids=flat,
        loss_mask=np.concatenate([np.asarray(mask, bool) for _, mask in examples]),
        behav_logp=np.zeros(flat.shape[0], np.float32),
        versions=np.zeros(flat.shape[0], np.int32),
        seqlens=np.asarray([len(ids) for ids, _ in examples], np.int64),
        prompt_lens=np.asarray([mask.index(1) for _, mask in examples], np.int64),
        rewards=np.zeros(n),
        group_ids=np.arange(n),
        truncated=np.zeros(n, bool),
        prompt_ids=[str(i) for i in range(n)],
    )


def run_episode_sft(engine: FSDPEngine, examples, *, epochs: int, batch_size: int, seed: int) -> list[float]:
    """Token-mean NLL of the replies, one optimizer step per `batch_size` episodes; returns the curve."""
    rng = np.random.default_rng(seed)
    losses, t0 = [], time.monotonic()
    steps = epochs * -(-len(examples) // batch_size)
    for _ in range(epochs):
        order = rng.permutation(len(examples))
        for start in range(0, len(order), batch_size):
            batch = episode_batch([examples[i] for i in order[start:start + batch_size]])
            total = float(batch.loss_mask.sum())
            shards = balance_across_ranks([int(x) for x in batch.seqlens], engine.world_size)
            stats = engine.train_minibatch(batch, engine.microbatches(batch, shards)[engine.rank],
                                           sft_loss_fn(batch, total))
            losses.append(stats.get("nll_sum", 0.0) / max(total, 1.0))  # this rank's share (all of it on 1 rank)
            if len(losses) % 10 == 0 or len(losses) == steps:
                logger.info("warm start step %d/%d nll %.4f (%.0fs)", len(losses), steps, losses[-1],
                            time.monotonic() - t0)
    return losses


def warm_start(cfg, env, dist_ctx, tokenizer) -> bool:
    """Fine-tune the model at `actor.path` on demonstrations unless its marker names this recipe.
    Collective over the trainer ranks; returns whether the weights at `actor.path` are warm."""
    recipe = warm_start_recipe(env)
    if recipe["episodes"] <= 0:
        return False
    path = os.path.abspath(cfg.actor.path)
    lock = open(f"{path}.warm.lock", "w") if dist_ctx.rank == 0 else None
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # runs sharing the path (an ablation) train it once
        todo = broadcast_int(_needs_training(path, recipe) if dist_ctx.rank == 0 else 0, dist_ctx.cpu_group)
        if todo:
            _train_and_replace(cfg, recipe, path, dist_ctx, tokenizer)
    finally:
        if lock is not None:
            lock.close()
    return True


def _needs_training(path: str, recipe: dict) -> int:
    marker = os.path.join(path, MARKER)
    if not os.path.isfile(marker):
        return 1
    with open(marker) as fh:
        done = json.load(fh)["recipe"]
    if done != json.loads(json.dumps(recipe)):
        raise ConfigError(f"actor.path {path} holds a model warm-started with another recipe ({MARKER}); "
                          f"delete it or choose another actor.path")
    return 0


def _train_and_replace(cfg, recipe: dict, path: str, dist_ctx, tokenizer) -> None:
    t0 = time.monotonic()
    torch.manual_seed(recipe["seed"])
    examples, demo_stats = demo_examples(recipe, tokenizer)
    steps = recipe["epochs"] * -(-len(examples) // recipe["batch_size"])
    longest = max(len(ids) for ids, _ in examples)
    spec = EngineSpec(path=path, lr=recipe["lr"], weight_decay=0.0, lr_scheduler_type="cosine",
                      warmup_steps_proportion=0.05, min_lr_ratio=0.1, gradient_clipping=1.0,
                      max_tokens_per_mb=max(cfg.actor.mb_spec.max_tokens_per_mb, longest), temperature=1.0)
    engine = FSDPEngine(spec, dist_ctx, total_optimizer_steps=steps)
    engine.initialize()
    logger.info("warm start: %d scripted episodes (mean reward %.3f, success %.3f), %d steps",
                len(examples), demo_stats["demo_reward"], demo_stats["demo_success"], steps)
    losses = run_episode_sft(engine, examples, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
                             seed=recipe["seed"])
    tmp = f"{path}.warm-{os.getpid()}"
    engine.save_hf(tmp, tokenizer_path=path)
    if dist_ctx.rank == 0:
        with open(os.path.join(tmp, MARKER), "w") as fh:
            json.dump({"recipe": recipe, **demo_stats, "final_nll": losses[-1],
                       "seconds": round(time.monotonic() - t0, 1)}, fh, indent=1)
        old = f"{path}.cold-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
        logger.info("warm start done in %.0fs, final nll %.4f", time.monotonic() - t0, losses[-1])
    torch.distributed.barrier(group=dist_ctx.cpu_group)
