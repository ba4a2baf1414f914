"""The GSM8K recipes are the task (examples/math/gsm8k.yaml) plus one algorithm preset each.

The facts the recipes pinned when they were four copies differing in lines marked `# ALGO`, in the
form they now take: every recipe differs from GRPO only in its algorithm's keys (with the values
below), each recipe file is `--config gsm8k.yaml algo=NAME` under its own experiment name, and the
task file sets none of the algorithm's keys.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from areal_lite.config import load_config
from areal_lite.config.presets import ALGO_KEYS, ALGO_PRESETS
from areal_lite.config.schema import resolved_loss_norm_constant

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "math"
BUDGET = 1024  # gconfig.max_new_tokens of the task

# Every key (besides experiment_name) whose value differs from the GRPO recipe, and its value.
EXPECTED_DIFFS = {
    "drgrpo": {"actor.adv_norm.std_level": "none", "actor.loss_reduction": "seq_mean_token_sum_norm"},
    "drgrpo_soft": {"actor.adv_norm.std_level": "none", "actor.loss_reduction": "seq_mean_token_sum_norm",
                    "actor.group_filter.soft_reweight": True},
    "dapo": {"rollout.dynamic_filter": "drop_all_equal", "actor.eps_clip_higher": 0.28,
             "actor.loss_reduction": "token_mean", "actor.overlong_penalty.enabled": True},
}


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("synthetic", "options", "template_kwargs", "env"):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def loaded(*argv: str):
    return load_config(["--config", *argv])


def test_grpo_recipe_is_grpo_on_the_task():
    cfg = loaded(str(RECIPES / "gsm8k_grpo.yaml"))
    assert (cfg.actor.adv_norm.mean_level, cfg.actor.adv_norm.std_level) == ("group", "group")
    assert cfg.actor.loss_reduction == "seq_mean_token_mean" and cfg.actor.kl_ctl == 0
    assert cfg.gconfig.max_new_tokens == BUDGET and cfg.allocation.inference.backend == "sglang"
    assert cfg.actor.path == "Qwen/Qwen2.5-1.5B-Instruct" and cfg.train_dataset.path == "openai/gsm8k"
    assert flat(asdict(cfg)) == {**flat(asdict(loaded(str(RECIPES / "gsm8k.yaml")))), "experiment_name": "gsm8k-grpo"}


@pytest.mark.parametrize("name", list(EXPECTED_DIFFS))
def test_recipe_differs_from_grpo_only_in_its_algorithm(name):
    base = flat(asdict(loaded(str(RECIPES / "gsm8k_grpo.yaml"))))
    cfg = loaded(str(RECIPES / f"gsm8k_{name}.yaml"))
    diffs = {k: v for k, v in flat(asdict(cfg)).items() if base.get(k) != v and k != "experiment_name"}
    assert diffs == EXPECTED_DIFFS[name]
    assert cfg.experiment_name == f"gsm8k-{name.replace('_', '-')}"  # runs of different recipes never share a dir
    if "drgrpo" in name:  # Dr.GRPO's constant is the generation budget (derived, not copied)
        assert cfg.actor.loss_norm_constant is None and resolved_loss_norm_constant(cfg) == BUDGET


@pytest.mark.parametrize("name", list(ALGO_PRESETS))
def test_recipe_file_is_the_task_plus_its_preset(name):
    by_file = flat(asdict(loaded(str(RECIPES / f"gsm8k_{name}.yaml"))))
    by_group = flat(asdict(loaded(str(RECIPES / "gsm8k.yaml"), f"algo={name}")))
    assert {k: v for k, v in by_file.items() if by_group[k] != v} == {"experiment_name": by_file["experiment_name"]}
    # The file holds only its defaults list and its name: every other line is the task's.
    text = yaml.safe_load((RECIPES / f"gsm8k_{name}.yaml").read_text())
    assert text == {"defaults": ["gsm8k", {"override algo": name}, "_self_"], "experiment_name": by_file["experiment_name"]}


def test_task_sets_none_of_the_algorithm_keys_and_presets_set_all():
    task = yaml.safe_load((RECIPES / "gsm8k.yaml").read_text())
    assert task["defaults"] == [{"algo": "grpo"}, "_self_"]
    set_by_task = set(flat(task))
    assert not set_by_task & set(ALGO_KEYS)
    for name, values in ALGO_PRESETS.items():
        assert set(values) == set(ALGO_KEYS), name  # switching presets leaves nothing behind


def test_switching_presets_on_the_command_line_resets_every_algorithm_key():
    dapo_then_grpo = flat(asdict(loaded(str(RECIPES / "gsm8k_dapo.yaml"), "algo=grpo")))
    grpo = flat(asdict(loaded(str(RECIPES / "gsm8k_grpo.yaml"))))
    assert {k: v for k, v in dapo_then_grpo.items() if grpo[k] != v} == {"experiment_name": "gsm8k-dapo"}


def test_explicit_keys_win_over_the_preset(tmp_path):
    (tmp_path / "task.yaml").write_text("defaults: [{algo: dapo}, _self_]\nactor: {path: m, eps_clip_higher: 0.3}\n"
                                        "train_dataset: {path: d.jsonl}\n")
    cfg = loaded(str(tmp_path / "task.yaml"))
    assert cfg.actor.eps_clip_higher == 0.3 and cfg.actor.loss_reduction == "token_mean"
    cfg = loaded(str(tmp_path / "task.yaml"), "actor.loss_reduction=seq_mean_token_mean")
    assert cfg.actor.loss_reduction == "seq_mean_token_mean" and cfg.rollout.dynamic_filter == "drop_all_equal"


def test_own_presets_in_a_folder_beside_the_config(tmp_path):
    (tmp_path / "algo").mkdir()
    (tmp_path / "algo" / "mine.yaml").write_text("# @package _global_\nactor: {eps_clip: 0.1, kl_ctl: 0.01}\n")
    (tmp_path / "task.yaml").write_text("actor: {path: m}\ntrain_dataset: {path: d.jsonl}\n")
    cfg = loaded(str(tmp_path / "task.yaml"), "algo=mine")
    assert cfg.actor.eps_clip == 0.1 and cfg.actor.kl_ctl == 0.01
    cfg = loaded(str(tmp_path / "task.yaml"), "algo=drgrpo")  # the built-in presets are there too
    assert cfg.actor.adv_norm.std_level == "none"
