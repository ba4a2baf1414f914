"""Multi-turn episodes against a text environment, as training samples.

`EnvWorkflow.arun_episode(client, record)` resets `n_samples` environments with the record's seed
(one GRPO group: every episode starts from the same state; a record without a seed gets one fresh
seed for its group) and the record itself as Gymnasium's reset `options` (an environment may read
its fields: math_retry reads a dataset record's question and answer), and plays each one out:

    prompt = chat(system?, user: first observation) + generation prompt
    repeat: reply ← the server (model tokens: loss_mask 1, behaviour log-prob, weight version)
            observation, reward ← env.step(reply text)
            append end-of-turn + user: observation + generation prompt (context: loss_mask 0)

until the environment terminates or truncates, `max_turns` replies were made, or the next turn
would not fit in `max_total_tokens`. The sequence ends with the last reply.

RL-correctness choices:
- The model's tokens are kept exactly as sampled (never decoded and re-encoded), so their
  behaviour log-probs belong to them. Everything between replies is tokenized from the
  tokenizer's own chat template, by difference (`ChatTurns`): the ids equal `apply_chat_template`
  of the whole conversation whenever the model's tokens are the tokenizer's encoding of its text.
- Replies go through `InferenceClient.agenerate`, which resubmits a request that a weight update
  aborted; each token carries the version that produced it, so an episode may span versions.
- Reward: Σ over turns of (environment reward + `format_penalty` if the reply was a format
  error), RAGEN's summed score. The per-turn values stay on the trajectory (`turn_rewards`, with
  `turn_spans` locating each reply's tokens) for per-turn credit assignment; they do not travel to
  the trainer today (a group carries one reward per sample).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from areal_lite.envs import TextEnv
from areal_lite.envs.math_retry import MathRetryEnv
from areal_lite.inference.client import GenerationResult, InferenceClient, SamplingParams
from areal_lite.reward.math import math_reward
from areal_lite.rollout.workflow import Trajectory

# finish_reason of an episode: the trainer's `truncated` flag (mask_truncated_reward) reads "length".
FINISH_REASONS = ("stop", "truncated", "max_turns", "length")
_MARK = "\u2063areal-lite-reply\u2063"  # an assistant reply no real template rewrites


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be extended turn by turn; the message is one line."""


class ChatTurns:
    """Token ids of a chat built turn by turn with the tokenizer's chat template.

    The template is rendered on small probe conversations to find (a) the text that closes an
    assistant turn (`eot_text`, e.g. "<|im_end|>\\n") and (b) the text of a new user message plus
    the generation prompt. Both are tokenized on their own. The pieces concatenate to the whole
    conversation's ids when the tokenizer never merges text across the template's boundaries:
    true of Qwen2's and Llama 3's pre-tokenizers (a boundary is a special token or a run of
    newlines, each a piece of its own), not promised by GPT-2's. Either way the sequence holds
    exactly the ids the model was given and the ids it produced.
    """

    def __init__(self, tokenizer, system_prompt: str | None = None, template_kwargs: dict | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError("the tokenizer has no chat template; multi-turn episodes need one")
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self._base = [*self.system, {"role": "user", "content": "Hello."}, {"role": "assistant", "content": _MARK}]
        gen = self.render(self._base[:-1], generation_prompt=True)
        self._base_text = self.render(self._base, generation_prompt=False)
        if not self._base_text.startswith(gen + _MARK):
            raise ChatTemplateError("the chat template does not render a reply as the generation prompt followed "
                                    "by the reply's text, so model tokens cannot be appended as generated")
        self.eot_text = self._base_text[len(gen) + len(_MARK):]
        self.user_text("Probe.")  # fails now, not mid-episode, for templates that rewrite earlier turns
        eot_ids = self.encode(self.eot_text)
        special = set(getattr(tokenizer, "all_special_ids", [])) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        # The token that ends a reply (e.g. <|im_end|>): the server stops on it, and a reply that
        # ends with it is closed by the model itself.
        self.eot_id: int | None = eot_ids[0] if eot_ids and eot_ids[0] in special else None
        closing = tokenizer.decode([self.eot_id]) if self.eot_id is not None else ""
        self._eot_rest = self.eot_text[len(closing):] if closing and self.eot_text.startswith(closing) else None

    def render(self, messages: list[dict], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **self.template_kwargs
        )

    def encode(self, text: str) -> list[int]:
        # A rendered template already holds its BOS text: add no special tokens of our own.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def messages(self, first_observation: str) -> list[dict]:
        return [*self.system, {"role": "user", "content": first_observation}]

    def prompt_ids(self, first_observation: str) -> list[int]:
        """The episode's prompt: system prompt (if any), the first observation, the generation prompt."""
        return self.encode(self.render(self.messages(first_observation), generation_prompt=True))

    def user_text(self, observation: str) -> str:
        """A user message holding `observation`, then the generation prompt, as the template writes them."""
        text = self.render([*self._base, {"role": "user", "content": observation}], generation_prompt=True)
        if not text.startswith(self._base_text):
            raise ChatTemplateError("the chat template rewrites earlier turns when a message is added, so an "
                                    "episode cannot be extended turn by turn")
        return text[len(self._base_text):]

    def observation_ids(self, observation: str, reply_closed: bool) -> list[int]:
        """Ids after a reply: the rest of its end-of-turn (all of it unless the model generated the
        end-of-turn token itself), the observation as a user message, the generation prompt."""
        eot = self._eot_rest if reply_closed and self._eot_rest is not None else self.eot_text
        return self.encode(eot + self.user_text(observation))

    def episode_ids(self, observations: list[str], replies: list[str]) -> tuple[list[int], list[int]]:
        """(ids, loss_mask) of a whole episode laid out as `EnvWorkflow` lays out a sampled one, for
        SFT on demonstrations: each reply is the tokenizer's encoding of its text closed by the
        end-of-turn token (or EOS where the template has none), mask 1; the rest mask 0.
        `observations[k]` precedes `replies[k]`."""
        if len(observations) != len(replies) or not replies:
            raise ValueError(f"an episode needs one observation before each reply, got {len(observations)} "
                             f"observations and {len(replies)} replies")
        close = self.eot_id if self.eot_id is not None else self.tokenizer.eos_token_id
        ids = self.prompt_ids(observations[0])
        mask = [0] * len(ids)
        for k, reply in enumerate(replies):
            if k:
                context = self.observation_ids(observations[k], reply_closed=True)
                ids += context
                mask += [0] * len(context)
            reply_ids = [*self.encode(reply), close]
            ids += reply_ids
            mask += [1] * len(reply_ids)
        return ids, mask


@dataclass
class EpisodeTrajectory(Trajectory):
    """A Trajectory plus the per-turn record of its episode (kept on the worker side)."""

    turn_rewards: list[float] = field(default_factory=list)  # environment reward + penalty, per reply
    turn_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each reply's tokens


class _Episode:
    """The growing record of one episode: the sequence, its per-token training columns, the turns."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.logp: list[float] = []
        self.versions: list[int] = []
        self.prompt_len = 0
        self.spans: list[tuple[int, int]] = []
        self.turn_rewards: list[float] = []
        self.last_info: dict[str, Any] = {}
        self.stats = {"env_reward": 0.0, "format_errors": 0, "num_interruptions": 0, "gen_s": 0.0, "env_s": 0.0}

    def add_context(self, ids: list[int]) -> None:
        self.ids += ids
        self.mask += [0] * len(ids)
        self.logp += [0.0] * len(ids)
        self.versions += [-1] * len(ids)

    def add_reply(self, gen: GenerationResult, gen_s: float) -> None:
        start = len(self.ids)
        self.ids += gen.output_ids
        self.mask += [1] * len(gen.output_ids)
        self.logp += gen.logprobs
        self.versions += gen.versions
        self.spans.append((start, len(self.ids)))
        self.stats["num_interruptions"] += gen.num_interruptions
        self.stats["gen_s"] += gen_s

    def add_outcome(self, reward: float, info: dict[str, Any], format_penalty: float, env_s: float) -> None:
        format_error = bool(info.get("format_error"))
        self.turn_rewards.append(reward + (format_penalty if format_error else 0.0))
        self.last_info = info
        self.stats["env_reward"] += reward
        self.stats["format_errors"] += format_error
        self.stats["env_s"] += env_s

    def trajectory(self, finish: str) -> EpisodeTrajectory:
        s = self.stats
        return EpisodeTrajectory(
            input_ids=np.asarray(self.ids, np.int32),
            loss_mask=np.asarray(self.mask, np.uint8),
            behav_logp=np.asarray(self.logp, np.float32),
            versions=np.asarray(self.versions, np.int32),
            reward=float(sum(self.turn_rewards)),
            prompt_len=self.prompt_len,
            finish_reason=finish,
            info={
                "turns": len(self.spans),
                "success": bool(self.last_info.get("success", False)),
                "seed": -1 if self.seed is None else int(self.seed),
                "env_reward": float(s["env_reward"]),
                "format_errors": int(s["format_errors"]),
                "num_interruptions": int(s["num_interruptions"]),
                "gen_s": round(s["gen_s"], 4),
                "env_s": round(s["env_s"], 4),
            },
            turn_rewards=list(self.turn_rewards),
            turn_spans=list(self.spans),
        )


# The `math_retry` environment (areal_lite/envs/math_retry.py) checking answers with areal_lite.reward.math,
# as the single-turn math workflow does. Environments import nothing else of areal_lite, so the check is
# supplied here; a partial keeps MathRetryEnv's signature, so make_env checks option names:
#     register_env("math_retry", math_retry_env)
math_retry_env = functools.partial(MathRetryEnv, check_fn=math_reward)


def seed_records(num: int, start: int = 0) -> list[dict]:
    """Records for environment tasks: one per seed, `{"id": "seed<k>", "seed": k}`."""
    return [{"id": f"seed{k}", "seed": k} for k in range(start, start + num)]


class EnvWorkflow:
    """n episodes of an environment per record (its `seed`), each one `EpisodeTrajectory`."""

    def __init__(
        self,
        *,
        env_fn: Callable[[], TextEnv],
        tokenizer,
        sampling: SamplingParams,
        n_samples: int,
        max_turns: int = 5,
        max_total_tokens: int = 2048,
        format_penalty: float = -0.1,
        system_prompt: str | None = None,
        template_kwargs: dict | None = None,
    ):
        if max_turns < 1 or n_samples < 1:
            raise ValueError(f"max_turns and n_samples must be >= 1, got {max_turns} and {n_samples}")
        self.env_fn = env_fn
        self.tokenizer = tokenizer
        self.turns = ChatTurns(tokenizer, system_prompt, template_kwargs)
        stops = list(sampling.stop_token_ids)
        if self.turns.eot_id is not None and self.turns.eot_id not in stops:
            stops.append(self.turns.eot_id)
        self.sampling = dataclasses.replace(sampling, stop_token_ids=stops)
        self.n_samples = n_samples
        self.max_turns = max_turns
        self.max_total_tokens = max_total_tokens
        self.format_penalty = float(format_penalty)

    async def arun_episode(self, client: InferenceClient, record: dict) -> list[Trajectory] | None:
        seed = record.get("seed")
        if seed is None:  # one fresh seed for the whole group: its episodes must start alike
            seed = int(np.random.SeedSequence().entropy % 2**31)
        elif not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"record {record.get('id')!r}: seed must be an integer, got {seed!r}")
        episodes = (self.arun_one(client, seed, options=record) for _ in range(self.n_samples))
        return list(await asyncio.gather(*episodes))

    async def arun_one(self, client: InferenceClient, seed: int | None, options: dict | None = None
                       ) -> EpisodeTrajectory:
        """One episode from `env.reset(seed=seed, options=options)` to its end (`options`: the
        record, whose fields an environment may read, e.g. math_retry's question and answer)."""
        env = self.env_fn()
        try:
            obs, _ = await asyncio.to_thread(env.reset, seed=seed, options=options)
            return await self._play(client, env, obs, seed)
        finally:
            env.close()

    async def _play(self, client: InferenceClient, env: TextEnv, obs: str, seed: int | None) -> EpisodeTrajectory:
        ep = _Episode(seed)
        ep.add_context(self.turns.prompt_ids(obs))
        ep.prompt_len = len(ep.ids)
        if ep.prompt_len >= self.max_total_tokens:
            raise ValueError(f"the first observation takes {ep.prompt_len} tokens, max_total_tokens is "
                             f"{self.max_total_tokens}: no room for a reply")
        for turn in range(self.max_turns):
            # >= 1: the prompt fits, and an observation is added only when a reply still fits after it
            budget = min(self.sampling.max_new_tokens, self.max_total_tokens - len(ep.ids))
            t0 = time.monotonic()
            gen = await client.agenerate(ep.ids, dataclasses.replace(self.sampling, max_new_tokens=budget))
            t1 = time.monotonic()
            ep.add_reply(gen, t1 - t0)
            reply = self.tokenizer.decode(gen.output_ids, skip_special_tokens=True)
            obs, reward, terminated, truncated, info = await asyncio.to_thread(env.step, reply)
            ep.add_outcome(reward, info, self.format_penalty, time.monotonic() - t1)
            if terminated or truncated or turn == self.max_turns - 1:
                return ep.trajectory("stop" if terminated else "truncated" if truncated else "max_turns")
            closed = bool(gen.output_ids) and gen.output_ids[-1] == self.turns.eot_id
            obs_ids = self.turns.observation_ids(obs, closed)
            if len(ep.ids) + len(obs_ids) >= self.max_total_tokens:
                break  # no room left for another reply
            ep.add_context(obs_ids)
        return ep.trajectory("length")
