"""Fixtures for the inference tests: real embedded servers (subprocesses, real HTTP) on a tiny model."""

from __future__ import annotations

import pytest
import torch

from areal_lite.inference.local_server import start_local_server

SERVER_ARGS = ["--context-length", "256", "--max-running-requests", "8", "--log-level", "warning"]


@pytest.fixture(scope="session")
def embedded_server(tiny_model_dir, tmp_path_factory):
    """A shared server with a tokenizer; tests must leave its weights and pause state as found."""
    log = tmp_path_factory.mktemp("server_logs") / "shared.log"
    with start_local_server(tiny_model_dir, extra_args=SERVER_ARGS, log_path=log, startup_timeout=120) as server:
        yield server


@pytest.fixture(scope="session")
def ref_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
