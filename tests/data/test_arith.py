"""The synthetic arithmetic task: determinism, disjoint splits, correct answers, varied lengths."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from areal_lite.data import ArithSpec, DatasetError, arith_records_from_options, generate_arith_records
from areal_lite.reward.math import math_reward

# An independent reading of the question text (written out here, not imported from the generator).
PHRASES = {
    "gets": "+", "buys": "+", "finds": "+", "wins": "+",
    "loses": "-", "sells": "-", "gives away": "-", "uses": "-",
}
QUESTION = re.compile(r"^(\w+) has (\d+) (\w+), (.+)\. How many (\w+) now\?$")


def read_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    """(start, [(op, operand), ...]) parsed from the words of a question."""
    m = QUESTION.match(question)
    assert m and m.group(3) == m.group(5), question
    steps = []
    for phrase in m.group(4).split(", "):
        if phrase == "doubles them":
            steps.append(("*", 2))
        elif phrase == "triples them":
            steps.append(("*", 3))
        elif phrase == "keeps half":
            steps.append(("/", 2))
        else:
            verb, number = phrase.rsplit(" ", 1)
            steps.append((PHRASES[verb], int(number)))
    return int(m.group(2)), steps


def evaluate(start: int, steps: list[tuple[str, int]]) -> list[int]:
    values = [start]
    for op, x in steps:
        v = values[-1]
        if op == "/":
            assert v % 2 == 0, "halving must be exact"
        values.append({"+": v + x, "-": v - x, "*": v * x, "/": v // 2}[op])
    return values


def test_golden_first_records():
    # Pins the generator: a change here changes every run that used synthetic:arith.
    assert generate_arith_records(2, split="train", seed=0) == [
        {"id": "arith-train-0", "question": "Pam has 1 eggs, doubles them, loses 2. How many eggs now?",
         "answer": "0", "solution": "doubles them: 1*2=2\nloses 2: 2-2=0\n#### 0"},
        {"id": "arith-train-1", "question": "Gus has 9 beads, doubles them. How many beads now?",
         "answer": "18", "solution": "doubles them: 9*2=18\n#### 18"},
    ]


def test_deterministic_per_seed_and_split():
    a = generate_arith_records(300, split="train", seed=5)
    assert a == generate_arith_records(300, split="train", seed=5)
    assert a[:100] == generate_arith_records(100, split="train", seed=5)  # a prefix, whatever the count
    assert a != generate_arith_records(300, split="train", seed=6)
    assert generate_arith_records(50, split="valid", seed=5) == generate_arith_records(50, split="test", seed=5)
    assert len({r["question"] for r in a}) == 300  # no duplicates inside a split


def test_splits_never_share_a_problem():
    train = generate_arith_records(3000, split="train", seed=0)
    test = generate_arith_records(300, split="test", seed=0)
    test_other_seed = generate_arith_records(300, split="test", seed=1)
    assert {r["question"] for r in train}.isdisjoint({r["question"] for r in test + test_other_seed})
    # Stronger: no arithmetic chain (start and operations) appears in both, whatever the wording.
    chains = lambda rs: {(s, tuple(st)) for s, st in map(read_question, (r["question"] for r in rs))}  # noqa: E731
    assert chains(train).isdisjoint(chains(test) | chains(test_other_seed))


def test_every_answer_is_correct():
    spec = ArithSpec()
    for r in generate_arith_records(2000, split="train", seed=1) + generate_arith_records(200, split="test", seed=1):
        start, steps = read_question(r["question"])
        values = evaluate(start, steps)
        assert r["answer"] == str(values[-1])
        assert all(0 <= v <= spec.max_value for v in values)
        # Each solution line restates its phrase of the question and does that step of the chain,
        # then "#### answer".
        lines = r["solution"].split("\n")
        assert lines[-1] == f"#### {values[-1]}"
        phrases = r["question"].split(". How many")[0].split(", ")[1:]
        expected = [f"{p}: {values[i]}{op}{x}={values[i + 1]}" for i, (p, (op, x)) in enumerate(zip(phrases, steps))]
        assert lines[:-1] == expected
        assert math_reward(r["solution"], r["answer"]) == 1.0


def test_lengths_vary_with_steps_and_stay_short():
    records = generate_arith_records(2000, split="train", seed=2)
    steps = Counter(len(r["solution"].split("\n")) - 1 for r in records)
    assert sorted(steps) == [1, 2, 3, 4]
    assert min(steps.values()) > 0.2 * len(records)  # uniform over 1-4 steps: about 25% each
    sol_lens = [len(r["solution"].encode()) for r in records]
    assert min(sol_lens) <= 25 and max(sol_lens) >= 70  # "gets 4: 3+4=7\n#### 7" vs four lines of work
    # Each step adds a line of at least "uses 1: a+b=c\n" (14 bytes): mean length rises with the step count.
    mean_len = {n: sum(len(r["solution"]) for r in records if r["solution"].count("\n") == n) / steps[n]
                for n in steps}
    assert all(mean_len[n + 1] - mean_len[n] >= 14 for n in (1, 2, 3)), mean_len
    total = [len((r["question"] + "\n" + r["solution"]).encode()) for r in records]
    assert max(total) <= 200


def test_difficulty_knobs():
    easy = ArithSpec(min_steps=1, max_steps=1, max_start=9, max_operand=5, max_value=20, ops="+-")
    for r in generate_arith_records(200, split="train", spec=easy):
        start, steps = read_question(r["question"])
        assert len(steps) == 1 and start <= 9 and steps[0][0] in "+-" and steps[0][1] <= 5
        assert 0 <= int(r["answer"]) <= 14
    hard = ArithSpec(min_steps=4, max_steps=4, max_value=999, max_start=200, max_operand=99)
    answers = [int(r["answer"]) for r in generate_arith_records(200, split="train", spec=hard)]
    assert max(answers) > 99


def test_options_and_errors():
    records = arith_records_from_options({"num_records": 10, "seed": 2, "max_steps": 2}, "train")
    assert records == generate_arith_records(10, split="train", seed=2, spec=ArithSpec(max_steps=2))
    assert len(arith_records_from_options({}, "test")) == 200
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        generate_arith_records(5, split="dev")
    with pytest.raises(DatasetError, match="min_steps <= max_steps"):
        generate_arith_records(5, spec=ArithSpec(min_steps=3, max_steps=2))
    with pytest.raises(DatasetError, match="ops"):
        generate_arith_records(5, spec=ArithSpec(ops="*"))
    with pytest.raises(DatasetError, match="distinct test problems"):
        # 1 step from 1 or 2 with +1: at most a handful of chains exist.
        generate_arith_records(50, split="test", spec=ArithSpec(max_steps=1, max_start=2, max_operand=1, ops="+"))
    with pytest.raises(DatasetError, match="synthetic:arith"):
        arith_records_from_options({"max_steps": "four"}, "train")
