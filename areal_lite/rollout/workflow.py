"""Rollout workflows: a prompt record in, one group of scored trajectories out (or None to reject).

A workflow is any object with `async arun_episode(client, record) -> list[Trajectory] | None`.
Built in:
- `RLVRWorkflow`: n samples of one prompt, each scored by a reward function (single turn); with
  `greedy_baseline` also one greedy answer, not trained, whose reward every sample carries as
  `info["baseline_reward"]` (ReMax's baseline, `actor.adv_estimator=remax`).
Multi-turn episodes against an environment: `areal_lite.rollout.multi_turn.EnvWorkflow`.
Users write their own in a few lines (see examples/math/gsm8k_drgrpo.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from areal_lite.inference.client import GenerationResult, InferenceClient, SamplingParams
from areal_lite.rollout.reward_pool import RewardPool


class RewardFailure(Exception):
    """A group is dropped because a reward failed under the `drop_group` policy (`failures`: how many)."""

    def __init__(self, message: str, failures: int = 0):
        super().__init__(message)
        self.failures = failures


@dataclass
class Trajectory:
    """One sample: the full token sequence and what the trainer needs per token."""

    input_ids: np.ndarray  # [L] int32: prompt + completion (+ environment turns)
    loss_mask: np.ndarray  # [L] uint8: 1 on tokens the policy generated and is trained on
    behav_logp: np.ndarray  # [L] float32: behaviour log-prob of generated tokens, 0 elsewhere
    versions: np.ndarray  # [L] int32: weight version that produced each token, -1 for context
    reward: float
    prompt_len: int
    finish_reason: str
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_generation(cls, prompt_ids: Sequence[int], gen: GenerationResult, reward: float, **info) -> "Trajectory":
        p, n = len(prompt_ids), len(gen.output_ids)
        return cls(
            input_ids=np.asarray([*prompt_ids, *gen.output_ids], dtype=np.int32),
            loss_mask=np.concatenate([np.zeros(p, np.uint8), np.ones(n, np.uint8)]),
            behav_logp=np.concatenate([np.zeros(p, np.float32), np.asarray(gen.logprobs, np.float32)]),
            versions=np.concatenate([np.full(p, -1, np.int32), np.asarray(gen.versions, np.int32)]),
            reward=float(reward),
            prompt_len=p,
            finish_reason=gen.finish_reason,
            info={
                "num_interruptions": gen.num_interruptions,
                "latency_s": round(gen.latency_s, 4),
                **info,
            },
        )

    @property
    def num_generated(self) -> int:
        return int(self.loss_mask.sum())


class RolloutWorkflow(Protocol):
    async def arun_episode(self, client: InferenceClient, record: dict) -> list[Trajectory] | None: ...


def sampling_from_gconfig(gconfig: Any) -> SamplingParams:
    """SamplingParams from a `GenerationConfig` section."""
    return SamplingParams(
        max_new_tokens=gconfig.max_new_tokens,
        temperature=gconfig.temperature,
        top_p=gconfig.top_p,
        top_k=gconfig.top_k,
        min_new_tokens=gconfig.min_new_tokens,
        stop_token_ids=list(gconfig.stop_token_ids),
    )


def default_reward_kwargs(record: dict) -> dict:
    return {"answer": record.get("answer", "")}


class RLVRWorkflow:
    """Single-turn reinforcement learning from verifiable rewards."""

    def __init__(
        self,
        *,
        prompt_fn: Callable[[dict], list[int]],
        decode_fn: Callable[[list[int]], str],
        reward_fn: Callable[..., float],
        sampling: SamplingParams,
        n_samples: int,
        reward_pool: RewardPool,
        reward_failure_policy: str = "zero",
        reward_kwargs_fn: Callable[[dict], dict] = default_reward_kwargs,
        greedy_baseline: bool = False,
    ):
        if reward_failure_policy not in ("zero", "drop_group"):
            raise ValueError(f"reward_failure_policy {reward_failure_policy!r} is not zero or drop_group")
        self.prompt_fn = prompt_fn
        self.decode_fn = decode_fn
        self.reward_fn = reward_fn
        self.sampling = sampling
        self.n_samples = n_samples
        self.reward_pool = reward_pool
        self.reward_failure_policy = reward_failure_policy
        self.reward_kwargs_fn = reward_kwargs_fn
        self.greedy_baseline = greedy_baseline

    async def arun_episode(self, client: InferenceClient, record: dict) -> list[Trajectory] | None:
        prompt_ids = self.prompt_fn(record)
        requests = [client.agenerate(prompt_ids, self.sampling) for _ in range(self.n_samples)]
        if self.greedy_baseline:  # temperature 0 is greedy on SGLang and the embedded engine
            requests.append(client.agenerate(prompt_ids, replace(self.sampling, temperature=0.0)))
        gens = await asyncio.gather(*requests)
        kwargs = self.reward_kwargs_fn(record)
        t0 = time.monotonic()
        texts = [self.decode_fn(g.output_ids) for g in gens]
        rewards = await asyncio.gather(*(self.reward_pool.score(self.reward_fn, t, **kwargs) for t in texts))
        reward_s = time.monotonic() - t0
        failures = sum(r is None for r in rewards)
        if failures and self.reward_failure_policy == "drop_group":
            raise RewardFailure(f"{failures} of {len(rewards)} rewards failed", failures=failures)
        extra = {}
        if self.greedy_baseline:  # not trained; a failed baseline reward scores 0, as a failed sample does
            gens, baseline = gens[:-1], rewards.pop()
            extra = {"baseline_reward": 0.0 if baseline is None else float(baseline),
                     "baseline_reward_failed": baseline is None}
        return [
            Trajectory.from_generation(
                prompt_ids, g, 0.0 if r is None else r, reward_failed=r is None, reward_s=round(reward_s, 4), **extra
            )
            for g, r in zip(gens, rewards)
        ]
