"""The wire codec: every message type round-trips; everything malformed is a ProtocolError with a reason."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from areal_lite.transport import (
    PROTOCOL_VERSION,
    REGISTRY,
    Codec,
    ProtocolError,
    TrajectoryGroup,
    decode_group,
    encode_group,
    new_run_secret,
)
from areal_lite.transport.protocol import MAC_BYTES, MAX_FRAMES

# One valid body per registered type (the test fails when a type is added without an example here).
BODIES = {
    "hello": {"worker_id": "worker0", "pid": 4321, "host": "node-a", "slots": 8},
    "welcome": {"version": 3, "heartbeat_s": 0.5},
    "want": {"worker_id": "worker0", "n": 4, "seen": 12},
    "grant": {"items": [{"prompt_id": "0:17", "record": {"question": "1+1?", "answer": "2"}}]},
    "reject": {"worker_id": "worker1", "prompt_id": "0:3", "reason": "reward_failed"},
    "heartbeat": {"worker_id": "worker1", "running": ["0:1", "0:2"]},
    "bye": {"worker_id": "worker1"},
    "cancel": {"prompt_ids": ["1:0", "1:9"]},
    "error": {"message": "unknown worker: send hello"},
    "version": {"version": 7},
    "shutdown": {"reason": "training finished"},
}


def make_group(seqlens=(5, 9, 3), prompt_len=2, seed=0) -> TrajectoryGroup:
    rng = np.random.default_rng(seed)
    n = int(sum(seqlens))
    mask = np.ones(n, np.uint8)
    start = 0
    for length in seqlens:
        mask[start:start + prompt_len] = 0
        start += length
    return TrajectoryGroup(
        prompt_id="0:42",
        worker_id="worker3",
        samples=[{"prompt_len": prompt_len, "reward": float(i), "finish_reason": "stop", "latency_s": 0.25}
                 for i in range(len(seqlens))],
        input_ids=rng.integers(0, 50_000, n).astype(np.int32),
        loss_mask=mask,
        behav_logp=-rng.random(n).astype(np.float32),
        versions=np.where(mask == 1, 4, -1).astype(np.int32),
        seqlens=np.asarray(seqlens, np.int32),
        meta={"reward_failures": 0},
    )


def assert_groups_equal(a: TrajectoryGroup, b: TrajectoryGroup) -> None:
    assert (a.prompt_id, a.worker_id, a.samples, a.meta) == (b.prompt_id, b.worker_id, b.samples, b.meta)
    for name in ("input_ids", "loss_mask", "behav_logp", "versions", "seqlens"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def header(**overrides) -> bytes:
    h = {"v": PROTOCOL_VERSION, "t": "bye", "run": "run1", "b": {"worker_id": "w"}, "a": []}
    h.update(overrides)
    return msgpack.packb(h, use_bin_type=True)


def reason_of(codec: Codec, frames) -> str:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frames)
    return info.value.reason


# ----------------------------------------------------------------------------- round trips


def test_every_registered_type_has_an_example():
    assert set(BODIES) | {"group"} == set(REGISTRY)


@pytest.mark.parametrize("secret", [None, b"k" * 32], ids=["plain", "hmac"])
@pytest.mark.parametrize("mtype", sorted(BODIES))
def test_control_messages_round_trip(mtype, secret):
    codec = Codec("run1", secret)
    frames = codec.encode(mtype, BODIES[mtype])
    assert len(frames) == (2 if secret else 1)  # one msgpack frame (+ the MAC)
    msg = codec.decode(frames)
    assert msg.type == mtype and msg.body == BODIES[mtype] and msg.arrays == {}


@pytest.mark.parametrize("secret", [None, b"k" * 32], ids=["plain", "hmac"])
def test_group_round_trip_with_array_frames(secret):
    codec = Codec("run1", secret)
    group = make_group()
    frames = encode_group(codec, group)
    # header + one raw frame per array (+ MAC); the arrays are sent as they are, not copied.
    assert len(frames) == 1 + 5 + (1 if secret else 0)
    assert any(f is group.input_ids for f in frames) and any(f is group.behav_logp for f in frames)
    back = decode_group(codec, [bytes(memoryview(f).cast("B")) if isinstance(f, np.ndarray) else f for f in frames])
    assert_groups_equal(group, back)


def test_decoded_arrays_view_the_received_frames():
    """Zero copy on receipt: the arrays are views into the frames' buffers, not copies."""
    codec = Codec("run1")
    group = make_group(seqlens=(1000, 2000))
    frames = [bytearray(memoryview(f).cast("B")) if isinstance(f, np.ndarray) else f for f in encode_group(codec, group)]
    back = decode_group(codec, frames)
    assert_groups_equal(group, back)
    ids_frame = frames[1 + ["input_ids", "loss_mask", "behav_logp", "versions", "seqlens"].index("input_ids")]
    assert np.shares_memory(back.input_ids, np.frombuffer(ids_frame, np.uint8))
    ids_frame[0:4] = (7).to_bytes(4, "little")  # writing the frame shows through the decoded array
    assert back.input_ids[0] == 7


def test_bool_loss_mask_and_big_endian_arrays_are_normalised():
    codec = Codec("run1")
    group = make_group()
    group.loss_mask = group.loss_mask.astype(bool)
    group.behav_logp = group.behav_logp.astype(">f4")
    back = decode_group(codec, encode_group(codec, group))
    assert back.loss_mask.dtype == np.uint8 and back.behav_logp.dtype == np.dtype("<f4")
    assert np.array_equal(back.loss_mask, group.loss_mask.astype(np.uint8))
    assert np.array_equal(back.behav_logp, group.behav_logp.astype("<f4"))


def test_encode_refuses_an_unregistered_type():
    with pytest.raises(ValueError, match="unregistered"):
        Codec("run1").encode("nonsense", {})


# ----------------------------------------------------------------------------- authentication


def test_hmac_rejects_a_wrong_secret_and_any_tampering():
    secret = new_run_secret()
    assert len(secret) == 32 and secret != new_run_secret()
    codec = Codec("run1", secret)
    frames = [bytes(memoryview(f).cast("B")) if isinstance(f, np.ndarray) else f
              for f in encode_group(codec, make_group())]
    assert codec.decode(frames).type == "group"

    assert reason_of(Codec("run1", new_run_secret()), frames) == "bad_mac"
    assert reason_of(Codec("run1", secret), frames[:-1]) == "bad_mac"  # MAC frame dropped
    for i in range(len(frames) - 1):  # one flipped bit in any frame, header or array
        tampered = list(frames)
        b = bytearray(tampered[i])
        b[len(b) // 2] ^= 0x01
        tampered[i] = bytes(b)
        assert reason_of(codec, tampered) == "bad_mac", i
    # Moving bytes between frames keeps the concatenation but not the per-frame lengths.
    shifted = [frames[0], frames[1] + frames[2][:1], frames[2][1:], *frames[3:]]
    assert reason_of(codec, shifted) == "bad_mac"
    # An unauthenticated sender cannot talk to an authenticated receiver.
    assert reason_of(codec, Codec("run1").encode("bye", {"worker_id": "w"})) == "bad_mac"
    assert reason_of(codec, [header(), b"x" * MAC_BYTES]) == "bad_mac"


# ----------------------------------------------------------------------------- malformed input


def test_oversized_messages_are_rejected_before_parsing():
    codec = Codec("run1", max_message_bytes=1024)
    assert reason_of(codec, [b"\x00" * 1025]) == "too_large"
    group = make_group(seqlens=(200,))  # 200 × 13 bytes of arrays
    assert reason_of(codec, encode_group(codec, group)) == "too_large"
    assert codec.decode(codec.encode("bye", {"worker_id": "w"})).type == "bye"


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([], "bad_frames"),
        ([b"x"] * (MAX_FRAMES + 1), "bad_frames"),
        ([b""], "bad_header"),
        ([b"\xc1"], "bad_header"),  # a byte msgpack never uses
        ([msgpack.packb([1, 2, 3])], "bad_header"),  # not a map
        ([msgpack.packb({"v": 1, "t": "bye"})], "bad_header"),  # missing keys
        ([header(x=1)], "bad_header"),  # extra key
        ([header()[:-3]], "bad_header"),  # truncated
        ([header() + b"\x00"], "bad_header"),  # trailing bytes
        ([msgpack.packb({1: 2})], "bad_header"),  # non-string map key
        ([msgpack.packb(msgpack.ExtType(1, b"xx"))], "bad_header"),  # extension types are refused
        ([header(v=PROTOCOL_VERSION + 1)], "bad_version"),
        ([header(v="1")], "bad_version"),
        ([header(run="another-run")], "bad_run"),
        ([header(t="launch_missiles")], "unknown_type"),
        ([header(t=5)], "unknown_type"),
        ([header(b=[1])], "bad_body"),
        ([header(b={})], "bad_body"),  # required field missing
        ([header(b={"worker_id": 5})], "bad_body"),  # wrong field type
        ([header(b={"worker_id": "w", "x": 1})], "bad_body"),  # unknown field
        ([header(t="want", b={"worker_id": "w", "n": True})], "bad_body"),  # bool is not an int
        ([header(t="cancel", b={"prompt_ids": ["a", 3]})], "bad_body"),
        ([header(t="grant", b={"items": [{"prompt_id": "0:1"}]})], "bad_body"),
        ([header(a=[["x", "<i4", [1]]]), b"abcd"], "bad_arrays"),  # arrays on a type that has none
        ([header(), b"stray frame"], "bad_arrays"),  # a frame nobody declared
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_malformed_messages_are_rejected_with_a_reason(frames, reason):
    assert reason_of(Codec("run1"), frames) == reason


def _group_frames(**header_edits):
    codec = Codec("run1")
    frames = [bytes(memoryview(f).cast("B")) if isinstance(f, np.ndarray) else f
              for f in encode_group(codec, make_group())]
    h = msgpack.unpackb(frames[0])
    for key, fn in header_edits.items():
        fn(h[key])
    return [msgpack.packb(h, use_bin_type=True), *frames[1:]]


def _set_meta(index: int, field: int, value):
    def edit(meta):
        meta[index][field] = value
    return edit


@pytest.mark.parametrize(
    "frames_fn, reason",
    [
        (lambda: _group_frames()[:-1], "bad_arrays"),  # an array frame missing
        (lambda: [*_group_frames()[:1], _group_frames()[1][:-4], *_group_frames()[2:]], "bad_arrays"),  # truncated
        (lambda: _group_frames(a=_set_meta(0, 1, "<f8")), "bad_arrays"),  # dtype not allowed
        (lambda: _group_frames(a=_set_meta(0, 1, "|O")), "bad_arrays"),  # no object arrays
        (lambda: _group_frames(a=_set_meta(0, 2, [2**39, 2**39])), "bad_arrays"),  # huge declared shape
        (lambda: _group_frames(a=_set_meta(0, 2, [-1])), "bad_arrays"),
        (lambda: _group_frames(a=_set_meta(0, 0, "evil")), "bad_arrays"),  # unknown array name
        (lambda: _group_frames(a=_set_meta(1, 0, "input_ids")), "bad_arrays"),  # a name twice
        (lambda: _group_frames(b=lambda b: b["samples"].pop()), "bad_body"),  # samples ≠ seqlens
        (lambda: _group_frames(b=lambda b: b["samples"][0].update(prompt_len=99)), "bad_body"),
        (lambda: _group_frames(b=lambda b: b["samples"][0].update(reward="1.0")), "bad_body"),
        (lambda: _group_frames(b=lambda b: b["samples"][0].pop("finish_reason")), "bad_body"),
    ],
)
def test_malformed_groups_are_rejected(frames_fn, reason):
    assert reason_of(Codec("run1"), frames_fn()) == reason


def test_group_arrays_must_agree_with_seqlens():
    codec = Codec("run1")
    group = make_group()
    group.versions = group.versions[:-1]
    assert reason_of(codec, encode_group(codec, group)) == "bad_arrays"
    group = make_group()
    group.seqlens = np.asarray([5, 9, -3], np.int32)
    assert reason_of(codec, encode_group(codec, group)) == "bad_arrays"
