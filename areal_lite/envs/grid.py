"""What the grid puzzles (FrozenLake, Sokoban) share: several moves per reply, a move budget, the text.

A reply may name up to `max_actions_per_turn` moves ("<answer>Left || Up</answer>"); they run in
order until the episode ends or the budget of `max_steps` moves per episode is spent (then the
episode is truncated). The turn's reward is the sum of its moves' rewards. As RAGEN does
(es_manager.py): the valid moves of a partly wrong reply still run, and the reply counts as a
format error; a reply with no valid move leaves the board as it was.

`show_rules=False` leaves the task's description and legend out of the first observation (the
board and the reply format remain): half the prompt's tokens, for small models that cannot read
the description anyway.
"""

from __future__ import annotations

import abc
from typing import Any

from areal_lite.envs.actions import answer_format, parse_actions
from areal_lite.envs.base import EnvError, StepResult, TextEnv


class GridActionEnv(TextEnv):
    """A board game driven by named moves. Subclasses set `action_names` and implement the hooks."""

    action_names: tuple[str, ...] = ()

    def __init__(self, *, max_steps: int, max_actions_per_turn: int, think: bool, show_rules: bool = True):
        name = type(self).__name__
        if int(max_steps) < 1:
            raise EnvError(f"{name}: max_steps must be >= 1, got {max_steps}")
        if int(max_actions_per_turn) < 1:
            raise EnvError(f"{name}: max_actions_per_turn must be >= 1, got {max_actions_per_turn}")
        self.max_steps = int(max_steps)
        self.max_actions_per_turn = int(max_actions_per_turn)
        self.think = bool(think)
        self.show_rules = bool(show_rules)
        self.steps = 0

    # ------------------------------------------------------------------ hooks

    @abc.abstractmethod
    def _new_board(self, options: dict) -> dict[str, Any]:
        """Set up a new board with `self.np_random`; returns the reset info."""

    @abc.abstractmethod
    def _move(self, action: str) -> tuple[float, bool, dict[str, Any]]:
        """Apply one move: (reward, terminated, info)."""

    @abc.abstractmethod
    def render(self) -> str:
        """The board as text, one line per row."""

    @abc.abstractmethod
    def solved(self) -> bool:
        """Whether the task is done successfully."""

    @abc.abstractmethod
    def rules(self) -> str:
        """The task's description and the legend of the board's symbols."""

    # ------------------------------------------------------------------ TextEnv

    def _reset(self, options: dict) -> tuple[str, dict[str, Any]]:
        self.steps = 0
        info = self._new_board(options)
        board = self._board_text()
        return (f"{self.rules()}\n\n{board}" if self.show_rules else board), info

    def _step(self, action: str) -> StepResult:
        parsed = parse_actions(action, self.action_names, max_actions=self.max_actions_per_turn, think=self.think)
        reward, terminated, moved = 0.0, False, 0
        for name in parsed.actions[: self.max_steps - self.steps]:
            r, terminated, info = self._move(name)
            reward += r
            self.steps += 1
            moved += bool(info.get("moved", True))
            if terminated:
                break
        truncated = not terminated and self.steps >= self.max_steps
        lines = [f"Reward: {round(reward, 6)}"]
        if parsed.format_error:
            lines.append(f"Some of your reply was not a valid move (moves: {', '.join(self.action_names)}).")
        if terminated or truncated:
            lines.append("Solved!" if self.solved() else "The episode is over.")
            lines.append(self.render())
        else:
            lines.append(self._board_text())
        info = {"format_error": parsed.format_error, "success": self.solved(), "moves": len(parsed.actions),
                "effective_moves": moved}
        return "\n".join(lines), reward, terminated, truncated, info

    def _board_text(self) -> str:
        left = self.max_steps - self.steps
        fmt = answer_format(self.action_names, max_actions=self.max_actions_per_turn, think=self.think)
        return f"{self.render()}\nMoves left: {left}. {fmt}"
