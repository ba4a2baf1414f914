"""Fuzzing a live RolloutController's sockets: random and mutated frames are all rejected and counted.

Each generated message goes to the trajectory socket (PULL) or the control socket (ROUTER) of a
running controller. The codec, run locally on the same frames, says whether a message is invalid
(or valid but not for that socket); the rare mutation that is still a valid message is not sent, so
the controller's rejection counters must equal, exactly, the number of messages sent. Afterwards the
controller must still admit a worker (hello → welcome, want → grant) and accept its group.
"""

from __future__ import annotations

import socket
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from areal_lite.control.controller import CONTROL_TYPES, GROUP_TYPES, RolloutController
from areal_lite.transport import Codec, ProtocolError
from tests.transport.test_protocol import BODIES, make_group
from tests.transport.test_sockets import group_for, handshake, run

pytestmark = pytest.mark.timeout(120)

RUN_ID = "fuzz-run"
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


def as_bytes(frames) -> list[bytes]:
    return [f.tobytes() if isinstance(f, np.ndarray) else bytes(f) for f in frames]


def valid_messages(codec: Codec) -> list[list[bytes]]:
    """One valid encoding of every message type (the seeds that mutations start from)."""
    seeds = [as_bytes(codec.encode(t, body)) for t, body in BODIES.items()]
    seeds.append(as_bytes(codec.encode(*make_group().to_message())))
    seeds.append(as_bytes(codec.encode(*make_group(seqlens=(1,), prompt_len=0).to_message())))
    return seeds


# ----------------------------------------------------------------------------- strategies

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

# msgpack prefixes that declare a huge str / bin / array / map followed by almost nothing.
HUGE_PREFIXES = [b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff",
                 b"\xdf\xff\xff\xff\xff", b"\xda\xff\xff", b"\xde\xff\xff"]


@st.composite
def mutated(draw, seeds: list[list[bytes]]) -> list[bytes]:
    frames = list(draw(st.sampled_from(seeds)))
    kind = draw(st.sampled_from(["flip", "truncate", "drop", "duplicate", "retype", "huge_header",
                                 "huge_shape", "splice"]))
    i = draw(st.integers(0, len(frames) - 1))
    if kind == "flip":  # one to four flipped bits anywhere in one frame
        b = bytearray(frames[i])
        for _ in range(draw(st.integers(1, 4))):
            if b:
                pos = draw(st.integers(0, len(b) - 1))
                b[pos] ^= 1 << draw(st.integers(0, 7))
        frames[i] = bytes(b)
    elif kind == "truncate":
        frames[i] = frames[i][: draw(st.integers(0, max(0, len(frames[i]) - 1)))]
    elif kind == "drop" and len(frames) > 1:
        del frames[i]
    elif kind == "duplicate":
        frames.insert(i, frames[i])
    elif kind == "retype":  # a header field (or a body field) replaced by a value of another type
        header = msgpack.unpackb(frames[0])
        target = header["b"] if draw(st.booleans()) and header["b"] else header
        key = draw(st.sampled_from(sorted(target)))
        target[key] = draw(msgpack_values)
        frames[0] = msgpack.packb(header, use_bin_type=True)
    elif kind == "huge_header":
        frames[0] = draw(st.sampled_from(HUGE_PREFIXES)) + draw(st.binary(max_size=16))
    elif kind == "huge_shape" and msgpack.unpackb(frames[0])["a"]:  # an array declaring far more than its frame
        header = msgpack.unpackb(frames[0])
        header["a"][draw(st.integers(0, len(header["a"]) - 1))][2] = [draw(st.integers(2**20, 2**40 - 1))]
        frames[0] = msgpack.packb(header, use_bin_type=True)
    else:  # splice: the header of one message with the arrays of another
        other = draw(st.sampled_from(seeds))
        frames = [frames[0], *other[1:]]
    return frames


def fuzz_messages(seeds: list[list[bytes]]):
    random_frames = st.lists(st.binary(max_size=300), min_size=1, max_size=18)
    random_header = st.builds(lambda v: [msgpack.packb(v, use_bin_type=True)], msgpack_values)
    random_map = st.builds(
        lambda d: [msgpack.packb(d, use_bin_type=True)],
        st.fixed_dictionaries({"v": msgpack_values, "t": st.sampled_from([*BODIES, "group", "x"]),
                               "run": st.sampled_from([RUN_ID, "other"]), "b": msgpack_values,
                               "a": msgpack_values}),
    )
    wrong_channel = st.sampled_from(seeds)  # valid, but half of them go to the other socket
    return st.one_of(random_frames, random_header, random_map, mutated(seeds), wrong_channel)


# ----------------------------------------------------------------------------- the live target


class Target:
    """A running controller plus raw sockets aimed at its PULL and ROUTER ports."""

    def __init__(self, secret: bytes | None):
        records = [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(8)]
        self.codec = Codec(RUN_ID, secret)
        self.ctl = RolloutController(records=records, batch_size=1, max_concurrent=2, max_head_offpolicyness=0,
                                     codec=self.codec, shuffle=False, heartbeat_s=0.2, worker_timeout_s=60)
        self.ctl.start()
        ctx = zmq.Context.instance()
        self.push = ctx.socket(zmq.PUSH)
        self.dealer = ctx.socket(zmq.DEALER)
        for sock, port in ((self.push, self.ctl.ports[0]), (self.dealer, self.ctl.ports[1])):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{port}")
        self.sent = {"pull": 0, "router": 0}

    def expect_rejected(self, frames: list[bytes], accept: frozenset[str]) -> bool:
        try:
            msg = self.codec.decode(frames)
        except ProtocolError:
            return True
        return msg.type not in accept

    def throw(self, frames: list[bytes], to_router: bool) -> None:
        accept = CONTROL_TYPES if to_router else GROUP_TYPES
        if not self.expect_rejected(frames, accept):
            return  # a mutation that is still a valid message: not part of the barrage
        (self.dealer if to_router else self.push).send_multipart(frames)
        self.sent["router" if to_router else "pull"] += 1

    def rejected(self) -> tuple[int, int]:
        return sum(self.ctl.receiver.rejected.values()), sum(self.ctl.router.rejected.values())

    def wait_counted(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        want = (self.sent["pull"], self.sent["router"])
        while self.rejected() != want and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.rejected() == want, (self.rejected(), want, self.ctl.receiver.rejected, self.ctl.router.rejected)

    def assert_still_serves(self) -> None:
        ctl = self.ctl
        assert ctl._thread.is_alive() and ctl._error is None

        async def admit():
            dealer, items = await handshake(ctl, "worker0", want=1)
            dealer.close()
            return items

        items = run(admit())
        assert len(items) == 1
        group = group_for(items[0]["prompt_id"], "worker0")
        self.push.send_multipart(as_bytes(self.codec.encode(*group.to_message())))
        batch = ctl.wait_batch(1, timeout=10)
        assert [b.grant.prompt_id for b in batch] == [items[0]["prompt_id"]]
        assert ctl.receiver.received == 1 and ctl.router.received == 2  # only the real worker's messages
        assert "worker0" in ctl.workers and len(ctl.workers) == 1

    def close(self) -> None:
        self.push.close()
        self.dealer.close()
        self.ctl.shutdown()


@pytest.mark.parametrize("secret, examples", [(None, 1000), (b"f" * 32, 200)], ids=["plain", "hmac"])
def test_fuzzed_frames_are_all_rejected_and_counted(secret, examples):
    target = Target(secret)
    seeds = valid_messages(target.codec)
    try:
        @settings(max_examples=examples, **SETTINGS)
        @given(frames=fuzz_messages(seeds), to_router=st.booleans())
        def barrage(frames, to_router):
            target.throw(frames, to_router)

        barrage()
        assert target.sent["pull"] > examples // 4 and target.sent["router"] > examples // 4
        target.wait_counted()
        stats = target.ctl.stats()
        assert stats["transport/rejected"] == sum(target.sent.values())
        assert stats.get("rollout/granted", 0) == 0 and not target.ctl.workers  # nothing got in
        target.assert_still_serves()
        target.wait_counted()  # and nothing more was counted as rejected
    finally:
        target.close()


def test_raw_tcp_garbage_does_not_disturb_the_controller():
    """Bytes that are not a ZMTP handshake at all, on the bare TCP ports: the controller keeps serving."""
    target = Target(None)
    rng = np.random.default_rng(0)
    try:
        for port in target.ctl.ports[:2]:
            for size in (1, 10, 64, 4096):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(rng.bytes(size))
                    s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f")  # a ZMTP-looking greeting, then junk
            # A ZMTP 3 greeting claiming a mechanism the socket does not use.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00CURVE" + b"\x00" * 15 + b"\x00" * 32)
        # libzmq speaks ZMTP 1.0 to peers that do not greet as ZMTP 3, so some garbage arrives as
        # frames: all of it is rejected (assert_still_serves checks that nothing was received).
        time.sleep(0.5)
        target.assert_still_serves()
    finally:
        target.close()
