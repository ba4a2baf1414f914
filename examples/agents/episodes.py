"""What train_env.py needs for episodes beside the library's pieces.

- `env_settings`: the environment section (`train_dataset.synthetic` of a `synthetic:env` dataset,
  areal_lite/envs/settings.py), with the environment's name and options checked against the registry.
- `episode_loss_norm_constant`: Dr.GRPO's constant counts the model tokens an *episode* can hold.
- `env_metrics`: per-episode means of the workflow's info columns (`env/success`, `env/turns`, ...).
- `aevaluate_env`: held-out seeds, scored by `info["success"]` rather than reward > 0.5.
- `EnvTokenGradProbe`: measures d loss / d logp on the tokens that are not the model's, in the
  real training step (`check/env_token_grad_max`, which must be exactly 0).
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from areal_lite.config import ConfigError
from areal_lite.envs import EnvError, check_env_options
from areal_lite.envs.settings import EnvSettings, parse_env_settings
from areal_lite.inference.client import InferenceClient
from areal_lite.rollout.multi_turn import EnvWorkflow


def env_settings(cfg) -> EnvSettings:
    """The env section of `cfg`, checked (ConfigError: one line naming the key), the environment's
    name and options included (this script's own environments are registered by now)."""
    try:
        env = parse_env_settings(dict(cfg.train_dataset.synthetic or {}))
        check_env_options(env.name, env.options)
    except EnvError as e:
        raise ConfigError(f"train_dataset.synthetic (the env section): {e}") from None
    limit = min(cfg.server.context_length, cfg.actor.mb_spec.max_tokens_per_mb)
    if env.max_total_tokens > limit:
        raise ConfigError(f"train_dataset.synthetic.max_total_tokens={env.max_total_tokens} exceeds "
                          f"server.context_length or actor.mb_spec.max_tokens_per_mb ({limit})")
    return env


def episode_loss_norm_constant(cfg, env: EnvSettings) -> float:
    """Dr.GRPO's constant for episodes: the most model tokens one episode can hold (the math
    example's generation budget, counted over all turns)."""
    if cfg.actor.loss_norm_constant is not None:
        return float(cfg.actor.loss_norm_constant)
    return float(min(env.max_turns * cfg.gconfig.max_new_tokens, env.max_total_tokens))


def env_metrics(groups) -> dict[str, float]:
    """Per-episode means of what EnvWorkflow reports, and how the episodes ended."""
    samples = [s for g in groups for s in g.samples]
    out = {}
    for key in ("success", "turns", "format_errors", "env_reward", "num_interruptions"):
        vals = [float(s[key]) for s in samples if s.get(key) is not None]
        if vals:
            out[f"env/{key}"] = float(np.mean(vals))
    for reason in ("stop", "truncated", "max_turns", "length"):
        out[f"env/finish_{reason}"] = float(np.mean([s["finish_reason"] == reason for s in samples]))
    return out


async def aevaluate_env(workflow: EnvWorkflow, client: InferenceClient, seeds: list[int]) -> dict[str, float]:
    """One episode per held-out seed: success rate (also as eval/accuracy, which the plots show)."""
    sem = asyncio.Semaphore(32)

    async def one(seed: int):
        async with sem:
            return await workflow.arun_one(client, seed)

    eps = await asyncio.gather(*(one(s) for s in seeds))
    success = float(np.mean([t.info["success"] for t in eps]))
    return {"eval/success": success, "eval/accuracy": success,
            "eval/reward_mean": float(np.mean([t.reward for t in eps])),
            "eval/turns_mean": float(np.mean([t.info["turns"] for t in eps])),
            "eval/format_errors": float(np.mean([t.info["format_errors"] for t in eps])),
            "eval/num_prompts": float(len(eps))}


class EnvTokenGradProbe:
    """The FSDP engine, with d loss / d logp recorded during `train_minibatch`: its largest magnitude
    on loss_mask-0 tokens (prompt, template, observations: must be exactly 0) and the fraction of
    model tokens whose gradient is non-zero. Everything else is the engine's own."""

    def __init__(self, engine):
        self.engine = engine
        self.reset()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def reset(self) -> None:
        self.env_max, self.model_nonzero, self.model_tokens = 0.0, 0, 0

    def stats(self) -> dict[str, float]:
        out = {"check/env_token_grad_max": self.env_max,
               "check/model_token_grad_nonzero": self.model_nonzero / max(self.model_tokens, 1)}
        self.reset()
        return out

    def train_minibatch(self, batch, my_mbs, loss_fn):
        model_rows = batch.to_rows(batch.loss_mask.astype(bool))  # [B, T]: the model's tokens

        def probed(logp: torch.Tensor, entropy, mb):  # logp: the micro-batch's [b, T_mb] rows
            if logp.requires_grad and not mb.dummy:
                model = model_rows[torch.as_tensor(mb.seq_index), : mb.max_len].to(logp.device)
                logp.register_hook(lambda g: self._record(g, model))
            return loss_fn(logp, entropy, mb)

        return self.engine.train_minibatch(batch, my_mbs, probed)

    def _record(self, grad: torch.Tensor, model: torch.Tensor) -> None:
        env_grad = grad[~model].abs()
        self.env_max = max(self.env_max, float(env_grad.max()) if env_grad.numel() else 0.0)
        self.model_nonzero += int((grad[model] != 0).sum())
        self.model_tokens += int(model.sum())
