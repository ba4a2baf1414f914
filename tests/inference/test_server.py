"""The embedded server over real HTTP (a subprocess) against plain transformers and SGLang's shapes."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from tests.inference.helpers import generate_greedy, greedy_loop, teacher_forced_logprobs

META_KEYS = {
    "id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens",
    "weight_version", "weight_versions", "e2e_latency",
}


def post(server, path, body=None, *, raw=None, timeout=60):
    if raw is not None:
        return httpx.post(server.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=timeout)
    return httpx.post(server.url + path, json=body, timeout=timeout)


def info(server) -> dict:
    return httpx.get(server.url + "/get_server_info", timeout=10).json()


def wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@pytest.mark.timeout(60)
def test_generate_response_has_sglang_shape(embedded_server, tiny_model_dir):
    from transformers import AutoTokenizer

    r = post(embedded_server, "/generate", {
        "input_ids": [1, 2, 3], "rid": "shape-1", "return_logprob": True,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
    })
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["text", "output_ids", "meta_info"]
    meta, ids = body["meta_info"], body["output_ids"]
    assert set(meta) == META_KEYS | {"output_token_logprobs"}
    assert meta["id"] == "shape-1"
    assert meta["finish_reason"] == {"type": "length", "length": 4}
    assert (meta["prompt_tokens"], meta["completion_tokens"], meta["cached_tokens"]) == (3, 4, 0)
    assert meta["weight_version"] == "default"
    assert meta["weight_versions"] == [{"version": "default", "start": 0, "end": 4}]
    assert len(ids) == 4 and all(isinstance(t, int) for t in ids)
    lps = meta["output_token_logprobs"]
    assert [len(e) for e in lps] == [3] * 4
    assert [e[1] for e in lps] == ids and all(isinstance(e[0], float) and e[0] <= 0 and e[2] is None for e in lps)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert body["text"] == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.timeout(60)
def test_text_input_and_text_in_logprobs(embedded_server, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    r = post(embedded_server, "/generate", {
        "text": "abc", "return_logprob": True, "return_text_in_logprobs": True,
        "sampling_params": {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True},
    })
    meta = r.json()["meta_info"]
    assert meta["prompt_tokens"] == len(tok.encode("abc"))
    assert [e[2] for e in meta["output_token_logprobs"]] == [tok.decode([e[1]]) for e in meta["output_token_logprobs"]]
    r = post(embedded_server, "/generate", {"input_ids": [5], "sampling_params": {"max_new_tokens": 2}})
    assert "output_token_logprobs" not in r.json()["meta_info"]


@pytest.mark.timeout(90)
def test_concurrent_greedy_equals_generate_and_logprobs_match(embedded_server, ref_model):
    prompts = [[5, 6, 7, 8], list(range(10, 40)), [42], [100, 101, 102, 103], [9, 9], [200, 13, 17]]
    lengths = [40, 12, 33, 25, 40, 7]
    before = info(embedded_server)["max_running_reqs"]

    def one(p, n):
        return post(embedded_server, "/generate", {
            "input_ids": p, "return_logprob": True, "sampling_params": {"max_new_tokens": n, "temperature": 0.0},
        }).json()

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        bodies = list(pool.map(one, prompts, lengths))
    for body, p, n in zip(bodies, prompts, lengths):
        assert body["output_ids"] == generate_greedy(ref_model, p, n)
        got = [e[0] for e in body["meta_info"]["output_token_logprobs"]]
        assert got == pytest.approx(teacher_forced_logprobs(ref_model, p, body["output_ids"]), abs=1e-4)
    # The requests were decoded together, not one after another.
    assert max(before, info(embedded_server)["max_running_reqs"]) >= 2


@pytest.mark.timeout(90)
def test_pause_abort_returns_partial_and_resubmission_completes(embedded_server, ref_model):
    prompt, budget = [11, 12, 13, 14, 15], 150
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        start = info(embedded_server)["generated_tokens"]
        first = pool.submit(post, embedded_server, "/generate", {
            "input_ids": prompt, "return_logprob": True,
            "sampling_params": {"max_new_tokens": budget, "temperature": 0.0, "ignore_eos": True},
        })
        wait_for(lambda: info(embedded_server)["generated_tokens"] >= start + 3)
        assert post(embedded_server, "/pause_generation", {"mode": "abort"}).json()["status"] == "ok"
        part = first.result(30).json()
        partial = part["output_ids"]
        assert part["meta_info"]["finish_reason"]["type"] == "abort"
        assert 3 <= len(partial) < budget
        # Resubmitted while paused: it waits instead of being refused.
        second = pool.submit(post, embedded_server, "/generate", {
            "input_ids": prompt + partial, "return_logprob": True,
            "sampling_params": {"max_new_tokens": budget - len(partial), "temperature": 0.0, "ignore_eos": True},
        })
        wait_for(lambda: info(embedded_server)["num_waiting_reqs"] == 1)
        assert info(embedded_server)["paused"] is True and not second.done()
        assert post(embedded_server, "/continue_generation", {}).status_code == 200
        rest = second.result(30).json()
    finally:
        post(embedded_server, "/continue_generation", {})
        pool.shutdown()
    assert rest["meta_info"]["finish_reason"] == {"type": "length", "length": budget - len(partial)}
    tokens = partial + rest["output_ids"]
    assert tokens == greedy_loop(ref_model, prompt, budget)
    logprobs = [e[0] for e in part["meta_info"]["output_token_logprobs"] + rest["meta_info"]["output_token_logprobs"]]
    assert logprobs == pytest.approx(teacher_forced_logprobs(ref_model, prompt, tokens), abs=1e-4)


BAD_REQUESTS = [
    ("/generate", {"input_ids": [1], "foo": 1}, "foo"),
    ("/generate", {"input_ids": [1], "sampling_params": {"temprature": 1.0}}, "sampling_params.temprature"),
    ("/generate", {"input_ids": "abc"}, "input_ids"),
    ("/generate", {"input_ids": [1], "sampling_params": {"max_new_tokens": "5"}}, "sampling_params.max_new_tokens"),
    ("/generate", {"input_ids": [1], "return_logprob": "yes"}, "return_logprob"),
    ("/generate", {"input_ids": []}, "input_ids"),
    ("/generate", {"text": ""}, "text"),
    ("/generate", {}, "input_ids"),
    ("/generate", {"input_ids": [1], "text": "a"}, "input_ids"),
    ("/generate", {"input_ids": [1] * 200, "sampling_params": {"max_new_tokens": 100}}, "sampling_params.max_new_tokens"),
    ("/generate", {"input_ids": [1] * 300}, "input_ids"),
    ("/generate", {"input_ids": [1, 10**6]}, "input_ids"),
    ("/generate", {"input_ids": [1], "sampling_params": {"temperature": -1.0}}, "sampling_params.temperature"),
    ("/generate", {"input_ids": [1], "sampling_params": {"top_p": 0.0}}, "sampling_params.top_p"),
    ("/generate", {"input_ids": [1], "sampling_params": {"top_k": 0}}, "sampling_params.top_k"),
    ("/generate", {"input_ids": [1], "stream": True}, "stream"),
    ("/generate", b'{"input_ids": [1,', "body"),
    ("/generate", b"[1, 2]", "body"),
    ("/pause_generation", {"mode": "bogus"}, "mode"),
    ("/update_weights_from_disk", {}, "model_path"),
    ("/update_weights_from_distributed", {"names": ["a"], "dtypes": ["float32"], "shapes": []}, "shapes"),
]


@pytest.mark.timeout(60)
def test_bad_requests_get_400_naming_the_field(embedded_server):
    before = info(embedded_server)["rejected_requests"]
    for path, body, field in BAD_REQUESTS:
        r = post(embedded_server, path, raw=body) if isinstance(body, bytes) else post(embedded_server, path, body)
        assert r.status_code == 400, (path, body, r.text)
        err = r.json()["error"]
        assert err["field"] == field, (body, err)
        assert field.split(".")[-1] in err["message"]
    assert info(embedded_server)["rejected_requests"] == before + len(BAD_REQUESTS)
    # ...and the server goes on serving.
    ok = post(embedded_server, "/generate", {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2}})
    assert ok.status_code == 200 and ok.json()["meta_info"]["completion_tokens"] >= 1


@pytest.mark.timeout(60)
def test_abort_request_by_rid(embedded_server):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        start = info(embedded_server)["generated_tokens"]
        fut = pool.submit(post, embedded_server, "/generate", {
            "input_ids": [3, 4], "rid": "to-abort", "sampling_params": {"max_new_tokens": 200, "ignore_eos": True},
        })
        wait_for(lambda: info(embedded_server)["generated_tokens"] >= start + 2)
        assert post(embedded_server, "/abort_request", {"rid": "to-abort"}).status_code == 200
        body = fut.result(30).json()
    assert body["meta_info"]["finish_reason"]["type"] == "abort"
    assert 2 <= body["meta_info"]["completion_tokens"] < 200


@pytest.mark.timeout(30)
def test_info_endpoints(embedded_server):
    assert httpx.get(embedded_server.url + "/health", timeout=5).status_code == 200
    mi = httpx.get(embedded_server.url + "/model_info", timeout=5).json()
    assert mi["weight_version"] == "default" and mi["is_generation"] is True and mi["model_type"] == "qwen2"
    si = info(embedded_server)
    for key in ("weight_version", "num_running_reqs", "num_waiting_reqs", "paused", "busy_time_s", "paused_time_s",
                "uptime_s", "generated_tokens", "prompt_tokens", "num_finished_reqs", "num_aborted_reqs",
                "rejected_requests"):
        assert key in si, key
    assert si["context_length"] == 256 and si["paused"] is False
    assert si["busy_time_s"] <= si["uptime_s"]
    assert httpx.get(embedded_server.url + "/server_info", timeout=5).json()["weight_version"] == "default"
    assert httpx.post(embedded_server.url + "/flush_cache", timeout=5).status_code == 200
