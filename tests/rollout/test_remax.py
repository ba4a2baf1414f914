"""ReMax end to end below the launcher: the workflow's untrained greedy answer, its reward on every
sample of the group, through the wire codec into the trainer's batch, and the advantages the
trainer then builds (reward-to-go minus the greedy reward, the formula pinned against verl in
tests/parity/test_advantages_parity.py). A real embedded server generates; a real reward pool scores.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from areal_lite.config.schema import ActorConfig
from areal_lite.inference.client import InferenceClient, SamplingParams
from areal_lite.rollout.reward_pool import RewardPool
from areal_lite.rollout.worker import build_group
from areal_lite.rollout.workflow import RLVRWorkflow
from areal_lite.trainer.advantage import build_advantage_fn
from areal_lite.trainer.batch import batch_from_groups
from areal_lite.trainer.rows import StepRows
from areal_lite.transport import Codec, TrajectoryGroup
from tests.rollout.reward_fns import by_tokens

pytestmark = pytest.mark.timeout(180)

PROMPTS = ([5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16])
SAMPLING = SamplingParams(max_new_tokens=6, temperature=1.0)


def decode(ids) -> str:
    return " ".join(map(str, ids))


def workflow(pool: RewardPool, greedy_baseline: bool) -> RLVRWorkflow:
    return RLVRWorkflow(prompt_fn=lambda record: record["ids"], decode_fn=decode, reward_fn=by_tokens,
                        sampling=SAMPLING, n_samples=4, reward_pool=pool, greedy_baseline=greedy_baseline)


def over_the_wire(group: TrajectoryGroup) -> TrajectoryGroup:
    codec = Codec("remax-test")
    frames = codec.encode(*group.to_message())
    return TrajectoryGroup.from_message(codec.decode([f if isinstance(f, bytes) else bytes(f) for f in frames]))


@pytest.fixture(scope="module")
def episodes(embedded_server):
    """Three prompts' groups with the greedy baseline, and each prompt's greedy answer asked for directly."""
    pool = RewardPool(1, 30.0)

    async def go():
        async with InferenceClient([embedded_server.url], request_timeout=60) as client:
            flow = workflow(pool, greedy_baseline=True)
            groups = [await flow.arun_episode(client, {"ids": ids}) for ids in PROMPTS]
            greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
            direct = [await client.agenerate(ids, greedy) for ids in PROMPTS]
            plain = await workflow(pool, greedy_baseline=False).arun_episode(client, {"ids": PROMPTS[0]})
            return groups, direct, plain

    try:
        yield asyncio.run(go())
    finally:
        pool.close()


def test_the_greedy_answer_is_scored_not_trained(episodes):
    groups, direct, plain = episodes
    for trajs, gen in zip(groups, direct):
        assert len(trajs) == 4  # n_samples; the greedy answer is not among them
        expected = by_tokens(decode(gen.output_ids))  # greedy decoding is deterministic: the same answer
        assert {t.info["baseline_reward"] for t in trajs} == {expected}
        assert not any(t.info["baseline_reward_failed"] for t in trajs)
    assert len(plain) == 4 and all("baseline_reward" not in t.info for t in plain)


def test_remax_advantages_from_the_wire(episodes):
    groups, direct, _ = episodes
    wire = [over_the_wire(build_group(f"p{i}", "w0", trajs)) for i, trajs in enumerate(groups)]
    batch = batch_from_groups(wire)
    baselines = np.repeat([by_tokens(decode(g.output_ids)) for g in direct], 4)
    np.testing.assert_array_equal(batch.baseline_rewards, baselines)

    actor = ActorConfig(path="unused")
    actor.adv_estimator = "remax"
    actor.reward_scaling = 0.5  # the baseline is shaped as the rewards are
    rows = StepRows.of(batch)
    adv = build_advantage_fn(actor, max_new_tokens=6)(batch, rows)
    want = 0.5 * (batch.rewards - baselines)  # one outcome reward per answer: its reward-to-go on every token
    want_rows = torch.where(rows.mask, torch.from_numpy(want).float()[:, None], 0.0)
    torch.testing.assert_close(adv.rows, want_rows)
    assert adv.stats["reward/baseline_mean"] == pytest.approx(0.5 * baselines.mean())


def test_remax_refuses_a_batch_without_baselines(episodes):
    _, _, plain = episodes
    batch = batch_from_groups([over_the_wire(build_group("p-plain", "w0", plain))])
    actor = ActorConfig(path="unused")
    actor.adv_estimator = "remax"
    with pytest.raises(ValueError, match=r"remax: no baseline_reward for prompt\(s\) \['p-plain'\]"):
        build_advantage_fn(actor, max_new_tokens=6)(batch, StepRows.of(batch))
