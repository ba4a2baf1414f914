"""The environment registry and the TextEnv contract: names, options, errors, seeding, episode end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from areal_lite.envs import (
    BUILTIN_ENVS,
    EnvError,
    EpisodeOverError,
    TextEnv,
    env_options,
    make_env,
    register_env,
    registered_envs,
)
from areal_lite.envs import registry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "agents.md"


@pytest.fixture
def clean_registry():
    saved = dict(registry._registry)
    yield
    registry._registry.clear()
    registry._registry.update(saved)


class Echo(TextEnv):
    """Terminates when the reply is `word`; truncates after `limit` replies."""

    def __init__(self, *, word: str, limit: int = 3):
        self.word, self.limit = word, limit

    def _reset(self, options):
        self.n = 0
        return f"say {self.word} ({int(self.np_random.integers(100))})", {}

    def _step(self, action):
        self.n += 1
        done = action == self.word
        return "ok" if done else "again", float(done), done, not done and self.n >= self.limit, {"success": done}


def test_builtins_are_registered_and_build():
    assert set(BUILTIN_ENVS) <= set(registered_envs())
    for name in BUILTIN_ENVS:
        env = make_env(name)
        assert isinstance(env, TextEnv)
        obs, info = env.reset(seed=0)
        assert isinstance(obs, str) and obs and isinstance(info, dict)


@pytest.mark.parametrize("name,options,message", [
    ("frozen_lake", {},
     "unknown env 'frozen_lake' (did you mean 'frozenlake'?); registered: bandit, frozenlake, sokoban"),
    ("frozenlake", {"sise": 4}, "env 'frozenlake' has no option 'sise' (did you mean 'size'?); its options: size, p,"),
    ("sokoban", {"num_box": 2}, "env 'sokoban' has no option 'num_box' (did you mean 'num_boxes'?)"),
    ("bandit", {"xyz": 1}, "env 'bandit' has no option 'xyz'; its options: lo_arm_name,"),
    ("frozenlake", {"size": 1}, "frozenlake: size must be >= 2, got 1"),
    ("frozenlake", {"map_name": "5x5"}, "frozenlake: unknown map_name '5x5'; Gymnasium's maps: 4x4, 8x8"),
    ("frozenlake", {"desc": ["SFF", "FG"]}, "frozenlake: desc must be equal-length rows"),
    ("sokoban", {"rows": 3}, "sokoban: rows and cols must be >= 4"),
    ("sokoban", {"num_boxes": 9}, "sokoban: num_boxes must be in [1, 5] for a 6x6 room, got 9"),
    ("sokoban", {"search_depth": 11}, "sokoban: search_depth must be in [1, max_steps=10]"),
    ("sokoban", {"max_steps": 0}, "SokobanEnv: max_steps must be >= 1, got 0"),
    ("bandit", {"hi_arm_name": "phoenix"}, "bandit arm names must differ"),
    ("bandit", {"num_pulls": 0}, "bandit num_pulls must be >= 1, got 0"),
])
def test_user_errors_are_one_line_env_errors(name, options, message):
    with pytest.raises(EnvError) as e:
        make_env(name, **options)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_register_your_own(clean_registry):
    register_env("echo", Echo)
    assert "echo" in registered_envs()
    assert env_options("echo") == {"word": registry.inspect.Parameter.empty, "limit": 3}
    env = make_env("echo", word="hi", limit=2)
    env.reset(seed=1)
    assert env.step("no")[1:4] == (0.0, False, False)
    assert env.step("no")[1:4] == (0.0, False, True)  # truncated by its limit
    with pytest.raises(EnvError, match="env 'echo' needs option\\(s\\) word"):
        make_env("echo")
    with pytest.raises(EnvError, match="already registered"):
        register_env("echo", Echo)
    register_env("echo", lambda **kw: Echo(word="x", **kw), replace=True)  # **kwargs: options unchecked here
    assert make_env("echo", limit=5).limit == 5
    with pytest.raises(EnvError, match="must start with a letter"):
        register_env("9lives", Echo)
    with pytest.raises(EnvError, match="must be callable"):
        register_env("thing", "not a factory")
    register_env("broken", lambda: object())
    with pytest.raises(EnvError, match="returned object, which has no reset/step"):
        make_env("broken")


def test_episode_bookkeeping_and_seeding():
    env = Echo(word="hi")
    with pytest.raises(EpisodeOverError, match="before reset"):
        env.step("hi")
    first, _ = env.reset(seed=5)
    assert env.reset(seed=5)[0] == first  # same seed, same episode
    follow = env.reset()[0]  # no seed: the generator continues
    env.reset(seed=5)
    assert env.reset()[0] == follow
    assert env.step("hi")[1:4] == (1.0, True, False)
    with pytest.raises(EpisodeOverError, match="after the episode ended"):
        env.step("hi")


def test_the_docs_example_runs(clean_registry):
    """docs/agents.md's environment, executed as written and registered as the docs say, plays a whole episode."""
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL).group(1)
    namespace = {"__name__": "agents_md"}
    exec(compile(code, str(DOCS), "exec"), namespace)
    register_env("guess_number", namespace["GuessNumberEnv"], replace=True)  # as train_env.py does
    env = make_env("guess_number", high=8, max_guesses=4)
    obs, _ = env.reset(seed=3)
    assert "1 to 8" in obs
    assert env.step("eleven")[4]["format_error"] is True
    lo, hi = 1, 8
    for _ in range(4):  # binary search finds it within log2(8) + 1 guesses
        guess = (lo + hi) // 2
        obs, reward, terminated, truncated, info = env.step(f"<answer>{guess}</answer>")
        if terminated:
            break
        lo, hi = (guess + 1, hi) if "higher" in obs else (lo, guess - 1)
    assert terminated and reward == 1.0 and info["success"] is True
