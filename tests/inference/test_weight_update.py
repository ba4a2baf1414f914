"""Weight updates over real HTTP: from disk and from a torch.distributed group (trainer = this process)."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest
import torch

from areal_lite.inference.embedded.local_server import free_port, start_local_server
from areal_lite.tiny.model import TinyModelSpec, build_tiny_model_dir
from areal_lite.utils.distributed import destroy_custom_process_group, init_custom_process_group
from tests.inference.helpers import greedy_loop

PROMPT = [7, 8, 9, 10]
N = 12


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run") / "weights"


@pytest.fixture(scope="module")
def server(tiny_model_dir, weights_dir, tmp_path_factory):
    weights_dir.mkdir(parents=True, exist_ok=True)
    args = ["--skip-tokenizer-init", "--context-length", "1024", "--weight-version", "0",
            "--allowed-weight-dir", str(weights_dir), "--log-level", "warning"]
    log = tmp_path_factory.mktemp("server_logs") / "weights.log"
    with start_local_server(tiny_model_dir, extra_args=args, log_path=log, startup_timeout=120) as s:
        yield s


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def generate(server):
    r = httpx.post(server.url + "/generate", json={
        "input_ids": PROMPT, "sampling_params": {"max_new_tokens": N, "temperature": 0.0, "ignore_eos": True},
    }, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def post(server, path, body, timeout=60):
    return httpx.post(server.url + path, json=body, timeout=timeout)


@pytest.mark.timeout(90)
def test_update_from_disk_changes_outputs_and_version(server, tiny_model_dir, weights_dir):
    before = generate(server)
    assert "text" not in before  # --skip-tokenizer-init: token ids only, as SGLang
    assert before["output_ids"] == greedy_loop(_model(tiny_model_dir), PROMPT, N)
    assert before["meta_info"]["weight_version"] == "0"
    new_dir = build_tiny_model_dir(weights_dir / "v1", TinyModelSpec(seed=1))
    r = post(server, "/update_weights_from_disk", {"model_path": str(new_dir), "weight_version": "1"})
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    after = generate(server)
    assert after["output_ids"] == greedy_loop(_model(new_dir), PROMPT, N) != before["output_ids"]
    assert after["meta_info"]["weight_version"] == "1"
    assert httpx.get(server.url + "/model_info", timeout=5).json()["weight_version"] == "1"


@pytest.mark.timeout(60)
def test_update_from_disk_refusals_leave_weights_alone(server, tiny_model_dir, weights_dir, tmp_path):
    version = httpx.get(server.url + "/model_info", timeout=5).json()["weight_version"]
    before = generate(server)["output_ids"]
    outside = build_tiny_model_dir(tmp_path / "elsewhere", TinyModelSpec(seed=3))
    r = post(server, "/update_weights_from_disk", {"model_path": str(outside), "weight_version": "9"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "model_path"
    r = post(server, "/update_weights_from_disk", {"model_path": str(weights_dir / ".." / "weights" / ".." / "x")})
    assert r.status_code == 400 and r.json()["error"]["field"] == "model_path"
    (weights_dir / "empty").mkdir(exist_ok=True)
    r = post(server, "/update_weights_from_disk", {"model_path": str(weights_dir / "empty"), "weight_version": "9"})
    assert r.status_code == 400 and r.json()["success"] is False and "safetensors" in r.json()["message"]
    # A checkpoint of another shape fails validation before anything is copied.
    build_tiny_model_dir(weights_dir / "wide", TinyModelSpec(hidden_size=32, num_attention_heads=2, seed=4))
    r = post(server, "/update_weights_from_disk", {"model_path": str(weights_dir / "wide"), "weight_version": "9"})
    assert r.status_code == 400 and "shape mismatch" in r.json()["message"]
    after = generate(server)
    assert after["output_ids"] == before and after["meta_info"]["weight_version"] == version


@pytest.mark.timeout(90)
def test_update_waits_for_running_requests_unless_told_to_abort(server, weights_dir):
    src = str(build_tiny_model_dir(weights_dir / "v5", TinyModelSpec(seed=5)))
    long_req = {"input_ids": PROMPT, "sampling_params": {"max_new_tokens": 100, "ignore_eos": True}}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, server, "/generate", long_req)
        _wait_running(server)
        old = httpx.get(server.url + "/model_info", timeout=5).json()["weight_version"]
        r = post(server, "/update_weights_from_disk", {"model_path": src, "weight_version": "5"})
        assert r.json()["success"] is True
        # Without abort_all_requests the update waited: the request finished whole under the old weights.
        done = running.result(30).json()["meta_info"]
        assert done["finish_reason"]["type"] == "length" and done["weight_version"] == old
        # A request ten times longer, so that it is still decoding when the abort arrives: at 100 tokens a
        # stall of the shared machine let it finish first about once in 15 runs.
        endless = {"input_ids": PROMPT, "sampling_params": {"max_new_tokens": 1000, "ignore_eos": True}}
        running = pool.submit(post, server, "/generate", endless)
        _wait_running(server)
        r = post(server, "/update_weights_from_disk", {"model_path": src, "weight_version": "6", "abort_all_requests": True})
        assert r.json()["success"] is True
        aborted = running.result(30).json()["meta_info"]
    assert aborted["finish_reason"]["type"] == "abort" and aborted["weight_version"] == "5"
    assert aborted["completion_tokens"] < 1000


def _wait_running(server, timeout=30.0):
    deadline = time.monotonic() + timeout
    while httpx.get(server.url + "/get_server_info", timeout=5).json()["num_running_reqs"] == 0:
        assert time.monotonic() < deadline, "request never started"
        time.sleep(0.005)


def _push(server, pool, group, named, *, version, group_name, flattened=False):
    """Trainer side of one bucket, as SGLang expects it: POST the metadata, then broadcast from rank 0."""
    payload = {
        "names": [n for n, _ in named],
        "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in named],
        "shapes": [list(t.shape) for _, t in named],
        "group_name": group_name,
        "weight_version": version,
    }
    if flattened:
        payload["load_format"] = "flattened_bucket"
    reply = pool.submit(post, server, "/update_weights_from_distributed", payload)
    if flattened:
        flat = torch.cat([t.contiguous().view(-1).view(torch.uint8) for _, t in named])
        torch.distributed.broadcast(flat, src=0, group=group)
    else:
        for _, t in named:
            torch.distributed.broadcast(t.contiguous(), src=0, group=group)
    return reply.result(60)


@pytest.mark.timeout(120)
def test_update_from_distributed_group(server, tiny_model_dir, tmp_path):
    group_name, port = "areal_test_group", free_port()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        joined = pool.submit(post, server, "/init_weights_update_group", {
            "master_address": "127.0.0.1", "master_port": port, "rank_offset": 1, "world_size": 2,
            "group_name": group_name, "backend": "gloo",
        })
        group = init_custom_process_group(backend="gloo", master_address="127.0.0.1", master_port=port, rank=0,
                                          world_size=2, group_name=group_name, timeout_s=60)
        try:
            assert joined.result(60).json()["success"] is True
            # As in SGLang, distributed updates are refused outside a begin/end session ...
            r = _push(server, pool, group, [], version=None, group_name=group_name)
            assert r.status_code == 400 and "between begin_weight_update" in r.json()["message"]
            assert post(server, "/begin_weight_update", {}).json()["success"] is True
            # ... and only one session is open at a time.
            assert post(server, "/begin_weight_update", {}).status_code == 400
            new = _model(build_tiny_model_dir(tmp_path / "m7", TinyModelSpec(seed=7)))
            params = [(n, p.detach()) for n, p in new.named_parameters()]
            # Two buckets, the version stamped on the last one only (as the trainer does).
            half = len(params) // 2
            assert _push(server, pool, group, params[:half], version=None, group_name=group_name).json()["success"]
            r = _push(server, pool, group, params[half:], version="7", group_name=group_name)
            assert r.status_code == 200 and r.json()["success"] is True, r.text
            out = generate(server)
            assert out["output_ids"] == greedy_loop(new, PROMPT, N)
            assert out["meta_info"]["weight_version"] == "7"
            # The flattened-bucket format: back to the original weights in one broadcast.
            orig = _model(tiny_model_dir)
            named = [(n, p.detach()) for n, p in orig.named_parameters()]
            r = _push(server, pool, group, named, version="8", group_name=group_name, flattened=True)
            assert r.json()["success"] is True, r.text
            out = generate(server)
            assert out["output_ids"] == greedy_loop(orig, PROMPT, N) and out["meta_info"]["weight_version"] == "8"
            # An unknown name is refused after the bucket was received, so the group stays in step.
            r = _push(server, pool, group, [("no.such.weight", torch.zeros(3))], version="9", group_name=group_name)
            assert r.status_code == 400 and "unknown weight name" in r.json()["message"]
            assert generate(server)["meta_info"]["weight_version"] == "8"
            assert post(server, "/end_weight_update", {}).json()["success"] is True
            assert post(server, "/end_weight_update", {}).status_code == 400
        finally:
            destroy = post(server, "/destroy_weights_update_group", {"group_name": group_name})
            destroy_custom_process_group(group)
    assert destroy.json()["success"] is True
