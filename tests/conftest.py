"""Shared fixtures. Tests build their own tiny models; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# shared/ sits beside the checkout (data that must not be committed lives there).
SHARED_DIR = REPO_ROOT.parent / "shared"

# Child processes inherit these; with 2 cores, one torch thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 model with the project's byte-level tokenizer (built once per session)."""
    from areal_lite.tiny.model import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model") / "model")


SERVER_ARGS = ["--context-length", "256", "--max-running-requests", "8", "--log-level", "warning"]


@pytest.fixture(scope="session")
def embedded_server(tiny_model_dir, tmp_path_factory):
    """A shared embedded server (real HTTP) with a tokenizer; tests must leave its weights and pause state as found."""
    from areal_lite.inference.embedded.local_server import start_local_server

    log = tmp_path_factory.mktemp("server_logs") / "shared.log"
    with start_local_server(tiny_model_dir, extra_args=SERVER_ARGS, log_path=log, startup_timeout=120) as server:
        yield server


@pytest.fixture(scope="session")
def ref_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The MIT-licensed GSM8K jsonl files in ../shared (never committed here)."""
    path = SHARED_DIR / "data" / "gsm8k"
    if not path.is_dir():
        pytest.skip(f"GSM8K data not found at {path}")
    return path
