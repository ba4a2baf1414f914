"""Multi-turn math: answer a problem; a wrong answer is told so and may try again.

As AReaL's MultiTurnWorkflow (areal/workflow/multi_turn.py) does: the model answers, the answer is
checked; while it is wrong and attempts remain, a user message says so and asks for another
answer. A correct k-th answer earns `turn_discount ** (k - 1)` (AReaL multiplies a running
discount by `turn_discount` before each retry); no correct answer earns 0. Where we differ: AReaL's
stored reward applies the discount a second time (`reward * discount` after `reward *= discount`),
ours once; the feedback text is our own. The episode is one sequence, so a retry is trained in
the context of the wrong answer and the feedback.

The problem comes from the record: EnvWorkflow passes each record to `reset(options=record)`, and
this environment reads its "question" and "answer" (the fields of areal_lite.data's records), so a
math dataset drives it exactly as it drives the single-turn workflow. The answer check is injected
(`check_fn(reply, answer) -> reward in [0, 1]`) because environments import nothing else of
areal_lite: areal_lite.rollout.multi_turn.math_retry_env supplies areal_lite.reward.math's check.
"""

from __future__ import annotations

from typing import Any, Callable

from areal_lite.envs.base import EnvError, StepResult, TextEnv

FEEDBACK = "Your answer is incorrect. Try again."


class MathRetryEnv(TextEnv):
    """A math problem with `max_attempts` answers; each wrong one is answered with `feedback`."""

    def __init__(
        self,
        *,
        check_fn: Callable[[str, str], float],
        max_attempts: int = 2,
        turn_discount: float = 1.0,
        feedback: str = FEEDBACK,
        prompt_template: str = "{question}",
    ):
        if not callable(check_fn):
            raise EnvError(f"math_retry: check_fn must be callable, got {type(check_fn).__name__}")
        if int(max_attempts) < 1:
            raise EnvError(f"math_retry: max_attempts must be >= 1, got {max_attempts}")
        if not 0.0 < turn_discount <= 1.0:
            raise EnvError(f"math_retry: turn_discount must be in (0, 1], got {turn_discount}")
        if "{question}" not in prompt_template:
            raise EnvError(f"math_retry: prompt_template must contain {{question}}, got {prompt_template!r}")
        self.check_fn = check_fn
        self.max_attempts = int(max_attempts)
        self.turn_discount = float(turn_discount)
        self.feedback = feedback
        self.prompt_template = prompt_template
        self.answer = ""
        self.attempts = 0

    def _reset(self, options: dict) -> tuple[str, dict[str, Any]]:
        missing = [k for k in ("question", "answer") if not isinstance(options.get(k), str)]
        if missing:
            raise EnvError(f"math_retry: reset needs the record's {' and '.join(missing)} in options "
                           f"(got keys {sorted(options)})")
        self.answer = options["answer"]
        self.attempts = 0
        return self.prompt_template.format(question=options["question"]), {}

    def _step(self, action: str) -> StepResult:
        self.attempts += 1
        score = float(self.check_fn(action, self.answer))
        if score > 0.5:
            reward = self.turn_discount ** (self.attempts - 1)
            return "Correct.", reward, True, False, {"success": True, "attempts": self.attempts}
        out_of_attempts = self.attempts >= self.max_attempts
        obs = "Incorrect." if out_of_attempts else self.feedback
        return obs, 0.0, False, out_of_attempts, {"success": False, "attempts": self.attempts}
