"""ZeroMQ sockets speaking the protocol: the trainer binds (sync), workers connect (asyncio).

| socket       | trainer side (bind)         | worker side (connect)        |
|--------------|-----------------------------|------------------------------|
| trajectories | `PullReceiver`  (PULL)      | `AsyncPusher`     (PUSH)     |
| control      | `RouterServer`  (ROUTER)    | `AsyncDealer`     (DEALER)   |
| broadcast    | `Publisher`     (PUB)       | `AsyncSubscriber` (SUB)      |

Receivers never raise on a bad message: it is counted in `rejected[reason]`, logged at most once per
reason every few seconds, and the receiver goes on. A receiver given `accept` (the message types of
its channel) also rejects well-formed messages of other types (reason `unexpected_type`). Binding anywhere but loopback requires a codec
with a secret (every message is then authenticated). Sockets close with LINGER 0, so closing never
hangs on a dead peer.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from areal_lite.transport.group import TrajectoryGroup
from areal_lite.transport.protocol import Codec, Message, ProtocolError

logger = logging.getLogger("areal_lite.transport")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ZERO_COPY_MIN_BYTES = 64 << 10
LOG_EVERY_S = 5.0


def _check_bind(codec: Codec, host: str) -> None:
    if host not in LOOPBACK and codec.secret is None:
        raise ValueError(f"binding to {host!r} (not loopback) requires a run secret: messages must be authenticated")


def _tcp(host: str) -> str:
    return f"tcp://{'127.0.0.1' if host == 'localhost' else host}"


def _configure(sock: zmq.Socket, codec: Codec, *, receiver: bool) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
    if receiver:
        # Per-frame cap enforced by libzmq (the peer is disconnected); the codec caps the whole message.
        sock.setsockopt(zmq.MAXMSGSIZE, codec.max_message_bytes)


class _Counting:
    def __init__(self, codec: Codec, accept: frozenset[str] | None = None):
        self.codec = codec
        self.accept = accept  # message types this socket takes (None: every registered type)
        self.rejected: Counter[str] = Counter()
        self.received = 0
        self._last_log: dict[str, float] = {}

    def _decode(self, frames: list[Any]) -> Message | None:
        try:
            msg = self.codec.decode(frames)
        except ProtocolError as e:
            self._reject(e)
            return None
        if self.accept is not None and msg.type not in self.accept:
            # Well-formed but not for this channel (e.g. a `hello` on the trajectory socket).
            self._reject(ProtocolError("unexpected_type", msg.type))
            return None
        self.received += 1
        return msg

    def _reject(self, e: ProtocolError) -> None:
        self.rejected[e.reason] += 1
        now = time.monotonic()
        if now - self._last_log.get(e.reason, 0.0) >= LOG_EVERY_S:
            self._last_log[e.reason] = now
            logger.warning("rejected a message (%s); %d so far for this reason", e, self.rejected[e.reason])


class _SyncBound(_Counting):
    kind: int = zmq.PULL

    def __init__(self, codec: Codec, bind_host: str = "127.0.0.1", port: int = 0, *, context: zmq.Context | None = None,
                 accept: frozenset[str] | None = None):
        super().__init__(codec, accept)
        _check_bind(codec, bind_host)
        self.ctx = context or zmq.Context.instance()
        self.socket = self.ctx.socket(self.kind)
        _configure(self.socket, codec, receiver=self.kind != zmq.PUB)
        self._setup()
        self._poller = zmq.Poller()
        self._backlog = False  # the last receive found a message: try the next one without polling
        if self.kind != zmq.PUB:
            self._poller.register(self.socket, zmq.POLLIN)
        base = _tcp(bind_host)
        if port:
            self.socket.bind(f"{base}:{port}")
            self.port = port
        else:
            self.port = self.socket.bind_to_random_port(base)
        self.address = f"{base}:{self.port}"

    def _setup(self) -> None:
        pass

    def _recv_frames(self, deadline: float | None) -> list[zmq.Frame] | None:
        """The next multipart message, or None at `deadline` (monotonic seconds; None: wait forever)."""
        # NOTE: a non-blocking receive of an empty queue raises zmq.Again, which costs more than a
        # poll (a persistent poller: no Poller built per call). So: while messages queue up (this
        # receiver is the slower side), receive at once; otherwise poll first.
        if self._backlog:
            try:
                return self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._backlog = False
        waited = False
        while True:
            if waited and deadline is None:
                ready = self._poller.poll(None)
            elif waited:
                ready = self._poller.poll(max(0, math.ceil((deadline - time.monotonic()) * 1000)))
            else:
                ready = self._poller.poll(0)
            if ready:
                try:
                    frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:  # pragma: no cover - POLLIN promised a whole message
                    continue
                self._backlog = not waited  # it was there already: more may be queued behind it
                return frames
            if deadline is not None and time.monotonic() >= deadline:
                return None
            waited = True

    def close(self) -> None:
        self.socket.close(linger=0)


class PullReceiver(_SyncBound):
    """Trajectory groups in (the trainer's PULL socket)."""

    kind = zmq.PULL

    def _setup(self) -> None:
        self.socket.setsockopt(zmq.RCVHWM, 1000)

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next valid message, or None if none arrives within `timeout` seconds (0: don't wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frames = self._recv_frames(deadline)
            if frames is None:
                return None
            msg = self._decode(frames)
            if msg is not None:
                return msg


class RouterServer(_SyncBound):
    """The controller's side of the control channel (ROUTER)."""

    kind = zmq.ROUTER

    def _setup(self) -> None:
        # A restarted worker reusing its identity takes over the route from its dead predecessor.
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)

    def recv(self, timeout: float | None = None) -> tuple[bytes, Message] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frames = self._recv_frames(deadline)
            if frames is None:
                return None
            if len(frames) < 2:
                self._reject(ProtocolError("bad_frames", "no identity frame"))
                continue
            msg = self._decode(frames[1:])
            if msg is not None:
                return frames[0].bytes, msg

    def send(self, identity: bytes, type: str, body: dict) -> None:
        try:
            self.socket.send_multipart([identity, *self.codec.encode(type, body)], flags=zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("control message %s to %r dropped: peer not reading", type, identity[:32])


class Publisher(_SyncBound):
    """Broadcasts to every worker (PUB)."""

    kind = zmq.PUB

    def publish(self, type: str, body: dict) -> None:
        self.socket.send_multipart(self.codec.encode(type, body))


class _AsyncConnected(_Counting):
    kind: int = zmq.PUSH

    def __init__(self, codec: Codec, address: str, *, context: zmq.asyncio.Context | None = None):
        super().__init__(codec)
        self.ctx = context or zmq.asyncio.Context.instance()
        self.socket = self.ctx.socket(self.kind)
        _configure(self.socket, codec, receiver=self.kind != zmq.PUSH)
        self._setup()
        self.socket.connect(address)
        self.address = address

    def _setup(self) -> None:
        pass

    async def _recv(self) -> Message:
        while True:
            msg = self._decode(await self.socket.recv_multipart(copy=False))
            if msg is not None:
                return msg

    def close(self) -> None:
        self.socket.close(linger=0)


class AsyncPusher(_AsyncConnected):
    """A worker's trajectory sender (PUSH)."""

    kind = zmq.PUSH

    def _setup(self) -> None:
        self.socket.setsockopt(zmq.SNDHWM, 1000)
        self.socket.copy_threshold = ZERO_COPY_MIN_BYTES
        # The same libzmq socket, driven synchronously: a send that fits under the HWM goes out at
        # once, without an asyncio future; only a full queue waits through the asyncio socket.
        self._direct = zmq.Socket.shadow(self.socket.underlying)
        self._direct.copy_threshold = ZERO_COPY_MIN_BYTES
        self._waiting = 0

    async def send(self, type: str, body: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        # Arrays go as buffers: with copy=False, pyzmq sends those of at least `copy_threshold` bytes
        # zero-copy (untracked) and copies smaller ones straight into the zmq message, no bytes object.
        frames = self.codec.encode(type, body, arrays)
        if not self._waiting:  # never overtake a send that is waiting for room
            try:
                self._direct.send_multipart(frames, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                pass
        self._waiting += 1
        try:
            await self.socket.send_multipart(frames, copy=False)
        finally:
            self._waiting -= 1

    async def send_group(self, group: TrajectoryGroup) -> None:
        mtype, body, arrays = group.to_message()
        await self.send(mtype, body, arrays)


class AsyncDealer(_AsyncConnected):
    """A worker's control channel (DEALER) with a fixed identity."""

    kind = zmq.DEALER

    def __init__(self, codec: Codec, address: str, identity: bytes, *, context: zmq.asyncio.Context | None = None):
        self._identity = identity
        super().__init__(codec, address, context=context)

    def _setup(self) -> None:
        self.socket.setsockopt(zmq.IDENTITY, self._identity)

    async def send(self, type: str, body: dict) -> None:
        await self.socket.send_multipart(self.codec.encode(type, body))

    async def recv(self) -> Message:
        return await self._recv()


class AsyncSubscriber(_AsyncConnected):
    """A worker's broadcast listener (SUB, subscribed to everything)."""

    kind = zmq.SUB

    def _setup(self) -> None:
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")

    async def recv(self) -> Message:
        return await self._recv()
