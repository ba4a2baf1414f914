"""The environment of docs/agents.md ("Write an environment"): find a hidden number from hints.

    python -m areal_lite.launcher.local examples/agents/train_env.py --config examples/agents/guess_number_cpu.yaml

train_env.py registers it as "guess_number" in main(), which the trainer and the rollout workers
both run.
"""

from __future__ import annotations

import re

from areal_lite.envs import EnvError, TextEnv

ANSWER = re.compile(r"<answer>\s*(\d+)\s*</answer>")


class GuessNumberEnv(TextEnv):
    """Find a hidden integer in [1, high]; each wrong guess is answered "higher" or "lower"."""

    def __init__(self, *, high: int = 16, max_guesses: int = 5):
        if int(high) < 2 or int(max_guesses) < 1:
            raise EnvError(f"guess_number: high must be >= 2 and max_guesses >= 1, got {high} and {max_guesses}")
        self.high, self.max_guesses = int(high), int(max_guesses)

    def _reset(self, options):
        self.target = int(self.np_random.integers(1, self.high + 1))
        self.lo, self.hi, self.guesses = 1, self.high, 0
        return f"I picked a number from 1 to {self.high}. Guess it: reply with <answer>N</answer>.", {}

    def _step(self, reply):
        match = ANSWER.search(reply)
        if match is None:  # no guess: the workflow adds its format penalty
            return "Reply with <answer>N</answer>.", 0.0, False, False, {"format_error": True, "success": False}
        self.guesses += 1
        guess = int(match.group(1))
        if guess == self.target:
            return "Correct!", 1.0, True, False, {"success": True}
        if guess < self.target:
            self.lo = max(self.lo, guess + 1)
        else:
            self.hi = min(self.hi, guess - 1)
        hint = "higher" if guess < self.target else "lower"
        out_of_guesses = self.guesses >= self.max_guesses
        return f"{guess} is wrong: go {hint}.", 0.0, False, out_of_guesses, {"success": False}

    def demo_reply(self, rng, *, optimal_prob: float) -> str:
        """The warm start's scripted player: bisect what the hints left, or guess at random."""
        guess = (self.lo + self.hi) // 2 if rng.random() < optimal_prob else int(rng.integers(1, self.high + 1))
        return f"<answer>{guess}</answer>"
