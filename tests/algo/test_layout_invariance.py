"""Splitting a minibatch into micro-batches (and across 2 gloo ranks) changes neither loss nor gradient."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from areal_lite.algo import LOSS_REDUCTIONS, loss_counts
from tests.algo.layout_worker import full_loss, layout_loss, loss_and_grad, make_batch

SPLITS = {
    "whole": [[0, 1, 2, 3, 4, 5, 6, 7]],
    "singletons": [[i] for i in range(8)],
    "shuffled": [[3, 0], [7, 1, 5], [2, 6, 4]],
}


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-6) -> None:
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= rel * scale, (a, b)


@pytest.mark.parametrize("mode", LOSS_REDUCTIONS)
@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_microbatch_split_gives_whole_batch_loss_and_gradient(mode, split, ratio_level):
    batch = make_batch()
    n_tok, n_seq = loss_counts(batch["mask"])
    ref_loss, ref_grad = loss_and_grad(lambda th: full_loss(batch, th, mode, ratio_level))
    loss, grad = loss_and_grad(lambda th: layout_loss(batch, th, mode, SPLITS[split], n_tok, n_seq, ratio_level)[0])
    assert float(ref_loss) != 0.0 and float(ref_grad.abs().max()) > 0  # the check is not vacuous
    assert_rel_close(loss[None], ref_loss[None])
    assert_rel_close(grad, ref_grad)


def test_local_counts_are_not_layout_invariant():
    # Without the global counts, per-micro-batch means differ from the whole-batch loss (TC13's trap).
    batch = make_batch()
    ref_loss, _ = loss_and_grad(lambda th: full_loss(batch, th, "token_mean"))
    loss, _ = loss_and_grad(lambda th: layout_loss(batch, th, "token_mean", SPLITS["shuffled"], None, None)[0])
    assert abs(float(loss) - float(ref_loss)) > 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_gloo_ranks_match_whole_batch(tmp_path: Path):
    worker = Path(__file__).with_name("layout_worker.py")
    init = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen([sys.executable, str(worker), str(r), "2", init, str(tmp_path / f"r{r}.json")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for r in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=100)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), outputs
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    n_tok = loss_counts(make_batch()["mask"])[0]
    for res in results:
        assert len(res["loss"]) == 2 * len(LOSS_REDUCTIONS)
        for key, v in res["loss"].items():
            assert_rel_close(torch.tensor([v["loss"]]), torch.tensor([v["ref_loss"]]))
            assert_rel_close(torch.tensor(v["grad"]), torch.tensor(v["ref_grad"]))
            assert v["n_tokens"] == n_tok, key
        assert len(res["norm"]) == 18
        for key, err in res["norm"].items():
            assert err < 1e-12, key
            if key.split("/")[:2] != ["none", "none"]:
                # without the all-reduce, a rank's own statistics differ: the check is not vacuous
                assert res["norm_local"][key] > 1e-3, key
