"""Real zmq sockets over tcp loopback: groups flow, admission round-trips, bad input is counted, caps hold."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import zmq

from areal_lite.control.controller import RolloutController
from areal_lite.transport import AsyncDealer, AsyncPusher, Codec, PullReceiver, RouterServer, TrajectoryGroup
from tests.transport.test_protocol import assert_groups_equal, make_group

pytestmark = pytest.mark.timeout(60)


def run(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def raw_push(address: str, messages: list[list[bytes]]) -> None:
    """Send frames as they are (no codec) from a plain PUSH socket; waits until they are out."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(address)
    try:
        for frames in messages:
            sock.send_multipart(frames)
    finally:
        sock.close()  # lingers until everything queued is sent


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- PUSH/PULL


@pytest.mark.parametrize("secret", [None, b"s" * 32], ids=["plain", "hmac"])
def test_groups_arrive_in_order_over_push_pull(secret):
    codec = Codec("run1", secret)
    receiver = PullReceiver(codec)
    groups = [make_group(seqlens=(n, 2 * n), seed=n) for n in (3, 40_000, 7)]  # one above the zero-copy size

    async def send_and_linger():
        pusher = AsyncPusher(codec, receiver.address)
        for g in groups:
            await pusher.send_group(g)
        got = [receiver.recv(timeout=10) for _ in groups]
        pusher.close()
        return got

    try:
        got = run(send_and_linger())
        assert all(m is not None for m in got)
        for g, m in zip(groups, got):
            assert_groups_equal(g, TrajectoryGroup.from_message(m))
        assert receiver.received == 3 and not receiver.rejected
        assert receiver.recv(timeout=0) is None  # nothing else pending; no wait
    finally:
        receiver.close()


def test_pull_receiver_counts_malformed_messages_and_keeps_serving():
    codec = Codec("run1")
    receiver = PullReceiver(codec, accept=frozenset({"group"}))
    good = make_group()
    hello = codec.encode("hello", {"worker_id": "w", "pid": 1, "host": "h", "slots": 1})
    try:
        raw_push(receiver.address, [
            [b"garbage"],
            [Codec("other-run").encode("bye", {"worker_id": "w"})[0]],
            hello,  # well-formed, wrong channel
            [f if isinstance(f, bytes) else f.tobytes() for f in codec.encode(*good.to_message())],
        ])
        msg = receiver.recv(timeout=10)
        assert msg is not None and msg.type == "group"
        assert_groups_equal(good, TrajectoryGroup.from_message(msg))
        assert dict(receiver.rejected) == {"bad_header": 1, "bad_run": 1, "unexpected_type": 1}
        assert receiver.received == 1
    finally:
        receiver.close()


def test_maxmsgsize_drops_an_oversized_frame_and_the_receiver_goes_on():
    cap = 64 << 10
    codec = Codec("run1", max_message_bytes=cap)
    receiver = PullReceiver(codec)
    try:
        # A single frame over the cap: libzmq drops it (and the sending connection) before it is read.
        raw_push(receiver.address, [[b"x" * (cap + 1)]])
        assert receiver.recv(timeout=0.5) is None
        # Frames each under the cap but together over it: the codec rejects the message, counted.
        raw_push(receiver.address, [[b"a" * (cap // 2 + 1), b"b" * (cap // 2 + 1)]])
        wait_until(lambda: receiver.recv(timeout=0.05) is not None or receiver.rejected["too_large"] == 1)
        assert receiver.rejected["too_large"] == 1
        # A fresh sender with a normal message still gets through.
        raw_push(receiver.address, [codec.encode("bye", {"worker_id": "w"})])
        msg = receiver.recv(timeout=10)
        assert msg is not None and msg.type == "bye"
    finally:
        receiver.close()


def test_binding_beyond_loopback_requires_a_secret():
    with pytest.raises(ValueError, match="requires a run secret"):
        PullReceiver(Codec("run1"), "0.0.0.0")
    with pytest.raises(ValueError, match="requires a run secret"):
        RouterServer(Codec("run1"), "0.0.0.0")
    authed = PullReceiver(Codec("run1", b"s" * 32), "0.0.0.0")  # authenticated: allowed
    authed.close()
    for host in ("127.0.0.1", "localhost"):
        PullReceiver(Codec("run1"), host).close()


# ----------------------------------------------------------------------------- ROUTER/DEALER admission


@pytest.fixture
def controller():
    records = [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(10)]
    ctl = RolloutController(records=records, batch_size=2, max_concurrent=3, max_head_offpolicyness=0,
                            codec=Codec("run1", b"k" * 32), shuffle=False, heartbeat_s=0.2, worker_timeout_s=30)
    ctl.start()
    yield ctl
    ctl.shutdown()


def group_for(prompt_id: str, worker_id: str, version: int = 0) -> TrajectoryGroup:
    g = make_group(seqlens=(4, 6))
    g.prompt_id, g.worker_id = prompt_id, worker_id
    g.versions = np.where(g.loss_mask == 1, version, -1).astype(np.int32)
    return g


async def handshake(ctl: RolloutController, worker_id: str, want: int) -> tuple[AsyncDealer, list[dict]]:
    dealer = AsyncDealer(ctl.codec, f"tcp://127.0.0.1:{ctl.ports[1]}", identity=worker_id.encode())
    await dealer.send("hello", {"worker_id": worker_id, "pid": 1, "host": "here", "slots": want})
    welcome = await dealer.recv()
    assert welcome.type == "welcome" and welcome.body["version"] == ctl.version
    await dealer.send("want", {"worker_id": worker_id, "n": want, "seen": 0})
    grant = await dealer.recv()
    assert grant.type == "grant"
    return dealer, grant.body["items"]


def test_admission_round_trip_with_the_controller(controller):
    ctl = controller

    async def scenario():
        dealer, items = await handshake(ctl, "worker0", want=5)
        # η = 0, batch 2: capacity = min(3, (0 + 0 + 1)·2) = 2 grants, in dataset order.
        assert [it["prompt_id"] for it in items] == ["0:0", "0:1"]
        assert items[0]["record"] == {"question": "0+1", "answer": "1"}
        pusher = AsyncPusher(ctl.codec, f"tcp://127.0.0.1:{ctl.ports[0]}")
        for it in items:
            await pusher.send_group(group_for(it["prompt_id"], "worker0"))
        return dealer, pusher

    dealer, pusher = run(scenario())
    try:
        batch = ctl.wait_batch(2, timeout=10)
        assert [b.grant.prompt_id for b in batch] == ["0:0", "0:1"]
        assert all(b.head_version == 0 for b in batch)
        stats = ctl.stats()
        assert stats["rollout/accepted"] == 2 and stats["rollout/granted"] == 2
        assert stats["rollout/groups_per_s"] > 0 and stats["rollout/tokens_per_s"] > 0
        assert stats["transport/rejected"] == 0

        # A new version opens capacity for the next batch; the still-waiting `want` is served at once.
        ctl.set_version(1)

        async def next_grant():
            msg = await dealer.recv()
            assert msg.type == "grant", msg
            return [it["prompt_id"] for it in msg.body["items"]]

        assert run(next_grant()) == ["0:2", "0:3"]
    finally:
        dealer.close()
        pusher.close()


def test_controller_rejects_and_counts_bad_control_messages_while_serving(controller):
    ctl = controller
    ctx = zmq.Context.instance()
    rogue = ctx.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(f"tcp://127.0.0.1:{ctl.ports[1]}")
    plain = Codec("run1")  # right run id, no MAC
    try:
        rogue.send_multipart([b"not msgpack"])
        rogue.send_multipart(plain.encode("hello", {"worker_id": "rogue", "pid": 1, "host": "x", "slots": 9}))
        # Authenticated but meant for the other direction (a `grant` sent *to* the controller).
        rogue.send_multipart(ctl.codec.encode("grant", {"items": []}))
        raw_push(f"tcp://127.0.0.1:{ctl.ports[0]}", [[b"\x93\x01\x02\x03"]])
        wait_until(lambda: ctl.stats()["transport/rejected"] == 4)
        assert dict(ctl.router.rejected) == {"bad_mac": 2, "unexpected_type": 1}
        assert dict(ctl.receiver.rejected) == {"bad_mac": 1}
        assert "rogue" not in ctl.workers

        async def still_serves():
            dealer, items = await handshake(ctl, "worker1", want=1)
            dealer.close()
            return items

        assert [it["prompt_id"] for it in run(still_serves())] == ["0:0"]
    finally:
        rogue.close()


def test_reward_failures_from_groups_and_rejects_are_summed_into_the_metric(controller):
    """`reward/failures`: a group's meta (samples scored 0) plus a reject's count (group dropped)."""
    ctl = controller

    async def scenario():
        dealer, items = await handshake(ctl, "worker0", want=2)
        assert len(items) == 2
        pusher = AsyncPusher(ctl.codec, f"tcp://127.0.0.1:{ctl.ports[0]}")
        group = group_for(items[0]["prompt_id"], "worker0")
        group.meta = {"reward_failures": 1}
        await pusher.send_group(group)
        await dealer.send("reject", {"worker_id": "worker0", "prompt_id": items[1]["prompt_id"],
                                     "reason": "reward_failed", "reward_failures": 2})
        # A reject for a prompt this worker does not hold is stray: its count is not taken.
        await dealer.send("reject", {"worker_id": "worker0", "prompt_id": "9:9", "reason": "reward_failed",
                                     "reward_failures": 5})
        return dealer, pusher

    dealer, pusher = run(scenario())
    try:
        # The group (PULL socket) and the rejects (ROUTER socket) may arrive in either order.
        wait_until(lambda: [ctl.stats().get(f"rollout/{k}", 0) for k in ("stray_rejects", "accepted")] == [1, 1])
        stats = ctl.stats()
        assert stats["reward/failures"] == 3 and "rollout/reward_failures" not in stats
        assert stats["rollout/outcome_reward_failed"] == 1 and stats["rollout/rejected"] == 1
        assert ctl.state_dict()["counters"]["reward_failures"] == 3  # cumulative, kept by a checkpoint
    finally:
        dealer.close()
        pusher.close()


def test_pusher_waits_for_room_when_the_receiver_lags_and_keeps_the_order():
    """Past the HWM the direct send gives way to the asyncio wait; nothing is lost or reordered."""
    class SmallQueueReceiver(PullReceiver):
        def _setup(self) -> None:
            self.socket.setsockopt(zmq.RCVHWM, 2)  # before bind: connections accepted later get it

    codec = Codec("run1")
    receiver = SmallQueueReceiver(codec)
    groups = [make_group(seqlens=(40_000, 60_000), seed=i) for i in range(60)]  # 1.3 MB each, more than
    # the kernel's loopback buffers hold
    got, started = [], {}

    def read_later():
        time.sleep(1.0)  # the sender fills the HWMs and the kernel buffers meanwhile
        started["t"] = time.monotonic()
        for _ in groups:
            msg = receiver.recv(timeout=20)
            got.append(None if msg is None else TrajectoryGroup.from_message(msg))

    async def send_all():
        pusher = AsyncPusher(codec, receiver.address)
        pusher.socket.setsockopt(zmq.SNDHWM, 2)
        pusher.socket.disconnect(receiver.address)
        pusher.socket.connect(receiver.address)  # a new connection with the small HWM
        waited = 0
        for g in groups:
            send = asyncio.ensure_future(pusher.send_group(g))
            await asyncio.sleep(0)
            waited += pusher._waiting > 0  # this send could not go out directly: it waits for room
            await send
        return pusher, waited, time.monotonic()

    reader = threading.Thread(target=read_later)
    reader.start()
    try:
        pusher, waited, sent_at = run(send_all(), timeout=60)
        reader.join(timeout=30)
        pusher.close()
        assert waited > 0 and sent_at > started["t"]  # the sender did wait for the reader
        assert len(got) == len(groups) and all(g is not None for g in got)
        for sent, back in zip(groups, got):
            assert_groups_equal(sent, back)
        assert not receiver.rejected
    finally:
        reader.join(timeout=30)
        receiver.close()
