"""Loading: Hydra's override grammar behind the strict schema, `--cfg job`, key suggestions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from areal_lite.config import ConfigError, load_config, parse_argv, to_yaml
from areal_lite.config.keys import suggest
from areal_lite.config.schema import ExperimentConfig

REPO = Path(__file__).resolve().parents[2]
CPU_CFG = str(REPO / "examples" / "math" / "gsm8k_drgrpo_cpu.yaml")


@pytest.fixture()
def cfg_file(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text("actor: {path: m, eps_clip_higher: 0.3}\ntrain_dataset: {path: d.jsonl}\n"
                    "launcher: {env: {KEEP: k}}\n")
    return str(path)


def test_every_key_without_plus_and_plus_forms_mean_the_same(cfg_file):
    for prefix in ("", "+", "++"):
        cfg = load_config(["--config", cfg_file, f"{prefix}actor.optimizer.lr=3e-4", f"{prefix}seed=7"])
        assert cfg.actor.optimizer.lr == 3e-4 and cfg.seed == 7


def test_hyphen_spellings_and_aliases_are_canonicalised(cfg_file):
    cfg = load_config(["--config", cfg_file, "actor.loss_reduction=seq-mean-token-sum-norm",
                       "actor.kl_loss_reduction=sequence_mean", "actor.rollout_filter.strategy=top-k"])
    assert cfg.actor.loss_reduction == "seq_mean_token_sum_norm"
    assert cfg.actor.kl_loss_reduction == "seq_mean_token_mean" and cfg.actor.rollout_filter.strategy == "top_k"


def test_lists_mappings_quotes_and_free_dicts(cfg_file):
    cfg = load_config(["--config", cfg_file, "gconfig.stop_token_ids=[5,6]", "launcher.env.MY_VAR=1",
                       "actor.optimizer={lr: 0.5, beta1: 0.5}", "launcher.slurm.sbatch_extra_args=['--qos=high']",
                       "launcher.env.TEXT='a,b c'", "trial_name='run 1'", "train_dataset.synthetic={max_value: 30}"])
    assert cfg.gconfig.stop_token_ids == [5, 6]
    assert cfg.launcher.env == {"KEEP": "k", "MY_VAR": "1", "TEXT": "a,b c"}
    assert (cfg.actor.optimizer.lr, cfg.actor.optimizer.beta1, cfg.actor.optimizer.eps) == (0.5, 0.5, 1e-8)
    assert cfg.launcher.slurm.sbatch_extra_args == ["--qos=high"] and cfg.trial_name == "run 1"
    assert cfg.train_dataset.synthetic == {"max_value": 30}


def test_tilde_resets_to_the_default_in_command_line_order(cfg_file):
    cfg = load_config(["--config", cfg_file, "~actor.eps_clip_higher", "~launcher.env.KEEP"])
    assert cfg.actor.eps_clip_higher is None and cfg.launcher.env == {}
    cfg = load_config(["--config", cfg_file, "actor.optimizer.lr=0.5", "~actor.optimizer", "actor.optimizer.beta1=0.5"])
    assert cfg.actor.optimizer.lr == 1e-5 and cfg.actor.optimizer.beta1 == 0.5
    cfg = load_config(["--config", cfg_file, "~actor.eps_clip_higher=0.3"])  # only if it holds that value
    assert cfg.actor.eps_clip_higher is None
    cfg = load_config(["--config", cfg_file, "~actor.eps_clip_higher", "actor.eps_clip_higher=0.4"])
    assert cfg.actor.eps_clip_higher == 0.4


def test_later_overrides_win(cfg_file):
    cfg = load_config(["--config", cfg_file, "seed=3", "seed=4", "algo=dapo", "algo=grpo"])
    assert cfg.seed == 4 and cfg.actor.loss_reduction == "seq_mean_token_mean"


def test_presets_without_a_config_file():
    cfg = load_config(["algo=dapo", "actor.path=m", "train_dataset.path=d.jsonl"])
    assert cfg.rollout.dynamic_filter == "drop_all_equal" and cfg.actor.eps_clip_higher == 0.28


def test_defaults_list_of_the_yaml(tmp_path):
    (tmp_path / "base.yaml").write_text("actor: {path: m}\ntrain_dataset: {path: d.jsonl, batch_size: 4}\nseed: 3\n")
    (tmp_path / "child.yml").write_text("defaults: [base, {algo: drgrpo}, _self_]\nseed: 5\n")
    cfg = load_config(["--config", str(tmp_path / "child.yml")])
    assert (cfg.seed, cfg.train_dataset.batch_size, cfg.actor.adv_norm.std_level) == (5, 4, "none")
    (tmp_path / "broken.yaml").write_text("defaults: [nowhere, _self_]\n")
    with pytest.raises(ConfigError, match="defaults: config 'nowhere' not found beside the config file"):
        load_config(["--config", str(tmp_path / "broken.yaml")])


def test_parse_argv_keeps_its_shape():
    assert parse_argv(["--config", "x.yaml", "a=1", "~b", "--dry-run", "--cfg", "job"]) == (
        "x.yaml", ["a=1", "~b"], ["--dry-run", "--cfg=job"])


def test_cfg_job_prints_the_resolved_config_and_starts_nothing(tmp_path):
    argv = [str(REPO / "examples" / "math" / "gsm8k_drgrpo.py"), "--config", CPU_CFG, "algo=dapo",
            f"cluster.fileroot={tmp_path / 'runs'}", "--cfg", "job"]
    proc = subprocess.run([sys.executable, "-m", "areal_lite.launcher.local", *argv], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["rollout"]["dynamic_filter"] == "drop_all_equal" and printed["actor"]["eps_clip_higher"] == 0.28
    assert printed["train_dataset"]["path"] == "synthetic:arith"  # the file's own keys, resolved
    assert proc.stdout == to_yaml(load_config(["--config", CPU_CFG, "algo=dapo", f"cluster.fileroot={tmp_path / 'runs'}"]))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("typed,first", [
    ("actor.lr", "actor.optimizer.lr"), ("actor.lrr", "actor.optimizer.lr"), ("lr", "actor.optimizer.lr"),
    ("optimizer.lr", "actor.optimizer.lr"), ("gconfig.nsamples", "gconfig.n_samples"),
    ("rollout.max_head_offpolicy", "rollout.max_head_offpolicyness"), ("actor.klctl", "actor.kl_ctl"),
    ("evaluator.nsamples", "evaluator.n_samples"), ("n_samples", "gconfig.n_samples"),
])
def test_suggestions_find_the_obvious_key_first(typed, first):
    text = suggest(typed, ExperimentConfig)
    assert text.startswith(f" (did you mean {first}"), text


def test_suggestion_nothing_close():
    assert suggest("zzzzqqq", ExperimentConfig) == ""


@pytest.mark.parametrize("override", ["actor.lr=1e-5", "actor.optimizer.beta1=1.5"])
def test_readme_error_lines_are_what_users_see(override):
    readme = (REPO / "README.md").read_text()
    with pytest.raises(ConfigError) as e:
        load_config(["--config", CPU_CFG, override])
    assert f"\nerror: {e.value}\n" in readme


def test_loading_inside_a_hydra_app_leaves_its_state(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    (tmp_path / "app.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = load_config(["--config", CPU_CFG, "algo=dapo"])
        assert cfg.rollout.dynamic_filter == "drop_all_equal"
        assert compose(config_name="app").x == 1  # the app's Hydra still sees its own config folder
    assert not GlobalHydra.instance().is_initialized()
