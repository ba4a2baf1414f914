"""The answer parser against RAGEN's: the expected columns were produced by running RAGEN's own
`ContextManager._parse_response` and `EnvStateManager._extract_map_valid_actions` (RAGEN-AI/RAGEN at
5eb79b8, ragen/llm_agent/) on each reply, with "format error" = RAGEN's penalty condition
`len(valid) != len(actions) or not valid`."""

from __future__ import annotations

import pytest

from areal_lite.envs.actions import answer_format, answer_text, parse_actions

GRID = ("Left", "Down", "Right", "Up")
ARMS = ("Phoenix", "Dragon")

# reply, names, think, max_actions → valid actions, format error
RAGEN_CASES = [
    ("<answer>Left || Up</answer>", GRID, False, 5, ["Left", "Up"], False),
    ("<answer> left||UP ||  </answer>", GRID, False, 5, ["Left", "Up"], False),
    ("I think <answer>Right</answer> and <answer>Up</answer>", GRID, False, 5, ["Right"], False),
    ("<answer>Left || Jump || Up</answer>", GRID, False, 5, ["Left", "Up"], True),
    ("<answer>Jump</answer>", GRID, False, 5, [], True),
    ("<answer></answer>", GRID, False, 5, [], True),
    ("Left", GRID, False, 5, [], True),
    ("<answer>Left || Left || Left || Left || Left || Left || Up</answer>", GRID, False, 5, ["Left"] * 5, False),
    ("<answer>Left || Jump || Up</answer>", GRID, False, 2, ["Left"], True),
    ("<think>go</think> <answer>Down</answer>", GRID, True, 5, ["Down"], False),
    ("<answer>Down</answer>", GRID, True, 5, [], True),
    ("<think>go</think>\n\n<answer><answer>Down</answer></answer>", GRID, True, 5, ["Down"], False),
    ("<answer>Up, Down</answer>", GRID, False, 5, [], True),
    ("<answer>Dragon</answer>", ARMS, False, 1, ["Dragon"], False),
    ("<answer> phoenix </answer>", ARMS, False, 1, ["Phoenix"], False),
    ("<answer>Phoenix || Dragon</answer>", ARMS, False, 1, ["Phoenix"], False),
    ("<answer>The Dragon</answer>", ARMS, False, 1, [], True),
]


@pytest.mark.parametrize("reply,names,think,max_actions,valid,error", RAGEN_CASES)
def test_parse_actions_matches_ragen(reply, names, think, max_actions, valid, error):
    parsed = parse_actions(reply, names, max_actions=max_actions, think=think)
    assert list(parsed.actions) == valid
    assert parsed.format_error is error


def test_answer_text_and_found():
    assert answer_text("x <answer> a || b </answer> y") == "a || b"
    assert answer_text("<answer>a</answer>", think=True) is None
    assert parse_actions("no block", GRID).found is False
    assert parse_actions("<answer>Jump</answer>", GRID).invalid == ("Jump",)


def test_answer_format_lists_every_choice():
    assert answer_format(ARMS) == "Reply with <answer>CHOICE</answer>, CHOICE being one of: Phoenix, Dragon."
    line = answer_format(GRID, max_actions=5, think=True)
    assert line.startswith("Reply with <think>...</think><answer>MOVE || MOVE ...</answer>: up to 5 moves")
    assert line.endswith("one of: Left, Down, Right, Up.")
