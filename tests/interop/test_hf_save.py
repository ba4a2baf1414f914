"""HF folders written by `save_hf_dir` (user checkpoints and the disk weight sync): complete or absent,
in the serving dtype, with the tokenizer saved beside the weights also when the model came from a hub id."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SAVE = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from areal_lite.utils.hf import save_hf_dir
    out, hub_id = sys.argv[1:3]
    model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=torch.float32)  # resolved from the hub cache
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_hf_dir(model, state, out, dtype=torch.bfloat16, tokenizer_path=hub_id)
    again = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert again.dtype == torch.bfloat16, again.dtype
    assert tok.encode("12+3=") == AutoTokenizer.from_pretrained(hub_id).encode("12+3=")
    print("ok")
""")


def fake_hub_cache(root: Path, model_dir: Path, repo_id: str) -> Path:
    """An offline Hugging Face hub cache holding `model_dir` as `repo_id` (the layout huggingface_hub reads)."""
    commit = "0" * 40
    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


@pytest.mark.timeout(120)
def test_save_from_a_hub_id_writes_tokenizer_and_serving_dtype(tiny_model_dir, tmp_path, sglang_run):
    cache = fake_hub_cache(tmp_path / "hub", tiny_model_dir, "tiny-org/tiny-model")
    out = tmp_path / "checkpoints" / "final"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SAVE, str(out), "tiny-org/tiny-model"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    assert not out.with_name("final.tmp").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    # SGLang started from this folder with --dtype auto serves it in bf16 (a float32 config: float16).
    assert sglang_run("config-dtype", [str(out), str(tiny_model_dir)])["dtypes"] == ["bfloat16", "float16"]


def test_a_failed_save_leaves_no_folder(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from areal_lite.utils.hf import save_hf_dir

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    out = tmp_path / "ckpt"
    with pytest.raises(OSError):
        save_hf_dir(model, model.state_dict(), str(out), tokenizer_path=str(tmp_path / "no-such-tokenizer"))
    assert not out.exists() and not out.with_name("ckpt.tmp").exists()
