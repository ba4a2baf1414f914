"""Scripted players for warm-start demonstrations: replies in the right format, partly optimal.

A tiny model trained from scratch never writes `<answer>Right</answer>` by chance, so RL has nothing
to reinforce. A warm start by SFT on demonstration episodes teaches it the reply format; how good
the demonstrated moves are decides what RL is left to learn. `demo_reply` plays one reply:

    reply = demo_reply(env, rng, optimal_prob=0.5)   # env mid-episode, after reset()

Each action is the optimal one with probability `optimal_prob` and uniformly random otherwise
(so `optimal_prob=0` demonstrates the format with random play). Optimal means: for the bandit, the
arm with the better mean; for FrozenLake, a move along a shortest hole-free path to the goal,
ties drawn at random, planned on the intended (non-slipping) moves; for Sokoban, the first move of
a shortest solution within the moves left (`sokoban_rooms.solve`), or a random move when none is
left. A grid reply uses its whole allowance (`max_actions_per_turn` moves, fewer when the episode's
budget or a planned hole or goal ends it sooner), one fixed shape that a small model learns quickly;
the moves after the first are planned from where the earlier ones would lead. `play_demo` plays a
whole episode.

Your own environment takes part by defining `demo_reply(self, rng, optimal_prob) -> str`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from areal_lite.envs.bandit import BanditEnv
from areal_lite.envs.base import EnvError, TextEnv
from areal_lite.envs.frozenlake import ACTIONS as LAKE_ACTIONS, FrozenLakeEnv
from areal_lite.envs.sokoban import SokobanEnv
from areal_lite.envs.sokoban_rooms import MOVES, push, solve

# Gymnasium's FrozenLake moves as (row, col) steps, in its action order.
_LAKE_STEP = {"Left": (0, -1), "Down": (1, 0), "Right": (0, 1), "Up": (-1, 0)}


def demo_reply(env: TextEnv, rng: np.random.Generator, *, optimal_prob: float) -> str:
    """One reply of the scripted player for `env`'s current state, in the env's answer format."""
    if not 0.0 <= optimal_prob <= 1.0:
        raise EnvError(f"demo optimal_prob must be in [0, 1], got {optimal_prob}")
    if callable(getattr(env, "demo_reply", None)):  # an environment's own scripted player
        return env.demo_reply(rng, optimal_prob=optimal_prob)
    if isinstance(env, BanditEnv):
        arm = env.hi_arm_name if rng.random() < optimal_prob else env.arms[int(rng.integers(2))]
        actions = [arm]
    elif isinstance(env, FrozenLakeEnv):
        actions = _lake_moves(env, rng, optimal_prob)
    elif isinstance(env, SokobanEnv):
        actions = _sokoban_moves(env, rng, optimal_prob)
    else:
        raise EnvError(f"no scripted player for {type(env).__name__} (built in: bandit, frozenlake, sokoban; "
                       f"an environment of your own may define demo_reply(rng, optimal_prob))")
    think = "<think></think>" if getattr(env, "think", False) else ""
    return f"{think}<answer>{' || '.join(actions)}</answer>"


def play_demo(env: TextEnv, seed: int, rng: np.random.Generator, *, optimal_prob: float,
              max_turns: int) -> dict[str, Any]:
    """One scripted episode: `observations` (the first, then one after each reply but the last),
    `replies`, the summed `reward` and `success`."""
    obs, _ = env.reset(seed=seed)
    observations, replies, reward, info = [obs], [], 0.0, {}
    for turn in range(max_turns):
        replies.append(demo_reply(env, rng, optimal_prob=optimal_prob))
        obs, r, terminated, truncated, info = env.step(replies[-1])
        reward += r
        if terminated or truncated or turn == max_turns - 1:
            break
        observations.append(obs)
    return {"observations": observations, "replies": replies, "reward": reward,
            "success": bool(info.get("success", False))}


def _num_moves(env) -> int:
    return max(1, min(env.max_actions_per_turn, env.max_steps - env.steps))


def _lake_moves(env: FrozenLakeEnv, rng: np.random.Generator, optimal_prob: float) -> list[str]:
    dist = lake_distances(env.desc)
    ncol = len(env.desc[0])
    pos = divmod(env.state, ncol)
    moves = []
    for _ in range(_num_moves(env)):
        here = dist.get(pos)
        best = [m for m in LAKE_ACTIONS if here and dist.get(_lake_step(env.desc, pos, m)) == here - 1]
        pool = best if best and rng.random() < optimal_prob else LAKE_ACTIONS
        move = pool[int(rng.integers(len(pool)))]
        moves.append(move)
        pos = _lake_step(env.desc, pos, move)
        if env.desc[pos[0]][pos[1]] in "HG":  # the episode would end here: later moves never run
            break
    return moves


def lake_distances(desc: list[str]) -> dict[tuple[int, int], int]:
    """Moves from each tile to the goal along hole-free paths (breadth-first from the goal;
    tiles that cannot reach it are absent). Moves are the intended ones, without slipping."""
    goal = next((r, c) for r, row in enumerate(desc) for c, ch in enumerate(row) if ch == "G")
    dist = {goal: 0}
    queue = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in _LAKE_STEP.values():
            prev = (r - dr, c - dc)  # a tile whose move (dr, dc) lands here
            if prev in dist or not (0 <= prev[0] < len(desc) and 0 <= prev[1] < len(desc[0])):
                continue
            if desc[prev[0]][prev[1]] in "HG":
                continue
            dist[prev] = dist[(r, c)] + 1
            queue.append(prev)
    return dist


def _lake_step(desc: list[str], pos: tuple[int, int], move: str) -> tuple[int, int]:
    """Where `move` leads from `pos` without slipping (an edge keeps the player in place)."""
    dr, dc = _LAKE_STEP[move]
    r = min(max(pos[0] + dr, 0), len(desc) - 1)
    c = min(max(pos[1] + dc, 0), len(desc[0]) - 1)
    return r, c


def _sokoban_moves(env: SokobanEnv, rng: np.random.Generator, optimal_prob: float) -> list[str]:
    room, names = env.room, list(MOVES)
    moves = []
    for k in range(_num_moves(env)):
        plan = solve(room, env.max_steps - env.steps - k) if rng.random() < optimal_prob else None
        move = plan[0] if plan else names[int(rng.integers(len(names)))]
        moves.append(move)
        room, _ = push(room, move)
        if room.solved:
            break
    return moves
