"""How requests end in the engine: stop tokens, min_new_tokens bans, the context length; both forwards."""

from __future__ import annotations

import threading

import pytest
import torch

from areal_lite.inference.embedded.engine import Engine, EngineConfig, SamplingSpec
from tests.inference.helpers import greedy_loop, teacher_forced_logprobs

PROMPT = list(range(40, 60))  # 20 tokens


@pytest.fixture(scope="module", params=[True, False], ids=["decoder", "model-forward"])
def engine(tiny_model_dir, request):
    config = EngineConfig(model_path=str(tiny_model_dir), context_length=24, max_running_requests=4,
                          use_decoder=request.param)
    eng = Engine(config).start()
    yield eng
    eng.shutdown()


def _run(engine, spec: SamplingSpec, prompt=PROMPT):
    done, box = threading.Event(), []
    engine.submit(f"r{id(spec)}", prompt, spec, lambda out: (box.append(out), done.set()))
    assert done.wait(30)
    return box[0]


@pytest.mark.timeout(60)
def test_context_length_ends_a_request_when_no_room_is_left(engine, ref_model):
    out = _run(engine, SamplingSpec(max_new_tokens=100, temperature=0.0, ignore_eos=True))
    # 20 prompt tokens + 4 outputs fill the 24 positions (the last output's KV is never needed).
    assert out.finish_reason == {"type": "length", "length": 4}
    assert out.output_ids == greedy_loop(ref_model, PROMPT, 4)


@pytest.mark.timeout(60)
def test_stop_token_ends_and_min_new_tokens_bans_it_first(engine, ref_model):
    greedy = greedy_loop(ref_model, PROMPT, 3)
    stop = greedy[0]
    # Without a ban, greedy decoding stops at once on the token it would produce first.
    free = _run(engine, SamplingSpec(max_new_tokens=3, temperature=0.0, stop_token_ids=frozenset([stop])))
    assert free.output_ids == [stop] and free.finish_reason == {"type": "stop", "matched": stop}
    # With min_new_tokens = 2 the stop token may not come first: the runner-up does, and its
    # reported log-prob is under the unbanned distribution.
    banned = _run(engine, SamplingSpec(max_new_tokens=3, temperature=0.0, min_new_tokens=2,
                                       stop_token_ids=frozenset([stop])))
    with torch.no_grad():
        logits = ref_model(torch.tensor([PROMPT])).logits[0, -1]
    runner_up = int(logits.topk(2).indices[1])
    assert banned.output_ids[0] == runner_up != stop
    ref = teacher_forced_logprobs(ref_model, PROMPT, banned.output_ids)
    assert banned.output_logprobs == pytest.approx(ref, abs=1e-4)
    assert stop not in banned.output_ids[:2]
