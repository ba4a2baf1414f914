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


class Evaluator:
    """Held-out evaluation on a schedule, from the process that owns it (trainer rank 0).

    `enabled=False` (the other ranks, or no held-out set) makes every call return {} so the training
    loop calls it the same way on every rank. One workflow (and its reward pool) serves every
    evaluation of the run.
    """

    def __init__(self, workflow: RolloutWorkflow | None, records: Sequence[dict] | None, *, server_addrs: list[str],
                 api_key: str | None, request_timeout: float, schedule, enabled: bool):
        self.workflow, self.records = workflow, list(records or [])
        self.server_addrs, self.api_key, self.request_timeout = server_addrs, api_key, request_timeout
        self.schedule = schedule
        self.enabled = enabled and workflow is not None and bool(self.records)

    def run(self) -> dict[str, float]:
        if not self.enabled:
            return {}

        async def go() -> dict[str, float]:
            async with InferenceClient(self.server_addrs, api_key=self.api_key,
                                       request_timeout=self.request_timeout) as client:
                return await aevaluate(self.workflow, client, self.records)

        return asyncio.run(go())

    def initial(self) -> dict[str, float]:
        """The starting weights' scores as `eval/*_initial`, so a run shows where it began."""
        return {f"{k}_initial": v for k, v in self.run().items()}

    def after(self, step: int) -> dict[str, float]:
        """The scores after `step`, when the schedule says so ({} otherwise)."""
        return self.run() if self.enabled and self.schedule.due(step) else {}
