"""Rollout workflows: a prompt record in, one group of scored trajectories out (or None to reject).

A workflow is any object with `async arun_episode(client, record) -> list[Trajectory] | None`.
Built in:
- `RLVRWorkflow`: n samples of one prompt, each scored by a reward function (single turn).
- `MultiTurnWorkflow`: the model and an environment function alternate; only model tokens are
  trained (loss mask 1), environment tokens are context (loss mask 0).
Users write their own in a few lines (see examples/math/gsm8k_drgrpo.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, Sequence

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

    async def arun_episode(self, client: InferenceClient, record: dict) -> list[Trajectory] | None:
        prompt_ids = self.prompt_fn(record)
        gens = await asyncio.gather(
            *(client.agenerate(prompt_ids, self.sampling) for _ in range(self.n_samples))
        )
        kwargs = self.reward_kwargs_fn(record)
        t0 = time.monotonic()
        texts = [self.decode_fn(g.output_ids) for g in gens]
        rewards = await asyncio.gather(*(self.reward_pool.score(self.reward_fn, t, **kwargs) for t in texts))
        reward_s = time.monotonic() - t0
        failures = sum(r is None for r in rewards)
        if failures and self.reward_failure_policy == "drop_group":
            raise RewardFailure(f"{failures} of {len(rewards)} rewards failed", failures=failures)
        return [
            Trajectory.from_generation(
                prompt_ids, g, 0.0 if r is None else r, reward_failed=r is None, reward_s=round(reward_s, 4)
            )
            for g, r in zip(gens, rewards)
        ]


EnvStep = Callable[[dict, list[dict]], Awaitable[tuple[list[int], bool, float | None]]]


class MultiTurnWorkflow:
    """The model and an environment alternate; the group's trajectories train only model tokens.

    `env_step(record, history)` gets the turns so far (each `{"role": "model"|"env", "ids", "text"}`)
    and returns (token ids to append as the environment's turn, done, reward or None). The episode
    ends when the environment says done, after `max_turns` model turns, or when the context budget
    `max_total_tokens` is used up; the last reward returned is the trajectory's reward (0 if none).
    """

    def __init__(
        self,
        *,
        prompt_fn: Callable[[dict], list[int]],
        decode_fn: Callable[[list[int]], str],
        env_step: EnvStep,
        sampling: SamplingParams,
        n_samples: int,
        max_turns: int = 4,
        max_total_tokens: int = 1024,
    ):
        self.prompt_fn = prompt_fn
        self.decode_fn = decode_fn
        self.env_step = env_step
        self.sampling = sampling
        self.n_samples = n_samples
        self.max_turns = max_turns
        self.max_total_tokens = max_total_tokens

    async def _one(self, client: InferenceClient, record: dict) -> Trajectory:
        prompt_ids = self.prompt_fn(record)
        ids = list(prompt_ids)
        mask = [0] * len(ids)
        logp = [0.0] * len(ids)
        versions = [-1] * len(ids)
        history: list[dict] = []
        reward: float | None = None
        finish = "stop"
        interruptions = 0
        for _ in range(self.max_turns):
            budget = min(self.sampling.max_new_tokens, self.max_total_tokens - len(ids))
            if budget <= 0:
                finish = "length"
                break
            params = SamplingParams(**{**vars(self.sampling), "max_new_tokens": budget})
            gen = await client.agenerate(ids, params)
            interruptions += gen.num_interruptions
            ids += gen.output_ids
            mask += [1] * len(gen.output_ids)
            logp += gen.logprobs
            versions += gen.versions
            history.append({"role": "model", "ids": gen.output_ids, "text": self.decode_fn(gen.output_ids)})
            finish = gen.finish_reason
            env_ids, done, step_reward = await self.env_step(record, history)
            if step_reward is not None:
                reward = float(step_reward)
            if done:
                break
            env_ids = list(env_ids)[: max(0, self.max_total_tokens - len(ids))]
            ids += env_ids
            mask += [0] * len(env_ids)
            logp += [0.0] * len(env_ids)
            versions += [-1] * len(env_ids)
            history.append({"role": "env", "ids": env_ids, "text": self.decode_fn(env_ids)})
        return Trajectory(
            input_ids=np.asarray(ids, np.int32),
            loss_mask=np.asarray(mask, np.uint8),
            behav_logp=np.asarray(logp, np.float32),
            versions=np.asarray(versions, np.int32),
            reward=0.0 if reward is None else reward,
            prompt_len=len(prompt_ids),
            finish_reason=finish,
            info={"turns": sum(h["role"] == "model" for h in history), "num_interruptions": interruptions},
        )

    async def arun_episode(self, client: InferenceClient, record: dict) -> list[Trajectory] | None:
        return list(await asyncio.gather(*(self._one(client, record) for _ in range(self.n_samples))))
