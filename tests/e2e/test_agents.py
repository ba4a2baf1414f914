"""Agent tasks end to end: examples/agents/train_env.py through the real local launcher (embedded
server, rollout worker running EnvWorkflow, FSDP trainer), and every agent recipe's env section.

The multi-turn run checks, in the real training step, that the loss's gradient with respect to the
log-probs of the tokens the model did not write (prompt, chat template, observations) is exactly 0
(`check/env_token_grad_max`, measured by a hook on the trainer's log-prob tensor) while model tokens
do get one, and that no trained token is more than η versions old. A brief SFT warm start on
scripted episodes makes some replies valid, so rewards differ within groups and the gradient is
not vacuous; the second run finds the warm-started model cached and does not train it again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from areal_lite.config import ConfigError, load_config
from areal_lite.envs import make_env, register_env, registry
from tests.e2e.conftest import explain, launch, read_jsonl

REPO = Path(__file__).resolve().parents[2]
AGENTS = REPO / "examples" / "agents"
ENTRY = AGENTS / "train_env.py"
ETA = 1


@pytest.fixture(autouse=True)
def restored_registry():
    """Tests here register guess_number as train_env.py does; later tests see only the built-ins."""
    saved = dict(registry._registry)
    yield
    registry._registry.clear()
    registry._registry.update(saved)

# FrozenLake, shrunk to seconds per step: 4 seeds x 4 episodes, 3 turns, a 480-episode warm start (60 SFT
# steps of 8: fewer steps left every reply unparseable, so every group had equal rewards and no gradient).
SMALL = [
    "total_train_steps=3", "train_dataset.batch_size=4", "gconfig.n_samples=4", "rollout.max_head_offpolicyness=1",
    "train_dataset.synthetic.max_turns=3", "train_dataset.synthetic.eval_num_seeds=8", "evaluator.freq_steps=3",
    "train_dataset.synthetic.warm_start.episodes=480", "train_dataset.synthetic.warm_start.epochs=1",
    "train_dataset.synthetic.warm_start.batch_size=8",
    "rollout.heartbeat_s=0.5", "rollout.worker_timeout_s=3.0",
]


def env_section(config: Path):
    sys.path.insert(0, str(AGENTS))
    try:
        from episodes import env_settings
        from guess_number import GuessNumberEnv
    finally:
        sys.path.remove(str(AGENTS))
    register_env("guess_number", GuessNumberEnv, replace=True)  # as train_env.py's main() does
    return env_settings(load_config(["--config", str(config)]))


@pytest.mark.parametrize("config", sorted(AGENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_agent_recipe_has_a_valid_env_section(config):
    env = env_section(config)
    obs, _ = make_env(env.name, **env.options).reset(seed=env.seed_start)
    assert obs and env.max_turns >= 1 and env.eval_num_seeds > 0


@pytest.mark.timeout(600)
def test_frozenlake_episodes_train_only_model_tokens(tmp_path):
    model = tmp_path / "model"
    runs = tmp_path / "runs" / "agents"

    def run(*extra: str):
        return launch("areal_lite.launcher.local", AGENTS / "frozenlake_cpu.yaml", f"cluster.fileroot={tmp_path / 'runs'}",
                      f"actor.path={model}", *SMALL, *extra, entry=ENTRY, timeout=550)

    proc = run()
    assert proc.returncode == 0, explain(proc, runs / "frozenlake-cpu")
    assert "preparing the model" in proc.stdout
    marker = json.loads((model / "areal_lite_env_warm_start.json").read_text())
    assert marker["recipe"]["env"] == "frozenlake" and marker["recipe"]["episodes"] == 480
    metrics = read_jsonl(runs / "frozenlake-cpu" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        assert m["check/env_token_grad_max"] == 0.0, m  # environment tokens: no gradient at all
        assert m["staleness/max"] <= ETA and m["env/turns"] >= 1
    assert max(m["check/model_token_grad_nonzero"] for m in metrics) > 0  # the check saw real gradients
    assert max(m["env/turns"] for m in metrics) > 1  # multi-turn episodes were trained
    assert metrics[0]["time/warm_start"] > 0 and "eval/success_initial" in metrics[0] and "eval/success" in metrics[-1]

    # Same path and recipe: the cached warm start is reused (its marker unchanged), not trained again.
    again = run("trial_name=again", "total_train_steps=1", "evaluator.freq_steps=0")
    assert again.returncode == 0, explain(again, runs / "again")
    assert "scripted episodes" not in (runs / "again" / "logs" / "trainer.log").read_text()
    assert json.loads((model / "areal_lite_env_warm_start.json").read_text()) == marker
    assert read_jsonl(runs / "again" / "metrics.jsonl")[0]["check/env_token_grad_max"] == 0.0


@pytest.mark.slow  # ~2 minutes each on 2 cores: `python -m pytest -m slow tests/e2e/test_agents.py`
@pytest.mark.timeout(600)
@pytest.mark.parametrize("recipe", ["bandit_cpu.yaml", "sokoban_cpu.yaml"])
def test_bandit_and_sokoban_episodes_train_only_model_tokens(tmp_path, recipe):
    """The other two built-in tasks through the launcher, shrunk as above: environment tokens get no
    gradient, model tokens do, and staleness stays within η."""
    name = recipe.replace("_cpu.yaml", "-cpu")
    runs = tmp_path / "runs" / "agents"
    small = [o for o in SMALL if "max_turns" not in o]  # the bandit's episodes are one turn by its rules
    proc = launch("areal_lite.launcher.local", AGENTS / recipe, f"cluster.fileroot={tmp_path / 'runs'}",
                  f"actor.path={tmp_path / 'model'}", *small, entry=ENTRY, timeout=550)
    assert proc.returncode == 0, explain(proc, runs / name)
    metrics = read_jsonl(runs / name / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        assert m["check/env_token_grad_max"] == 0.0, m
        assert m["staleness/max"] <= ETA and m["env/turns"] >= 1
    assert max(m["check/model_token_grad_nonzero"] for m in metrics) > 0


def test_a_model_warm_started_by_another_recipe_is_refused(tmp_path):
    sys.path.insert(0, str(AGENTS))
    try:
        from warm_start import MARKER, _needs_training
    finally:
        sys.path.remove(str(AGENTS))
    recipe = {"env": "bandit", "options": {}, "episodes": 10, "optimal_prob": 0.0}
    assert _needs_training(str(tmp_path), recipe) == 1
    (tmp_path / MARKER).write_text(json.dumps({"recipe": recipe}))
    assert _needs_training(str(tmp_path), recipe) == 0
    with pytest.raises(ConfigError, match="holds a model warm-started with another recipe"):
        _needs_training(str(tmp_path), {**recipe, "optimal_prob": 0.5})


@pytest.mark.parametrize("override,message", [
    ("train_dataset.synthetic.name=frozen_lake", "unknown env 'frozen_lake' (did you mean 'frozenlake'?)"),
    ("train_dataset.synthetic.options.sise=4", "has no option 'sise' (did you mean 'size'?)"),
    ("train_dataset.synthetic.max_turn=3", "unknown key(s) max_turn"),
    ("train_dataset.synthetic.max_total_tokens=4096", "exceeds server.context_length"),
])
def test_a_bad_env_section_is_one_line(override, message):
    proc = subprocess.run([sys.executable, str(ENTRY), "--config", str(AGENTS / "frozenlake_cpu.yaml"), override],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "AREAL_LITE_ROLE": "rollout"})
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert message in proc.stderr


def test_the_docs_environment_and_its_scripted_player():
    """guess_number (docs/agents.md): bisecting always wins within 5 guesses of 16; a bad reply is a format
    error; its demo_reply is what the warm start plays."""
    import numpy as np

    from areal_lite.envs.demos import play_demo

    env_section(AGENTS / "guess_number_cpu.yaml")  # registers it
    rng = np.random.default_rng(0)
    wins = [play_demo(make_env("guess_number"), s, rng, optimal_prob=1.0, max_turns=5) for s in range(50)]
    assert all(w["success"] and w["reward"] == 1.0 for w in wins)
    env = make_env("guess_number", high=8, max_guesses=2)
    env.reset(seed=1)
    assert env.step("seven")[4]["format_error"] is True
    obs, reward, terminated, truncated, _ = env.step(f"<answer>{env.target % 8 + 1}</answer>")
    assert obs.endswith(("go higher.", "go lower.")) and (reward, terminated, truncated) == (0.0, False, False)
    assert env.step(f"<answer>{env.target % 8 + 1}</answer>")[3] is True  # out of guesses


def test_the_docs_show_the_environment_file_as_it_is():
    import re

    code = (AGENTS / "guess_number.py").read_text()
    block = re.search(r"```python\n(import re\n.*?)```", (REPO / "docs" / "agents.md").read_text(), re.DOTALL)
    assert block and code.endswith(block.group(1)), "docs/agents.md's GuessNumberEnv differs from examples/agents"
