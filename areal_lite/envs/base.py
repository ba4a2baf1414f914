"""The text environment interface: Gymnasium's reset/step with strings for observations and actions.

    obs, info = env.reset(seed=7)                              # the first user message
    obs, reward, terminated, truncated, info = env.step(text)  # the model's whole reply

Gymnasium's conventions, where they fit:
- `reset(seed=s)` re-seeds the environment's generator, so the same seed and the same actions give
  the same episode; `reset()` without a seed continues the generator (a new episode, not a replay).
- `terminated`: the task ended by its own rules (goal reached, hole, last pull); `truncated`: an
  outside limit ended it (the environment's step budget). A step after either is an error.
- `info` is a dict of plain values. Keys the multi-turn workflow reads: `format_error` (bool: the
  reply could not be parsed into an action; the workflow adds its format penalty) and `success`
  (bool: the task was solved). Anything else is the environment's own.
The reward of `step` is the task's reward only; format penalties are the workflow's business.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

Observation = str
StepResult = tuple[str, float, bool, bool, dict[str, Any]]


class EnvError(ValueError):
    """An environment name or option the user got wrong; the message is one line."""

    exit_code = 2


class EpisodeOverError(RuntimeError):
    """`step` was called after the episode terminated or was truncated (call `reset` first)."""


class TextEnv(abc.ABC):
    """A text environment for an LLM agent. Subclasses implement `_reset` and `_step`.

    The public `reset`/`step` add the bookkeeping every environment shares: the seeded generator
    `self.np_random` (numpy, as Gymnasium's), the step counter and the refusal to step a finished
    episode.
    """

    np_random: Any = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode; returns (observation, info)."""
        if seed is not None or self.np_random is None:
            # Same construction as gymnasium.utils.seeding.np_random: PCG64 from a SeedSequence.
            self.np_random = np.random.default_rng(seed)
        self._done = False
        return self._reset(options or {})

    def step(self, action: str) -> StepResult:
        """Act with the model's reply; returns (observation, reward, terminated, truncated, info)."""
        if getattr(self, "_done", True):
            raise EpisodeOverError(f"{type(self).__name__}.step called before reset() or after the episode ended")
        obs, reward, terminated, truncated, info = self._step(action)
        self._done = bool(terminated or truncated)
        return obs, float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        """Release resources (nothing by default)."""

    @abc.abstractmethod
    def _reset(self, options: dict) -> tuple[str, dict[str, Any]]:
        """A new episode drawn with `self.np_random`."""

    @abc.abstractmethod
    def _step(self, action: str) -> StepResult:
        """One reply of the model."""
