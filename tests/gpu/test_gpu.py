"""The GPU test tier (`python -m pytest -m gpu tests/gpu`; skipped without CUDA): the pieces of the GPU
path that a CPU cannot run. benchmarks/gpu_check.py runs this tier first, then measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch

from areal_lite.inference.embedded.local_server import start_local_server
from areal_lite.utils.net import free_port

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_embedded_engine_on_cuda_matches_transformers_greedy(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    prompt = [7, 8, 9, 10, 11]
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).cuda().eval()
    ids = torch.tensor([prompt], device="cuda")
    want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                        min_new_tokens=16)[0, len(prompt):].tolist()
    args = ["--device", "cuda", "--dtype", "float32", "--skip-tokenizer-init", "--context-length", "128"]
    with start_local_server(tiny_model_dir, extra_args=args, log_path=tmp_path / "s.log", startup_timeout=120) as s:
        body = httpx.post(f"{s.url}/generate", json={"input_ids": prompt, "sampling_params": {
            "max_new_tokens": 16, "temperature": 0, "ignore_eos": True}}, timeout=60).json()
    assert body["output_ids"] == want


TRAINER_STEP = textwrap.dedent("""
    import json, sys, numpy as np, torch
    from areal_lite.config.schema import ActorConfig
    from areal_lite.trainer.engine import EngineSpec, FSDPEngine
    from areal_lite.trainer.ppo import PPOActor
    from areal_lite.utils.distributed import init_trainer_dist
    from benchmarks.gpu_check import _random_batch
    model, out = sys.argv[1:3]
    d = init_trainer_dist("cuda")              # NCCL default group + a gloo group for CPU collectives
    assert torch.distributed.get_backend() == "nccl"
    engine = FSDPEngine(EngineSpec(path=model, lr=1e-3, export_dtype="bfloat16"), d, total_optimizer_steps=2)
    engine.initialize()
    actor = PPOActor.build(ActorConfig(path=model), max_new_tokens=64, loss_norm_constant=64.0, seed=0)
    batch = _random_batch(np.random.default_rng(0), num_seqs=16, vocab=200)
    rows = actor.step_rows(engine, batch)
    stats = actor.ppo_update(engine, batch, rows, actor.advantage_fn(batch, rows), step=0)
    state = engine.full_state_dict()
    engine.save_hf(out, tokenizer_path=model)
    master = next(engine.model.parameters())
    print(json.dumps({"grad_norm": stats["train/grad_norm"], "export": str(next(iter(state.values())).dtype),
                      "master": str(master.dtype), "device": str(master.device)}))
""")


@pytest.mark.timeout(300)
def test_trainer_step_on_cuda_with_nccl_default_group(tiny_model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", TRAINER_STEP, str(tiny_model_dir), str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=280,
                          env={**env, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                               "MASTER_PORT": str(free_port())}, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["grad_norm"] > 0 and r["export"] == "torch.bfloat16" and r["master"] == "torch.float32"
    assert r["device"].startswith("cuda")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.timeout(180)
def test_varlen_attention_and_shared_prompts_match_sdpa_on_cuda(tiny_model_dir):
    """`actor.attn_impl: varlen` (the CPU default, a GPU user's opt-in) on CUDA tensors: one row with
    shared prompts gives every sequence the log-probs and gradients of transformers' SDPA (fp32, no TF32)."""
    from transformers import AutoModelForCausalLM

    from areal_lite.trainer.attention import VARLEN, resolve_attn_impl
    from areal_lite.trainer.batch import build_microbatch, build_shared_row
    from tests.trainer.test_attention import _batch, _logp_and_grads

    cuda = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    assert resolve_attn_impl("auto", cuda) == "sdpa" and resolve_attn_impl("varlen", cuda) == VARLEN
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa",
                                                dtype=torch.float32).to(cuda)
    varlen = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=VARLEN,
                                                  dtype=torch.float32).to(cuda)
    lens = [20, 9, 31, 12, 25, 14, 14, 30]
    groups = [(0, 7), (0, 7), (0, 7), (1, 12), (1, 12), (2, 5), (3, 5), (1, 12)]
    batch = _batch(sdpa.config.vocab_size, lens, seed=1, groups=groups)
    seqs = list(range(len(lens)))
    ref_lp, ref_grads = _logp_and_grads(sdpa, build_microbatch(batch, seqs, packed=True, device=cuda))
    for name, mb in (("one row", build_microbatch(batch, seqs, packed=True, device=cuda, row_tokens=10_000)),
                     ("shared prompts", build_shared_row(batch, seqs, device=cuda))):
        lp, grads = _logp_and_grads(varlen, mb)
        assert lp.is_cuda and torch.allclose(lp, ref_lp, atol=1e-4), (name, float((lp - ref_lp).abs().max()))
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, atol=1e-4, rtol=1e-3), (name, float((g - r).abs().max()))
