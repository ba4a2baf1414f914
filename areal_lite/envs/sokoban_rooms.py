"""Sokoban rooms: the push rules, a breadth-first solver, and a generator of solvable rooms.

The generator plays backwards, as gym-sokoban and DeepMind's Boxoban did: carve a room by a random
walk, put every box on its target, then search the moves of a player who walks and *pulls* boxes.
Any state that search reaches in d moves can be solved forwards in at most d moves (undo the pulls
as pushes), so a search limited to `max_depth` only yields rooms solvable within `max_depth` moves.
Among the states it reaches with no box on a target, the one whose boxes lie farthest (summed
Manhattan distance) from their targets is kept, ties drawn at random (gym-sokoban's score also
weighs the number of box switches; one box, RAGEN's default, has none).

Positions are (row, col). A room is a frozen dataclass so that it can be hashed and compared.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

Pos = tuple[int, int]
MOVES: dict[str, Pos] = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}
# gym-sokoban's rewards (RAGEN uses them unchanged).
STEP_PENALTY = -0.1
BOX_ON_TARGET = 1.0
BOX_OFF_TARGET = -1.0
ALL_ON_TARGET = 10.0


@dataclass(frozen=True)
class Room:
    """A Sokoban position: everything outside `floor` is wall."""

    shape: tuple[int, int]
    floor: frozenset[Pos]
    targets: frozenset[Pos]
    boxes: frozenset[Pos]
    player: Pos

    @property
    def solved(self) -> bool:
        return self.boxes == self.targets

    @property
    def boxes_on_target(self) -> int:
        return len(self.boxes & self.targets)


def _add(p: Pos, d: Pos) -> Pos:
    return p[0] + d[0], p[1] + d[1]


def push(room: Room, move: str) -> tuple[Room, bool]:
    """The room after `move` (walk, or push the box ahead if the square behind it is free) and
    whether anything moved; a blocked move leaves the room as it was."""
    d = MOVES[move]
    ahead = _add(room.player, d)
    if ahead not in room.floor:
        return room, False
    if ahead in room.boxes:
        beyond = _add(ahead, d)
        if beyond not in room.floor or beyond in room.boxes:
            return room, False
        return replace(room, player=ahead, boxes=(room.boxes - {ahead}) | {beyond}), True
    return replace(room, player=ahead), True


def move_reward(before: Room, after: Room) -> float:
    """gym-sokoban's reward of one move: −0.1, ±1 per box pushed onto / off a target, +10 when solved."""
    reward = STEP_PENALTY
    delta = after.boxes_on_target - before.boxes_on_target
    if delta > 0:
        reward += BOX_ON_TARGET
    elif delta < 0:
        reward += BOX_OFF_TARGET
    if after.solved:
        reward += ALL_ON_TARGET
    return reward


def solve(room: Room, max_depth: int) -> list[str] | None:
    """A shortest list of moves that solves `room` within `max_depth` moves, or None."""
    start = (room.player, room.boxes)
    if room.solved:
        return []
    parent: dict[tuple, tuple | None] = {start: None}
    frontier = [start]
    for _ in range(max_depth):
        nxt = []
        for state in frontier:
            here = replace(room, player=state[0], boxes=state[1])
            for name in MOVES:
                after, moved = push(here, name)
                key = (after.player, after.boxes)
                if not moved or key in parent:
                    continue
                parent[key] = (state, name)
                if after.solved:
                    return _path(parent, key)
                nxt.append(key)
        frontier = nxt
    return None


def _path(parent: dict, key: tuple) -> list[str]:
    moves = []
    while parent[key] is not None:
        key, name = parent[key]
        moves.append(name)
    return moves[::-1]


# ---------------------------------------------------------------------------------- generation


def carve_floor(rng: np.random.Generator, shape: tuple[int, int], walk_steps: int) -> frozenset[Pos]:
    """A connected floor made by a random walk inside the border walls, widened sideways at random."""
    rows, cols = shape
    dirs = list(MOVES.values())
    pos = (int(rng.integers(1, rows - 1)), int(rng.integers(1, cols - 1)))
    d = dirs[int(rng.integers(4))]
    floor = {pos}
    for _ in range(walk_steps):
        if rng.random() < 0.35:
            d = dirs[int(rng.integers(4))]
        pos = (min(max(pos[0] + d[0], 1), rows - 2), min(max(pos[1] + d[1], 1), cols - 2))
        floor.add(pos)
        for side in ((d[1], d[0]), (-d[1], -d[0])):  # the squares left and right of the walk
            q = _add(pos, side)
            if rng.random() < 0.5 and 1 <= q[0] <= rows - 2 and 1 <= q[1] <= cols - 2:
                floor.add(q)
    return frozenset(floor)


def _reverse_moves(floor: frozenset[Pos], player: Pos, boxes: tuple[Pos, ...]) -> Iterator[tuple[Pos, tuple[Pos, ...]]]:
    """States one backwards move away: step to a free square, pulling the box behind or not."""
    occupied = set(boxes)
    for d in MOVES.values():
        to = _add(player, d)
        if to not in floor or to in occupied:
            continue
        yield to, boxes
        behind = (player[0] - d[0], player[1] - d[1])
        if behind in occupied:
            yield to, tuple(player if b == behind else b for b in boxes)


def reverse_search(floor: frozenset[Pos], targets: tuple[Pos, ...], player: Pos, max_depth: int) -> dict:
    """Every (player, boxes) reachable backwards from the solved room within `max_depth` moves.

    Boxes are kept in target order, so box i started on targets[i]."""
    start = (player, tuple(targets))
    seen = {start}
    frontier = [start]
    for _ in range(max_depth):
        nxt = []
        for p, boxes in frontier:
            for state in _reverse_moves(floor, p, boxes):
                if state not in seen:
                    seen.add(state)
                    nxt.append(state)
        frontier = nxt
    return seen


def displacement(boxes: tuple[Pos, ...], targets: tuple[Pos, ...]) -> int:
    """Summed Manhattan distance of each box from the target it started on."""
    return sum(abs(b[0] - t[0]) + abs(b[1] - t[1]) for b, t in zip(boxes, targets))


def generate_room(
    rng: np.random.Generator,
    shape: tuple[int, int],
    num_boxes: int,
    max_depth: int,
    walk_steps: int | None = None,
    tries: int = 1000,
) -> Room:
    """A room solvable in at most `max_depth` moves with no box starting on a target."""
    walk_steps = int(1.7 * (shape[0] + shape[1])) if walk_steps is None else walk_steps
    for _ in range(tries):
        floor = carve_floor(rng, shape, walk_steps)
        if len(floor) < num_boxes + 2:
            continue
        cells = sorted(floor)
        picks = rng.choice(len(cells), size=num_boxes + 1, replace=False)
        targets = tuple(cells[i] for i in picks[:num_boxes])
        player = cells[picks[num_boxes]]
        states = reverse_search(floor, targets, player, max_depth)
        scored = [(displacement(b, targets), p, b) for p, b in states if not set(b) & set(targets)]
        if not scored:
            continue
        best = max(s for s, _, _ in scored)
        choices = sorted((p, b) for s, p, b in scored if s == best)
        p, b = choices[int(rng.integers(len(choices)))]
        return Room(shape, floor, frozenset(targets), frozenset(b), p)
    raise RuntimeError(f"no solvable {shape[0]}x{shape[1]} room with {num_boxes} box(es) in {tries} tries")


def render(room: Room, symbols: dict[str, str]) -> str:
    """The room as text with `symbols` for wall, floor, target, box, box_on_target, player, player_on_target."""
    rows, cols = room.shape
    lines = []
    for r in range(rows):
        line = []
        for c in range(cols):
            p = (r, c)
            on_target = p in room.targets
            if p not in room.floor:
                line.append(symbols["wall"])
            elif p == room.player:
                line.append(symbols["player_on_target" if on_target else "player"])
            elif p in room.boxes:
                line.append(symbols["box_on_target" if on_target else "box"])
            else:
                line.append(symbols["target" if on_target else "floor"])
        lines.append("".join(line))
    return "\n".join(lines)
