"""math_retry: a wrong answer gets feedback and another attempt (AReaL's multi-turn math), checked by
areal_lite.reward.math; rewards by hand, Gymnasium's ending rules, option errors."""

from __future__ import annotations

import pytest

from areal_lite.envs import EnvError, EpisodeOverError, make_env, register_env, registry
from areal_lite.envs.math_retry import FEEDBACK, MathRetryEnv
from areal_lite.rollout.multi_turn import math_retry_env

PROBLEM = {"id": "p1", "question": "Eve has 8 coins and gets 5. How many coins now?", "answer": "13"}


@pytest.fixture(scope="module", autouse=True)
def registered():
    saved = dict(registry._registry)
    register_env("math_retry", math_retry_env, replace=True)
    yield
    registry._registry.clear()  # other tests see only the built-in environments
    registry._registry.update(saved)


def play(replies, **options):
    env = make_env("math_retry", **options)
    obs, _ = env.reset(seed=0, options=PROBLEM)
    steps = [env.step(r) for r in replies]
    return obs, steps


def test_right_first_time():
    obs, [(text, reward, terminated, truncated, info)] = play(["8+5=13\n#### 13"])
    assert obs == PROBLEM["question"]
    assert (text, reward, terminated, truncated) == ("Correct.", 1.0, True, False)
    assert info == {"success": True, "attempts": 1}


@pytest.mark.parametrize("discount,attempts,expected", [(1.0, 2, 1.0), (0.9, 2, 0.9), (0.5, 3, 0.25)])
def test_a_later_right_answer_is_discounted_per_retry(discount, attempts, expected):
    replies = ["#### 12"] * (attempts - 1) + ["The answer is \\boxed{13}."]
    _, steps = play(replies, max_attempts=3, turn_discount=discount)
    for text, reward, terminated, truncated, info in steps[:-1]:
        assert (text, reward, terminated, truncated, info["success"]) == (FEEDBACK, 0.0, False, False, False)
    text, reward, terminated, truncated, info = steps[-1]
    assert reward == pytest.approx(expected) and terminated and not truncated and info["attempts"] == attempts


def test_out_of_attempts_is_a_truncation_with_no_reward():
    _, steps = play(["#### 12", "no idea"], max_attempts=2, turn_discount=0.9)
    assert [s[:4] for s in steps] == [(FEEDBACK, 0.0, False, False), ("Incorrect.", 0.0, False, True)]
    env = make_env("math_retry", max_attempts=1)
    env.reset(options=PROBLEM)
    assert env.step("#### 7")[3] is True
    with pytest.raises(EpisodeOverError):
        env.step("#### 13")


def test_the_check_is_areal_lites_math_reward():
    # math_reward's extraction: the #### marker or \boxed{} wins over earlier numbers; else the last number.
    for reply, right in [("13", True), ("5 + 8 = 13 coins", True), ("#### 13.0", True), ("\\boxed{13}", True),
                         ("13, no wait, 14", False), ("#### 13 then 12", False), ("", False)]:
        env = make_env("math_retry", max_attempts=1)
        env.reset(options=PROBLEM)
        assert env.step(reply)[4]["success"] is right, reply


def test_custom_prompt_and_feedback():
    env = MathRetryEnv(check_fn=lambda reply, answer: float(reply == answer), feedback="Nope.",
                       prompt_template="Q: {question}\nA:")
    obs, _ = env.reset(options=PROBLEM)
    assert obs == f"Q: {PROBLEM['question']}\nA:"
    assert env.step("12")[0] == "Nope." and env.step("13")[1] == 1.0


@pytest.mark.parametrize("options,message", [
    ({"max_attempts": 0}, "max_attempts must be >= 1"),
    ({"turn_discount": 0.0}, r"turn_discount must be in \(0, 1\]"),
    ({"prompt_template": "Solve it."}, "prompt_template must contain {question}"),
    ({"check_fn": "math"}, "check_fn must be callable"),
    ({"max_attempt": 2}, "has no option 'max_attempt' \\(did you mean 'max_attempts'\\?\\)"),
])
def test_bad_options(options, message):
    with pytest.raises(EnvError, match=message):
        make_env("math_retry", **options)


def test_reset_needs_the_records_question_and_answer():
    env = make_env("math_retry")
    with pytest.raises(EnvError, match="reset needs the record's answer in options"):
        env.reset(options={"question": "1+1?"})
    with pytest.raises(EnvError, match="reset needs the record's question and answer"):
        env.reset(seed=3)
