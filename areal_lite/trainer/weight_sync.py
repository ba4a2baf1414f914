"""Pushing new weights to the inference servers, pausing generation only for the swap.

disk: rank 0 writes HF safetensors to `{run}/weights/v{N}` *before* pausing (the write is off the
      critical path of generation), then pause → `/update_weights_from_disk` → continue.
distributed: trainer rank 0 and the servers share a torch.distributed group (`init_custom_process_group`,
      built like SGLang's). Per bucket of parameters: every trainer rank joins the FSDP all-gather
      (`full_tensor()`), rank 0 posts `/update_weights_from_distributed` (names, dtypes, shapes) and
      broadcasts the tensors while the servers receive them; generation is paused from the first
      bucket to the last.

Every call has a timeout, and the pause is always lifted (`finally`), so a failed update cannot leave
the servers paused.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import time
from typing import Any

import torch
import torch.distributed as dist

from areal_lite.inference.client import ServerAdmin
from areal_lite.utils.distributed import destroy_custom_process_group, init_custom_process_group

logger = logging.getLogger("areal_lite.weight_sync")


class DiskWeightSync:
    def __init__(self, admin: ServerAdmin | None, weights_dir: str, *, keep: int = 2):
        # rank 0 only. A server that is down is skipped: the launcher restarts it from the newest weights/v{N}.
        self.admin = admin and ServerAdmin(admin.addrs, api_key=admin.api_key, timeout=admin.timeout,
                                           skip_unreachable=True)
        self.weights_dir = weights_dir
        self.keep = keep

    def connect(self, engine) -> None:
        pass

    def update(self, engine, version: int) -> dict[str, float]:
        """Collective over trainer ranks. Returns timings (rank 0) for the metrics."""
        path = os.path.join(self.weights_dir, f"v{version}")
        t0 = time.perf_counter()
        state = engine.full_state_dict()
        stats: dict[str, float] = {}
        if engine.rank == 0:
            _write_weights(engine.model, state, path)
            t1 = time.perf_counter()
            assert self.admin is not None
            self.admin.pause()
            try:
                self.admin.update_weights_from_disk(path, version)
            finally:
                self.admin.resume()
            t2 = time.perf_counter()
            self._prune(version)
            stats = {"time/weight_write": t1 - t0, "time/weight_pause": t2 - t1}
        dist.barrier()
        return stats

    def _prune(self, version: int) -> None:
        for name in os.listdir(self.weights_dir):
            if name.startswith("v") and name[1:].isdigit() and int(name[1:]) <= version - self.keep:
                shutil.rmtree(os.path.join(self.weights_dir, name), ignore_errors=True)

    def close(self) -> None:
        pass


def _write_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """HF-format safetensors + config, written under a temporary name then renamed (atomic)."""
    tmp = f"{path}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


class DistributedWeightSync:
    def __init__(
        self,
        admin: ServerAdmin | None,
        *,
        master_address: str,
        master_port: int,
        num_server_ranks: int,
        backend: str = "gloo",
        group_name: str = "areal_lite_weight_update",
        bucket_bytes: int = 256 << 20,
        timeout_s: float = 300.0,
    ):
        self.admin = admin
        self.master_address = master_address
        self.master_port = master_port
        self.num_server_ranks = num_server_ranks
        self.backend = backend
        self.group_name = group_name
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        self.group: dist.ProcessGroup | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="weight-sync-http")

    def connect(self, engine) -> None:
        """Rank 0 forms the broadcast group with every server rank (servers join over HTTP)."""
        if engine.rank != 0:
            return
        assert self.admin is not None
        n = len(self.admin.addrs)
        per_server = self.num_server_ranks // n
        payloads = [
            {
                "master_address": self.master_address,
                "master_port": self.master_port,
                "rank_offset": 1 + i * per_server,
                "world_size": 1 + self.num_server_ranks,
                "group_name": self.group_name,
                "backend": self.backend,
            }
            for i in range(n)
        ]
        # NOTE: the servers block in their rendezvous until rank 0 joins, so post first, join second.
        futures = [
            self._pool.submit(ServerAdmin([addr], api_key=self.admin.api_key, timeout=self.timeout_s).call_all,
                              "/init_weights_update_group", payload)
            for addr, payload in zip(self.admin.addrs, payloads)
        ]
        self.group = init_custom_process_group(
            backend=self.backend,
            master_address=self.master_address,
            master_port=self.master_port,
            rank=0,
            world_size=1 + self.num_server_ranks,
            group_name=self.group_name,
            timeout_s=self.timeout_s,
        )
        for f in futures:
            f.result(timeout=self.timeout_s)

    def update(self, engine, version: int) -> dict[str, float]:
        """Collective over trainer ranks (the all-gathers); rank 0 pauses, streams buckets, resumes."""
        rank0 = engine.rank == 0
        t0 = time.perf_counter()
        if rank0:
            assert self.admin is not None
            self.admin.pause()
            # SGLang >= 0.5.23 accepts distributed updates only between begin and end calls.
            self.admin.call_all("/begin_weight_update", {})
        sent = 0
        try:
            bucket: list[tuple[str, torch.Tensor]] = []
            size = 0
            params = list(engine.model.named_parameters())
            for i, (name, param) in enumerate(params):
                full = param.full_tensor() if hasattr(param, "full_tensor") else param.data
                if rank0:
                    bucket.append((name, full.detach()))
                    size += full.numel() * full.element_size()
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
        dist.barrier()
        return stats

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
        self._pool.shutdown(wait=False)


def build_weight_sync(mode: str, *, admin: ServerAdmin | None, run_dir: str, env, device_type: str, num_servers: int):
    """The configured weight sync (`actor.weight_update_mode`) for this run."""
    if mode == "disk":
        weights_dir = os.path.join(run_dir, "weights")
        os.makedirs(weights_dir, exist_ok=True)
        return DiskWeightSync(admin, weights_dir)
    if mode == "distributed":
        return DistributedWeightSync(
            admin,
            master_address=env.controller_host,
            master_port=env.weight_sync_port,
            num_server_ranks=num_servers,
            backend="nccl" if device_type == "cuda" else "gloo",
        )
    raise ValueError(f"unknown weight update mode {mode!r}")
