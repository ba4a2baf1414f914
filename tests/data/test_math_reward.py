"""Math answer extraction and exact comparison, against hand-written cases and real GSM8K solutions."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import re
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

import pytest

from areal_lite.reward.math import answers_match, extract_answer, math_reward, normalize_answer, parse_number

# (completion, expected extracted answer)
EXTRACT_CASES = [
    ("She makes 9 * 2 = $18.\n#### 18", "18"),
    ("#### 5\nwait, no\n#### 7", "7"),  # the last marker wins
    ("#### 5\n####", "5"),  # an empty last marker is skipped
    ("#### 1,000 dollars\nDone.", "1,000 dollars"),  # only the marker's own line
    ("so \\boxed{42} and \\boxed{43}", "43"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
    ("x = \\boxed{\\frac{\\sqrt{2}}{2}}.", "\\frac{\\sqrt{2}}{2}"),
    ("\\boxed{7} then \\boxed{unclosed", "7"),  # a box that never closes is not an answer
    ("\\boxed 5", "5"),
    ("#### 3\n\\boxed{4}", "4"),  # whichever marker comes last
    ("\\boxed{4}\n#### 3", "3"),
    ("#### Step 1: add\n2+16=18\n\\boxed{18}", "18"),  # a markdown heading does not hide the box
    ("##### 5\nso 7", "7"),  # five hashes are not the marker
    ("\\boxed{} \\boxed{ }", None),
    ("16-3-4=9 eggs.", "9"),  # last number; "-4" here is a minus, not a sign
    ("The answer is -3.", "-3"),
    ("it is 3/4.", "3/4"),
    ("in all 1,234,567 people", "1,234,567"),
    ("room H2O has 5 cups", "5"),
    ("no number at all", None),
    ("", None),
    (None, None),
    (12, None),
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# (prediction, gold, match?)
MATCH_CASES = [
    ("1,000", "1000", True),
    ("1{,}000", "1000", True),
    ("1,00", "100", False),  # not a thousands grouping
    ("$18", "18", True),
    ("\\$18.00", "18", True),
    ("$18$", "18", True),  # inline math, not currency
    ("18 dollars", "18", True),
    ("18 dollars.", "18", True),
    ("18cm", "18", True),
    ("5x", "5", False),  # one attached letter reads as a variable, not a unit
    ("18%", "18", True),  # a percent sign is a unit: dropped, not scaled
    ("18\\%", "18", True),
    ("0.18", "18", False),
    ("18.0", "18", True),
    ("18.50", "18.5", True),
    ("18.05", "18.5", False),
    ("+18", "18", True),
    ("-5", "-5", True),
    ("-5", "5", False),
    ("-$5", "-5", True),
    ("$-5", "-5", True),
    ("3/4", "0.75", True),
    ("\\frac{3}{4}", "0.75", True),
    ("\\dfrac{3}{4}", "3/4", True),
    ("-\\frac{3}{4}", "-0.75", True),
    ("1/3", "0.333", False),  # exact rationals only: no float tolerance
    ("0.333333333333333333", "1/3", False),
    ("1/0", "0", False),
    ("\\boxed{\\text{18 apples}}", "18", True),
    ("x = 7", "7", True),
    ("\\(12\\)", "12", True),
    ("eighteen", "18", False),
    ("1 8", "18", False),  # spacing inside a number is not ignored
    ("18 or 19", "18", False),
    ("17, 18, 19", "18", False),
    ("A", "A", True),  # non-numeric answers compare as normalised strings
    ("B", "A", False),
]


@pytest.mark.parametrize("pred,gold,expected", MATCH_CASES)
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected
    assert math_reward(f"Some steps.\n#### {pred}", gold) == float(expected)


def test_parse_number_values():
    assert parse_number("$1,234.50") == Fraction(2469, 2)
    assert parse_number("-\\frac{6}{8}") == Fraction(-3, 4)
    assert parse_number(".5") == Fraction(1, 2)
    assert parse_number("12 apples") == 12
    assert parse_number("-$-5") is None
    assert parse_number("3x+1") is None
    assert normalize_answer("  \\boxed{\\left( 5 \\right)}. ") == "( 5 )"


@pytest.mark.parametrize(
    "completion,answer",
    [(None, "1"), ("#### 1", None), ("#### 1", ""), (b"#### 1", "1"), (["#### 1"], "1"), ("#### 1", object())],
)
def test_garbage_scores_zero_without_raising(completion, answer):
    assert math_reward(completion, answer) == 0.0


def test_numeric_gold_types_and_gsm8k_style_gold():
    assert math_reward("#### 18", 18) == 1.0
    assert math_reward("#### 2.5", 2.5) == 1.0
    assert math_reward("#### 18", True) == 0.0  # a bool is not a number here
    # A full reference solution as the gold answer: its "####" value is the answer.
    assert math_reward("... so \\boxed{1000}", "5 * 200 = <<5*200=1000>>1000\n#### 1,000") == 1.0


def test_reward_is_binary_and_picklable():
    fn = pickle.loads(pickle.dumps(math_reward))
    assert fn is math_reward
    assert {fn("#### 4", "4"), fn("#### 5", "4")} == {1.0, 0.0}


@pytest.mark.timeout(60)
def test_reward_runs_in_a_spawned_process_pool():
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        got = list(pool.map(math_reward, ["#### 1,000", "\\boxed{3/4}", "nothing"], ["1000", "0.75", "1"]))
    assert got == [1.0, 1.0, 0.0]


# --------------------------------------------------------------------------- real GSM8K answers


def _gsm8k(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_gsm8k_test_solution_scores_against_its_own_answer(gsm8k_dir):
    rows = _gsm8k(gsm8k_dir / "test.jsonl")
    assert len(rows) == 1319
    for row in rows:
        gold = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert math_reward(row["answer"], gold) == 1.0, row["answer"]
        # A wrong number in the same place scores 0.
        wrong = str(int(gold) + 1)
        perturbed = re.sub(r"####.*$", f"#### {wrong}", row["answer"])
        assert math_reward(perturbed, gold) == 0.0, perturbed


def test_gsm8k_answers_with_commas_and_negatives(gsm8k_dir):
    rows = _gsm8k(gsm8k_dir / "train.jsonl")
    finals = [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    with_commas = [f for f in finals if "," in f]
    negatives = [f for f in finals if f.startswith("-")]
    assert len(with_commas) == 79 and len(negatives) == 3  # counted in the shared copy of GSM8K
    for f in with_commas + negatives:
        plain = f.replace(",", "")
        assert math_reward(f"#### {f}", plain) == 1.0
        assert math_reward(f"The total is ${f}.", plain) == 1.0  # last-number fallback keeps the grouping
        assert math_reward(f"#### {f}", str(int(plain) * 10)) == 0.0


# --------------------------------------------------------------------------- math-verify path


def test_math_verify_decides_symbolic_answers():
    pytest.importorskip("math_verify")
    assert math_reward("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}") == 1.0
    assert math_reward("\\boxed{x + 1}", "1 + x") == 1.0
    assert math_reward("\\boxed{\\sqrt{3}}", "\\sqrt{2}") == 0.0
    # Its float rounding must not make an inexact decimal equal an irrational.
    assert math_reward("#### 1.414214", "\\sqrt{2}") == 0.0
    # Plain numbers never reach it: 0.3333333 is not 1/3 even though it rounds to it.
    assert math_reward("#### 0.3333333", "1/3") == 0.0
