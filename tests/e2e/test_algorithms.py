"""Every policy loss and advantage estimator runs through the real local launcher (server, worker, FSDP
trainer; 2 steps of a tiny model), finishes with finite metrics, and visibly acts on the update.

A random tiny model never answers right, so every outcome reward is 0. To give the options something
to act on, answers stop at any of 31 common byte tokens (their lengths vary) and the DAPO overlong
penalty with a buffer as long as the budget turns length into reward (−length/16): groups have
contrast, advantages are non-zero. Each case combines one policy loss with one estimator (and the
terms beside them) to keep the test at seven runs; each checks a statistic that PPO with group
normalisation (the default, run by test_thin_loop.py) cannot produce. That each option changes the
update on the same batch, against its formula, is pinned by tests/trainer/test_ppo_options.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import ENTRY, REPO, explain, launch, read_jsonl, run_dir

CONTRAST = ["gconfig.stop_token_ids=[" + ",".join(str(i) for i in range(10, 41)) + "]",
            "actor.overlong_penalty.enabled=true", "actor.overlong_penalty.buffer_len=16"]


def whitened(m: dict) -> bool:
    """Advantages whitened over the batch's tokens: mean 0, unbiased std 1 (`adv/std` is the biased one)."""
    return abs(m["adv/mean"]) < 1e-4 and 0.95 < m["adv/std"] <= 1.0 + 1e-4


CASES = {
    "cispo+gae": (
        ["actor.policy_loss=cispo", "actor.cispo.eps_high=0.01", "actor.adv_estimator=gae", "actor.gamma=0.99",
         "actor.gae_lambda=0.95", "actor.critic.optimizer.lr=1e-3"],
        lambda m: whitened(m) and m["critic/loss"] > 0 and "ppo/ratio_mean" not in m and "critic/grad_norm" in m,
    ),
    "sapo+reinforce_pp+loglinear": (
        ["actor.policy_loss=sapo", "actor.adv_estimator=reinforce_pp", "actor.gamma=0.9",
         "actor.prox_logp_method=loglinear"],
        # SAPO has no clip; the log-linear method skips the proximal pass (its timer measures nothing).
        lambda m: whitened(m) and "ppo/clipped_frac" not in m and m["time/prox_logp"] < 0.1 * m["time/train"],
    ),
    "gmpo+reinforce_pp_baseline+seq_is": (
        ["actor.policy_loss=gmpo", "actor.adv_estimator=reinforce_pp_baseline", "actor.seq_is.enabled=true",
         "actor.seq_is.mode=mask"],
        lambda m: whitened(m) and 0 < m["seq_is/weight_mean"] and "ppo/ratio_mean" not in m,
    ),
    "gpg_preset+entropy_bonus": (
        ["algo=gpg", "actor.gpg_f_norm=1000", "actor.entropy_coef=0.01"],
        # GPG's advantages divided by f_norm = 1000: |A| <= B/1000, where normalisation gives ~0.7.
        lambda m: max(abs(m["adv/max"]), abs(m["adv/min"])) < 0.01 and "ppo/ratio_mean" not in m,
    ),
    "clip_cov+passk+top_entropy+rollout_filter": (
        ["actor.policy_loss=clip_cov", "actor.clip_cov.ratio=0.1", "actor.clip_cov.cov_lb=-1e9",
         "actor.clip_cov.cov_ub=1e9", "actor.adv_estimator=passk", "actor.top_entropy_fraction=0.5",
         "actor.rollout_filter.enabled=true", "actor.rollout_filter.strategy=top_k_abs",
         "actor.rollout_filter.value=2"],
        # pass@k advantages are never negative; 2 of 4 groups kept; 10% of tokens dropped; half by entropy.
        lambda m: m["adv/min"] >= 0 and m["filter/kept_groups"] == 2 and m["filter/kept_seqs"] == 4
        and m["ppo/cov_dropped_frac"] > 0 and 0.3 < m["ppo/top_entropy_kept_frac"] < 0.7,
    ),
    "remax_preset": (
        ["algo=remax"],
        # A random model's greedy answer scores 0 too; its shaped rewards are the overlong penalty alone,
        # which the baseline does not carry, so every advantage is −length/16 ≤ 0, unwhitened.
        lambda m: m["reward/baseline_mean"] == 0 and m["adv/max"] <= 0 and m["adv/min"] < -0.1,
    ),
    "kl_cov+kl_loss": (
        ["actor.policy_loss=kl_cov", "actor.kl_cov.ratio=0.1", "actor.kl_ctl=0.1", "actor.kl_estimator=k3",
         "actor.kl_loss_reduction=seq_mean_token_sum"],
        lambda m: m["ppo/kl_penalised_frac"] > 0 and "ppo/kl_mean" in m and "ppo/clipped_frac" not in m,
    ),
}


# Two cases in the default run (a critic, and log-linear proximal log-probs with a new loss); the other
# five are the slow tier: `python -m pytest -m slow tests/e2e/test_algorithms.py`.
DEFAULT_CASES = ("cispo+gae", "sapo+reinforce_pp+loglinear")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [n if n in DEFAULT_CASES else pytest.param(n, marks=pytest.mark.slow) for n in CASES])
def test_option_runs_through_the_launcher_and_acts(tmp_path, small_config, name):
    overrides, acted = CASES[name]
    proc = launch("areal_lite.launcher.local", small_config(), "total_train_steps=2", *CONTRAST, *overrides,
                  timeout=560)
    rdir = run_dir(tmp_path)
    assert proc.returncode == 0, explain(proc, rdir)
    metrics = read_jsonl(rdir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1]
    for m in metrics:
        bad = {k: v for k, v in m.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, bad
        assert m["adv/std"] > 0, m  # the contrast is there: the option had non-zero advantages to act on
        assert acted(m), {k: v for k, v in m.items() if k.startswith(("adv/", "ppo/", "critic/", "seq_is/",
                                                                          "filter/", "time/"))}


@pytest.mark.parametrize("recipe", ["gsm8k_cispo.yaml", "gsm8k_gpg.yaml", "gsm8k_ppo.yaml"])
def test_new_recipes_plan_on_one_node(tmp_path, recipe):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.run(
        [sys.executable, "-m", "areal_lite.launcher.local", str(ENTRY), "--config",
         str(REPO / "examples" / "math" / recipe), f"cluster.fileroot={tmp_path / 'runs'}", "--dry-run"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 server(s), 1 trainer node(s), 4 rollout worker(s)" in proc.stdout
    assert f"gsm8k-{recipe.removeprefix('gsm8k_').removesuffix('.yaml')}/run1" in proc.stdout
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
