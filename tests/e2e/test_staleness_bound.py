"""The staleness bound end to end: two workers, one deliberately slow server, η ∈ {0, 1, 4}.

Generation is the bottleneck (the server sleeps after every decode step), so groups are in flight
across weight updates and finish out of grant order between the two workers. No trained trajectory's
oldest generated token may lag the trainer's version by more than η, judged twice: by the per-step
metrics and by the ledger entry of every trained prompt (which records the group's head version).
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.e2e.conftest import explain, launch, read_jsonl, run_dir

STEPS = 4
BATCH = 4
PER_STEP_KEYS = {"staleness/max", "staleness/mean", "rollout/groups_per_s", "rollout/tokens_per_s",
                 "rollout/queue_len", "rollout/rejected"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("eta", [0, pytest.param(1, marks=pytest.mark.slow), 4])  # 0 and 4 bracket it
def test_no_trained_trajectory_is_staler_than_eta(tmp_path, small_config, eta):
    cfg = small_config({
        "allocation": {"rollout": {"num_workers": 2}},
        "rollout": {"max_head_offpolicyness": eta},
        "server": {"debug_step_delay_s": 0.03},
        "evaluator": {"freq_steps": 0},
    })
    proc = launch("areal_lite.launcher.local", cfg, f"total_train_steps={STEPS}", timeout=280)
    rdir = run_dir(tmp_path)
    assert proc.returncode == 0, explain(proc, rdir)

    metrics = read_jsonl(rdir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    for m in metrics:
        assert PER_STEP_KEYS <= set(m), PER_STEP_KEYS - set(m)
        assert 0 <= m["staleness/mean"] <= m["staleness/max"] <= eta, m
        assert m["staleness/newest_token_version"] <= m["step"]  # never ahead of the trainer
        # Rates over the step: 0 when every group it trained had arrived before it began.
        assert m["rollout/groups_per_s"] >= 0 and m["rollout/tokens_per_s"] >= 0
        assert m["rollout/queue_len"] >= 0 and m["rollout/rejected"] == 0
        assert m["transport/rejected"] == 0
    assert max(m["rollout/workers"] for m in metrics) == 2
    assert any(m["rollout/groups_per_s"] > 0 for m in metrics)
    assert any(m["rollout/tokens_per_s"] > 0 for m in metrics)

    # Per trajectory group, from the ledger: trained at version `step`, oldest token `head_version`.
    trained = [e for e in read_jsonl(rdir / "ledger.jsonl") if e["event"] == "trained"]
    assert len(trained) == STEPS * BATCH
    lags = [e["step"] - e["head_version"] for e in trained]
    assert all(0 <= lag <= eta for lag in lags), lags
    assert max(lags) == max(m["staleness/max"] for m in metrics)
    per_prompt = Counter(e["prompt_id"] for e in trained)
    assert max(per_prompt.values()) == 1, per_prompt  # exactly once
    if eta == 0:
        # Synchronous: every batch is generated entirely by the weights it is trained against.
        assert set(lags) == {0}
    else:
        # Asynchronous: the run really trained off-policy data (the bound was exercised, not idle).
        assert max(lags) >= 1, lags
