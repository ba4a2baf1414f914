"""`launcher.elastic_threads`: which trainers the launcher lets take every core, and the policy itself
(threads follow the controller's running grants, re-decided per micro-batch). The thin loop in
tests/e2e runs it inside a real trainer (`perf/trainer_threads` in its metrics)."""

from __future__ import annotations

import pytest
import torch

from areal_lite.config.schema import ExperimentConfig
from areal_lite.launcher.plan import build_plan
from areal_lite.run.threads import ElasticThreads, elastic_threads
from areal_lite.utils.runenv import ENV_MAX_THREADS


def plan_env(tmp_path, cores: int, **launcher) -> dict[str, str]:
    cfg = ExperimentConfig()
    cfg.actor.path = "m"
    cfg.cluster.fileroot = str(tmp_path)
    for k, v in launcher.items():
        if k == "nproc":
            cfg.allocation.trainer.nproc_per_node = v
        else:
            setattr(cfg.launcher, k, v)
    plan = build_plan(cfg, "entry.py", config_path="c.yaml", cores=cores)
    assert all(ENV_MAX_THREADS not in p.env for p in [*plan.servers, *plan.workers])
    return plan.trainers[0].env


def test_only_a_single_cpu_trainer_with_unfixed_threads_may_take_every_core(tmp_path):
    env = plan_env(tmp_path, cores=8)  # one server + one trainer rank: 4 threads each
    assert env["OMP_NUM_THREADS"] == "4" and env[ENV_MAX_THREADS] == "8"
    assert ENV_MAX_THREADS not in plan_env(tmp_path, cores=8, elastic_threads=False)
    assert ENV_MAX_THREADS not in plan_env(tmp_path, cores=8, torch_threads=2)  # the user fixed them
    assert ENV_MAX_THREADS not in plan_env(tmp_path, cores=8, nproc=2)  # only rank 0 sees the controller
    assert ENV_MAX_THREADS not in plan_env(tmp_path, cores=1)  # nothing to add


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_follow_the_rollouts_per_microbatch(restore_threads):
    torch.set_num_threads(1)
    running = [0]
    policy = ElasticThreads(lambda: running[0] > 0, share=1, full=2)
    seen = []
    for r in (0, 3, 3, 0):  # no rollout, two micro-batches while the servers generate, none again
        running[0] = r
        policy()
        seen.append(torch.get_num_threads())
    assert seen == [2, 1, 1, 2]
    assert policy.stats() == {"perf/trainer_threads": 1.5}
    assert policy.stats() == {}  # per step: reset


def test_the_policy_is_on_only_where_the_launcher_asked(monkeypatch, restore_threads):
    torch.set_num_threads(1)
    monkeypatch.delenv(ENV_MAX_THREADS, raising=False)
    assert elastic_threads(lambda: False) is None
    monkeypatch.setenv(ENV_MAX_THREADS, "1")
    assert elastic_threads(lambda: False) is None  # no more than the share
    monkeypatch.setenv(ENV_MAX_THREADS, "2")
    policy = elastic_threads(lambda: False)
    assert (policy.share, policy.full) == (1, 2)
