"""RAGEN's two-armed text bandit: a safe arm and a risky one, whose names hint which is which.

Facts from RAGEN (ragen/env/bandit, config/envs.yaml): the arms are called Phoenix (low arm: always
0.1) and Dragon (high arm: 1.0 with probability 0.25, else 0.0, so 0.25 on average); which arm is
listed first is drawn at reset; the reply names one arm in an answer block; one pull per episode.
Under one seed everything is fixed: the order and the risky arm's draw (RAGEN's episodes in a
group share the seed the same way), so a group sees one outcome per arm and the 0.25 mean only
shows across seeds.

Where we differ: `num_pulls` > 1 allows several pulls per episode (RAGEN: 1), and the prompt text
is our own.
"""

from __future__ import annotations

from typing import Any

from areal_lite.envs.actions import answer_format, parse_actions
from areal_lite.envs.base import EnvError, StepResult, TextEnv


class BanditEnv(TextEnv):
    """Pick the arm with the better mean from its name alone; reward is the arm's payout."""

    def __init__(
        self,
        *,
        lo_arm_name: str = "Phoenix",
        hi_arm_name: str = "Dragon",
        lo_arm_score: float = 0.1,
        hi_arm_loscore: float = 0.0,
        hi_arm_hiscore: float = 1.0,
        hi_arm_hiscore_prob: float = 0.25,
        num_pulls: int = 1,
        think: bool = False,
    ):
        names = (lo_arm_name, hi_arm_name)
        if not all(isinstance(n, str) and n.strip() and "||" not in n for n in names):
            raise EnvError(f"bandit arm names must be non-empty strings without '||', got {names}")
        if lo_arm_name.lower() == hi_arm_name.lower():
            raise EnvError(f"bandit arm names must differ, got {lo_arm_name!r} twice")
        if not 0.0 <= hi_arm_hiscore_prob <= 1.0:
            raise EnvError(f"bandit hi_arm_hiscore_prob must be in [0, 1], got {hi_arm_hiscore_prob}")
        if int(num_pulls) < 1:
            raise EnvError(f"bandit num_pulls must be >= 1, got {num_pulls}")
        self.lo_arm_name, self.hi_arm_name = lo_arm_name.strip(), hi_arm_name.strip()
        self.lo_arm_score = float(lo_arm_score)
        self.hi_arm_loscore, self.hi_arm_hiscore = float(hi_arm_loscore), float(hi_arm_hiscore)
        self.hi_arm_hiscore_prob = float(hi_arm_hiscore_prob)
        self.num_pulls = int(num_pulls)
        self.think = think
        self.arms: tuple[str, str] = (self.lo_arm_name, self.hi_arm_name)
        self.pulls = 0

    def _reset(self, options: dict) -> tuple[str, dict[str, Any]]:
        lo, hi = self.lo_arm_name, self.hi_arm_name
        self.arms = (lo, hi) if self.np_random.random() < 0.5 else (hi, lo)
        self.pulls = 0
        a, b = self.arms
        pulls = "one pull" if self.num_pulls == 1 else f"{self.num_pulls} pulls"
        obs = (
            f"You are playing a bandit game with two arms, {a} and {b}. Each arm pays out from its own "
            f"reward distribution, and an arm's name hints at how it behaves. You have {pulls}; aim for "
            f"the highest total reward. Which arm pays more on average?\n"
            f"{answer_format([a, b], think=self.think)}"
        )
        return obs, {"arms": list(self.arms)}

    def _step(self, action: str) -> StepResult:
        parsed = parse_actions(action, self.arms, max_actions=1, think=self.think)
        if parsed.format_error:
            obs = f"No arm named in your reply.\n{answer_format(list(self.arms), think=self.think)}"
            return obs, 0.0, False, False, {"format_error": True, "success": False}
        arm = parsed.actions[0]
        reward = self.arm_reward(arm)
        self.pulls += 1
        left = self.num_pulls - self.pulls
        obs = f"{arm}: {reward} points" + (f"\nPulls left: {left}." if left else "")
        info = {"format_error": False, "success": arm == self.hi_arm_name, "arm": arm}
        return obs, reward, left == 0, False, info

    def arm_reward(self, arm: str) -> float:
        """One payout of `arm`, drawn with the episode's generator."""
        if arm == self.lo_arm_name:
            return self.lo_arm_score
        hit = self.np_random.random() < self.hi_arm_hiscore_prob
        return self.hi_arm_hiscore if hit else self.hi_arm_loscore
