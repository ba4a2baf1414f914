"""Held-out evaluation through the inference servers (generation is not paused for it).

`aevaluate` runs a workflow over held-out records with the evaluation sampling settings and reports
accuracy (mean reward of the first sample: greedy accuracy at temperature 0), pass@k (any of the k
samples correct) and answer lengths. Versions seen are reported so a reader can tell which weights
answered.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import numpy as np

from areal_lite.inference.client import InferenceClient
from areal_lite.rollout.workflow import RolloutWorkflow


async def aevaluate(
    workflow: RolloutWorkflow,
    client: InferenceClient,
    records: Sequence[dict],
    *,
    concurrency: int = 32,
    correct_threshold: float = 0.5,
) -> dict[str, float]:
    sem = asyncio.Semaphore(concurrency)

    async def one(record: dict):
        async with sem:
            return await workflow.arun_episode(client, record)

    groups = await asyncio.gather(*(one(r) for r in records))
    groups = [g for g in groups if g]
    if not groups:
        return {"eval/num_prompts": 0.0}
    first = np.asarray([g[0].reward for g in groups], np.float64)
    any_correct = np.asarray([max(t.reward for t in g) > correct_threshold for g in groups], np.float64)
    lengths = np.asarray([t.num_generated for g in groups for t in g], np.float64)
    versions = np.concatenate([t.versions[t.loss_mask.astype(bool)] for g in groups for t in g] or [np.zeros(1)])
    k = len(groups[0])
    return {
        "eval/accuracy": float((first > correct_threshold).mean()),
        "eval/reward_mean": float(first.mean()),
        f"eval/pass@{k}": float(any_correct.mean()),
        "eval/gen_len_mean": float(lengths.mean()),
        "eval/num_prompts": float(len(groups)),
        "eval/version_min": float(versions.min()) if versions.size else 0.0,
        "eval/version_max": float(versions.max()) if versions.size else 0.0,
    }
