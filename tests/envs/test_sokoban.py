"""Sokoban: push rules and gym-sokoban's rewards on hand-built rooms, the solver's optimal lengths,
and the generator: every room it emits (many seeds, several sizes) is solvable within the budget."""

from __future__ import annotations

import pytest

from areal_lite.envs import make_env
from areal_lite.envs.sokoban import SYMBOLS
from areal_lite.envs.sokoban_rooms import Room, push, render, solve


def room_from(text: str) -> Room:
    """A room from its drawing: # wall, _ floor, O target, X box, √ box on target, P player, S player on target."""
    lines = text.strip().splitlines()
    floor, targets, boxes, player = set(), set(), set(), None
    for r, line in enumerate(lines):
        for c, ch in enumerate(line):
            if ch == "#":
                continue
            floor.add((r, c))
            if ch in "O√S":
                targets.add((r, c))
            if ch in "X√":
                boxes.add((r, c))
            if ch in "PS":
                player = (r, c)
    return Room((len(lines), len(lines[0])), frozenset(floor), frozenset(targets), frozenset(boxes), player)


def draw(room: Room) -> str:
    return render(room, SYMBOLS)


CORRIDOR = """
#######
#P_X_O#
#######
"""


def test_rendering_round_trips():
    text = "######\n#_O__#\n#SX__#\n#_√X_#\n######"
    assert draw(room_from(text)) == text


@pytest.mark.parametrize("start,move,after,moved", [
    ("#####\n#P_X#\n#####", "Right", "#####\n#_PX#\n#####", True),      # walk
    ("#####\n#_PX#\n#####", "Right", "#####\n#_PX#\n#####", False),     # box against a wall
    ("######\n#PXX_#\n######", "Right", "######\n#PXX_#\n######", False),  # two boxes in a row
    ("######\n#PX__#\n######", "Right", "######\n#_PX_#\n######", True),   # push
    ("#####\n#P__#\n#####", "Up", "#####\n#P__#\n#####", False),         # wall
    ("######\n#PXO_#\n######", "Right", "######\n#_P√_#\n######", True),   # onto a target
    ("######\n#_P√_#\n######", "Right", "######\n#__SX#\n######", True),   # off it again
])
def test_push_rules(start, move, after, moved):
    room, did = push(room_from(start), move)
    assert (draw(room), did) == (after, moved)


def test_gym_sokoban_rewards_through_the_env():
    env = make_env("sokoban", max_steps=10, max_actions_per_turn=5)
    env.reset(seed=0)
    env.room = room_from("#######\n#PX_O_#\n#__XO_#\n#######")  # two boxes, two targets
    _, reward, terminated, _, _ = env.step("<answer>Right || Right</answer>")  # walk is −0.1, push +1
    assert reward == pytest.approx(-0.1 + (-0.1 + 1.0)) and not terminated
    _, reward, _, _, _ = env.step("<answer>Right</answer>")  # pushed off the target: −1
    assert reward == pytest.approx(-0.1 - 1.0)
    env.room = room_from("#######\n#___√_#\n#PXO__#\n#######")
    _, reward, terminated, truncated, info = env.step("<answer>Right</answer>")  # last box: +1 +10
    assert reward == pytest.approx(-0.1 + 1.0 + 10.0) and terminated and not truncated and info["success"]


@pytest.mark.parametrize("text,optimal", [
    (CORRIDOR, ["Right", "Right", "Right"]),
    ("######\n#_O__#\n#_X__#\n#_P__#\n######", ["Up"]),
    ("######\n#____#\n#_XO_#\n#___P#\n######", ["Left", "Left", "Left", "Up", "Right"]),
    ("######\n#√___#\n#P___#\n######", []),
])
def test_solver_finds_the_shortest_solution(text, optimal):
    room = room_from(text)
    path = solve(room, max_depth=20)
    assert len(path) == len(optimal)
    for move in path:  # and it really solves it
        room, _ = push(room, move)
    assert room.solved


def test_solver_gives_up_when_unsolvable_or_too_deep():
    assert solve(room_from("#####\n#X_O#\n#P__#\n#####"), max_depth=30) is None  # box stuck in a corner
    assert solve(room_from(CORRIDOR), max_depth=2) is None


@pytest.mark.parametrize("rows,cols,boxes,max_steps", [
    (5, 5, 1, 10), (6, 6, 1, 10), (7, 7, 1, 10), (6, 8, 2, 12), (8, 8, 2, 10), (10, 10, 3, 8),
])
def test_every_generated_room_is_solvable_within_the_budget(rows, cols, boxes, max_steps):
    env = make_env("sokoban", rows=rows, cols=cols, num_boxes=boxes, max_steps=max_steps, max_actions_per_turn=1)
    seen = set()
    for seed in range(60):
        env.reset(seed=seed)
        room = env.room
        seen.add(room)
        inside = {(r, c) for r in range(1, rows - 1) for c in range(1, cols - 1)}
        assert room.floor <= inside and room.boxes <= room.floor and room.player in room.floor
        assert len(room.boxes) == len(room.targets) == boxes
        assert not room.boxes & room.targets and room.player not in room.boxes
        path = solve(room, max_depth=max_steps)
        assert path is not None and 1 <= len(path) <= max_steps, (seed, draw(room))
        for i, move in enumerate(path):  # replayed through the environment's own step
            _, _, terminated, truncated, info = env.step(f"<answer>{move}</answer>")
            assert terminated is (i == len(path) - 1) and not truncated
        assert info["success"]
    assert len(seen) >= 50  # seeds give different rooms


def test_seeded_rooms_repeat_and_the_budget_truncates():
    a, b = make_env("sokoban"), make_env("sokoban")
    assert a.reset(seed=11)[0] == b.reset(seed=11)[0] and a.room == b.room
    assert a.reset(seed=12)[0] != b.reset(seed=11)[0]
    a.room = room_from(CORRIDOR)
    _, reward, _, truncated, info = a.step("<answer>Up || Down || Up || Down || Up</answer>")  # all into walls
    assert (reward, truncated, info["effective_moves"]) == (pytest.approx(-0.5), False, 0)
    obs, _, terminated, truncated, info = a.step("<answer>Right || Right || Up || Up || Up || Right</answer>")
    assert (terminated, truncated, info["moves"], a.steps) == (False, True, 5, 10)
    assert obs.endswith("The episode is over.\n#######\n#__PXO#\n#######")
