"""The per-step rollout metrics read the groups' per-sample info columns as they arrive (after the real
codec round trip): latencies averaged over every sample (0 where a sample has none), and ReMax's
baseline failures counted once per group."""

from __future__ import annotations

import numpy as np
import pytest

from areal_lite.control.controller import BufferedGroup, Grant
from areal_lite.rollout.workflow import Trajectory
from areal_lite.run.perf import rollout_metrics
from areal_lite.transport import Codec, TrajectoryGroup, decode_group, encode_group

CODEC = Codec("run")


def group(pid: str, infos: list[dict]) -> BufferedGroup:
    trajs = [Trajectory(input_ids=np.array([1, 2, 3], np.int32), loss_mask=np.array([0, 1, 1], np.uint8),
                        behav_logp=np.zeros(3, np.float32), versions=np.array([-1, 0, 0], np.int32),
                        reward=0.0, prompt_len=1, finish_reason="stop", info=info) for info in infos]
    g = TrajectoryGroup.from_trajectories(prompt_id=pid, worker_id="w0", trajectories=trajs)
    g = decode_group(CODEC, encode_group(CODEC, g))
    return BufferedGroup(g, Grant(pid, "w0", 0, 0, 0.0), t_accept=10.0)


def test_latencies_average_every_sample_and_baseline_failures_count_groups():
    remax = {"latency_s": 0.5, "reward_s": 0.1, "baseline_reward": 0.0, "baseline_reward_failed": True}
    ok = {"latency_s": 0.5, "reward_s": 0.1, "baseline_reward": 1.0, "baseline_reward_failed": False}
    batch = [group("a", [remax, remax]), group("b", [ok, ok]), group("c", [{"latency_s": 1.5}] * 2)]
    m = rollout_metrics(batch, t_data=12.0)
    assert m["rollout/gen_latency_s"] == pytest.approx((0.5 * 4 + 1.5 * 2) / 6)
    assert m["rollout/reward_s"] == pytest.approx(0.1 * 4 / 6)
    assert m["rollout/buffer_wait_s"] == pytest.approx(2.0)
    assert m["reward/baseline_failures"] == 1.0


def test_no_baseline_no_baseline_metric():
    m = rollout_metrics([group("a", [{"latency_s": 0.2}])], t_data=10.0)
    assert "reward/baseline_failures" not in m and m["rollout/reward_s"] == 0.0
