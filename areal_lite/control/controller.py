"""The rollout controller: admission under the staleness bound, the dataset cursor, the buffer.

It lives in trainer rank 0 as one background thread that owns three sockets (ROUTER for control,
PULL for trajectory groups, PUB for broadcasts) and waits on them together; the trainer thread talks
to it through a command queue plus a wake-up pipe, so nothing on the path sleeps or polls on a timer.

Data flow (each prompt id: granted → accepted | rejected | filtered | failed, or re-issued):
  worker `want`  → grants while capacity > 0 (staleness.py) → worker runs the workflow
  worker `group` → accepted into the buffer (oldest grant first) or filtered (dynamic filter)
  worker `reject`→ released (terminal outcome, or re-issue when the worker cancelled it)
  trainer        → `wait_batch(B)` takes the B oldest buffered groups whose staleness ≤ η

The bound on what is trained is exact: running grants that can no longer be fresh enough are
cancelled and re-issued when the version advances, and every group is checked again (against the
versions its tokens actually carry) when a batch is assembled.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import zmq

from areal_lite.control.ledger import Ledger
from areal_lite.control.prompts import PromptSource, parse_prompt_id
from areal_lite.control.staleness import StalenessManager
from areal_lite.transport import Codec, PullReceiver, Publisher, RouterServer, TrajectoryGroup, decode_group, encode_group

logger = logging.getLogger("areal_lite.controller")
# Checkpoints hold buffered groups in the wire format, under a fixed run id (they outlive the run id).
_STATE_CODEC = Codec("checkpoint")
# What each bound socket takes; any other (even well-formed) message is rejected and counted.
GROUP_TYPES = frozenset({"group"})
CONTROL_TYPES = frozenset({"hello", "want", "reject", "heartbeat", "bye"})


def _as_bytes(frame: Any) -> bytes:
    return frame.tobytes() if hasattr(frame, "tobytes") else bytes(frame)


@dataclass
class Grant:
    prompt_id: str
    worker_id: str
    version: int  # trainer version when granted: a lower bound on the group's oldest token version
    seq: int  # grant order, for oldest-first batches and order-preserving re-issue
    t_grant: float


@dataclass
class BufferedGroup:
    group: TrajectoryGroup
    grant: Grant
    t_accept: float

    @property
    def head_version(self) -> int:
        """Oldest policy version among the group's generated tokens (the staleness reference)."""
        versions = self.group.versions[self.group.loss_mask.astype(bool)]
        return int(versions.min()) if versions.size else self.grant.version

    @property
    def newest_version(self) -> int:
        """Newest policy version among the group's generated tokens."""
        versions = self.group.versions[self.group.loss_mask.astype(bool)]
        return int(versions.max()) if versions.size else self.grant.version


@dataclass
class WorkerState:
    worker_id: str
    identity: bytes
    slots: int = 0
    want: int = 0
    granted_total: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    grants: dict[str, Grant] = field(default_factory=dict)


class RolloutController:
    """Admission control, prompt cursor and trajectory buffer of one run (trainer rank 0)."""

    def __init__(
        self,
        *,
        records: Sequence[dict],
        batch_size: int,
        max_concurrent: int,
        max_head_offpolicyness: int,
        codec: Codec,
        bind_host: str = "127.0.0.1",
        ports: tuple[int, int, int] = (0, 0, 0),
        seed: int = 1,
        shuffle: bool = True,
        num_epochs: int = 1,
        dynamic_filter: str = "none",
        heartbeat_s: float = 1.0,
        worker_timeout_s: float = 10.0,
        ledger_path: str | None = None,
    ):
        self.records = records
        self.batch_size = batch_size
        self.eta = max_head_offpolicyness
        self.staleness = StalenessManager(batch_size, max_concurrent, max_head_offpolicyness)
        self.source = PromptSource(len(records), seed=seed, shuffle=shuffle, num_epochs=num_epochs)
        self.dynamic_filter = dynamic_filter
        self.heartbeat_s = heartbeat_s
        self.worker_timeout_s = worker_timeout_s
        self.ledger = Ledger(ledger_path)

        self.version = 0
        self.workers: dict[str, WorkerState] = {}
        self.running: dict[str, Grant] = {}
        self.buffer: list[BufferedGroup] = []
        self.counters: Counter[str] = Counter()
        self._grant_seq = 0
        self._lock = threading.Condition()
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._rate_mark = (time.monotonic(), 0, 0)  # (time, groups, generated tokens) at the last stats()

        self.codec = codec
        self.receiver = PullReceiver(codec, bind_host, ports[0], accept=GROUP_TYPES)
        self.router = RouterServer(codec, bind_host, ports[1], accept=CONTROL_TYPES)
        self.publisher = Publisher(codec, bind_host, ports[2])

    # ------------------------------------------------------------------ trainer-thread API

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.receiver.port, self.router.port, self.publisher.port

    def start(self) -> None:
        self._rate_mark = (time.monotonic(), *self._arrived())
        self._thread = threading.Thread(target=self._run, name="rollout-controller", daemon=True)
        self._thread.start()

    def set_version(self, version: int) -> None:
        """The trainer finished a weight update: admit by the new version, cancel what became too stale.

        The version changes at once (so the next `wait_batch` judges staleness by it); the socket
        work (broadcast, cancels, new grants) follows on the controller thread.
        """
        with self._lock:
            self.version = int(version)
        self._command("version", version)

    def wait_batch(self, n: int, timeout: float | None = None) -> list[BufferedGroup] | None:
        """Block until `n` groups are buffered; return the oldest `n` (by grant), or None at end of data.

        A buffered group whose staleness (version − oldest token version) exceeds η is never returned:
        its prompt is re-issued. Raises TimeoutError after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._raise_if_failed()
                self._drop_stale_buffered()
                if len(self.buffer) >= n:
                    self.buffer.sort(key=lambda b: b.grant.seq)
                    batch, self.buffer = self.buffer[:n], self.buffer[n:]
                    return batch
                if self._no_more_data():
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{len(self.buffer)}/{n} groups after {timeout:.0f}s")
                self._lock.wait(timeout=remaining)

    def _arrived(self) -> tuple[int, int]:
        """Groups that arrived (accepted or filtered) and their generated tokens, since the run began."""
        return self.counters["accepted"] + self.counters["filtered"], self.counters["gen_tokens"]

    def stats(self) -> dict[str, float]:
        """Counters plus rates since the previous call; `rollout/rejected` counts the prompts workers
        gave up on (workflow rejects, failures, reward failures), malformed messages are `transport/rejected`.
        `reward/failures`: reward calls that raised, timed out or returned no finite number, in the
        groups and rejects received since the run began (cumulative, restored with a checkpoint)."""
        with self._lock:
            out = {f"rollout/{k}": float(v) for k, v in self.counters.items() if k != "reward_failures"}
            out["reward/failures"] = float(self.counters["reward_failures"])
            now, (groups, tokens) = time.monotonic(), self._arrived()
            t0, groups0, tokens0 = self._rate_mark
            self._rate_mark = (now, groups, tokens)
            dt = max(now - t0, 1e-9)
            out.update(
                {
                    "rollout/groups_per_s": (groups - groups0) / dt,
                    "rollout/tokens_per_s": (tokens - tokens0) / dt,
                    "rollout/rejected": float(
                        sum(v for k, v in self.counters.items() if k.startswith("outcome_"))
                    ),
                    "rollout/running": float(self.staleness.running),
                    "rollout/accepted_total": float(self.staleness.accepted),
                    "rollout/queue_len": float(len(self.buffer)),
                    "rollout/workers": float(len(self.workers)),
                    "transport/rejected": float(
                        sum(self.receiver.rejected.values()) + sum(self.router.rejected.values())
                    ),
                }
            )
            return out

    def record_trained(self, step: int, groups: Sequence[BufferedGroup]) -> None:
        for b in groups:
            self.ledger.write(prompt_id=b.grant.prompt_id, event="trained", step=step, version=self.version,
                              head_version=b.head_version)

    def state_dict(self) -> dict:
        """Cursor, counters and buffered-but-untrained groups; in-flight prompts come back re-queued."""
        with self._lock:
            inflight = sorted(self.running.values(), key=lambda g: g.seq)
            source = self.source.state_dict()
            source["requeued"] = [g.prompt_id for g in inflight] + source["requeued"]
            return {
                "version": self.version,
                "source": source,
                "staleness": self.staleness.state_dict(),
                "grant_seq": self._grant_seq,
                "counters": dict(self.counters),
                "buffer": [
                    {
                        "frames": [_as_bytes(f) for f in encode_group(_STATE_CODEC, b.group)],
                        "grant": vars(b.grant).copy(),
                    }
                    for b in sorted(self.buffer, key=lambda b: b.grant.seq)
                ],
                "ledger_offset": self.ledger.offset(),
            }

    def load_state_dict(self, state: dict) -> None:
        """Restore before `start()`: same version, cursor, buffer and admission counters."""
        assert self._thread is None, "restore the controller before starting it"
        self.version = int(state["version"])
        self.source.load_state_dict(state["source"])
        self.staleness.load_state_dict(state["staleness"])
        self._grant_seq = int(state["grant_seq"])
        self.counters = Counter(state["counters"])
        now = time.monotonic()
        self.buffer = [
            BufferedGroup(decode_group(_STATE_CODEC, b["frames"]), Grant(**b["grant"]), now) for b in state["buffer"]
        ]
        self.ledger.truncate(int(state["ledger_offset"]))

    def shutdown(self, reason: str = "training finished") -> None:
        if self._thread is not None and self._thread.is_alive():
            self._command("shutdown", reason)
            self._thread.join(timeout=10)
        self._close()

    # ------------------------------------------------------------------ controller thread

    def _command(self, name: str, arg: Any = None) -> None:
        self._commands.put((name, arg))
        os.write(self._wake_w, b"x")

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.receiver.socket, zmq.POLLIN)
        poller.register(self.router.socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stop:
                events = dict(poller.poll(timeout=int(self.heartbeat_s * 1000)))
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                    self._drain_commands()
                if self.router.socket in events:
                    self._drain_router()
                if self.receiver.socket in events:
                    self._drain_groups()
                self._expire_workers()
        except BaseException as e:  # surfaced to the trainer thread by wait_batch
            logger.exception("rollout controller failed")
            with self._lock:
                self._error = e
                self._lock.notify_all()

    def _drain_commands(self) -> None:
        while True:
            try:
                name, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if name == "version":
                with self._lock:
                    self._cancel_hopeless()
                    self._grant_all()
                self.publisher.publish("version", {"version": self.version})
            elif name == "shutdown":
                self.publisher.publish("shutdown", {"reason": str(arg)})
                self._stop = True

    def _drain_router(self) -> None:
        while True:
            item = self.router.recv(timeout=0)
            if item is None:
                return
            identity, msg = item
            with self._lock:
                self._on_control(identity, msg.type, msg.body)

    def _drain_groups(self) -> None:
        while True:
            msg = self.receiver.recv(timeout=0)
            if msg is None:
                return
            with self._lock:
                self._on_group(TrajectoryGroup.from_message(msg))

    # ------------------------------------------------------------------ event handlers (lock held)

    def _on_control(self, identity: bytes, kind: str, body: dict) -> None:
        wid = body.get("worker_id", "")
        worker = self.workers.get(wid)
        if kind == "hello":
            if worker is not None:  # same id again: the old process is gone
                self._retire_worker(worker, reason="worker_restarted")
            self.workers[wid] = WorkerState(wid, identity, slots=int(body["slots"]))
            self.router.send(identity, "welcome", {"version": self.version, "heartbeat_s": self.heartbeat_s})
            self.counters["workers_joined"] += 1
            return
        if worker is None:  # unknown worker (e.g. a trainer restart): ask it to introduce itself
            self.router.send(identity, "error", {"message": "unknown worker: send hello"})
            self.counters["unknown_worker_messages"] += 1
            return
        worker.last_seen = time.monotonic()
        worker.identity = identity
        if kind == "want":
            in_flight = worker.granted_total - int(body.get("seen", worker.granted_total))
            worker.want = max(0, int(body["n"]) - in_flight)
            self._grant_all()
        elif kind == "reject":
            self._on_reject(worker, body["prompt_id"], body.get("reason", "rejected"), body.get("reward_failures", 0))
        elif kind == "bye":
            self._retire_worker(worker, reason="worker_left")
        # heartbeat: last_seen is all it updates

    def _on_reject(self, worker: WorkerState, prompt_id: str, reason: str, reward_failures: int = 0) -> None:
        grant = self.running.pop(prompt_id, None)
        if grant is None or grant.worker_id != worker.worker_id:
            if grant is not None:
                self.running[prompt_id] = grant
            self.counters["stray_rejects"] += 1
            return
        self.counters["reward_failures"] += reward_failures  # a group dropped for them (drop_group policy)
        worker.grants.pop(prompt_id, None)
        self.staleness.on_release()
        if reason in ("cancelled", "stale"):
            self.source.requeue([prompt_id])
            self.ledger.write(prompt_id=prompt_id, event="requeued", reason=reason)
        else:
            self.counters[f"outcome_{reason}"] += 1
            self.ledger.write(prompt_id=prompt_id, event=reason, version=self.version)
        self._grant_all()
        self._lock.notify_all()

    def _on_group(self, group: TrajectoryGroup) -> None:
        grant = self.running.pop(group.prompt_id, None)
        if grant is None:
            # A duplicate (a presumed-dead worker finished after all) or one from before a restart:
            # its prompt is already accounted for, so training it would train a prompt twice.
            self.counters["dropped_duplicate_groups"] += 1
            return
        worker = self.workers.get(grant.worker_id)
        if worker is not None:
            worker.grants.pop(group.prompt_id, None)
        if group.worker_id != grant.worker_id and worker is not None:
            # The original holder finished first: stop the re-issued copy.
            self._send_cancel(worker, [group.prompt_id])
        self.counters["gen_tokens"] += int(np.count_nonzero(group.loss_mask))
        # samples scored 0 after a failed reward (zero policy); the codec checked it is an int in [0, n]
        self.counters["reward_failures"] += group.meta.get("reward_failures", 0)
        rewards = group.rewards
        if self.dynamic_filter == "drop_all_equal" and rewards.size > 0 and np.all(rewards == rewards[0]):
            self.staleness.on_release()
            self.counters["filtered"] += 1
            self.ledger.write(prompt_id=group.prompt_id, event="filtered", version=self.version)
        else:
            self.staleness.on_accept()
            self.buffer.append(BufferedGroup(group, grant, time.monotonic()))
            self.counters["accepted"] += 1
        self._grant_all()
        self._lock.notify_all()

    # ------------------------------------------------------------------ admission (lock held)

    def _grant_all(self) -> None:
        for worker in sorted(self.workers.values(), key=lambda w: len(w.grants)):
            items = []
            while worker.want > 0 and self.staleness.capacity(self.version) > 0:
                pid = self.source.next_id()
                if pid is None:
                    break
                self._grant_seq += 1
                grant = Grant(pid, worker.worker_id, self.version, self._grant_seq, time.monotonic())
                self.running[pid] = grant
                worker.grants[pid] = grant
                worker.want -= 1
                worker.granted_total += 1
                self.staleness.on_grant()
                items.append({"prompt_id": pid, "record": self.records[parse_prompt_id(pid)[1]]})
            if items:
                self.router.send(worker.identity, "grant", {"items": items})
                self.counters["granted"] += len(items)

    def _cancel_hopeless(self) -> None:
        """Re-issue running groups whose oldest token could already be more than η versions old."""
        hopeless = sorted(
            (g for g in self.running.values() if self.version - g.version > self.eta), key=lambda g: g.seq
        )
        if not hopeless:
            return
        by_worker: dict[str, list[str]] = {}
        for grant in hopeless:
            # Released now; a late group or reject for it is dropped as a duplicate/stray.
            self.running.pop(grant.prompt_id)
            self.staleness.on_release()
            self.ledger.write(prompt_id=grant.prompt_id, event="requeued", reason="stale_running")
            by_worker.setdefault(grant.worker_id, []).append(grant.prompt_id)
        self.source.requeue([g.prompt_id for g in hopeless])
        self.counters["stale_cancelled"] += len(hopeless)
        for wid, pids in by_worker.items():
            worker = self.workers.get(wid)
            if worker is not None:
                for pid in pids:
                    worker.grants.pop(pid, None)
                self._send_cancel(worker, pids)

    def _drop_stale_buffered(self) -> None:
        """Re-issue buffered groups that may not be trained at this version: more than η versions
        old, or with tokens from weights newer than the trainer's (a server that restarted into
        weights the trainer has since given up; the trainer's own push corrects the server)."""
        def usable(b: BufferedGroup) -> bool:
            return self.version - b.head_version <= self.eta and b.newest_version <= self.version

        dropped = sorted((b for b in self.buffer if not usable(b)), key=lambda b: b.grant.seq)
        if not dropped:
            return
        self.buffer = [b for b in self.buffer if usable(b)]
        for b in dropped:
            reason = "stale_buffered" if b.newest_version <= self.version else "future_weights"
            self.staleness.on_unaccept()
            self.ledger.write(prompt_id=b.grant.prompt_id, event="requeued", reason=reason)
            self.counters[f"{reason}_requeued"] += 1
        self.source.requeue([b.grant.prompt_id for b in dropped])
        self._grant_all()

    def _send_cancel(self, worker: WorkerState, prompt_ids: list[str]) -> None:
        self.router.send(worker.identity, "cancel", {"prompt_ids": prompt_ids})

    def _expire_workers(self) -> None:
        now = time.monotonic()
        with self._lock:
            for worker in list(self.workers.values()):
                if now - worker.last_seen > self.worker_timeout_s:
                    logger.warning("worker %s silent for %.1fs: re-issuing its prompts", worker.worker_id,
                                   now - worker.last_seen)
                    self._retire_worker(worker, reason="worker_timeout")

    def _retire_worker(self, worker: WorkerState, *, reason: str) -> None:
        pids = [g.prompt_id for g in sorted(worker.grants.values(), key=lambda g: g.seq)]
        for pid in pids:
            self.running.pop(pid, None)
            self.staleness.on_release()
            self.ledger.write(prompt_id=pid, event="requeued", reason=reason)
        self.source.requeue(pids)
        self.counters[reason] += 1
        self.counters["requeued_from_workers"] += len(pids)
        self.workers.pop(worker.worker_id, None)
        self._grant_all()
        self._lock.notify_all()

    def _no_more_data(self) -> bool:
        return self.source.exhausted and not self.running

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError("rollout controller thread failed") from self._error

    def _close(self) -> None:
        for sock in (self.receiver, self.router, self.publisher):
            sock.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.ledger.close()
