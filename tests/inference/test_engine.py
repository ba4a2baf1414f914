"""The engine in process: continuous batching against plain transformers, pause modes, abort."""

from __future__ import annotations

import threading
import time

import pytest

from areal_lite.inference.embedded.engine import Engine, EngineConfig, SamplingSpec
from tests.inference.helpers import generate_greedy, greedy_loop, teacher_forced_logprobs

PROMPTS = [[5, 6, 7, 8], list(range(10, 31)), [42], [100, 101, 102, 103, 104, 105, 106, 107, 108], [7, 7, 7]]


@pytest.fixture(scope="module", params=[True, False], ids=["decoder", "model-forward"])
def engine(tiny_model_dir, request):
    # Two slots for five requests: joins, leaves and slot moves all happen. Both forwards: the
    # engine's decoder (Llama-family models) and the model's own (every other model).
    config = EngineConfig(model_path=str(tiny_model_dir), context_length=128, max_running_requests=2,
                          use_decoder=request.param)
    eng = Engine(config).start()
    assert (eng.batch.decoder is not None) == request.param
    yield eng
    eng.shutdown()


class Collector:
    def __init__(self):
        self.outputs = {}
        self.cond = threading.Condition()

    def __call__(self, out):
        with self.cond:
            self.outputs[out.rid] = out
            self.cond.notify_all()

    def wait(self, rids, timeout=30.0):
        with self.cond:
            assert self.cond.wait_for(lambda: all(r in self.outputs for r in rids), timeout), self.outputs.keys()
        return [self.outputs[r] for r in rids]


def _wait_until(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.timeout(60)
def test_continuous_batching_matches_generate_and_teacher_forcing(engine, ref_model):
    got = Collector()
    lengths = [30, 5, 17, 24, 9]
    rids = [f"cb{i}" for i in range(len(PROMPTS))]
    late = {"cb4"}

    def on_done(out):
        got(out)
        if out.rid == "cb1":  # a request joins while others are mid-generation
            engine.submit("cb4", PROMPTS[4], SamplingSpec(max_new_tokens=lengths[4], temperature=0.0), got)

    for rid, p, n in zip(rids, PROMPTS, lengths):
        if rid not in late:
            engine.submit(rid, p, SamplingSpec(max_new_tokens=n, temperature=0.0), on_done)
    outs = got.wait(rids)
    for out, p, n in zip(outs, PROMPTS, lengths):
        assert out.output_ids == generate_greedy(ref_model, p, n)
        assert out.output_logprobs == pytest.approx(teacher_forced_logprobs(ref_model, p, out.output_ids), abs=1e-4)
        assert out.prompt_tokens == len(p)
        assert out.finish_reason in ({"type": "length", "length": n}, {"type": "stop", "matched": 0})
    assert engine.stats()["max_running_reqs"] == 2


@pytest.mark.timeout(60)
def test_sampled_logprobs_match_tempered_teacher_forcing(engine, ref_model):
    got = Collector()
    specs = [SamplingSpec(max_new_tokens=20, temperature=0.7, ignore_eos=True),
             SamplingSpec(max_new_tokens=12, temperature=1.3, top_p=0.9, top_k=50, ignore_eos=True)]
    for i, spec in enumerate(specs):
        engine.submit(f"s{i}", PROMPTS[i], spec, got)
    for i, (out, spec) in enumerate(zip(got.wait(["s0", "s1"]), specs)):
        assert len(out.output_ids) == spec.max_new_tokens
        ref = teacher_forced_logprobs(ref_model, PROMPTS[i], out.output_ids, spec.temperature)
        assert out.output_logprobs == pytest.approx(ref, abs=1e-4)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["in_place", "retract"])
def test_pause_modes_keep_requests_and_continue_identically(engine, ref_model, mode):
    got = Collector()
    engine.submit(f"p-{mode}", PROMPTS[1], SamplingSpec(max_new_tokens=60, temperature=0.0, ignore_eos=True), got)
    start = engine.stats()["generated_tokens"]
    _wait_until(lambda: engine.stats()["generated_tokens"] >= start + 5)
    engine.pause(mode).result(10)
    stats = engine.stats()
    assert stats["paused"] and stats["pause_mode"] == mode
    assert (stats["num_running_reqs"], stats["num_waiting_reqs"]) == ((1, 0) if mode == "in_place" else (0, 1))
    engine.resume().result(10)
    (out,) = got.wait([f"p-{mode}"])
    # Greedy under unchanged weights: the pause (and, for retract, the recomputed KV) is invisible.
    assert out.output_ids == greedy_loop(ref_model, PROMPTS[1], 60)
    assert out.output_logprobs == pytest.approx(teacher_forced_logprobs(ref_model, PROMPTS[1], out.output_ids), abs=1e-4)
    assert out.num_retractions == (1 if mode == "retract" else 0)
    assert out.finish_reason == {"type": "length", "length": 60}


@pytest.mark.timeout(60)
def test_abort_one_request_returns_partial_output(engine):
    got = Collector()
    engine.submit("ab", PROMPTS[0], SamplingSpec(max_new_tokens=100, temperature=0.0, ignore_eos=True), got)
    start = engine.stats()["generated_tokens"]
    _wait_until(lambda: engine.stats()["generated_tokens"] >= start + 3)
    assert engine.abort("ab").result(10) is True
    (out,) = got.wait(["ab"])
    assert out.finish_reason["type"] == "abort"
    assert 3 <= len(out.output_ids) < 100 and len(out.output_logprobs) == len(out.output_ids)
    assert engine.abort("no-such-rid").result(10) is False


@pytest.mark.timeout(60)
def test_duplicate_rid_is_refused(engine):
    got = Collector()
    engine.pause("in_place").result(10)  # keep the first one in flight
    try:
        engine.submit("dup", [1, 2], SamplingSpec(max_new_tokens=2, temperature=0.0), got)
        with pytest.raises(ValueError, match="duplicate"):
            engine.submit("dup", [1, 2], SamplingSpec(max_new_tokens=2, temperature=0.0), got)
    finally:
        engine.resume().result(10)
    got.wait(["dup"])


@pytest.mark.timeout(60)
def test_weight_change_during_in_place_pause_is_reported_as_spans(engine):
    got = Collector()
    engine.submit("span", PROMPTS[2], SamplingSpec(max_new_tokens=40, temperature=0.0, ignore_eos=True), got)
    start = engine.stats()["generated_tokens"]
    _wait_until(lambda: engine.stats()["generated_tokens"] >= start + 4)
    old = engine.weight_version
    engine.pause("in_place").result(10)
    engine.update_weight_version("v-next", abort_all_requests=False).result(10)
    engine.resume().result(10)
    (out,) = got.wait(["span"])
    k = out.weight_versions[0]["end"]
    assert out.weight_versions == [
        {"version": old, "start": 0, "end": k},
        {"version": "v-next", "start": k, "end": 40},
    ]
    assert 4 <= k < 40 and out.weight_version == "v-next"
