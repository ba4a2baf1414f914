"""The critic of `adv_estimator=gae`: a value model trained beside the policy.

The value model is the policy's backbone with a scalar head: transformers'
`AutoModelForTokenClassification` with one label (verl's choice), loaded from a causal-LM
directory, whose decoder weights it takes over while the head `score` (hidden → 1) starts fresh.
That class exists for every architecture transformers ships, takes the same packed position ids
as the causal LM, and has no vocabulary-sized output. Its dropout is turned off, so that the
values of a pass do not depend on the layout. It runs on its own `FSDPEngine` (same sharding,
micro-batching, optimizer and schedule as the policy, its own `actor.critic.optimizer`).

Per step: `values(batch)` in the proximal pass (no grad, `[B, T]` rows, V_t the value of the
state before token t, aligned as the log-probs), GAE in the advantage builder, then `update` on the
policy's minibatches with PPO's clipped value loss against the returns, token mean over the
minibatch's global token count (the same at any layout). The recover checkpoint holds both models
(`with_critic`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from areal_lite import algo
from areal_lite.trainer.advantage import Advantages
from areal_lite.trainer.batch import MicroBatch, SeqBatch
from areal_lite.trainer.engine import EngineSpec, FSDPEngine, _decoder_layers, lr_lambda
from areal_lite.trainer.ppo import rank_microbatches, sum_over_ranks
from areal_lite.trainer.rows import StepRows
from areal_lite.utils.hf import torch_dtype

logger = logging.getLogger("areal_lite.critic")


class CriticEngine(FSDPEngine):
    """An `FSDPEngine` whose model is a value model: `forward_logp` returns values and the loss
    callable of `train_minibatch` receives them (`loss_fn(values, None, mb)`)."""

    def initialize(self, *, with_optimizer: bool = True) -> None:
        from transformers import AutoConfig, AutoModelForTokenClassification

        s = self.spec
        config = AutoConfig.from_pretrained(s.path, num_labels=1)
        # NOTE: set after loading: transformers drops a `classifier_dropout` keyword the architecture's
        # config does not declare, and its default (0.1) would make every training pass random.
        config.classifier_dropout = 0.0
        model = AutoModelForTokenClassification.from_pretrained(s.path, config=config, dtype=torch_dtype(s.dtype),
                                                                attn_implementation=self.attn_implementation)
        model.config.use_cache = False
        if s.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        kwargs: dict = {"mesh": self.dist.mesh}
        if self.device.type == "cuda":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in _decoder_layers(model):  # NOTE: as the policy: one block at a time to the device
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        self.model = model
        if with_optimizer:
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps,
                                               weight_decay=s.weight_decay)
            warmup = int(s.warmup_steps_proportion * self.total_optimizer_steps)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lr_lambda(s.lr_scheduler_type, self.total_optimizer_steps, warmup, s.min_lr_ratio))

    def _forward(self, mb: MicroBatch, *, with_entropy: bool) -> tuple[torch.Tensor, None]:
        """Values as `[b, T_mb]` rows: column t holds V(x_<t), the head's output at position t − 1."""
        assert self.model is not None
        out = self.model(input_ids=mb.input_ids, position_ids=mb.position_ids, attention_mask=mb.attention_mask,
                         use_cache=False)
        values = out.logits[..., 0].float()  # [R, L]
        if mb.pred is not None:  # a row with shared prompts: each token's value is the head's output at its predictor
            return self._rows(mb, values.reshape(-1)[mb.pred].view(1, -1)), None
        return self._rows(mb, values[:, :-1]), None


class Critic:
    """The value model's passes: values before the update, and its update on the policy's minibatches."""

    def __init__(self, critic_cfg: Any, engine: CriticEngine):
        self.cfg = critic_cfg
        self.engine = engine

    def values(self, batch: SeqBatch) -> torch.Tensor:
        """`[B, T]` values of every token under the current critic, on every rank."""
        e = self.engine
        return sum_over_ranks(e.forward_logp(batch, rank_microbatches(e, batch)), e.dist.cpu_group)

    def update(self, batch: SeqBatch, rows: StepRows, adv: Advantages,
               minibatches: list[tuple[np.ndarray, tuple[float, float]]]) -> dict[str, float]:
        """One optimizer step per minibatch of the clipped value loss against `adv.returns`."""
        if rows.values is None or adv.returns is None:
            raise ValueError("the critic's update needs the step's values and the GAE returns")
        e, per_mb = self.engine, []
        for seqs, totals in minibatches:
            def mb_loss(values, _entropy, mb, n_tokens=totals[0]):
                return self._loss(values, mb, rows, adv.returns, n_tokens)

            per_mb.append(e.train_minibatch(batch, rank_microbatches(e, batch, seqs), mb_loss))
        t = algo.aggregate_stats(per_mb, group=e.dist.cpu_group)
        n_tok, n_mb = max(t.get("critic/n_tokens", 0.0), 1.0), max(len(per_mb), 1)
        return {
            "critic/loss": t.get("critic/loss_sum", 0.0) / n_mb,
            "critic/clip_frac": t.get("critic/clipped_count", 0.0) / n_tok,
            "critic/value_mean": t.get("critic/value_sum", 0.0) / n_tok,
            "critic/mse": t.get("critic/sq_error_sum", 0.0) / n_tok,
            "critic/grad_norm": t.get("train/grad_norm", 0.0) / (n_mb * e.world_size),
            "critic/lr": t.get("train/lr", 0.0) / (n_mb * e.world_size),
        }

    def _loss(self, values: torch.Tensor, mb: MicroBatch, rows: StepRows, returns: torch.Tensor,
              n_tokens: float) -> tuple[torch.Tensor, dict[str, float]]:
        idx, t = torch.as_tensor(mb.seq_index), mb.max_len
        mask = torch.zeros_like(rows.mask[idx, :t]) if mb.dummy else rows.mask[idx, :t]
        dev = values.device
        token_loss, stats = algo.value_loss(values, rows.values[idx, :t].to(dev), returns[idx, :t].to(dev),
                                            mask.to(dev), clip=self.cfg.value_clip)
        loss = algo.reduce_loss(token_loss, mask.to(dev), "token_mean", total_tokens=n_tokens)
        return loss, {**{f"critic/{k}": float(v) for k, v in stats.items()}, "critic/loss_sum": float(loss.detach())}


def build_critic(actor: Any, dist_ctx, *, total_optimizer_steps: int) -> Critic | None:
    """The critic of the `actor` section (`actor.critic`, sharing `mb_spec`, `dtype`, `attn_impl` and
    gradient checkpointing with the policy), initialised; None unless `adv_estimator=gae`."""
    if actor.adv_estimator != "gae":
        return None
    c, o = actor.critic, actor.critic.optimizer
    spec = replace(EngineSpec.from_actor(actor, temperature=1.0), path=c.path or actor.path, lr=o.lr,
                   weight_decay=o.weight_decay, beta1=o.beta1, beta2=o.beta2, eps=o.eps,
                   lr_scheduler_type=o.lr_scheduler_type, warmup_steps_proportion=o.warmup_steps_proportion,
                   min_lr_ratio=o.min_lr_ratio, gradient_clipping=o.gradient_clipping)
    engine = CriticEngine(spec, dist_ctx, total_optimizer_steps=total_optimizer_steps)
    engine.initialize()
    return Critic(c, engine)


class WithCritic:
    """The policy's and the critic's engines as one for the recover checkpoint (`RecoverCheckpointer`,
    `resume`): the policy's state under its usual keys, the critic's under `critic_*`."""

    def __init__(self, engine: FSDPEngine, critic: Critic):
        self.engine, self.critic = engine, critic
        self.rank, self.dist = engine.rank, engine.dist

    def sharded_state(self) -> dict:
        c = self.critic.engine.sharded_state()
        return {**self.engine.sharded_state(), "critic_model": c["model"], "critic_optim": c["optim"]}

    def load_sharded_state(self, state: dict) -> None:
        self.engine.load_sharded_state({"model": state["model"], "optim": state["optim"]})
        self.critic.engine.load_sharded_state({"model": state["critic_model"], "optim": state["critic_optim"]})


def with_critic(engine: FSDPEngine, critic: Critic | None):
    """What the recover checkpoint saves and restores: the policy's engine, and the critic's when there is one."""
    return engine if critic is None else WithCritic(engine, critic)
