"""Which GPUs each inference server and each trainer node gets: one pure function for every launcher.

Separate mode (the default): servers take `tp_size` GPUs each, filling nodes in order (a server never
spans nodes); the trainer then takes `nnodes` nodes that each still have `nproc_per_node` free GPUs,
so every trainer rank has a device of its own. Colocated mode (`allocation.colocate`): the trainer's
ranks take GPUs 0..nproc_per_node-1 of its nodes and the servers run on those same GPUs, one device
set per server (one GPU shared by one server and one trainer rank is the one-GPU set-up).

`validate` calls this before anything starts, so an impossible allocation exits 2 with one line.
"""

from __future__ import annotations

from dataclasses import dataclass


class PlacementError(ValueError):
    """The allocation cannot be placed on the cluster (the message says what was asked and what exists)."""


@dataclass(frozen=True)
class GpuPlacement:
    servers: list[tuple[int, list[int]]]  # (node, devices) per server
    trainer: list[tuple[int, list[int]]]  # (node, devices) per trainer node, in rank order


def server_ranks(num_servers: int, tp_size: int) -> tuple[list[int], int]:
    """(rank_offset of each server, world size) of the weight-update group (`weight_update_mode=distributed`).

    Trainer rank 0 is group rank 0; SGLang gives tensor-parallel rank t of a server the group rank
    `rank_offset + t`, so server i starts at 1 + i·tp_size and the group has 1 + servers·tp_size ranks.
    """
    return [1 + i * tp_size for i in range(num_servers)], 1 + num_servers * tp_size


def place_gpus(*, n_nodes: int, gpus_per_node: int, num_servers: int, tp_size: int, trainer_nnodes: int,
               trainer_nproc: int, colocate: bool = False) -> GpuPlacement:
    """GPU devices of every server and trainer node, or PlacementError naming what does not fit."""
    if colocate:
        return _colocated(n_nodes, gpus_per_node, num_servers, tp_size, trainer_nnodes, trainer_nproc)
    need, have = num_servers * tp_size + trainer_nnodes * trainer_nproc, n_nodes * gpus_per_node
    if need > have:
        raise PlacementError(f"needs {need} GPUs ({num_servers} servers x {tp_size} + {trainer_nnodes * trainer_nproc} "
                             f"trainer ranks) but the cluster has {have}")
    if tp_size > gpus_per_node:
        raise PlacementError(f"a server needs tp_size={tp_size} GPUs on one node but nodes have {gpus_per_node}")
    if trainer_nproc > gpus_per_node:
        raise PlacementError(f"the trainer needs {trainer_nproc} GPUs per node but nodes have {gpus_per_node}")
    free = [list(range(gpus_per_node)) for _ in range(n_nodes)]
    servers = []
    for i in range(num_servers):
        node = next((n for n in range(n_nodes) if len(free[n]) >= tp_size), None)
        if node is None:
            raise PlacementError(f"server {i} needs {tp_size} free GPU(s) on one node; {num_servers} servers x "
                                 f"tp_size {tp_size} do not fit on {n_nodes} node(s) x {gpus_per_node} GPUs")
        servers.append((node, free[node][:tp_size]))
        free[node] = free[node][tp_size:]
    # The trainer prefers nodes no server uses (FSDP within a node is fastest), then the fullest others.
    candidates = sorted((n for n in range(n_nodes) if len(free[n]) >= trainer_nproc),
                        key=lambda n: (len(free[n]) < gpus_per_node, n))
    if len(candidates) < trainer_nnodes:
        left = ", ".join(f"node{n}: {len(f)}" for n, f in enumerate(free))
        raise PlacementError(
            f"the trainer needs {trainer_nnodes} node(s) with {trainer_nproc} free GPU(s) each, but after "
            f"{num_servers} server(s) x {tp_size} GPU(s) the free GPUs are {left}")
    trainer = [(n, free[n][:trainer_nproc]) for n in sorted(candidates[:trainer_nnodes])]
    return GpuPlacement(servers, trainer)


def _colocated(n_nodes, gpus_per_node, num_servers, tp_size, trainer_nnodes, trainer_nproc) -> GpuPlacement:
    if trainer_nnodes > n_nodes or trainer_nproc > gpus_per_node:
        raise PlacementError(f"the trainer's {trainer_nnodes} node(s) x {trainer_nproc} GPU(s) do not fit on "
                             f"{n_nodes} node(s) x {gpus_per_node} GPUs")
    if num_servers * tp_size != trainer_nnodes * trainer_nproc or trainer_nproc % tp_size:
        raise PlacementError(
            f"colocated servers run on the trainer's GPUs: num_servers x tp_size ({num_servers} x {tp_size}) "
            f"must equal the trainer's {trainer_nnodes} x {trainer_nproc} GPUs, with whole servers per node")
    trainer = [(n, list(range(trainer_nproc))) for n in range(trainer_nnodes)]
    servers = [(n, devices[k:k + tp_size]) for n, devices in trainer for k in range(0, trainer_nproc, tp_size)]
    return GpuPlacement(servers, trainer)
