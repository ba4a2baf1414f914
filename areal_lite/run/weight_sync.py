"""Pushing new weights to the inference servers, pausing generation only for the swap.

disk: rank 0 writes HF safetensors to `{run}/weights/v{N}` *before* pausing (the write is off the
      critical path of generation), then pause → `/update_weights_from_disk` → continue.
distributed: trainer rank 0 and every server rank share a torch.distributed group, built as SGLang
      builds its model-update group. Per bucket of parameters: every trainer rank joins the FSDP
      all-gather (`full_tensor()`), rank 0 posts `/update_weights_from_distributed` (names, dtypes,
      shapes) and broadcasts the tensors while the servers receive them; generation is paused from
      the first bucket to the last, inside SGLang's `/begin_weight_update` … `/end_weight_update`.

Weights travel in the engine's export dtype (the serving dtype: bf16 on GPU by default), so a sync
moves half the bytes of the fp32 master copy.

Every call has a timeout, and the pause is always lifted (`finally`), so a failed update cannot leave
the servers paused.

A server that restarts while the trainer pushes (disk mode skips it while it is down; a restarted
server comes back with the newest weights on disk, or the base model in distributed mode) can serve
weights older than the trainer's. Its groups are then too stale to train, so a trainer waiting for its
batch calls `catch_up` (see `BatchSource.next_batch`): every server not at the trainer's version gets
the trainer's weights again.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from typing import Any, Protocol

import torch
import torch.distributed as dist

from areal_lite.config.placement import server_ranks
from areal_lite.inference.client import ServerAdmin
from areal_lite.run.rundir import RunDir, writing
from areal_lite.utils.distributed import (
    broadcast_int,
    destroy_custom_process_group,
    init_custom_process_group,
    weight_group_store,
)
from areal_lite.utils.hf import save_hf_dir

logger = logging.getLogger("areal_lite.weight_sync")


class WeightSync(Protocol):
    """How new weights reach the servers (`actor.weight_update_mode`). All calls are collective."""

    def connect(self, engine) -> None: ...

    def update(self, engine, version: int) -> dict[str, float]: ...

    def catch_up(self, engine, version: int) -> None: ...

    def close(self) -> None: ...


def servers_behind(admin: ServerAdmin, version: int) -> list[str]:
    """The servers (reachable now) that serve a weight version other than the trainer's `version`."""
    probe = ServerAdmin(admin.addrs, api_key=admin.api_key, timeout=30.0, skip_unreachable=True)
    behind = []
    for addr, served in zip(admin.addrs, probe.weight_versions()):
        if served is not None and served != version:
            how = "older than the trainer's" if served < version else "the trainer does not have"
            logger.warning("server %s serves weights %s (v%d, not v%d)", addr, how, served, version)
            behind.append(addr)
    return behind


class DiskWeightSync:
    def __init__(self, admin: ServerAdmin | None, run_dir: RunDir, *, keep: int = 2):
        # rank 0 only. A server that is down is skipped: the launcher restarts it from the newest weights/v{N}.
        self.admin = admin and ServerAdmin(admin.addrs, api_key=admin.api_key, timeout=admin.timeout,
                                           skip_unreachable=True)
        self.run_dir = run_dir
        self.keep = keep

    def connect(self, engine) -> None:
        pass

    def update(self, engine, version: int) -> dict[str, float]:
        """Collective over trainer ranks. Returns timings (rank 0) for the metrics."""
        path = self.run_dir.weights_path(version)
        t0 = time.perf_counter()
        state = engine.full_state_dict()
        stats: dict[str, float] = {}
        if engine.rank == 0:
            with writing(f"weights v{version}", path):
                save_hf_dir(engine.model, state, path, dtype=engine.export_dtype)
            t1 = time.perf_counter()
            assert self.admin is not None
            self.admin.pause()
            try:
                self.admin.update_weights_from_disk(path, version)
            finally:
                self.admin.resume()
            t2 = time.perf_counter()
            self.run_dir.prune_weights(version, keep=self.keep)
            stats = {"time/weight_write": t1 - t0, "time/weight_pause": t2 - t1}
        dist.barrier(group=engine.dist.cpu_group)
        return stats

    def catch_up(self, engine, version: int) -> None:
        """Rank 0 re-sends `weights/v{version}` to each server that serves another version."""
        if engine.rank != 0 or version == 0:  # version 0 is the base model every server starts from
            return
        assert self.admin is not None
        behind = servers_behind(self.admin, version)
        path = self.run_dir.weights_path(version)
        if behind and not os.path.isdir(path):
            logger.warning("%s is missing: the servers behind get v%d with the next update", path, version)
        elif behind:
            logger.warning("pushing v%d to %s", version, ", ".join(behind))
            lagging = ServerAdmin(behind, api_key=self.admin.api_key, timeout=self.admin.timeout,
                                  skip_unreachable=True)
            lagging.pause()
            try:
                lagging.update_weights_from_disk(path, version)
            finally:
                lagging.resume()

    def close(self) -> None:
        pass


class DistributedWeightSync:
    def __init__(
        self,
        admin: ServerAdmin | None,
        *,
        master_address: str,
        master_port: int,
        tp_size: int = 1,
        backend: str = "gloo",
        group_name: str = "areal_lite_weight_update",
        bucket_bytes: int = 256 << 20,
        timeout_s: float = 300.0,
    ):
        self.admin = admin
        self.master_address = master_address
        self.master_port = master_port
        self.tp_size = tp_size
        self.backend = backend
        self.base_group_name = group_name
        self.group_name = group_name
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        self.group: dist.ProcessGroup | None = None
        self.generation = 0  # groups formed so far (a restarted server makes the next one)
        self._store: dist.Store | None = None
        self._server_starts: list[Any] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="weight-sync-http")

    # ------------------------------------------------------------------ the group

    def connect(self, engine) -> None:
        """Rank 0 forms the broadcast group with every server rank (servers join over HTTP)."""
        if engine.rank != 0:
            return
        self._form_group()

    def _form_group(self) -> None:
        """(Re)form the group with every server; a server that restarted since the last one rejoins."""
        assert self.admin is not None
        infos = self._wait_for_servers()
        if self.group is not None:
            # The survivors leave the old group (a restarted server never had it), then we do.
            self._call_each("/destroy_weights_update_group", [{"group_name": self.group_name}] * len(infos),
                            tolerate_failure=True)
            destroy_custom_process_group(self.group)
            self.group = None
        # A trainer that died between begin and end left its session open: close it (400 if none is).
        self._call_each("/end_weight_update", [{}] * len(infos), tolerate_failure=True)
        self.generation += 1
        self.group_name = self.base_group_name if self.generation == 1 else f"{self.base_group_name}_{self.generation}"
        offsets, world = server_ranks(len(self.admin.addrs), self.tp_size)
        payloads = [
            {
                "master_address": self.master_address,
                "master_port": self.master_port,
                "rank_offset": offset,
                "world_size": world,
                "group_name": self.group_name,
                "backend": self.backend,
            }
            for offset in offsets
        ]
        # NOTE: the servers block in their rendezvous until rank 0 joins, so post first, join second.
        futures = [self._pool.submit(self._post, addr, "/init_weights_update_group", payload)
                   for addr, payload in zip(self.admin.addrs, payloads)]
        if self._store is None:
            # Kept for the whole run: later groups form on the same store (and port) under new names.
            self._store = weight_group_store(master_address=self.master_address, master_port=self.master_port,
                                             rank=0, world_size=world, timeout_s=self.timeout_s)
        self.group = init_custom_process_group(
            backend=self.backend, master_address=self.master_address, master_port=self.master_port, rank=0,
            world_size=world, group_name=self.group_name, timeout_s=self.timeout_s, store=self._store,
        )
        for f in futures:
            f.result(timeout=self.timeout_s)
        self._server_starts = [i.get("startup_time") for i in infos]
        logger.info("weight-update group %s formed: %d server(s), world size %d", self.group_name,
                    len(infos), world)

    def _wait_for_servers(self) -> list[dict]:
        """`/server_info` of every server, waiting (up to the timeout) for any that is restarting."""
        assert self.admin is not None
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return self.admin.call_all("/server_info", method="GET")
            except Exception as e:  # noqa: BLE001 - connection refused while the launcher restarts it
                if time.monotonic() > deadline:
                    raise RuntimeError(f"servers not reachable for the weight-update group: {e}") from e
                time.sleep(1.0)

    def _servers_restarted(self) -> bool:
        infos = self._wait_for_servers()
        return [i.get("startup_time") for i in infos] != self._server_starts

    def _post(self, addr: str, path: str, payload: dict) -> Any:
        return ServerAdmin([addr], api_key=self.admin.api_key, timeout=self.timeout_s).call_all(path, payload)[0]

    def _call_each(self, path: str, payloads: list[dict], *, tolerate_failure: bool = False) -> None:
        for addr, payload in zip(self.admin.addrs, payloads):
            try:
                self._post(addr, path, payload)
            except RuntimeError as e:  # an HTTP 400 (nothing to close or destroy)
                if not tolerate_failure:
                    raise
                logger.debug("%s%s: %s", addr, path, e)

    # ------------------------------------------------------------------ updates

    def update(self, engine, version: int) -> dict[str, float]:
        """Collective over trainer ranks (the all-gathers); rank 0 pauses, streams buckets, resumes."""
        rank0 = engine.rank == 0
        if rank0 and self._servers_restarted():
            logger.warning("a server restarted: re-forming the weight-update group")
            self._form_group()
        t0 = time.perf_counter()
        if rank0:
            assert self.admin is not None
            self.admin.pause()
            self.admin.call_all("/begin_weight_update", {})
        sent = 0
        try:
            bucket: list[tuple[str, torch.Tensor]] = []
            size = 0
            params = list(engine.model.named_parameters())
            dtype = engine.export_dtype
            for i, (name, param) in enumerate(params):
                full = param.full_tensor() if hasattr(param, "full_tensor") else param.data
                if rank0:
                    tensor = full.detach().to(dtype)
                    bucket.append((name, tensor))
                    size += tensor.numel() * tensor.element_size()
                last = i == len(params) - 1
                if rank0 and (size >= self.bucket_bytes or last):
                    self._send_bucket(bucket, version if last else None)
                    sent += size
                    bucket, size = [], 0
        finally:
            if rank0:
                try:
                    self.admin.call_all("/end_weight_update", {})
                finally:
                    self.admin.resume()
        stats: dict[str, float] = {}
        if rank0:
            stats = {"time/weight_pause": time.perf_counter() - t0, "weight_sync/bytes": float(sent)}
        dist.barrier(group=engine.dist.cpu_group)
        return stats

    def catch_up(self, engine, version: int) -> None:
        """Every rank joins a full update when rank 0 finds a server at another version (collective:
        the all-gathers)."""
        behind = engine.rank == 0 and bool(servers_behind(self.admin, version))
        if broadcast_int(int(behind), engine.dist.cpu_group):
            if engine.rank == 0:
                logger.warning("pushing v%d to every server (distributed updates re-form the group)", version)
            self.update(engine, version)

    def _send_bucket(self, bucket: list[tuple[str, torch.Tensor]], version: int | None) -> None:
        assert self.admin is not None and self.group is not None
        payload: dict[str, Any] = {
            "names": [n for n, _ in bucket],
            "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
            "shapes": [list(t.shape) for _, t in bucket],
            "group_name": self.group_name,
            "flush_cache": True,
            "abort_all_requests": False,
        }
        if version is not None:
            payload["weight_version"] = str(version)
        # The servers answer after receiving every tensor: post in the background, then broadcast.
        future = self._pool.submit(self.admin.call_all, "/update_weights_from_distributed", payload)
        for _, tensor in bucket:
            dist.broadcast(tensor.contiguous(), src=0, group=self.group)
        future.result(timeout=self.timeout_s)

    def close(self) -> None:
        destroy_custom_process_group(self.group)
        self.group = None
        self._store = None
        self._pool.shutdown(wait=False)


def build_weight_sync(mode: str, *, admin: ServerAdmin | None, run_dir: RunDir, env, device_type: str,
                      tp_size: int = 1) -> WeightSync:
    """The configured weight sync (`actor.weight_update_mode`) for this run."""
    if mode == "disk":
        os.makedirs(run_dir.weights_dir, exist_ok=True)
        return DiskWeightSync(admin, run_dir)
    if mode == "distributed":
        return DistributedWeightSync(
            admin,
            master_address=env.controller_host,
            master_port=env.weight_sync_port,
            tp_size=tp_size,
            backend="nccl" if device_type == "cuda" else "gloo",
        )
    raise ValueError(f"unknown weight update mode {mode!r}")
