"""EnvWorkflow end to end against a real embedded inference server on the tiny model: one sequence
per episode, masks / behaviour log-probs / versions per token, group seeding, limits, an episode
across a weight-version change (the client's pause/resume path), and no gradient on env tokens."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from areal_lite import algo
from areal_lite.envs import TextEnv, make_env
from areal_lite.inference.client import InferenceClient, SamplingParams, ServerAdmin, parse_version
from areal_lite.inference.embedded.local_server import start_local_server
from areal_lite.rollout.multi_turn import FINISH_REASONS, EnvWorkflow, EpisodeTrajectory, seed_records

pytestmark = pytest.mark.timeout(120)

SERVER_ARGS = ["--context-length", "1024", "--max-running-requests", "8", "--log-level", "warning"]


class Scripted(TextEnv):
    """Step k answers "State k." with rewards[k]; ends (terminates, or truncates) after the last one.

    Every reset and reply is written to `log`; `stepped` is set at the first step."""

    def __init__(self, rewards, *, truncate=False, format_errors=(), obs_len=0, log=None, stepped=None):
        self.rewards, self.truncate, self.format_errors = list(rewards), truncate, set(format_errors)
        self.obs_len, self.log, self.stepped = obs_len, log if log is not None else [], stepped

    def _reset(self, options):
        self.k = 0
        obs = f"Start {int(self.np_random.integers(1000))}." + "x" * self.obs_len
        self.log.append(("reset", obs))
        return obs, {}

    def _step(self, reply):
        if self.stepped is not None:
            self.stepped.set()
        reward, k = self.rewards[self.k], self.k
        self.k += 1
        end = self.k == len(self.rewards)
        obs = f"State {self.k}." + "x" * self.obs_len
        self.log.append(("step", reply, obs))
        info = {"format_error": k in self.format_errors, "success": end and not self.truncate}
        return obs, reward, end and not self.truncate, end and self.truncate, info


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server_logs") / "multi_turn.log"
    with start_local_server(tiny_model_dir, extra_args=SERVER_ARGS, log_path=log, startup_timeout=120) as s:
        yield s


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def ref_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def run(server, coro_fn):
    async def go():
        async with InferenceClient([server.url]) as client:
            return await coro_fn(client)

    return asyncio.run(go())


def version(server) -> int:
    return parse_version(ServerAdmin([server.url]).call_all("/model_info", method="GET")[0]["weight_version"])


def teacher_forced(model, ids: np.ndarray) -> torch.Tensor:
    """log π(ids[t] | ids[:t]) for t ≥ 1 under one forward of the whole sequence; 0 at t = 0.  # [L]"""
    x = torch.as_tensor(ids, dtype=torch.long)[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits[0, :-1].float(), dim=-1)
    return torch.cat([torch.zeros(1), logp.gather(1, x[0, 1:, None]).squeeze(1)])


@pytest.fixture(scope="module")
def group(server, tokenizer):
    """One group of three 3-turn episodes from seed 7 (reply 2 is a format error)."""
    log: list = []
    workflow = EnvWorkflow(
        env_fn=lambda: Scripted([0.5, 0.0, 1.0], format_errors={1}, log=log), tokenizer=tokenizer,
        sampling=SamplingParams(max_new_tokens=16, temperature=1.0), n_samples=3, max_turns=5,
    )
    trajs = run(server, lambda c: workflow.arun_episode(c, seed_records(1, start=7)[0]))
    return workflow, trajs, log, version(server)


def test_episode_is_one_sequence_and_only_model_tokens_are_trained(group, ref_model):
    workflow, trajs, log, v = group
    resets = [e[1] for e in log if e[0] == "reset"]
    assert len(trajs) == 3 and len(resets) == 3 and len(set(resets)) == 1  # one group, one seed
    for t in trajs:
        assert isinstance(t, EpisodeTrajectory) and t.finish_reason == "stop"
        assert t.turn_rewards == pytest.approx([0.5, -0.1, 1.0]) and t.reward == pytest.approx(1.4)
        assert t.info["turns"] == 3 and t.info["format_errors"] == 1 and t.info["success"] is True
        assert t.info["env_reward"] == pytest.approx(1.5) and t.info["seed"] == 7
        n = len(t.input_ids)
        assert len(t.loss_mask) == len(t.behav_logp) == len(t.versions) == n
        expected_mask = np.zeros(n, np.uint8)
        for a, b in t.turn_spans:
            expected_mask[a:b] = 1
        assert (t.loss_mask == expected_mask).all() and t.turn_spans[-1][1] == n  # ends with the last reply
        model, ctx = t.loss_mask == 1, t.loss_mask == 0
        assert (t.versions[model] == v).all() and (t.versions[ctx] == -1).all()
        assert (t.behav_logp[ctx] == 0).all() and (t.behav_logp[model] < 0).all()
        # Context = the prompt, then the template's end of turn + observation between replies.
        assert t.prompt_len == t.turn_spans[0][0]
        assert t.input_ids[: t.prompt_len].tolist() == workflow.turns.prompt_ids(resets[0])
        for k, ((_, end), (start, _)) in enumerate(zip(t.turn_spans, t.turn_spans[1:])):
            closed = t.input_ids[end - 1] == workflow.turns.eot_id
            obs = f"State {k + 1}."
            assert t.input_ids[end:start].tolist() == workflow.turns.observation_ids(obs, closed)
        # The behaviour log-probs are those of these tokens in this whole multi-turn context.
        ref = teacher_forced(ref_model, t.input_ids).numpy()
        np.testing.assert_allclose(t.behav_logp[model], ref[model], atol=2e-4)


def test_env_tokens_carry_no_gradient(group, ref_model):
    """The trainer's loss on an episode's rows: d loss / d logp is exactly 0 on every loss_mask-0 token
    (prompt, template, observations, padding), for every reduction, with and without decoupled PPO."""
    _, trajs, _, _ = group
    T = max(len(t.input_ids) for t in trajs)
    rows = lambda arr: torch.stack([torch.nn.functional.pad(torch.as_tensor(a, dtype=torch.float32), (0, T - len(a)))
                                    for a in arr])  # noqa: E731  # [B, T]
    mask = rows([t.loss_mask for t in trajs]) > 0
    behav = rows([t.behav_logp for t in trajs])
    current = rows([teacher_forced(ref_model, t.input_ids) for t in trajs])
    adv = torch.full((len(trajs), T), 1.5)  # non-zero everywhere: the mask alone must stop the gradient
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "token_sum"):
        for decoupled in (False, True):
            logp = current.clone().requires_grad_(True)
            token_loss, _ = algo.policy_loss(
                logp, behav, adv, mask, eps_clip=0.2, c_clip=3.0,
                behav_logp=behav - 0.05 if decoupled else None, behav_weight_cap=5.0 if decoupled else None,
            )
            algo.reduce_loss(token_loss, mask, mode, norm_constant=16.0).backward()
            assert (logp.grad[~mask] == 0).all(), (mode, decoupled)
            ratio = torch.exp(current - behav)
            inside = mask & (ratio < 1.2)  # unclipped model tokens do get a gradient
            assert inside.sum() > 0 and (logp.grad[inside] != 0).all(), (mode, decoupled)


def test_limits_end_episodes(server, tokenizer):
    def flow(env_fn, **kw):
        args = dict(sampling=SamplingParams(max_new_tokens=16, temperature=1.0), n_samples=1, max_turns=5)
        return EnvWorkflow(env_fn=env_fn, tokenizer=tokenizer, **{**args, **kw})

    cases = {
        "max_turns": flow(lambda: Scripted([0.0] * 9), max_turns=2),
        "truncated": flow(lambda: Scripted([0.25, 0.25], truncate=True)),
        "length": flow(lambda: Scripted([0.0] * 9, obs_len=120), max_total_tokens=400,
                       sampling=SamplingParams(max_new_tokens=40, temperature=1.0)),
        "frozenlake": flow(lambda: make_env("frozenlake", is_slippery=False), max_turns=3),
    }

    async def go(client):
        return await asyncio.gather(*(w.arun_one(client, 3) for w in cases.values()))

    out = dict(zip(cases, run(server, go)))
    assert all(t.finish_reason in FINISH_REASONS for t in out.values())
    assert out["max_turns"].finish_reason == "max_turns" and len(out["max_turns"].turn_spans) == 2
    assert out["truncated"].finish_reason == "truncated" and out["truncated"].reward == pytest.approx(0.5)
    assert out["truncated"].info["success"] is False
    long = out["length"]
    assert long.finish_reason == "length" and len(long.input_ids) <= 400
    assert long.turn_spans[-1][1] == len(long.input_ids)  # the budget ends it after a reply, never mid-context
    # The real environment: a random tiny model never writes a valid move, so each reply costs the penalty.
    lake = out["frozenlake"]
    assert lake.finish_reason == "max_turns" and lake.info["format_errors"] == 3
    assert lake.reward == pytest.approx(-0.3) and lake.turn_rewards == pytest.approx([-0.1] * 3)
    assert tokenizer.decode(lake.input_ids[: lake.prompt_len]).count("Moves left: 10.") == 1


def test_episode_across_a_weight_version_change(server, tokenizer):
    """Greedy: an episode paused mid-reply (as for a weight swap), its version bumped, then resumed,
    has the same tokens as one run straight through; its versions show the change."""
    stepped = threading.Event()
    workflow = EnvWorkflow(
        env_fn=lambda: Scripted([0.0, 0.0, 0.0], stepped=stepped), tokenizer=tokenizer,
        sampling=SamplingParams(max_new_tokens=160, temperature=0.0, ignore_eos=True), n_samples=1, max_turns=3,
    )
    admin = ServerAdmin([server.url])
    v = version(server)

    async def interrupted(client):
        task = asyncio.create_task(workflow.arun_one(client, 0))
        assert await asyncio.to_thread(stepped.wait, 60)  # reply 1 is done; reply 2 starts now
        deadline = time.monotonic() + 20
        while (await asyncio.to_thread(admin.server_info))[0]["num_running_reqs"] == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.002)
        await asyncio.to_thread(admin.pause)
        await asyncio.to_thread(admin.call_all, "/update_weight_version", {"new_version": str(v + 1)})
        await asyncio.to_thread(admin.resume)
        return await task

    straight = run(server, lambda c: workflow.arun_one(c, 0))
    stepped.clear()
    paused = run(server, interrupted)
    assert paused.input_ids.tolist() == straight.input_ids.tolist()
    assert (paused.loss_mask == straight.loss_mask).all() and paused.finish_reason == "stop"
    np.testing.assert_allclose(paused.behav_logp, straight.behav_logp, atol=2e-4)
    spans = paused.turn_spans
    first, second, third = (paused.versions[a:b] for a, b in spans)
    assert (first == v).all() and (third == v + 1).all()
    assert paused.info["num_interruptions"] >= 1 and second[0] == v and second[-1] == v + 1
    assert (np.diff(paused.versions[paused.loss_mask == 1]) >= 0).all()
    assert (straight.versions[straight.loss_mask == 1] == v).all()


def test_a_record_without_a_seed_gets_one_for_its_whole_group(server, tokenizer):
    log: list = []
    workflow = EnvWorkflow(env_fn=lambda: Scripted([0.0], log=log), tokenizer=tokenizer,
                           sampling=SamplingParams(max_new_tokens=4), n_samples=3, max_turns=1)
    trajs = run(server, lambda c: workflow.arun_episode(c, {"id": "no-seed"}))
    assert len({t.info["seed"] for t in trajs}) == 1 and trajs[0].info["seed"] >= 0
    assert len({e[1] for e in log if e[0] == "reset"}) == 1
    with pytest.raises(ValueError, match="record 'bad': seed must be an integer, got '7'"):
        run(server, lambda c: workflow.arun_episode(c, {"id": "bad", "seed": "7"}))


def test_multi_turn_math_shares_the_workflow_and_its_records(server, tokenizer):
    """math_retry through EnvWorkflow: a math record (areal_lite.data's fields) reaches reset as options;
    a wrong answer is followed by the feedback as context and a second, trained answer; an always-right
    check ends after one."""
    from areal_lite.envs.math_retry import FEEDBACK, MathRetryEnv
    from areal_lite.rollout.multi_turn import math_retry_env

    record = {"id": "q1", "question": "Eve has 987,650 coins and gets 4. How many coins now?", "answer": "987654"}
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0)
    wrong = EnvWorkflow(env_fn=lambda: math_retry_env(max_attempts=2), tokenizer=tokenizer, sampling=sampling,
                        n_samples=2, max_turns=4)
    right = EnvWorkflow(env_fn=lambda: MathRetryEnv(check_fn=lambda reply, answer: 1.0), tokenizer=tokenizer,
                        sampling=sampling, n_samples=1, max_turns=4)

    async def go(client):
        return await asyncio.gather(wrong.arun_episode(client, record), right.arun_episode(client, record))

    retried, [once] = run(server, go)
    for t in retried:  # the random tiny model never writes the answer
        assert t.finish_reason == "truncated" and t.reward == 0.0 and t.info["turns"] == 2
        assert tokenizer.decode(t.input_ids[: t.prompt_len]).count(record["question"]) == 1
        (a1, b1), (a2, b2) = t.turn_spans
        between = t.input_ids[b1:a2]
        assert tokenizer.decode(between).count(FEEDBACK) == 1 and not t.loss_mask[b1:a2].any()
        assert t.loss_mask[a1:b1].all() and t.loss_mask[a2:b2].all() and b2 == len(t.input_ids)
    assert once.finish_reason == "stop" and once.reward == 1.0 and once.info["success"] and once.info["turns"] == 1
