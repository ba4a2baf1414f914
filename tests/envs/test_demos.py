"""Scripted players for warm starts: format-correct replies, optimal play that really is optimal
(checked against Gymnasium's own FrozenLake and our Sokoban rules), random play that is uniform."""

from __future__ import annotations

import collections

import gymnasium
import numpy as np
import pytest

from areal_lite.envs import EnvError, TextEnv, make_env
from areal_lite.envs.actions import parse_actions
from areal_lite.envs.demos import demo_reply, lake_distances, play_demo
from areal_lite.envs.frozenlake import ACTIONS


def test_lake_distances_on_gymnasiums_4x4_map_by_hand():
    desc = ["SFFF", "FHFH", "FFFH", "HFFG"]
    dist = lake_distances(desc)
    expected = {(3, 3): 0, (3, 2): 1, (2, 2): 2, (3, 1): 2, (2, 1): 3, (1, 2): 3, (2, 0): 4, (0, 2): 4,
                (1, 0): 5, (0, 1): 5, (0, 3): 5, (0, 0): 6}
    assert dist == expected  # holes (and the tiles only holes lead from) are absent


def test_optimal_frozenlake_moves_walk_gymnasiums_lake_to_the_goal_in_the_fewest_moves():
    rng = np.random.default_rng(0)
    for seed in range(60):
        env = make_env("frozenlake", is_slippery=False, max_steps=100, max_actions_per_turn=1)
        _, info = env.reset(seed=seed)
        shortest = lake_distances(env.desc)[(0, 0)]
        ref = gymnasium.make("FrozenLake-v1", desc=env.desc, is_slippery=False)
        ref.reset(seed=info["dynamics_seed"])
        for n in range(1, shortest + 1):
            move = parse_actions(demo_reply(env, rng, optimal_prob=1.0), ACTIONS).actions[0]
            _, reward, terminated, _, _ = ref.step(ACTIONS.index(move))  # Gymnasium's own step
            env.step(f"<answer>{move}</answer>")
            assert terminated == (n == shortest) and reward == float(n == shortest)
        ref.close()


@pytest.mark.parametrize("name,options", [("frozenlake", {"is_slippery": False}), ("sokoban", {})])
def test_optimal_play_solves_every_episode_and_random_play_rarely(name, options):
    rng = np.random.default_rng(1)
    wins = {p: [play_demo(make_env(name, **options), s, rng, optimal_prob=p, max_turns=10)["success"]
                for s in range(80)] for p in (0.0, 1.0)}
    assert all(wins[1.0]) and np.mean(wins[0.0]) < 0.3


@pytest.mark.parametrize("name,options", [("frozenlake", {}), ("sokoban", {"max_actions_per_turn": 3}),
                                          ("bandit", {}), ("frozenlake", {"think": True})])
def test_every_reply_is_format_correct_and_grid_replies_use_their_whole_allowance(name, options):
    rng = np.random.default_rng(2)
    for seed in range(40):
        ep = play_demo(make_env(name, **options), seed, rng, optimal_prob=0.5, max_turns=5)
        assert len(ep["observations"]) == len(ep["replies"]) >= 1
        env = make_env(name, **options)
        env.reset(seed=seed)
        for reply in ep["replies"]:
            parsed = parse_actions(reply, getattr(env, "action_names", None) or env.arms,
                                   max_actions=getattr(env, "max_actions_per_turn", 1), think=env.think)
            assert not parsed.format_error, reply
            if name != "bandit":  # all of it, unless a planned hole or goal (a solved room) comes first
                left = min(env.max_actions_per_turn, env.max_steps - env.steps)
                assert len(parsed.actions) == left or len(parsed.actions) < left and _ends_early(env, parsed.actions)
            if env.step(reply)[2]:
                break


def _ends_early(env, moves) -> bool:
    """Whether the planned moves end at a hole/goal (FrozenLake) or solve the room (Sokoban)."""
    from areal_lite.envs.demos import _lake_step
    from areal_lite.envs.sokoban_rooms import push

    if hasattr(env, "desc"):
        pos = divmod(env.state, len(env.desc[0]))
        for m in moves:
            pos = _lake_step(env.desc, pos, m)
        return env.desc[pos[0]][pos[1]] in "HG"
    room = env.room
    for m in moves:
        room, _ = push(room, m)
    return room.solved


def test_random_play_is_uniform_and_optimal_bandit_play_picks_the_better_arm():
    rng = np.random.default_rng(3)
    env = make_env("frozenlake", desc=["SFFFF", "FFFFF", "FFFFF", "FFFFF", "FFFFG"], max_steps=100)
    env.reset(seed=0)  # no hole, and the goal 8 moves away: no reply ends early
    counts = collections.Counter(m for _ in range(2000) for m in parse_actions(
        demo_reply(env, rng, optimal_prob=0.0), ACTIONS, max_actions=5).actions)
    assert sum(counts.values()) == 10_000 and all(abs(counts[a] / 10_000 - 0.25) < 0.02 for a in ACTIONS)
    bandit = make_env("bandit")
    picks = collections.Counter()
    for seed in range(400):
        bandit.reset(seed=seed)
        picks[demo_reply(bandit, rng, optimal_prob=0.0)] += 1
        assert demo_reply(bandit, rng, optimal_prob=1.0) == "<answer>Dragon</answer>"
    assert abs(picks["<answer>Dragon</answer>"] / 400 - 0.5) < 0.08


def test_bad_arguments():
    class Custom(TextEnv):
        def _reset(self, options):
            return "hi", {}

        def _step(self, action):
            return "", 0.0, True, False, {}

    rng = np.random.default_rng(0)
    with pytest.raises(EnvError, match="no scripted player for Custom"):
        demo_reply(Custom(), rng, optimal_prob=0.5)
    with pytest.raises(EnvError, match=r"optimal_prob must be in \[0, 1\]"):
        demo_reply(make_env("bandit"), rng, optimal_prob=1.5)
