"""Checks a loaded config: choices, ranges and combinations. The first problem raises ConfigError.

Checks that need the machine (files exist, GPUs are there, ports are free) belong to the launcher's
preflight, not here: a config is validated the same way on a laptop and on a login node.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass, replace
from typing import Any

from areal_lite.config.loader import ConfigError
from areal_lite.config.placement import PlacementError
from areal_lite.config.schema import ExperimentConfig, gpu_placement, resolved_loss_norm_constant


def validate(cfg: Any) -> None:
    """Raise ConfigError naming the first invalid key of `cfg` (any schema dataclass)."""
    _normalize_spellings(cfg)
    _check_choices(cfg, "")
    if isinstance(cfg, ExperimentConfig):
        _check_experiment(cfg)


def _normalize_spellings(cfg: Any) -> None:
    # `seq-mean-token-sum-norm` and `seq_mean_token_sum_norm` name the same reduction; keep one spelling.
    actor = getattr(cfg, "actor", None)
    if actor is not None and isinstance(getattr(actor, "loss_reduction", None), str):
        actor.loss_reduction = actor.loss_reduction.replace("-", "_")
        if actor.loss_reduction == "sequence_mean":
            actor.loss_reduction = "seq_mean_token_mean"


def _check_choices(node: Any, prefix: str) -> None:
    for f in fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            _check_choices(value, key + ".")
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def _require(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {reason}")


def _check_name(value: str, key: str) -> None:
    _require(bool(value), key, "must not be empty")
    _require("/" not in value and value not in (".", ".."), key, f"{value!r} must be a plain name (no '/')")


def _check_experiment(cfg: ExperimentConfig) -> None:
    _check_name(cfg.experiment_name, "experiment_name")
    _check_name(cfg.trial_name, "trial_name")
    _require(cfg.total_train_epochs >= 1, "total_train_epochs", "must be >= 1")
    if cfg.total_train_steps is not None:
        _require(cfg.total_train_steps >= 1, "total_train_steps", "must be >= 1 (or null)")
    _require(bool(cfg.actor.path), "actor.path", "required: the model directory (or a hub id)")
    _require(bool(cfg.train_dataset.path), "train_dataset.path", "required: where the training prompts are")

    # Placement
    al = cfg.allocation
    _require(al.inference.num_servers >= 1, "allocation.inference.num_servers", "must be >= 1")
    _require(al.inference.tp_size >= 1, "allocation.inference.tp_size", "must be >= 1")
    _require(al.rollout.num_workers >= 1, "allocation.rollout.num_workers", "must be >= 1")
    _require(al.trainer.nnodes >= 1, "allocation.trainer.nnodes", "must be >= 1")
    _require(al.trainer.nproc_per_node >= 1, "allocation.trainer.nproc_per_node", "must be >= 1")
    _require(cfg.cluster.n_nodes >= 1, "cluster.n_nodes", "must be >= 1")
    _require(
        al.trainer.nnodes <= cfg.cluster.n_nodes,
        "allocation.trainer.nnodes",
        f"{al.trainer.nnodes} trainer nodes do not fit in cluster.n_nodes={cfg.cluster.n_nodes}",
    )
    if al.inference.backend == "sglang":
        _require(
            al.device == "cuda",
            "allocation.inference.backend",
            "sglang needs GPUs: set allocation.device=cuda (or use the embedded backend on CPU)",
        )
    if al.inference.backend == "embedded":
        _require(
            al.inference.tp_size == 1,
            "allocation.inference.tp_size",
            "the embedded engine has no tensor parallelism: use tp_size=1 (or backend sglang)",
        )
    if al.device == "cuda":
        _require(cfg.cluster.n_gpus_per_node >= 1, "cluster.n_gpus_per_node", "allocation.device=cuda needs GPUs")
        try:
            gpu_placement(cfg)
        except PlacementError as e:
            hint = ""
            if not al.colocate:
                try:
                    gpu_placement(replace(cfg, allocation=replace(al, colocate=True)))
                    hint = "; to share GPUs between servers and trainer set allocation.colocate=true"
                except PlacementError:
                    pass
            raise ConfigError(f"allocation: {e} (cluster: {cfg.cluster.n_nodes} node(s) x "
                              f"{cfg.cluster.n_gpus_per_node} GPUs){hint}") from None
    else:
        _require(not al.colocate, "allocation.colocate",
                 "colocation is for GPUs; on CPU every process already shares the machine (set it false)")

    # Data and generation
    ds, g = cfg.train_dataset, cfg.gconfig
    _require(ds.batch_size >= 1, "train_dataset.batch_size", "must be >= 1")
    _require(ds.max_prompt_len >= 1, "train_dataset.max_prompt_len", "must be >= 1")
    _require(g.n_samples >= 1, "gconfig.n_samples", "must be >= 1")
    _require(g.max_new_tokens >= 1, "gconfig.max_new_tokens", "must be >= 1")
    _require(0 <= g.min_new_tokens <= g.max_new_tokens, "gconfig.min_new_tokens", "must be in [0, max_new_tokens]")
    _require(g.temperature >= 0 and math.isfinite(g.temperature), "gconfig.temperature", "must be >= 0")
    _require(0 < g.top_p <= 1, "gconfig.top_p", "must be in (0, 1]")
    _require(g.top_k == -1 or g.top_k >= 1, "gconfig.top_k", "must be -1 (off) or >= 1")
    seq_len = ds.max_prompt_len + g.max_new_tokens
    _require(
        seq_len <= cfg.server.context_length,
        "server.context_length",
        f"{cfg.server.context_length} is shorter than train_dataset.max_prompt_len + gconfig.max_new_tokens = {seq_len}",
    )
    sft = cfg.prepare.sft
    _require(0.0 <= sft.answer_only_fraction <= 1.0, "prepare.sft.answer_only_fraction", "must be in [0, 1]")
    _require(sft.epochs >= 1 and sft.num_examples >= 1 and sft.batch_size >= 1, "prepare.sft",
             "epochs, num_examples and batch_size must be >= 1")
    if cfg.evaluator.freq_steps > 0:
        _require(bool(cfg.valid_dataset.path), "valid_dataset.path", "required when evaluator.freq_steps > 0")

    # Rollout and staleness
    ro = cfg.rollout
    _require(ro.max_head_offpolicyness >= 0, "rollout.max_head_offpolicyness", "must be >= 0 (0 = synchronous)")
    _require(ro.max_concurrent_rollouts >= 0, "rollout.max_concurrent_rollouts", "must be >= 0 (0 = derived)")
    _require(ro.request_timeout > 0, "rollout.request_timeout", "must be > 0")
    _require(ro.request_retries >= 0, "rollout.request_retries", "must be >= 0")
    _require(ro.reward_timeout > 0, "rollout.reward_timeout", "must be > 0")
    _require(ro.reward_workers >= 1, "rollout.reward_workers", "must be >= 1")
    _require(ro.heartbeat_s > 0, "rollout.heartbeat_s", "must be > 0")
    _require(
        ro.worker_timeout_s > 2 * ro.heartbeat_s,
        "rollout.worker_timeout_s",
        f"must exceed two heartbeats (2 x rollout.heartbeat_s = {2 * ro.heartbeat_s})",
    )
    if ro.dynamic_filter == "drop_all_equal":
        _require(
            g.n_samples >= 2,
            "rollout.dynamic_filter",
            "drop_all_equal drops every group when gconfig.n_samples is 1",
        )

    # Actor
    a = cfg.actor
    n_seqs = ds.batch_size * g.n_samples
    _require(a.ppo_n_minibatches >= 1, "actor.ppo_n_minibatches", "must be >= 1")
    _require(
        n_seqs % a.ppo_n_minibatches == 0,
        "actor.ppo_n_minibatches",
        f"{a.ppo_n_minibatches} does not divide the {n_seqs} sequences of a batch "
        f"(train_dataset.batch_size={ds.batch_size} x gconfig.n_samples={g.n_samples})",
    )
    _require(
        a.mb_spec.max_tokens_per_mb >= seq_len,
        "actor.mb_spec.max_tokens_per_mb",
        f"{a.mb_spec.max_tokens_per_mb} cannot hold one full sequence "
        f"(train_dataset.max_prompt_len + gconfig.max_new_tokens = {seq_len})",
    )
    _require(a.optimizer.lr >= 0, "actor.optimizer.lr", "must be >= 0")
    _require(0 <= a.optimizer.warmup_steps_proportion < 1, "actor.optimizer.warmup_steps_proportion", "must be in [0, 1)")
    _require(a.optimizer.gradient_clipping >= 0, "actor.optimizer.gradient_clipping", "must be >= 0 (0 = off)")
    _require(a.eps_clip > 0, "actor.eps_clip", "must be > 0")
    if a.eps_clip_higher is not None:
        _require(a.eps_clip_higher > 0, "actor.eps_clip_higher", "must be > 0 (or null)")
    if a.c_clip is not None:
        _require(a.c_clip > 1, "actor.c_clip", "the dual-clip constant must be > 1 (or null)")
    if a.behav_weight_cap is not None:
        _require(a.behav_weight_cap > 0, "actor.behav_weight_cap", "must be > 0 (or null)")
    if a.use_decoupled_loss:
        _require(
            a.recompute_logprob,
            "actor.use_decoupled_loss",
            "the decoupled loss needs proximal log-probs: set actor.recompute_logprob=true",
        )
    _require(a.kl_ctl >= 0, "actor.kl_ctl", "must be >= 0")
    if a.loss_reduction == "seq_mean_token_sum_norm":
        _require(
            resolved_loss_norm_constant(cfg) > 0,
            "actor.loss_norm_constant",
            "seq_mean_token_sum_norm needs a positive constant",
        )
    if a.adv_norm.leave_one_out:
        _require(
            a.adv_norm.mean_level != "none",
            "actor.adv_norm.leave_one_out",
            "needs actor.adv_norm.mean_level group or batch",
        )
    _require(a.adv_norm.eps >= 0, "actor.adv_norm.eps", "must be >= 0")
    _require(a.reward_scaling != 0, "actor.reward_scaling", "must not be 0 (every reward would vanish)")
    _require(a.reward_clip > 0, "actor.reward_clip", "must be > 0")
    if a.overlong_penalty.enabled:
        _require(
            0 < a.overlong_penalty.buffer_len <= g.max_new_tokens,
            "actor.overlong_penalty.buffer_len",
            f"must be in (0, gconfig.max_new_tokens={g.max_new_tokens}]",
        )
    if a.entropy_shaping.mode != "none":
        _require(
            not (a.kl_ctl > 0 and a.kl_in_reward),
            "actor.entropy_shaping.mode",
            "entropy shaping replaces the reward-based advantages: it cannot be combined with actor.kl_in_reward",
        )
        _require(a.entropy_shaping.beta >= 0, "actor.entropy_shaping.beta", "must be >= 0")
    ratio = a.group_filter.top_k_ratio
    _require(0 < ratio <= 1, "actor.group_filter.top_k_ratio", "must be in (0, 1]")
    _require(
        math.floor(ds.batch_size * ratio) >= 1,
        "actor.group_filter.top_k_ratio",
        f"keeps no group of a batch of {ds.batch_size} (floor(batch_size x ratio) = 0)",
    )

    # Bookkeeping
    _require(cfg.saver.freq_steps >= 0, "saver.freq_steps", "must be >= 0")
    _require(cfg.recover.freq_steps >= 0, "recover.freq_steps", "must be >= 0")
    _require(cfg.recover.retries >= 0, "recover.retries", "must be >= 0")
    _require(cfg.evaluator.freq_steps >= 0, "evaluator.freq_steps", "must be >= 0")
    _require(cfg.evaluator.n_samples >= 1, "evaluator.n_samples", "must be >= 1")
    _require(cfg.server.max_running_requests >= 1, "server.max_running_requests", "must be >= 1")
    _require(cfg.server.debug_step_delay_s >= 0, "server.debug_step_delay_s", "must be >= 0")
    _require(cfg.launcher.torch_threads >= 0, "launcher.torch_threads", "must be >= 0 (0 = automatic)")
