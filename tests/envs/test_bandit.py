"""RAGEN's bandit: arm names, payouts (0.1 vs 1.0 w.p. 0.25), determinism under a seed, the parser."""

from __future__ import annotations

import numpy as np
import pytest

from areal_lite.envs import make_env


def pull(env, seed, arm):
    env.reset(seed=seed)
    return env.step(f"<answer>{arm}</answer>")


def test_each_seed_fixes_order_and_draw_as_a_naive_replay_does():
    env = make_env("bandit")
    for seed in range(50):
        obs, info = env.reset(seed=seed)
        rng = np.random.default_rng(seed)  # the reference: one draw for the order, one for the payout
        order = ["Phoenix", "Dragon"] if rng.random() < 0.5 else ["Dragon", "Phoenix"]
        payout = 1.0 if rng.random() < 0.25 else 0.0
        assert info["arms"] == order and obs.index(order[0]) < obs.index(order[1])
        _, reward, terminated, truncated, info = env.step("<answer>Dragon</answer>")
        assert (reward, terminated, truncated, info["success"]) == (payout, True, False, True)
        assert pull(env, seed, "dragon")[1] == payout  # names match case-insensitively
        assert pull(env, seed, "Phoenix")[1:3] == (0.1, True)


def test_payout_distributions_over_seeds():
    env = make_env("bandit")
    n = 4000
    dragon = np.array([pull(env, s, "Dragon")[1] for s in range(n)])
    assert set(np.unique(dragon)) == {0.0, 1.0}
    # Binomial(4000, 0.25): sd of the mean 0.0068; 4 sd either side.
    assert abs(dragon.mean() - 0.25) < 0.028
    firsts = [env.reset(seed=s)[1]["arms"][0] for s in range(n)]
    assert abs(firsts.count("Dragon") / n - 0.5) < 0.032


def test_format_error_costs_no_pull_and_the_text_says_so():
    env = make_env("bandit", lo_arm_name="Trader", hi_arm_name="Librarian", num_pulls=2)
    obs, _ = env.reset(seed=0)
    assert "Trader" in obs and "Librarian" in obs and "2 pulls" in obs
    obs, reward, terminated, truncated, info = env.step("I pick the Librarian")
    assert (reward, terminated, truncated, info["format_error"]) == (0.0, False, False, True)
    assert obs.startswith("No arm named in your reply.")
    obs, reward, terminated, _, info = env.step("<answer>Trader</answer>")
    assert obs == "Trader: 0.1 points\nPulls left: 1." and reward == 0.1 and not terminated
    assert info == {"format_error": False, "success": False, "arm": "Trader"}
    assert env.step("<answer>Trader</answer>")[2] is True


@pytest.mark.parametrize("think,reply,ok", [
    (True, "<think>dragons hoard gold</think><answer>Dragon</answer>", True),
    (True, "<answer>Dragon</answer>", False),
    (False, "<answer>Dragon</answer>", True),
])
def test_think_format(think, reply, ok):
    env = make_env("bandit", think=think)
    env.reset(seed=1)
    assert env.step(reply)[4]["format_error"] is (not ok)
