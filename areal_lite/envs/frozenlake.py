"""FrozenLake as text, on Gymnasium's own implementation (maps, slipping, rewards are Gymnasium's).

Facts from RAGEN (ragen/env/frozen_lake, config/envs.yaml, config/base.yaml): a random 4×4 map per
seed with 80% frozen tiles, slippery ice, moves named Left / Down / Right / Up, reward 1 on
reaching the goal, at most 10 moves per episode and 5 per reply; the board is drawn with
P (player), _ (ice), O (hole), G (goal), X (player in a hole), √ (player on the goal).

Where we differ: maps come from Gymnasium's `generate_random_map`, whose start is the top-left and
goal the bottom-right corner (RAGEN draws both at random); `map_name` ("4x4", "8x8") and `desc`
give Gymnasium's fixed maps or your own; the text is our own.

The map and the dynamics are seeded separately from the episode's generator (`map_seed`,
`dynamics_seed` in the reset info): `gymnasium.make("FrozenLake-v1", desc=env.desc, ...)` reset
with `dynamics_seed` and given the same moves walks the same path (tests/envs/test_frozenlake.py).
"""

from __future__ import annotations

from typing import Any, Sequence

from areal_lite.envs.base import EnvError
from areal_lite.envs.grid import GridActionEnv

# Gymnasium's action ids: 0 left, 1 down, 2 right, 3 up.
ACTIONS = ("Left", "Down", "Right", "Up")
TILE = {"S": "_", "F": "_", "H": "O", "G": "G"}
PLAYER = {"S": "P", "F": "P", "H": "X", "G": "√"}
LEGEND = "P: you, _: ice, O: hole, G: goal, X: you in a hole, √: you on the goal"


class FrozenLakeEnv(GridActionEnv):
    """Walk from the start to the goal across a frozen lake without falling into a hole."""

    action_names = ACTIONS

    def __init__(
        self,
        *,
        size: int = 4,
        p: float = 0.8,
        is_slippery: bool = True,
        success_rate: float = 1.0 / 3.0,
        map_name: str | None = None,
        desc: Sequence[str] | None = None,
        max_steps: int = 10,
        max_actions_per_turn: int = 5,
        think: bool = False,
        show_rules: bool = True,
    ):
        super().__init__(max_steps=max_steps, max_actions_per_turn=max_actions_per_turn, think=think,
                         show_rules=show_rules)
        from gymnasium.envs.toy_text.frozen_lake import MAPS

        if map_name is not None and desc is not None:
            raise EnvError("frozenlake: give map_name or desc, not both")
        if map_name is not None and map_name not in MAPS:
            raise EnvError(f"frozenlake: unknown map_name {map_name!r}; Gymnasium's maps: {', '.join(MAPS)}")
        if desc is not None:
            desc = [str(row) for row in desc]
            if len({len(r) for r in desc}) != 1 or "".join(desc).count("S") != 1 or "G" not in "".join(desc) \
                    or set("".join(desc)) - set("SFHG"):
                raise EnvError(f"frozenlake: desc must be equal-length rows of S/F/H/G with one S and a G, got {desc}")
        if int(size) < 2:
            raise EnvError(f"frozenlake: size must be >= 2, got {size}")
        if not 0.0 < p <= 1.0:
            raise EnvError(f"frozenlake: p (the chance of ice) must be in (0, 1], got {p}")
        if not 0.0 < success_rate <= 1.0:
            raise EnvError(f"frozenlake: success_rate must be in (0, 1], got {success_rate}")
        self.size, self.p = int(size), float(p)
        self.is_slippery, self.success_rate = bool(is_slippery), float(success_rate)
        self.fixed_desc = list(MAPS[map_name]) if map_name else desc
        self.desc: list[str] = []
        self.gym_env = None

    def _new_board(self, options: dict) -> dict[str, Any]:
        from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv as GymFrozenLake, generate_random_map

        map_seed, dynamics_seed = (int(x) for x in self.np_random.integers(2**31, size=2))
        self.desc = self.fixed_desc or generate_random_map(size=self.size, p=self.p, seed=map_seed)
        self.gym_env = GymFrozenLake(desc=self.desc, is_slippery=self.is_slippery, success_rate=self.success_rate)
        self.gym_env.reset(seed=dynamics_seed)
        return {"map_seed": map_seed, "dynamics_seed": dynamics_seed}

    @property
    def state(self) -> int:
        """The player's tile as Gymnasium numbers it (row * ncol + col)."""
        return int(self.gym_env.s)

    def _tile(self, s: int) -> str:
        ncol = len(self.desc[0])
        return self.desc[s // ncol][s % ncol]

    def _move(self, action: str) -> tuple[float, bool, dict[str, Any]]:
        before = self.state
        _, reward, terminated, _, _ = self.gym_env.step(ACTIONS.index(action))
        return float(reward), bool(terminated), {"moved": self.state != before}

    def solved(self) -> bool:
        return self._tile(self.state) == "G"

    def render(self) -> str:
        ncol = len(self.desc[0])
        rows = [[TILE[c] for c in row] for row in self.desc]
        r, c = divmod(self.state, ncol)
        rows[r][c] = PLAYER[self.desc[r][c]]
        return "\n".join("".join(row) for row in rows)

    def rules(self) -> str:
        slip = " The ice is slippery: a move may take you sideways instead." if self.is_slippery else ""
        return (
            "You are crossing a frozen lake. Reach the goal G without stepping into a hole O; the episode "
            f"ends at the goal or in a hole.{slip} Moving off the edge leaves you in place.\n"
            f"Symbols: {LEGEND}."
        )
