"""RewardPool: failures (raise, hang, NaN, not a number, dead process) are counted, never silent; the
workflow applies the configured policy (drop the group or score 0); the pool keeps serving after."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from areal_lite.inference.client import InferenceClient, SamplingParams
from areal_lite.inference.embedded.local_server import start_local_server
from areal_lite.launcher.common import pid_alive  # zombies count as gone
from areal_lite.rollout.reward_pool import RewardPool
from areal_lite.rollout.worker import build_group
from areal_lite.rollout.workflow import RewardFailure, RLVRWorkflow
from tests.rollout.reward_fns import by_answer

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 3.0  # generous: a call after a reset also pays the new process's start-up on a busy machine


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def pool():
    p = RewardPool(num_workers=1, timeout=TIMEOUT)
    yield p
    p.close()


def test_each_failure_is_counted_by_kind_and_the_pool_keeps_working(pool):
    async def go():
        out = {}
        for answer in ("ok", "raise", "nan", "inf", "str", "none", "hang", "ok"):
            out.setdefault(answer, []).append(await pool.score(by_answer, "some text", answer=answer))
        return out

    out = run(go())
    assert out["ok"] == [1.0, 1.0]  # the second one ran in a fresh process after the hang was killed
    assert all(out[k] == [None] for k in ("raise", "nan", "inf", "str", "none", "hang"))
    assert pool.failures == {"raised": 1, "timeout": 1, "invalid": 4}


def test_a_hang_does_not_take_concurrent_calls_down_with_it():
    pool = RewardPool(num_workers=2, timeout=TIMEOUT)
    try:
        async def go():
            await pool.score(by_answer, "warm up")  # the processes exist before the clock matters
            return await asyncio.gather(pool.score(by_answer, "x", answer="hang"),
                                        *(pool.score(by_answer, "x", answer="ok") for _ in range(4)))

        results = run(go())
        assert results == [None, 1.0, 1.0, 1.0, 1.0]
        assert pool.failures == {"raised": 0, "timeout": 1, "invalid": 0}
    finally:
        pool.close()


def test_a_reward_process_that_dies_is_a_failure_not_a_crash(pool):
    async def go():
        return [await pool.score(by_answer, "x", answer=a) for a in ("exit", "ok")]

    assert run(go()) == [None, 1.0]
    assert pool.failures["raised"] == 1


# ----------------------------------------------------------------------------- through the workflow


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("reward_server") / "server.log"
    args = ["--context-length", "128", "--max-running-requests", "8", "--log-level", "warning",
            "--skip-tokenizer-init"]
    with start_local_server(tiny_model_dir, extra_args=args, log_path=log, startup_timeout=120) as s:
        yield s


def make_workflow(pool: RewardPool, policy: str) -> RLVRWorkflow:
    return RLVRWorkflow(
        prompt_fn=lambda record: [5, 6, 7, 8],
        decode_fn=lambda ids: " ".join(map(str, ids)),
        reward_fn=by_answer,
        sampling=SamplingParams(max_new_tokens=4, temperature=1.0),
        n_samples=2,
        reward_pool=pool,
        reward_failure_policy=policy,
    )


@pytest.mark.parametrize("policy", ["zero", "drop_group"])
def test_workflow_applies_the_failure_policy(server, pool, policy):
    workflow = make_workflow(pool, policy)

    async def episode(answer: str):
        async with InferenceClient([server.url], request_timeout=60) as client:
            try:
                return await workflow.arun_episode(client, {"question": "q", "answer": answer})
            except RewardFailure as e:
                return e

    for i, answer in enumerate(("raise", "hang", "str")):
        out = run(episode(answer))
        if policy == "drop_group":
            assert isinstance(out, RewardFailure) and "2 of 2 rewards failed" in str(out)
            assert out.failures == 2  # the worker's reject carries it to the trainer's `reward/failures`
        else:  # scored 0, and marked so the failure shows up in the group's metadata
            assert [t.reward for t in out] == [0.0, 0.0]
            assert all(t.info["reward_failed"] for t in out)
            assert all(t.num_generated > 0 for t in out)
            group = build_group(f"0:{i}", "worker0", out)  # what the worker sends
            assert group.info["reward_failed"] == [True, True] and group.meta == {"reward_failures": 2}
    assert pool.failures == {"raised": 2, "timeout": 2, "invalid": 2}  # two samples per group

    good = run(episode("ok"))  # the pool and the workflow keep working afterwards
    assert [t.reward for t in good] == [1.0, 1.0] and not any(t.info["reward_failed"] for t in good)


def test_workflow_refuses_an_unknown_policy(pool):
    with pytest.raises(ValueError, match="reward_failure_policy"):
        make_workflow(pool, "ignore")


def test_close_kills_a_hung_reward_process():
    from areal_lite.rollout.reward_pool import _processes

    pool = RewardPool(num_workers=1, timeout=60)

    async def go():
        task = asyncio.ensure_future(pool.score(by_answer, "x", answer="hang"))
        while not pool._pool or not _processes(pool._pool):
            await asyncio.sleep(0.05)
        procs = _processes(pool._pool)
        await asyncio.sleep(0.5)  # the call is running in it
        pool.close()
        task.cancel()
        return procs

    procs = run(go())
    assert procs
    for proc in procs:
        proc.join(timeout=15)  # close() has already reaped it; the margin is for a loaded machine
        assert not proc.is_alive()


OWNER = """
import asyncio, sys, time
from areal_lite.rollout.reward_pool import RewardPool
from tests.rollout.reward_fns import by_answer
pool = RewardPool(num_workers=1, timeout=30)
print(int(asyncio.run(pool.score(by_answer, "x", answer="pid"))), flush=True)
time.sleep(600)
"""


def test_pool_processes_exit_when_their_owner_is_killed():
    # A rollout worker killed with SIGKILL runs no cleanup: its reward processes must not live on.
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[2])
    try:
        child = int(owner.stdout.readline())
        assert child != owner.pid and pid_alive(child)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 10
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(child), "the reward process outlived its owner"
    finally:
        owner.kill()
