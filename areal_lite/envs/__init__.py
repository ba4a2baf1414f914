"""Text environments for multi-turn agent RL: the interface, a registry, and RAGEN's three tasks.

    from areal_lite.envs import make_env
    env = make_env("frozenlake", size=4, is_slippery=False)
    obs, info = env.reset(seed=3)
    obs, reward, terminated, truncated, info = env.step("<answer>Right || Down</answer>")

Built in: "bandit" (bandit.py), "frozenlake" (frozenlake.py, on Gymnasium), "sokoban" (sokoban.py).
Write your own as a `TextEnv` subclass and `register_env` it (docs/agents.md). This package imports
nothing else of areal_lite; the multi-turn workflow (areal_lite/rollout/multi_turn.py) runs it.
"""

from areal_lite.envs.base import EnvError, EpisodeOverError, StepResult, TextEnv
from areal_lite.envs.registry import (
    BUILTIN_ENVS,
    check_env_options,
    env_factory,
    env_options,
    make_env,
    register_env,
    registered_envs,
)

__all__ = [
    "BUILTIN_ENVS",
    "EnvError",
    "EpisodeOverError",
    "StepResult",
    "TextEnv",
    "check_env_options",
    "env_factory",
    "env_options",
    "make_env",
    "register_env",
    "registered_envs",
]
