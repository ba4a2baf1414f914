"""`launcher.elastic_threads`: which trainers and servers the launcher lets take every core, and the two
policies: the trainer's threads follow the controller's running grants (re-decided per micro-batch);
the embedded server's follow the cores the rest of the node leaves idle (measured, re-decided per
engine step). The thin loop in tests/e2e runs the trainer's inside a real trainer
(`perf/trainer_threads` in its metrics); the engine test below runs the server's in a real engine."""

from __future__ import annotations

import pytest
import torch

from areal_lite.config.schema import ExperimentConfig
from areal_lite.launcher.plan import build_plan
from areal_lite.inference.embedded.threads import IdleCoreThreads, busy_seconds, idle_core_threads
from areal_lite.run.threads import ElasticThreads, elastic_threads
from areal_lite.utils.runenv import ENV_MAX_THREADS


def build(tmp_path, cores: int, **launcher):
    cfg = ExperimentConfig()
    cfg.actor.path = "m"
    cfg.cluster.fileroot = str(tmp_path)
    for k, v in launcher.items():
        if k == "nproc":
            cfg.allocation.trainer.nproc_per_node = v
        elif k == "num_servers":
            cfg.allocation.inference.num_servers = v
        else:
            setattr(cfg.launcher, k, v)
    plan = build_plan(cfg, "entry.py", config_path="c.yaml", cores=cores)
    assert all(ENV_MAX_THREADS not in p.env for p in plan.workers)
    return plan


def plan_env(tmp_path, cores: int, **launcher) -> dict[str, str]:
    return build(tmp_path, cores, **launcher).trainers[0].env


def test_only_a_single_cpu_trainer_with_unfixed_threads_may_take_every_core(tmp_path):
    env = plan_env(tmp_path, cores=8)  # one server + one trainer rank: 4 threads each
    assert env["OMP_NUM_THREADS"] == "4" and env[ENV_MAX_THREADS] == "8"
    assert ENV_MAX_THREADS not in plan_env(tmp_path, cores=8, elastic_threads=False)
    assert ENV_MAX_THREADS not in plan_env(tmp_path, cores=8, torch_threads=2)  # the user fixed them
    assert ENV_MAX_THREADS not in plan_env(tmp_path, cores=8, nproc=2)  # only rank 0 sees the controller
    assert ENV_MAX_THREADS not in plan_env(tmp_path, cores=1)  # nothing to add


def test_only_the_one_embedded_cpu_server_with_unfixed_threads_may_take_idle_cores(tmp_path):
    [server] = build(tmp_path, cores=2).servers
    assert server.env["OMP_NUM_THREADS"] == "1" and server.env[ENV_MAX_THREADS] == "2"
    assert ENV_MAX_THREADS not in build(tmp_path, cores=2, elastic_threads=False).servers[0].env
    assert ENV_MAX_THREADS not in build(tmp_path, cores=2, torch_threads=1).servers[0].env
    # Two servers would each see the other's idle moments and take the same cores.
    assert all(ENV_MAX_THREADS not in s.env for s in build(tmp_path, cores=4, num_servers=2).servers)
    # Several trainer ranks keep their share, the server still takes what they leave idle.
    assert ENV_MAX_THREADS in build(tmp_path, cores=4, nproc=2).servers[0].env


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


class FakeNode:
    """Busy seconds of the node's CPUs, the server's own CPU seconds and the clock, advanced by hand."""

    def __init__(self):
        self.t = self.busy = self.own = 0.0

    def advance(self, seconds: float, *, own_cores: float, other_cores: float) -> None:
        self.t += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds

    def policy(self, **kw) -> IdleCoreThreads:
        return IdleCoreThreads(busy=lambda: self.busy, own=lambda: self.own, clock=lambda: self.t, **kw)


def test_server_threads_take_the_cores_the_others_leave_idle_and_give_them_back(restore_threads):
    torch.set_num_threads(1)
    node = FakeNode()
    policy = node.policy(share=1, full=2, window_s=0.1)
    seen = []
    # The trainer waits for data (the rollout worker uses 0.1 core), then trains on one core, then waits.
    for own, others in ((1.0, 0.1), (2.0, 0.1), (2.0, 0.7), (1.0, 1.0), (1.0, 0.05)):
        node.advance(0.125, own_cores=own, other_cores=others)
        seen.append((policy(), torch.get_num_threads()))
    assert seen == [(2, 2), (2, 2), (1, 1), (1, 1), (2, 2)]
    node.advance(0.0625, own_cores=2.0, other_cores=1.0)  # inside the window: no new decision
    assert policy() == 2


def test_server_threads_never_leave_the_share_or_pass_full(restore_threads):
    torch.set_num_threads(2)
    node = FakeNode()
    policy = node.policy(share=2, full=4, window_s=0.1)
    node.advance(0.1, own_cores=2.0, other_cores=3.5)  # others take more than their part
    assert policy() == 2
    node.advance(0.125, own_cores=2.0, other_cores=0.0)
    assert policy() == 4
    node.advance(0.125, own_cores=4.0, other_cores=1.2)
    assert policy() == 3


def test_the_server_policy_is_on_only_where_the_launcher_asked(restore_threads):
    torch.set_num_threads(1)
    assert idle_core_threads(0) is None and idle_core_threads(1) is None
    policy = idle_core_threads(2)
    assert (policy.share, policy.full) == (1, 2)
    assert busy_seconds(None) >= busy_seconds([0]) > 0  # the real node: /proc/stat through psutil
