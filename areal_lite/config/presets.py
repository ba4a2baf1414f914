"""Algorithm presets: the Hydra config group `algo`, so a recipe is `algo=drgrpo` plus the task.

    python -m areal_lite.launcher.local ENTRY.py --config task.yaml algo=dapo
    # or in the YAML:   defaults: [{algo: dapo}, _self_]

Every preset sets the same keys (the algorithm's keys), so switching presets leaves nothing of the
previous one behind, and a task file that sets none of these keys is the same task under every
algorithm. Values a file or the command line sets explicitly win over the preset (Hydra's
`_self_` after the defaults; command-line overrides last). Your own presets: YAML files in an
`algo/` folder beside your config, each starting with `# @package _global_`.
"""

from __future__ import annotations

from typing import Any

# The keys every preset sets (the lines marked "# ALGO" in the recipes before presets existed).
ALGO_KEYS = (
    "actor.adv_norm.mean_level",
    "actor.adv_norm.std_level",
    "actor.loss_reduction",
    "actor.loss_norm_constant",
    "actor.eps_clip_higher",
    "actor.overlong_penalty.enabled",
    "actor.group_filter.soft_reweight",
    "rollout.dynamic_filter",
    "actor.policy_loss",
    "actor.adv_estimator",
    "actor.kl_loss_reduction",
)

_GRPO = {
    "actor.adv_norm.mean_level": "group",
    "actor.adv_norm.std_level": "group",
    "actor.loss_reduction": "seq_mean_token_mean",
    "actor.loss_norm_constant": None,
    "actor.eps_clip_higher": None,
    "actor.overlong_penalty.enabled": False,
    "actor.group_filter.soft_reweight": False,
    "rollout.dynamic_filter": "none",
    "actor.policy_loss": "ppo",
    "actor.adv_estimator": "normalize",
    # A KL term (actor.kl_ctl > 0, a task's choice: it loads a reference model) is reduced like the
    # policy term, as in DeepSeekMath's GRPO (TRL `grpo`), Dr.GRPO (Σ/K for both) and every other source.
    "actor.kl_loss_reduction": None,
}
_DRGRPO = {**_GRPO, "actor.adv_norm.std_level": "none", "actor.loss_reduction": "seq_mean_token_sum_norm"}

ALGO_PRESETS: dict[str, dict[str, Any]] = {
    # GRPO (DeepSeekMath) as AReaL and verl ship it: group mean and std, per-sequence token mean, no KL.
    "grpo": _GRPO,
    # Dr.GRPO: no std (no difficulty bias); token sums over one constant, the generation budget
    # (actor.loss_norm_constant null = gconfig.max_new_tokens): no length bias.
    "drgrpo": _DRGRPO,
    # Dr.GRPO+ soft reweighting (RAGEN): a group's advantages scaled by its reward std over the batch's largest.
    "drgrpo_soft": {**_DRGRPO, "actor.group_filter.soft_reweight": True},
    # DAPO: clip-higher, dynamic sampling (all-equal groups dropped), token mean, overlong penalty.
    "dapo": {
        **_GRPO,
        "actor.loss_reduction": "token_mean",
        "actor.eps_clip_higher": 0.28,
        "actor.overlong_penalty.enabled": True,
        "rollout.dynamic_filter": "drop_all_equal",
    },
    # CISPO (MiniMax-M1): the clipped ratio as a constant weight on −A·logp, so every token keeps its
    # gradient; group-normalised advantages and the token mean, as the paper.
    "cispo": {**_GRPO, "actor.policy_loss": "cispo", "actor.loss_reduction": "token_mean"},
    # GPG (Chu et al.): plain −A·logp with group-centred advantages rescaled to the groups with contrast.
    "gpg": {**_GRPO, "actor.policy_loss": "reinforce", "actor.adv_estimator": "gpg", "actor.loss_reduction": "token_mean"},
    # ReMax (Li et al.): REINFORCE's reward-to-go minus the reward of the prompt's greedy answer (one
    # extra, untrained answer per prompt), no whitening; token mean as verl's ReMax runs.
    "remax": {**_GRPO, "actor.adv_estimator": "remax", "actor.loss_reduction": "token_mean"},
    # PPO proper: GAE(γ, λ) over a critic trained beside the policy (actor.critic), token mean.
    "ppo": {**_GRPO, "actor.adv_estimator": "gae", "actor.loss_reduction": "token_mean"},
}


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def register_presets() -> None:
    """Put the `algo` group into Hydra's ConfigStore (idempotent; called when a config is composed)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, values in ALGO_PRESETS.items():
        store.store(group="algo", name=name, node=nested(values), package="_global_")
