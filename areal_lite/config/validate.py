"""Checks a loaded config: every field's own rule (generic, from the schema's metadata), then the
rules that involve several keys. The first problem raises ConfigError naming the key.

Checks that need the machine (files exist, GPUs and cores are there) are in `preflight`: a config
is validated the same way on a laptop and on a login node.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from areal_lite.config.errors import ConfigError
from areal_lite.config.fields import check_fields
from areal_lite.config.placement import PlacementError
from areal_lite.config.schema import ExperimentConfig, gpu_placement, resolved_env_max_total_tokens

PROCESSES_PER_CORE = 4  # a local run may start at most this many processes per CPU core


def validate(cfg: Any) -> None:
    """Raise ConfigError naming the first invalid key of `cfg` (any schema dataclass)."""
    check_fields(cfg)
    if isinstance(cfg, ExperimentConfig):
        for rules in (_check_required, _check_placement, _check_data, _check_rollout, _check_advantages,
                      _check_loss, _check_bookkeeping, _check_prepare, _check_env):
            rules(cfg)


def require(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {reason}")


def _check_required(cfg: ExperimentConfig) -> None:
    require(bool(cfg.actor.path), "actor.path", "required: the model directory (or a hub id)")
    require(bool(cfg.train_dataset.path), "train_dataset.path", "required: where the training prompts are")


def local_processes(cfg: ExperimentConfig) -> tuple[int, str]:
    """(processes that run on CPU cores, what they are) of one node's share of the run."""
    al = cfg.allocation
    parts = [(al.rollout.num_workers, "rollout worker(s)")]
    if al.device == "cpu":
        parts += [(al.inference.num_servers, "server(s)"), (al.trainer.nnodes * al.trainer.nproc_per_node,
                                                             "trainer rank(s)")]
    n = sum(k for k, _ in parts)
    return n, " + ".join(f"{k} {what}" for k, what in parts)


def check_cores(cfg: ExperimentConfig, cores: int, where: str) -> None:
    """The processes of the run on `cores` CPU cores (`where` names them: 'this machine's 2')."""
    n, what = local_processes(cfg)
    limit = PROCESSES_PER_CORE * cores * max(1, cfg.cluster.n_nodes)
    require(n <= limit, "allocation", f"{n} processes asked ({what}) but {where} core(s) allow at most {limit} "
            f"({PROCESSES_PER_CORE} per core): lower allocation.rollout.num_workers / inference.num_servers")


def _check_placement(cfg: ExperimentConfig) -> None:
    al = cfg.allocation
    require(al.trainer.nnodes <= cfg.cluster.n_nodes, "allocation.trainer.nnodes",
            f"{al.trainer.nnodes} trainer nodes do not fit in cluster.n_nodes={cfg.cluster.n_nodes}")
    if al.inference.backend == "sglang":
        require(al.device == "cuda", "allocation.inference.backend",
                "sglang needs GPUs: set allocation.device=cuda (or use the embedded backend on CPU)")
    else:
        require(al.inference.tp_size == 1, "allocation.inference.tp_size",
                "the embedded engine has no tensor parallelism: use tp_size=1 (or backend sglang)")
    if cfg.cluster.n_cpus_per_node:
        check_cores(cfg, cfg.cluster.n_cpus_per_node, f"cluster.n_cpus_per_node={cfg.cluster.n_cpus_per_node}")
    if al.device != "cuda":
        require(not al.colocate, "allocation.colocate",
                "colocation is for GPUs; on CPU every process already shares the machine (set it false)")
        return
    require(cfg.cluster.n_gpus_per_node >= 1, "cluster.n_gpus_per_node", "allocation.device=cuda needs GPUs")
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
    require(not (al.colocate and cfg.actor.weight_update_mode == "distributed"), "actor.weight_update_mode",
            "distributed (NCCL) sync cannot run colocated: NCCL refuses two ranks of one group on one GPU "
            "(trainer rank and server); use weight_update_mode=disk")


def _check_data(cfg: ExperimentConfig) -> None:
    from areal_lite.data.prompts import check_template
    from areal_lite.data.records import DatasetError

    ds, g = cfg.train_dataset, cfg.gconfig
    require(g.min_new_tokens <= g.max_new_tokens, "gconfig.min_new_tokens",
            f"{g.min_new_tokens} exceeds gconfig.max_new_tokens={g.max_new_tokens}")
    seq_len = ds.max_prompt_len + g.max_new_tokens
    require(seq_len <= cfg.server.context_length, "server.context_length",
            f"{cfg.server.context_length} is shorter than train_dataset.max_prompt_len + gconfig.max_new_tokens "
            f"= {seq_len}")
    if cfg.sglang.context_length is not None:
        require(seq_len <= cfg.sglang.context_length, "sglang.context_length",
                f"{cfg.sglang.context_length} is shorter than a prompt and its answer ({seq_len} tokens)")
    if cfg.evaluator.freq_steps > 0:
        require(bool(cfg.valid_dataset.path), "valid_dataset.path", "required when evaluator.freq_steps > 0")
    for key, d in (("train_dataset", ds), ("valid_dataset", cfg.valid_dataset)):
        try:
            check_template(d.prompt_template)
        except DatasetError as e:
            raise ConfigError(f"{key}.prompt_template: {e}") from None
    n = check_synthetic_dataset("train_dataset", ds)
    if n is not None:
        available = min(n, ds.max_records) if ds.max_records else n
        require(ds.batch_size <= available, "train_dataset.batch_size",
                f"{ds.batch_size} prompts per step but {ds.path} yields {available} records: no step could be filled")
    if cfg.evaluator.freq_steps > 0:
        check_synthetic_dataset("valid_dataset", cfg.valid_dataset)
    if cfg.prepare.sft.enabled:
        sft = replace(ds, path=cfg.prepare.sft.dataset, synthetic={})
        check_synthetic_dataset("prepare.sft", sft, path_key="prepare.sft.dataset")


def check_synthetic_dataset(key: str, ds: Any, path_key: str = "") -> int | None:
    """Records of a synthetic dataset section (None for other datasets); ConfigError for a wrong name or option."""
    from areal_lite.data.checks import SYNTHETIC_PREFIX, check_synthetic
    from areal_lite.data.records import DatasetError
    from areal_lite.envs.base import EnvError
    from areal_lite.envs.settings import ENV_DATASET, parse_env_settings

    if not ds.path.startswith(SYNTHETIC_PREFIX):
        return None
    if ds.path == ENV_DATASET:  # an agent run: its records are environment seeds
        if key != "train_dataset":
            return None  # the held-out seeds are train_dataset's env section's eval_* keys
        try:
            env = parse_env_settings(dict(ds.synthetic or {}))
        except EnvError as e:
            raise ConfigError(f"{key}.synthetic (the env section): {e}") from None
        return env.num_seeds
    try:
        return check_synthetic(ds.path, dict(ds.synthetic or {}), ds.split)
    except DatasetError as e:
        field = getattr(e, "field", "synthetic")
        raise ConfigError(f"{path_key if path_key and field == 'path' else f'{key}.{field}'}: {e}") from None


def _check_rollout(cfg: ExperimentConfig) -> None:
    ro, g = cfg.rollout, cfg.gconfig
    require(ro.worker_timeout_s > 2 * ro.heartbeat_s, "rollout.worker_timeout_s",
            f"must exceed two heartbeats (2 x rollout.heartbeat_s = {2 * ro.heartbeat_s})")
    if ro.dynamic_filter == "drop_all_equal":
        require(g.n_samples >= 2, "rollout.dynamic_filter", "drop_all_equal drops every group when gconfig.n_samples is 1")


GROUP_ESTIMATORS = ("passk", "gpg", "reinforce_pp_baseline")  # compare the answers of a group


def _check_advantages(cfg: ExperimentConfig) -> None:
    a, n = cfg.actor, cfg.gconfig.n_samples
    est = a.adv_estimator
    if est == "remax":
        from areal_lite.envs.settings import ENV_DATASET

        require(cfg.train_dataset.path != ENV_DATASET and not cfg.env.name, "actor.adv_estimator",
                "remax needs each prompt's greedy answer, which the single-turn RLVRWorkflow runs and the agent "
                "tasks' EnvWorkflow does not")
    if est in GROUP_ESTIMATORS:
        require(n >= 2, "gconfig.n_samples", f"actor.adv_estimator={est} compares the answers of a group: needs >= 2")
    norm = a.adv_norm
    if est == "normalize" and "group" in (norm.mean_level, norm.std_level):
        level = "mean_level" if norm.mean_level == "group" else "std_level"
        require(n >= 2, "gconfig.n_samples", f"1 answer per prompt with actor.adv_norm.{level}=group makes every "
                "advantage 0 (nothing is learned): use >= 2, or level batch")
    if norm.leave_one_out:
        require(norm.mean_level != "none", "actor.adv_norm.leave_one_out", "needs actor.adv_norm.mean_level group or batch")
    if a.entropy_shaping.mode != "none":
        require(not (a.kl_ctl > 0 and a.kl_in_reward), "actor.entropy_shaping.mode",
                "entropy shaping replaces the reward-based advantages: it cannot be combined with actor.kl_in_reward")
    if a.overlong_penalty.enabled:
        require(a.overlong_penalty.buffer_len <= cfg.gconfig.max_new_tokens, "actor.overlong_penalty.buffer_len",
                f"must be <= gconfig.max_new_tokens={cfg.gconfig.max_new_tokens}")
    batch = cfg.train_dataset.batch_size
    require(math.floor(batch * a.group_filter.top_k_ratio) >= 1, "actor.group_filter.top_k_ratio",
            f"keeps no group of a batch of {batch} (floor(batch_size x ratio) = 0)")
    rf = a.rollout_filter
    if rf.enabled:
        require(a.group_filter.top_k_ratio == 1.0, "actor.rollout_filter.enabled",
                "two group filters: set actor.group_filter.top_k_ratio=1 or disable actor.rollout_filter")
        if rf.strategy == "top_k_abs":
            require(rf.value >= 1, "actor.rollout_filter.value", f"top_k_abs keeps value groups: must be >= 1, got {rf.value}")
        if rf.strategy == "min_p":
            require(rf.value <= 1, "actor.rollout_filter.value", "min_p is a fraction of the best score: must be <= 1")


def _check_loss(cfg: ExperimentConfig) -> None:
    a, ds, g = cfg.actor, cfg.train_dataset, cfg.gconfig
    n_seqs = ds.batch_size * g.n_samples
    require(n_seqs % a.ppo_n_minibatches == 0, "actor.ppo_n_minibatches",
            f"{a.ppo_n_minibatches} does not divide the {n_seqs} sequences of a batch "
            f"(train_dataset.batch_size={ds.batch_size} x gconfig.n_samples={g.n_samples})")
    seq_len = ds.max_prompt_len + g.max_new_tokens
    require(a.mb_spec.max_tokens_per_mb >= seq_len, "actor.mb_spec.max_tokens_per_mb",
            f"{a.mb_spec.max_tokens_per_mb} cannot hold one full sequence "
            f"(train_dataset.max_prompt_len + gconfig.max_new_tokens = {seq_len})")
    if a.use_decoupled_loss and a.prox_logp_method == "recompute":
        require(a.recompute_logprob, "actor.use_decoupled_loss", "the decoupled loss needs proximal log-probs: set "
                "actor.recompute_logprob=true (or actor.prox_logp_method=loglinear)")
    if a.seq_is.enabled and a.seq_is.lower is not None:
        require(a.seq_is.lower < a.seq_is.cap, "actor.seq_is.lower", f"must be below actor.seq_is.cap={a.seq_is.cap}")
    if a.policy_loss == "clip_cov":
        require(a.clip_cov.cov_lb < a.clip_cov.cov_ub, "actor.clip_cov.cov_lb",
                f"must be below actor.clip_cov.cov_ub={a.clip_cov.cov_ub}")


def _check_bookkeeping(cfg: ExperimentConfig) -> None:
    rec = cfg.recover
    if rec.mode != "disabled":
        require(rec.freq_steps > 0 or rec.freq_secs > 0, "recover.freq_steps",
                f"recover.mode={rec.mode} but recover.freq_steps and recover.freq_secs are 0: no recover checkpoint "
                "is ever written (set recover.freq_steps=N or recover.freq_secs=S)")
        steps = cfg.total_train_steps
        if steps is not None and rec.freq_steps > steps and rec.freq_secs == 0:
            raise ConfigError(f"recover.freq_steps: {rec.freq_steps} exceeds total_train_steps={steps}: "
                              "no recover checkpoint is ever written")


def _check_prepare(cfg: ExperimentConfig) -> None:
    if cfg.prepare.model != "tiny":
        return
    t = cfg.prepare.tiny
    require(t.hidden_size % t.num_attention_heads == 0, "prepare.tiny.num_attention_heads",
            f"{t.num_attention_heads} does not divide prepare.tiny.hidden_size={t.hidden_size}")
    require(t.num_attention_heads % t.num_key_value_heads == 0, "prepare.tiny.num_key_value_heads",
            f"{t.num_key_value_heads} does not divide prepare.tiny.num_attention_heads={t.num_attention_heads}")
    seq_len = cfg.train_dataset.max_prompt_len + cfg.gconfig.max_new_tokens
    require(t.max_position_embeddings >= seq_len, "prepare.tiny.max_position_embeddings",
            f"{t.max_position_embeddings} is shorter than a prompt and its answer ({seq_len} tokens)")


def _check_env(cfg: ExperimentConfig) -> None:
    env = cfg.env
    if not env.name:
        require(not env.options, "env.options", "set without env.name")
        return
    from areal_lite.envs import EnvError, check_env_options, registered_envs

    if env.name not in registered_envs():
        import difflib

        close = difflib.get_close_matches(env.name, registered_envs(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"env.name: unknown environment {env.name!r}{hint}; registered: {', '.join(registered_envs())}")
    try:
        check_env_options(env.name, dict(env.options))
    except EnvError as e:
        raise ConfigError(f"env.options: {e}") from None
    budget = resolved_env_max_total_tokens(cfg)
    require(budget <= cfg.server.context_length, "env.max_total_tokens",
            f"{budget} exceeds server.context_length={cfg.server.context_length}")
    train = range(env.seed_start, env.seed_start + env.num_seeds)
    held = range(env.eval_seed_start, env.eval_seed_start + env.eval_num_seeds)
    require(train.stop <= held.start or held.stop <= train.start, "env.eval_seed_start",
            f"held-out seeds {held.start}..{held.stop - 1} overlap the training seeds {train.start}..{train.stop - 1}")
    require(cfg.train_dataset.batch_size <= env.num_seeds, "train_dataset.batch_size",
            f"{cfg.train_dataset.batch_size} episodes' seeds per step but env.num_seeds={env.num_seeds}")
