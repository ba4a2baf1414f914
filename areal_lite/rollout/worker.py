"""The rollout worker: asks the controller for prompts, runs the workflow, streams groups back.

One asyncio loop per process, no sleeps on the path: it waits on the control socket (grants,
cancels), the broadcast socket (versions, shutdown), its running episodes, and a heartbeat timer.

    hello → welcome
    want(free slots) → grant(prompt ids + records) → run episodes → PUSH group | reject(reason)
    cancel(prompt ids) → abort those episodes → reject("cancelled")  (the controller re-issues them)
    shutdown → stop
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from areal_lite.inference.client import InferenceClient
from areal_lite.rollout.workflow import RewardFailure, RolloutWorkflow, Trajectory
from areal_lite.transport import AsyncDealer, AsyncPusher, AsyncSubscriber, Codec, TrajectoryGroup
from areal_lite.utils.runenv import RunEnv

logger = logging.getLogger("areal_lite.worker")


@dataclass
class WorkerSettings:
    slots: int  # episodes this worker runs at once
    heartbeat_s: float = 1.0
    request_timeout: float = 600.0
    request_retries: int = 3


def build_group(prompt_id: str, worker_id: str, trajs: list[Trajectory]) -> TrajectoryGroup:
    """The group to send; its meta counts the samples scored 0 after a failed reward (`reward/failures`)."""
    meta = {"reward_failures": sum(bool(t.info.get("reward_failed")) for t in trajs)}
    return TrajectoryGroup.from_trajectories(prompt_id=prompt_id, worker_id=worker_id, trajectories=trajs, meta=meta)


class RolloutWorker:
    def __init__(self, env: RunEnv, workflow: RolloutWorkflow, settings: WorkerSettings):
        self.env = env
        self.workflow = workflow
        self.settings = settings
        # Stable per worker slot: a restarted worker's hello retires its dead predecessor at once
        # (its prompts are re-issued without waiting for the heartbeat timeout).
        self.worker_id = f"worker{env.worker_index}"
        self.codec = Codec(env.run_id, env.secret)
        self.tasks: dict[str, asyncio.Task] = {}
        self.granted_total = 0
        self.version = 0
        self.stats = {"groups": 0, "rejected": 0, "failed": 0, "cancelled": 0}

    async def run(self) -> int:
        client = InferenceClient(
            self.env.server_addrs,
            api_key=self.env.api_key,
            request_timeout=self.settings.request_timeout,
            retries=self.settings.request_retries,
        )
        dealer = AsyncDealer(self.codec, self.env.address(self.env.control_port), identity=self.worker_id.encode())
        pusher = AsyncPusher(self.codec, self.env.address(self.env.trajectory_port))
        sub = AsyncSubscriber(self.codec, self.env.address(self.env.broadcast_port))
        self._dealer, self._pusher, self._client = dealer, pusher, client
        try:
            await self._hello()
            return await self._loop(sub)
        finally:
            for task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            try:
                await dealer.send("bye", {"worker_id": self.worker_id})
            except Exception:  # best effort on the way out
                pass
            await client.aclose()
            for s in (dealer, pusher, sub):
                s.close()

    async def _hello(self) -> None:
        await self._dealer.send(
            "hello", {"worker_id": self.worker_id, "pid": os.getpid(), "host": socket.gethostname(),
                      "slots": self.settings.slots}
        )
        self._wanted = False

    async def _want(self) -> None:
        free = self.settings.slots - len(self.tasks)
        if free > 0 and not self._wanted:
            await self._dealer.send("want", {"worker_id": self.worker_id, "n": free, "seen": self.granted_total})
            self._wanted = True

    async def _loop(self, sub: Any) -> int:
        ctrl = asyncio.ensure_future(self._dealer.recv())
        bcast = asyncio.ensure_future(sub.recv())
        next_beat = time.monotonic() + self.settings.heartbeat_s
        try:
            while True:
                wait_for = {ctrl, bcast, *self.tasks.values()}
                done, _ = await asyncio.wait(
                    wait_for, timeout=max(0.0, next_beat - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
                )
                if bcast in done:
                    msg = bcast.result()
                    if msg.type == "shutdown":
                        logger.info("shutdown from the controller: %s", msg.body.get("reason"))
                        return 0
                    if msg.type == "version":
                        self.version = int(msg.body["version"])
                    bcast = asyncio.ensure_future(sub.recv())
                if ctrl in done:
                    await self._on_control(ctrl.result())
                    ctrl = asyncio.ensure_future(self._dealer.recv())
                for pid, task in list(self.tasks.items()):
                    if task in done:
                        del self.tasks[pid]
                        await self._finish(pid, task)
                if time.monotonic() >= next_beat:
                    await self._dealer.send("heartbeat", {"worker_id": self.worker_id, "running": list(self.tasks)})
                    next_beat = time.monotonic() + self.settings.heartbeat_s
                await self._want()
        finally:
            ctrl.cancel()
            bcast.cancel()

    async def _on_control(self, msg: Any) -> None:
        if msg.type == "welcome":
            self.version = int(msg.body["version"])
            self.settings.heartbeat_s = float(msg.body.get("heartbeat_s", self.settings.heartbeat_s))
            self._wanted = False
        elif msg.type == "grant":
            self._wanted = False
            for item in msg.body["items"]:
                self.granted_total += 1
                pid = item["prompt_id"]
                self.tasks[pid] = asyncio.ensure_future(self.workflow.arun_episode(self._client, item["record"]))
        elif msg.type == "cancel":
            for pid in msg.body["prompt_ids"]:
                task = self.tasks.pop(pid, None)
                if task is not None:
                    task.cancel()
                    self.stats["cancelled"] += 1
                    await self._reject(pid, "cancelled")
        elif msg.type == "error":
            # The controller does not know us (it restarted): introduce ourselves again. Our running
            # episodes belong to the previous controller, which re-issues them.
            logger.warning("controller: %s", msg.body.get("message"))
            for task in self.tasks.values():
                task.cancel()
            self.tasks.clear()
            await self._hello()

    async def _finish(self, pid: str, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, RewardFailure):
            self.stats["failed"] += 1
            await self._reject(pid, "reward_failed", reward_failures=exc.failures)
            return
        if exc is not None:
            # A workflow bug or every server gone: report it and keep serving other prompts.
            logger.error("episode %s failed: %s: %s", pid, type(exc).__name__, exc, exc_info=exc)
            self.stats["failed"] += 1
            await self._reject(pid, "failed")
            return
        trajs = task.result()
        if not trajs:
            self.stats["rejected"] += 1
            await self._reject(pid, "rejected")
            return
        group = build_group(pid, self.worker_id, trajs)
        await self._pusher.send_group(group)
        self.stats["groups"] += 1

    async def _reject(self, pid: str, reason: str, reward_failures: int = 0) -> None:
        body: dict[str, Any] = {"worker_id": self.worker_id, "prompt_id": pid, "reason": reason}
        if reward_failures:
            body["reward_failures"] = reward_failures  # summed by the controller into `reward/failures`
        await self._dealer.send("reject", body)


def run_worker(env: RunEnv, workflow: RolloutWorkflow, settings: WorkerSettings) -> int:
    """Run a worker until the controller says shutdown; returns the exit status."""
    return asyncio.run(RolloutWorker(env, workflow, settings).run())
