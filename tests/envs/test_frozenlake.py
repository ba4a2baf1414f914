"""FrozenLake: our wrapper walks exactly as Gymnasium's own FrozenLake for the same seeds and moves."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.envs.toy_text.frozen_lake import generate_random_map

from areal_lite.envs import make_env
from areal_lite.envs.frozenlake import ACTIONS


@pytest.mark.parametrize("size,is_slippery", [(4, True), (4, False), (6, True), (8, False)])
def test_dynamics_equal_gymnasium(size, is_slippery):
    moves = np.random.default_rng(size)
    for seed in range(25):
        env = make_env("frozenlake", size=size, is_slippery=is_slippery, max_steps=100, max_actions_per_turn=1)
        _, info = env.reset(seed=seed)
        assert env.desc == generate_random_map(size=size, p=0.8, seed=info["map_seed"])
        ref = gymnasium.make("FrozenLake-v1", desc=env.desc, is_slippery=is_slippery)
        s, _ = ref.reset(seed=info["dynamics_seed"])
        assert env.state == s
        for _ in range(60):
            a = int(moves.integers(4))
            s, r, term, _, _ = ref.step(a)
            _, reward, terminated, truncated, _ = env.step(f"<answer>{ACTIONS[a]}</answer>")
            assert (env.state, reward, terminated, truncated) == (s, r, term, False)
            if term:
                break
        ref.close()


def test_several_moves_per_reply_equal_one_per_reply():
    one = make_env("frozenlake", max_steps=50, max_actions_per_turn=1)
    five = make_env("frozenlake", max_steps=50, max_actions_per_turn=5)
    plan = ["Right", "Down", "Down", "Right", "Down"] * 2
    for seed in range(20):
        one.reset(seed=seed)
        five.reset(seed=seed)
        states, total, done = [], 0.0, False
        for m in plan[:5]:
            _, r, done, _, _ = one.step(f"<answer>{m}</answer>")
            states.append(one.state)
            total += r
            if done:
                break
        _, r5, done5, _, info = five.step("<answer>" + " || ".join(plan[:5]) + "</answer>")
        assert (five.state, r5, done5) == (states[-1], total, done)
        assert info["moves"] == 5 and info["format_error"] is False


def test_board_text_rewards_and_the_move_budget_on_gymnasiums_4x4_map():
    env = make_env("frozenlake", map_name="4x4", is_slippery=False, max_steps=8)
    obs, _ = env.reset(seed=0)
    assert obs.endswith("P___\n_O_O\n___O\nO__G\nMoves left: 8. Reply with <answer>MOVE || MOVE ...</answer>: "
                        "up to 5 moves, each one of: Left, Down, Right, Up.")
    obs, reward, terminated, truncated, info = env.step("<answer>Down || Down || Right</answer>")
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert obs.startswith("Reward: 0.0\n____\n_O_O\n_P_O\nO__G\nMoves left: 5.")
    obs, reward, terminated, truncated, info = env.step("<answer>Right || Down || Jump || Right</answer>")
    assert (reward, terminated, truncated, info["success"], info["format_error"]) == (1.0, True, False, True, True)
    assert obs == "Reward: 1.0\nSome of your reply was not a valid move (moves: Left, Down, Right, Up).\nSolved!\n" \
                  "____\n_O_O\n___O\nO__√"
    env.reset(seed=0)
    obs, reward, terminated, _, info = env.step("<answer>Right || Down</answer>")  # into the hole at (1, 1)
    assert terminated and reward == 0.0 and not info["success"] and "_X_O" in obs
    env.reset(seed=0)
    env.step("<answer>Left || Left || Left || Left || Left</answer>")  # off the edge: no move
    _, _, terminated, truncated, info = env.step("<answer>Up || Up || Up || Up || Up</answer>")
    assert (terminated, truncated, info["moves"], info["effective_moves"], env.steps) == (False, True, 5, 0, 8)


def test_slippery_flag_reaches_gymnasium():
    env = make_env("frozenlake", map_name="8x8", is_slippery=True, success_rate=0.5)
    env.reset(seed=0)
    probs = [t[0] for t in env.gym_env.P[0][1]]
    assert probs == pytest.approx([0.25, 0.5, 0.25])
