"""The weight-update group forms between our trainer and SGLang's own server-side code (gloo on CPU).

Two SGLang servers with tensor parallelism 2 (four server ranks, each a process running SGLang's
`WeightUpdater.init_weights_update_group` and `receive_weights_from_distributed` from the pinned
wheel) and one member that joins the way our embedded engine does, all in one group with trainer
rank 0 (this process, `init_custom_process_group` as `DistributedWeightSync` calls it, with the rank
offsets of `server_ranks`). Rank 0 broadcasts one bucket in bf16 and fp32; every member receives it.

Before the fix this timed out: SGLang namespaces the group's store keys with `PrefixStore(group_name)`
and our side did not, and the server ranks were `1 + i` instead of `1 + i·tp_size`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from areal_lite.config.placement import server_ranks
from areal_lite.utils.distributed import destroy_custom_process_group, init_custom_process_group
from areal_lite.utils.net import free_port
from tests.interop.conftest import REPO

EMBEDDED_MEMBER = """
import json, sys, torch
from areal_lite.utils.distributed import destroy_custom_process_group, init_custom_process_group
from areal_lite.inference.embedded.weights import receive_named_tensors
addr, port, rank, world, name = sys.argv[1:6]
bucket = json.loads(sys.stdin.read())
# Exactly what Engine.init_weights_update_group and update_weights_from_distributed do.
pg = init_custom_process_group(backend="gloo", master_address=addr, master_port=int(port), rank=int(rank),
                               world_size=int(world), group_name=name, timeout_s=60)
got = receive_named_tensors(bucket["names"], bucket["dtypes"], bucket["shapes"], pg, device=torch.device("cpu"))
print(json.dumps({"ok": True, "rank": int(rank), "sums": {n: float(t.double().sum()) for n, t in got},
                  "dtypes": {n: str(t.dtype).removeprefix("torch.") for n, t in got}}), flush=True)
destroy_custom_process_group(pg)
"""


@pytest.mark.timeout(180)
def test_trainer_and_sglang_tp_servers_form_one_group_and_a_broadcast_arrives(sglang_src):
    num_servers, tp = 2, 2
    offsets, world = server_ranks(num_servers, tp)
    assert offsets == [1, 3] and world == 5
    world += 1  # plus one member joining as the embedded engine does, at the next rank
    port, name = free_port(), "areal_lite_weight_update"
    tensors = {"embed.weight": torch.randn(7, 5, dtype=torch.bfloat16),
               "norm.weight": torch.linspace(-1, 1, 11, dtype=torch.float32)}
    bucket = {"names": list(tensors), "dtypes": [str(t.dtype).removeprefix("torch.") for t in tensors.values()],
              "shapes": [list(t.shape) for t in tensors.values()]}
    procs = []
    for offset in offsets:
        tp_port = free_port()  # the server's own default group of its TP ranks
        for tp_rank in range(tp):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.interop.sglang_worker", str(sglang_src), "group-member",
                 "127.0.0.1", str(port), str(offset), str(world), name, str(tp_rank), str(tp), str(tp_port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO))
    procs.append(subprocess.Popen(
        [sys.executable, "-c", EMBEDDED_MEMBER, "127.0.0.1", str(port), str(world - 1), str(world), name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO))
    for p in procs:
        p.stdin.write(json.dumps(bucket))
        p.stdin.close()
    group = None
    try:
        group = init_custom_process_group(backend="gloo", master_address="127.0.0.1", master_port=port, rank=0,
                                          world_size=world, group_name=name, timeout_s=60)
        for t in tensors.values():
            dist.broadcast(t.contiguous(), src=0, group=group)
        results = []
        for p in procs:
            p.wait(timeout=120)
            out, err = p.stdout.read(), p.stderr.read()
            assert p.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        destroy_custom_process_group(group)
    # Every member received every tensor, in its dtype, and each holds a distinct rank of the group.
    assert all(r["ok"] for r in results), results
    assert sorted(r["rank"] for r in results) == list(range(1, world))
    want = {n: float(t.double().sum()) for n, t in tensors.items()}
    for r in results:
        assert r["dtypes"] == {"embed.weight": "bfloat16", "norm.weight": "float32"}
        assert r["sums"] == pytest.approx(want, abs=0)
