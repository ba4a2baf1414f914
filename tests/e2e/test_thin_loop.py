"""The whole topology on one CPU machine through the real local launcher: server, worker, FSDP trainer."""

from __future__ import annotations

import os

import pytest

from tests.e2e.conftest import explain, launch, read_jsonl, run_dir

REQUIRED_KEYS = {"step", "version", "reward/mean", "staleness/max", "ppo/loss", "time/step"}


# The 2-rank run takes the GPU path's collectives: a default group that, like NCCL, has no backend for
# CPU tensors ("cuda:gloo"), weights broadcast to the server, a recover checkpoint, a final HF save and
# a held-out evaluation. Every CPU collective must go through the trainer's gloo group to finish.
GPU_LIKE = ["launcher.env.AREAL_LITE_DEFAULT_BACKEND=cuda:gloo", "actor.weight_update_mode=distributed",
            "recover.mode=auto", "recover.freq_steps=2", "saver.save_final=true", "evaluator.freq_steps=3",
            "evaluator.max_prompts=4"]


@pytest.mark.timeout(400)
@pytest.mark.parametrize("ranks", [1, 2])
def test_thin_loop_three_steps(tmp_path, small_config, ranks):
    cfg = small_config()
    proc = launch("areal_lite.launcher.local", cfg, "total_train_steps=3",
                  f"allocation.trainer.nproc_per_node={ranks}", *(GPU_LIKE if ranks == 2 else []))
    rdir = run_dir(tmp_path)
    assert proc.returncode == 0, explain(proc, rdir)

    # Run directory: resolved config, metrics, per-process logs, ledger.
    assert (rdir / "config.yaml").is_file()
    assert "nproc_per_node: %d" % ranks in (rdir / "config.yaml").read_text()
    for name in ("server0", "trainer", "worker0"):
        assert (rdir / "logs" / f"{name}.log").stat().st_size > 0, name
    metrics = read_jsonl(rdir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert [m["version"] for m in metrics] == [1, 2, 3]  # the policy version advanced every step
    for m in metrics:
        assert REQUIRED_KEYS <= set(m), REQUIRED_KEYS - set(m)
        # No trained token came from weights newer than the trainer's (version == step while training).
        assert m["staleness/newest_token_version"] <= m["step"]
        assert 0 <= m["staleness/max"] <= 1  # η = 1
        assert m["train/num_seqs"] == 4 * 2
    assert metrics[-1]["rollout/workers"] >= 1

    # Every trained prompt appears once; three batches of four groups.
    trained = [e["prompt_id"] for e in read_jsonl(rdir / "ledger.jsonl") if e["event"] == "trained"]
    assert len(trained) == 12 and len(set(trained)) == 12
    if ranks == 1:  # weights went to the server through the versioned folder
        assert (rdir / "weights" / "v3").is_dir()
        if (os.cpu_count() or 1) > 1:  # the one CPU rank took every core while no rollout ran
            assert all(1 <= m["perf/trainer_threads"] <= os.cpu_count() for m in metrics)
    else:  # ... or over the broadcast group, with a checkpoint, a saved model and an evaluation on the way
        assert not (rdir / "weights" / "v3").exists()
        assert "AREAL_LITE_DEFAULT_BACKEND" in (rdir / "config.yaml").read_text()
        assert (rdir / "recover" / "latest").read_text().strip() == "step-00000001"
        assert (rdir / "checkpoints" / "final" / "config.json").is_file()
        assert "eval/accuracy" in metrics[-1]
    assert "training finished" in proc.stdout
