"""A server that restarted behind the trainer is brought to the trainer's version (disk weight sync).

A real embedded server comes back serving `weights/v1` while the trainer already published v2 (its
push was skipped while the server was down). `DiskWeightSync.catch_up`, which the trainer runs while it
waits for a batch, re-sends v2 to that server only; a server already at v2 and an unreachable one are
left alone. (The broadcast weight sync's catch-up runs through the real launcher in
tests/launcher/test_local.py.)
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from areal_lite.inference.client import ServerAdmin
from areal_lite.inference.embedded.local_server import free_port, start_local_server
from areal_lite.run.rundir import RunDir
from areal_lite.run.weight_sync import DiskWeightSync

RANK0 = SimpleNamespace(rank=0)


def greedy(url: str) -> dict:
    r = httpx.post(f"{url}/generate", json={
        "input_ids": [7, 8, 9, 10], "return_logprob": True,
        "sampling_params": {"max_new_tokens": 6, "temperature": 0.0, "ignore_eos": True},
    }, timeout=60)
    r.raise_for_status()
    return r.json()


def logprobs(out: dict) -> list[float]:
    return [lp[0] for lp in out["meta_info"]["output_token_logprobs"]]


def info(url: str) -> dict:
    return httpx.get(f"{url}/server_info", timeout=30).json()


@pytest.mark.timeout(300)
def test_catch_up_resends_the_trainers_weights_to_a_server_behind_it(tmp_path, tiny_model_dir):
    run = RunDir(str(tmp_path / "run")).make()
    shutil.copytree(tiny_model_dir, run.weights_path(1))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(run.weights_path(2))

    args = ["--skip-tokenizer-init", "--context-length", "128", "--allowed-weight-dir", run.weights_dir,
            "--log-level", "warning"]
    behind_args = [*args, "--weight-version", "1"]
    current_args = [*args, "--weight-version", "2"]
    with start_local_server(run.weights_path(1), extra_args=behind_args, startup_timeout=120) as behind, \
            start_local_server(run.weights_path(2), extra_args=current_args, startup_timeout=120) as current:
        expected = greedy(current.url)
        stale = greedy(behind.url)
        assert max(abs(a - b) for a, b in zip(logprobs(stale), logprobs(expected))) > 1e-2  # the check can tell
        updates = {s.url: info(s.url)["num_weight_updates"] for s in (behind, current)}
        down = f"http://127.0.0.1:{free_port()}"  # a server being restarted: nothing listens yet
        sync = DiskWeightSync(ServerAdmin([behind.url, current.url, down], timeout=60), run)

        sync.catch_up(RANK0, version=2)

        out = greedy(behind.url)
        assert out["meta_info"]["weight_version"] == "2"
        assert out["output_ids"] == expected["output_ids"]
        assert logprobs(out) == pytest.approx(logprobs(expected), abs=1e-5)
        assert info(behind.url)["num_weight_updates"] == updates[behind.url] + 1
        assert info(current.url)["num_weight_updates"] == updates[current.url]  # not paused, not reloaded
        assert ServerAdmin([behind.url, current.url]).weight_versions() == [2, 2]
