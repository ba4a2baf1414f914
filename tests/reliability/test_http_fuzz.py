"""Fuzzing the inference HTTP API of a live embedded server (a real subprocess, real HTTP).

Random bytes, truncated JSON, wrong JSON types, unknown fields and huge sizes on every POST endpoint:
every answer is 2xx or 4xx (never 5xx), the server stays healthy and still generates, and every
refusal is counted in `/get_server_info` `rejected_requests`. Totals are printed for docs/reliability.md.
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from areal_lite.inference.embedded.local_server import start_local_server
from areal_lite.inference.embedded.server import MAX_BODY_BYTES

CONTEXT = 64
VOCAB_PROBE = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 3, "temperature": 0.0}}
# Endpoints that parse a body. The two distributed-group endpoints get raw bytes only: a well-formed
# request there legitimately blocks on a rendezvous with whatever address it names.
STRUCTURED = ["/generate", "/abort_request", "/pause_generation", "/continue_generation",
              "/update_weights_from_disk", "/update_weight_version", "/begin_weight_update", "/end_weight_update"]
BYTES_ONLY = ["/init_weights_update_group", "/update_weights_from_distributed", "/destroy_weights_update_group"]
FIELDS = ["input_ids", "text", "rid", "sampling_params", "return_logprob", "max_new_tokens", "temperature",
          "top_p", "top_k", "stop_token_ids", "model_path", "weight_version", "abort_all", "mode", "new_version",
          "abort_all_requests", "names", "bogus", "__proto__", ""]

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=20),
)
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=8), kids, max_size=4), max_leaves=12)
sampling = st.dictionaries(st.sampled_from(["max_new_tokens", "temperature", "top_p", "top_k", "min_new_tokens",
                                            "stop_token_ids", "ignore_eos", "skip_special_tokens", "nonsense"]),
                           json_value, max_size=4)
generate_like = st.fixed_dictionaries(
    {"input_ids": st.one_of(st.lists(st.integers(-5, 2**40), max_size=8), json_value)},
    optional={"sampling_params": sampling | json_value, "rid": json_value, "return_logprob": json_value,
              "extra_field": json_value},
)


class Tally:
    def __init__(self):
        self.sent = 0
        self.status = Counter()
        self.malformed = 0  # refused with an error body (counted by the server as rejected_requests)

    def post(self, client: httpx.Client, path: str, content: bytes, headers: dict | None = None) -> httpx.Response:
        r = client.post(path, content=content, headers={"content-type": "application/json", **(headers or {})})
        self.sent += 1
        self.status[r.status_code] += 1
        assert r.status_code < 500, (path, content[:200], r.status_code, r.text[:300])
        if r.status_code >= 400:
            body = r.json()
            # A JSON error body, not a crash page; or SGLang's refusal of a well-formed call the server's
            # state does not allow ({"success": false, "message"}: e.g. end_weight_update with no session).
            assert "error" in body or (body.get("success") is False and body.get("message")), r.text[:300]
            self.malformed += "error" in body
        if path == "/pause_generation" and r.status_code == 200:
            client.post("/continue_generation", json={})  # keep the server serving for the next example
        return r


@pytest.fixture(scope="module")
def fuzzed(tiny_model_dir, tmp_path_factory):
    weights = tmp_path_factory.mktemp("fuzz_weights")
    args = ["--skip-tokenizer-init", "--context-length", str(CONTEXT), "--max-running-requests", "8",
            "--allowed-weight-dir", str(weights), "--log-level", "warning"]
    server = start_local_server(tiny_model_dir, extra_args=args, startup_timeout=150)
    client = httpx.Client(base_url=server.url, timeout=60)
    tally = Tally()
    start = client.get("/get_server_info").json()["rejected_requests"]
    try:
        yield server, client, tally
        # After everything: alive, still generating, and every refusal counted.
        assert server.proc.poll() is None, server.log_tail()
        assert client.get("/health").status_code == 200
        out = client.post("/generate", json=VOCAB_PROBE).json()
        assert len(out["output_ids"]) == 3
        rejected = client.get("/get_server_info").json()["rejected_requests"] - start
        assert rejected == tally.malformed, (rejected, tally.malformed, tally.status)
        print(f"\nHTTP fuzz: {tally.sent} requests, status counts {dict(sorted(tally.status.items()))}, "
              f"rejected_requests {rejected}, 5xx 0, server up")
    finally:
        client.close()
        server.stop()


SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.timeout(300)
@SETTINGS
@given(path=st.sampled_from(STRUCTURED + BYTES_ONLY), body=st.binary(max_size=300))
def test_random_bytes(fuzzed, path, body):
    _, client, tally = fuzzed
    tally.post(client, path, body)


@pytest.mark.timeout(300)
@SETTINGS
@given(path=st.sampled_from(STRUCTURED), body=json_value)
def test_wrong_json_types_and_unknown_fields(fuzzed, path, body):
    _, client, tally = fuzzed
    tally.post(client, path, json.dumps(body).encode())


@pytest.mark.timeout(300)
@SETTINGS
@given(body=generate_like, cut=st.integers(0, 400), truncate=st.booleans())
def test_generate_shaped_and_truncated(fuzzed, body, cut, truncate):
    _, client, tally = fuzzed
    raw = json.dumps(body).encode()
    if truncate and cut < len(raw):
        raw = raw[:cut]
    tally.post(client, "/generate", raw)


@pytest.mark.timeout(300)
def test_huge_sizes(fuzzed):
    server, client, tally = fuzzed
    huge = [
        {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 10**12}},
        {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2**80}},
        {"input_ids": [1] * 200_000, "sampling_params": {"max_new_tokens": 1}},
        {"input_ids": [2**63] * 3},
        {"input_ids": [1, 2], "sampling_params": {"stop_token_ids": list(range(10**5))}},
        {"text": "x" * 100_000},
    ]
    for body in huge:
        r = tally.post(client, "/generate", json.dumps(body).encode())
        assert r.status_code == 400, (r.status_code, r.text[:200])
    # A megabyte-long request id is legal (SGLang sets no limit): served or refused, never a crash.
    tally.post(client, "/generate", json.dumps({"input_ids": [1, 2], "rid": "r" * 1_000_000,
                                                "sampling_params": {"max_new_tokens": 1}}).encode())
    # Nesting deeper than any parser's recursion limit.
    assert tally.post(client, "/generate", b"[" * 200_000).status_code == 400
    assert tally.post(client, "/generate", b'{"input_ids":' + b"[" * 5000 + b"]" * 5000 + b"}").status_code == 400
    # A body over the limit is refused from its declared length, and when streamed without one.
    big = b'{"input_ids": [' + b"1," * (MAX_BODY_BYTES // 2) + b"1]}"
    r = tally.post(client, "/generate", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == 413

    def chunks():
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 2):
            yield b" " * (1 << 20)

    r = client.post("/update_weights_from_disk", content=chunks())
    tally.sent += 1
    tally.status[r.status_code] += 1
    tally.malformed += "error" in r.json()
    assert r.status_code == 413, r.text[:200]
    assert client.get("/health").status_code == 200
