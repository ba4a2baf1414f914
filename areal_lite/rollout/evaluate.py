"""Held-out evaluation through the inference servers (generation is not paused for it).

`aevaluate` runs a workflow over held-out records with the evaluation sampling settings and reports,
under a metric prefix (`eval` for valid_dataset, `eval/<name>` for another set):

- `accuracy`: the first sample of each prompt correct (greedy accuracy at temperature 0);
- `avg@n`: the mean correctness of all n samples of a prompt, averaged over prompts;
- `pass@k` for k = 1, 2, 4, ..., n: the unbiased estimator of Chen et al. (2021),
  1 − C(n−c, k) / C(n, k) for a prompt with c correct of n, averaged over prompts;
- answer lengths, and the weight versions that answered (so a reader can tell which weights did).

A sample is correct when its reward exceeds 0.5 (rewards are 1/0 for the math task).
"""

from __future__ import annotations

import asyncio
from typing import Callable, Mapping, Sequence

import numpy as np

from areal_lite.inference.client import InferenceClient
from areal_lite.rollout.workflow import RolloutWorkflow

ProgressFn = Callable[[str, int, int], None]  # (set name, prompts done, prompts in the set)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n−c, k) / C(n, k).

    The probability that k samples drawn without replacement from the n contain a correct one,
    computed as a product (no large binomials): C(n−c, k)/C(n, k) = Π_{i=n−c+1..n} (1 − k/i).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_ks(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n]


def score_groups(rewards: Sequence[Sequence[float]], correct_threshold: float = 0.5) -> dict[str, float]:
    """accuracy (first sample), avg@n and pass@k of prompts answered n times each (rewards[prompt][sample])."""
    n = min(len(r) for r in rewards)
    correct = np.asarray([[x > correct_threshold for x in r[:n]] for r in rewards], np.float64)  # [P, n]
    out = {"accuracy": float(correct[:, 0].mean()), "reward_mean": float(np.mean([r[0] for r in rewards]))}
    if n > 1:
        out[f"avg@{n}"] = float(correct.mean())
    counts = correct.sum(axis=1).astype(int)
    for k in pass_ks(n):
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in counts]))
    return out


async def aevaluate(
    workflow: RolloutWorkflow,
    client: InferenceClient,
    records: Sequence[dict],
    *,
    prefix: str = "eval",
    concurrency: int = 32,
    correct_threshold: float = 0.5,
    progress_fn: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Scores of `workflow` on `records` as `{prefix}/accuracy`, `{prefix}/pass@k`, ...; `progress_fn(done,
    total)` after each prompt."""
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def one(record: dict):
        nonlocal done
        async with sem:
            group = await workflow.arun_episode(client, record)
        done += 1
        if progress_fn is not None:
            progress_fn(done, len(records))
        return group

    if progress_fn is not None:
        progress_fn(0, len(records))
    groups = [g for g in await asyncio.gather(*(one(r) for r in records)) if g]
    if not groups:
        return {f"{prefix}/num_prompts": 0.0}
    scores = score_groups([[t.reward for t in g] for g in groups], correct_threshold)
    lengths = np.asarray([t.num_generated for g in groups for t in g], np.float64)
    versions = np.concatenate([t.versions[t.loss_mask.astype(bool)] for g in groups for t in g] or [np.zeros(1)])
    return {
        **{f"{prefix}/{k}": v for k, v in scores.items()},
        f"{prefix}/gen_len_mean": float(lengths.mean()),
        f"{prefix}/num_prompts": float(len(groups)),
        f"{prefix}/version_min": float(versions.min()) if versions.size else 0.0,
        f"{prefix}/version_max": float(versions.max()) if versions.size else 0.0,
    }


def metric_prefix(name: str) -> str:
    """`eval` for the held-out set (name ''), `eval/<name>` for another."""
    return f"eval/{name}" if name else "eval"


class Evaluator:
    """Held-out evaluation on a schedule, from the process that owns it (trainer rank 0).

    `sets` maps a set's name to its records: '' is valid_dataset (metrics `eval/*`), any other name a
    set of `evaluator.extra_datasets` (metrics `eval/<name>/*`). `enabled=False` (the other ranks,
    or nothing to evaluate) makes every call return {} so the training loop calls it the same way on
    every rank. One workflow (and its reward pool) serves every evaluation of the run.
    """

    def __init__(self, workflow: RolloutWorkflow | None, sets: Mapping[str, Sequence[dict]] | None, *,
                 server_addrs: list[str], api_key: str | None, request_timeout: float, schedule, enabled: bool,
                 progress_fn: ProgressFn | None = None):
        self.workflow = workflow
        self.sets = {name: list(records) for name, records in (sets or {}).items() if records}
        self.server_addrs, self.api_key, self.request_timeout = server_addrs, api_key, request_timeout
        self.schedule = schedule
        self.progress_fn = progress_fn
        self.enabled = enabled and workflow is not None and bool(self.sets)

    def run(self) -> dict[str, float]:
        if not self.enabled:
            return {}

        async def go() -> dict[str, float]:
            out: dict[str, float] = {}
            async with InferenceClient(self.server_addrs, api_key=self.api_key,
                                       request_timeout=self.request_timeout) as client:
                for name, records in self.sets.items():
                    progress = None if self.progress_fn is None else \
                        (lambda done, total, name=name: self.progress_fn(name, done, total))
                    out.update(await aevaluate(self.workflow, client, records, prefix=metric_prefix(name),
                                               progress_fn=progress))
            return out

        return asyncio.run(go())

    def initial(self) -> dict[str, float]:
        """The starting weights' scores as `eval/*_initial`, so a run shows where it began."""
        return {f"{k}_initial": v for k, v in self.run().items()}

    def after(self, step: int) -> dict[str, float]:
        """The scores after `step`, when the schedule says so ({} otherwise)."""
        return self.run() if self.enabled and self.schedule.due(step) else {}
