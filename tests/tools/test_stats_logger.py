"""StatsLogger's sinks in a real run directory: wandb offline (the config as hyperparameters, one run id
kept across a resume) and TensorBoard event files (read back by TensorBoard's own loader; a resume
purges the steps it repeats)."""

from __future__ import annotations

import json

import pytest

from areal_lite.config.errors import ConfigError
from areal_lite.config.schema import StatsLoggerConfig, WandbConfig
from areal_lite.run import stats as stats_mod
from areal_lite.run.stats import StatsLogger
from tests.tools.wandb_records import read_records, run_config

CONFIG = {"seed": 3, "actor": {"optimizer": {"lr": 2e-4}}, "rollout": {"max_head_offpolicyness": 2}}


def attempt(run_dir, steps, reward_of, *, wandb=True, tensorboard=True):
    cfg = StatsLoggerConfig(console=False, tensorboard=tensorboard,
                            wandb=WandbConfig(mode="offline" if wandb else "disabled", project="stats-test"))
    logger = StatsLogger(cfg, run_dir=str(run_dir), run_name="exp/trial", config_dict=CONFIG, rank=0,
                         total_steps=10)
    try:
        for step in steps:
            logger.commit(step, {"reward/mean": reward_of(step), "version": step + 1, "flag": True})
    finally:
        logger.close()


def test_wandb_records_the_config_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    attempt(tmp_path, range(0, 4), lambda s: 0.1 * s, tensorboard=False)
    run_id = (tmp_path / "wandb_id").read_text().strip()
    assert len(run_id) == 8 and run_id.isalnum()
    attempt(tmp_path, range(2, 6), lambda s: 0.1 * s + 0.05, tensorboard=False)  # resumed at step 2
    assert (tmp_path / "wandb_id").read_text().strip() == run_id
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
    for r in runs:
        rid, config = run_config(read_records(next(r.glob("run-*.wandb"))))
        assert rid == run_id and config == CONFIG


def test_tensorboard_scalars_and_a_resume_purges_repeated_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    attempt(tmp_path, range(0, 5), lambda s: 0.1 * s, wandb=False)
    attempt(tmp_path, range(3, 6), lambda s: 0.5 + 0.1 * s, wandb=False)  # steps 3, 4 run again
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = {e.step: e.value for e in acc.Scalars("reward/mean")}
    expected = {0: 0.0, 1: 0.1, 2: 0.2, 3: 0.8, 4: 0.9, 5: 1.0}
    assert events == pytest.approx(expected)
    assert "flag" not in acc.Tags()["scalars"]  # booleans are not scalars
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4, 3, 4, 5]  # the launcher's resume() truncates this one


def test_tensorboard_without_the_package_is_a_config_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match="stats_logger.tensorboard=true needs the tensorboard package"):
        attempt(tmp_path, [0], lambda s: 0.0, wandb=False)
    assert not (tmp_path / stats_mod.TENSORBOARD_DIR).exists()
