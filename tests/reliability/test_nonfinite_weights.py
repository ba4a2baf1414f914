"""Non-finite weights never reach a server, and a server refuses them anyway.

- The trainer: a diverging update (a huge but finite learning rate: the weights stay finite but
  overflow in the forward) stops the run with one line, before the weights leave the trainer, and is
  not retried; the server keeps serving the last good weights.
- The embedded server: weights with NaN or inf are refused on load (`WeightLoadError`, an unsuccessful
  answer), nothing is changed, and the server keeps generating and pausing.
"""

from __future__ import annotations

import re

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from areal_lite.inference.embedded.local_server import start_local_server
from areal_lite.inference.embedded.weights import WeightLoadError, apply_named_tensors
from tests.e2e.conftest import read_jsonl, run_dir, write_config
from tests.reliability.audit import launched

LOCAL = "areal_lite.launcher.local"
PROBE = {"input_ids": [5, 6, 7, 8], "sampling_params": {"max_new_tokens": 6, "temperature": 0.0}}


def test_apply_named_tensors_refuses_nan_and_inf_before_copying_anything():
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad_weight = torch.ones(2, 3)
    bad_weight[1, 2] = float("inf")
    for named in ([("bias", torch.zeros(2)), ("weight", bad_weight)],
                  [("weight", torch.zeros(2, 3)), ("bias", torch.tensor([0.0, float("nan")]))]):
        with pytest.raises(WeightLoadError, match=r"non-finite values \(nan or inf\) in 1 tensor"):
            apply_named_tensors(model, named)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k  # not even the finite tensor of the update was copied
    assert apply_named_tensors(model, [("weight", torch.zeros(2, 3)), ("bias", torch.ones(2))]) == 2
    assert torch.equal(model.bias.detach(), torch.ones(2))


@pytest.mark.timeout(300)
def test_embedded_server_refuses_nan_weights_and_keeps_serving(tiny_model_dir, tmp_path):
    weights = tmp_path / "weights"
    bad = weights / "v1"
    bad.mkdir(parents=True)
    for f in tiny_model_dir.iterdir():  # config, tokenizer files as they are; the weights poisoned
        if f.suffix != ".safetensors":
            (bad / f.name).write_bytes(f.read_bytes())
    state = load_file(str(tiny_model_dir / "model.safetensors"))
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(bad / "model.safetensors"))

    args = ["--skip-tokenizer-init", "--context-length", "64", "--max-running-requests", "4",
            "--allowed-weight-dir", str(weights), "--log-level", "warning"]
    with start_local_server(tiny_model_dir, extra_args=args, startup_timeout=150) as server:
        client = httpx.Client(base_url=server.url, timeout=60)
        expected = client.post("/generate", json=PROBE).json()["output_ids"]
        r = client.post("/update_weights_from_disk", json={"model_path": str(bad), "weight_version": "1"})
        assert r.status_code == 400 or r.json()["success"] is False, r.text
        assert "non-finite values" in r.json()["message"] and name in r.json()["message"]
        info = client.get("/get_server_info").json()
        assert info["weight_version"] != "1"
        # Still pausing, resuming and generating, with the weights it had.
        assert client.post("/pause_generation", json={"mode": "abort"}).status_code == 200
        assert client.post("/continue_generation", json={}).status_code == 200
        assert client.post("/generate", json=PROBE).json()["output_ids"] == expected
        assert server.healthy()


@pytest.mark.timeout(400)
def test_a_diverging_update_stops_the_run_before_its_weights_leave_the_trainer(tmp_path, tiny_model_dir):
    # lr 1e30 is finite (the config takes it) and so is every weight after the first update, but the
    # forward overflows: NaN logits, which a server would sample from.
    cfg = write_config(tmp_path, tiny_model_dir, {"actor": {"optimizer": {"lr": 1e30}},
                                                  "recover": {"mode": "auto", "freq_steps": 1, "retries": 2}})
    with launched(LOCAL, cfg, "total_train_steps=4") as launch:
        rc = launch.wait(300)
    out = launch.output
    assert rc == 1, out
    rdir = run_dir(tmp_path)
    line = [x for x in out.splitlines() if "training diverged" in x]
    assert len(line) == 1 and "the weights were not sent to the servers" in line[0], out
    assert "Lower actor.optimizer.lr" in line[0] and "a restart cannot fix this" in line[0]
    assert "restarting it" not in out and "Traceback" not in out
    assert launch.leftovers() == []
    # The updates before the diverged one were trained and served; the diverged one left nothing:
    # no metrics row, no weights folder, no load on the server, whose engine never failed.
    diverged = int(re.search(r"optimizer step (\d+)", line[0]).group(1))
    rows = read_jsonl(rdir / "metrics.jsonl") if (rdir / "metrics.jsonl").exists() else []
    assert [m["step"] for m in rows] == list(range(diverged - 1))
    versions = sorted(int(p.name[1:]) for p in (rdir / "weights").iterdir() if p.name[1:].isdigit())
    assert versions == list(range(1, diverged))[-2:], versions  # (the two newest are kept)
    for v in versions:
        state = load_file(str(rdir / "weights" / f"v{v}" / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in state.values()), v
    server_log = (rdir / "logs" / "server0.log").read_text(errors="replace")
    assert "engine thread failed" not in server_log
    loaded = re.findall(r"weights loaded from \S+, version (\d+)", server_log)
    assert [int(v) for v in loaded] == list(range(1, diverged)), loaded
