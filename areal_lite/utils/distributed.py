"""A torch.distributed process group outside the default one, for weight broadcast.

Trainer rank 0 and the inference servers meet in a group of their own: the trainer already
belongs to its FSDP default group, and a server belongs to none. The group is built the way
SGLang builds its model-update group (`init_custom_process_group`: a TCP rendezvous, then
`_new_process_group_helper` under the group name), so the store keys, and therefore the
rendezvous, are the same whichever side runs SGLang and whichever runs areal_lite.
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from typing import Callable, NoReturn

import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d


def init_custom_process_group(
    *,
    backend: str,
    master_address: str,
    master_port: int,
    rank: int,
    world_size: int,
    group_name: str,
    timeout_s: float = 300.0,
) -> dist.ProcessGroup:
    """Join (rank > 0) or host (rank 0) a process group that is not the default group.

    Collectives on the returned group take group-local ranks: `dist.broadcast(t, src=0, group=pg)`.
    Every member blocks here until all `world_size` members have joined or `timeout_s` passes.
    """
    timeout = timedelta(seconds=timeout_s)
    # The store `c10d.rendezvous("tcp://...")` would make, built directly: under torchrun
    # (TORCHELASTIC_USE_AGENT_STORE=True) the rendezvous turns rank 0 into a client of a store
    # nobody hosts, and a trainer started by torchrun would wait for the servers forever.
    store = dist.TCPStore(
        host_name=master_address, port=master_port, world_size=world_size, is_master=rank == 0,
        timeout=timeout, multi_tenant=True,
    )
    store.set_timeout(timeout)
    pg, _ = c10d._new_process_group_helper(
        world_size,
        rank,
        [],
        backend,
        store,
        group_name=group_name,
        timeout=timeout,
    )
    # NOTE: collectives resolve group-local ranks through this map; the helper leaves it unset.
    c10d._world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def destroy_custom_process_group(pg: dist.ProcessGroup | None) -> None:
    """Tear down a group made by `init_custom_process_group`; a no-op for None."""
    if pg is None:
        return
    try:
        dist.destroy_process_group(pg)
    except (AssertionError, RuntimeError, ValueError):
        # Not registered as a regular group in this process: drop our references only.
        c10d._world.pg_group_ranks.pop(pg, None)


def run_and_exit(main: Callable[[], int]) -> NoReturn:
    """Run a distributed program's `main` and exit with its status, skipping interpreter teardown.

    After a clean return every rank meets at a barrier and destroys the default group. The process
    then leaves through `os._exit`, because gloo's destructors can abort a finished 2-rank job at
    interpreter exit. On an exception the traceback is printed and the status is 1; there is no
    barrier then, since the other ranks may never reach it.
    """
    try:
        code = main()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
