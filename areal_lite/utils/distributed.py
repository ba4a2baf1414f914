"""torch.distributed helpers: the weight-update group shared with inference servers, and exits.

Trainer rank 0 and the inference servers meet in a group of their own: the trainer already belongs to
its FSDP default group, and a server belongs to none. The group is built exactly the way SGLang builds
its model-update group (`sglang.srt.utils.common.init_custom_process_group`, called by SGLang's
`WeightUpdater.init_weights_update_group` with `init_method=tcp://host:port`): a TCP store on the
trainer's address, wrapped in `PrefixStore(group_name, store)`, then `_new_process_group_helper` under
the group name. The same store keys on both sides are what makes the rendezvous meet;
tests/interop/test_sglang_weight_group.py runs SGLang's own code against ours.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, NoReturn

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d
from torch.distributed.device_mesh import DeviceMesh

# The gloo group of the trainer ranks, once `init_trainer_dist` made one: `run_and_exit`'s final barrier.
_CPU_GROUP: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class TrainerDist:
    """Where this trainer rank runs and which group each kind of collective goes through.

    NCCL, the default group on GPU, serves CUDA tensors only; every collective on CPU tensors (the
    step's batch, counts, statistics, barriers, checkpoint coordination) takes `cpu_group`, a gloo
    group of all trainer ranks. `mesh` is FSDP's sharding mesh (the default group's device).
    """

    rank: int
    world_size: int
    device: torch.device
    cpu_group: dist.ProcessGroup
    mesh: DeviceMesh


def init_trainer_dist(device_type: str, *, timeout_s: float = 1800.0, default_backend: str = "") -> TrainerDist:
    """Join the torchrun process group (gloo on CPU, NCCL on GPU) and make the CPU-collective group.

    `default_backend` overrides the default group's backend. Tests pass "cuda:gloo" on CPU: a default
    group that, like NCCL, has no backend for CPU tensors, so any CPU collective that forgets
    `cpu_group` fails there exactly as it would on a GPU node.
    """
    global _CPU_GROUP
    timeout = timedelta(seconds=timeout_s)
    backend = default_backend or ("nccl" if device_type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    if device_type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    serves_cpu = dist.get_backend() == "gloo"
    cpu_group = dist.group.WORLD if serves_cpu else dist.new_group(backend="gloo", timeout=timeout)
    # FSDP shards over the default group where it serves the device (NCCL on GPU, gloo on CPU).
    mesh_group = cpu_group if device_type == "cpu" else dist.group.WORLD
    mesh = DeviceMesh.from_group(mesh_group, device_type)
    _CPU_GROUP = cpu_group
    return TrainerDist(rank, world, device, cpu_group, mesh)


def broadcast_int(x: int, group: dist.ProcessGroup, *, src: int = 0) -> int:
    """Rank `src`'s `x` on every rank of `group` (collective)."""
    t = torch.tensor([x], dtype=torch.int64)
    if dist.get_world_size(group) > 1:
        dist.broadcast(t, src=src, group=group)
    return int(t.item())


def weight_group_store(*, master_address: str, master_port: int, rank: int, world_size: int,
                       timeout_s: float = 300.0) -> dist.Store:
    """The TCP store of a weight-update group: hosted by rank 0, joined by the others.

    Built directly rather than through `c10d.rendezvous("tcp://...")` (which SGLang's servers use and
    which makes the same store): under torchrun (TORCHELASTIC_USE_AGENT_STORE=True) the rendezvous
    turns rank 0 into a client of a store nobody hosts. Rank 0 may keep the returned store and form
    later groups on it (`init_custom_process_group(store=...)`) with new group names.
    """
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(
        host_name=master_address, port=master_port, world_size=world_size, is_master=rank == 0,
        timeout=timeout, multi_tenant=True,
    )
    store.set_timeout(timeout)
    return store


def init_custom_process_group(
    *,
    backend: str,
    master_address: str,
    master_port: int,
    rank: int,
    world_size: int,
    group_name: str,
    timeout_s: float = 300.0,
    store: dist.Store | None = None,
) -> dist.ProcessGroup:
    """Join (rank > 0) or host (rank 0) a process group that is not the default group.

    Collectives on the returned group take group-local ranks: `dist.broadcast(t, src=0, group=pg)`.
    Every member blocks here until all `world_size` members have joined or `timeout_s` passes.
    `store`: an existing `weight_group_store` to form the group on (rank 0 re-forming a group).
    """
    if store is None:
        store = weight_group_store(master_address=master_address, master_port=master_port, rank=rank,
                                   world_size=world_size, timeout_s=timeout_s)
    # NOTE: SGLang namespaces every key of the group under its name; without the same prefix the two
    # sides wait on different keys and the rendezvous times out.
    prefixed = dist.PrefixStore(group_name, store)
    pg, _ = c10d._new_process_group_helper(
        world_size,
        rank,
        [],
        backend,
        prefixed,
        group_name=group_name,
        timeout=timedelta(seconds=timeout_s),
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


def run_and_exit(main: Callable[[], int], *, on_user_error: Callable[[str], None] | None = None) -> NoReturn:
    """Run a distributed program's `main` and exit with its status, skipping interpreter teardown.

    After a clean return every rank meets at a barrier and destroys the default group. The process
    then leaves through `os._exit`, because gloo's destructors can abort a finished 2-rank job at
    interpreter exit. A user error (an exception with `exit_code = 2`: configuration, data, environment)
    prints one `error: ...` line, is passed to `on_user_error` (which records it for the launcher, so
    that the run is not restarted into the same error) and exits 2. Any other exception prints its
    traceback and exits 1. There is no barrier on a failure, since the other ranks may never reach it.
    """
    try:
        code = main()
        if dist.is_initialized():
            dist.barrier(group=_CPU_GROUP)
            dist.destroy_process_group()
    except Exception as e:
        if getattr(e, "exit_code", None) != 2:
            traceback.print_exc()
            code = 1
        else:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: {message}", file=sys.stderr)
            if on_user_error is not None:
                on_user_error(message)
            code = 2
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # KeyboardInterrupt and the like
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
