"""Fixtures of the SGLang interoperability tests: the unpacked pinned wheel (see sglang_src.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.sglang_src import Unavailable, source_tree

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sglang_src() -> Path:
    try:
        return source_tree()
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def sglang_run(sglang_src):
    """`sglang_run(command, payload)`: run a command of tests/interop/sglang_worker.py on `payload` (JSON)."""

    def run(command: str, payload, *extra: str, timeout: float = 120) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.interop.sglang_worker", str(sglang_src), command, *extra],
            input=json.dumps(payload), capture_output=True, text=True, timeout=timeout, cwd=REPO,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run
