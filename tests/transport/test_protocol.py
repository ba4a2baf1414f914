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
from areal_lite.transport.protocol import (
    GROUP_BYTES_PER_SAMPLE,
    GROUP_BYTES_PER_TOKEN,
    GROUP_SECTIONS,
    MAC_BYTES,
    MAX_FRAMES,
    group_sections,
)

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
    k = len(seqlens)
    return TrajectoryGroup(
        prompt_id="0:42",
        worker_id="worker3",
        input_ids=rng.integers(0, 50_000, n).astype(np.int32),
        loss_mask=mask,
        behav_logp=-rng.random(n).astype(np.float32),
        versions=np.where(mask == 1, 4, -1).astype(np.int32),
        seqlens=np.asarray(seqlens, np.int32),
        prompt_lens=np.full(k, prompt_len, np.int32),
        rewards=np.arange(k, dtype=np.float64) + 0.1,
        finish_reasons=["stop"] * k,
        info={"latency_s": [0.25] * k, "reward_failed": [False] * k},
        meta={"reward_failures": 0},
    )


ARRAYS = ("input_ids", "loss_mask", "behav_logp", "versions", "seqlens", "prompt_lens", "rewards")


def assert_groups_equal(a: TrajectoryGroup, b: TrajectoryGroup) -> None:
    assert (a.prompt_id, a.worker_id, a.finish_reasons, a.info, a.meta, a.samples) == (
        b.prompt_id, b.worker_id, b.finish_reasons, b.info, b.meta, b.samples)
    for name in ARRAYS:
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
def test_group_round_trip_in_one_data_frame(secret):
    codec = Codec("run1", secret)
    group = make_group()
    frames = encode_group(codec, group)
    # header + one data frame with every array (+ MAC); the group's buffer is sent as it is, not copied.
    assert len(frames) == 2 + (1 if secret else 0)
    assert frames[1] is group.data and group.data.nbytes == 3 * 16 + 17 * 13 == group.nbytes
    back = decode_group(codec, [bytes(memoryview(f).cast("B")) if isinstance(f, np.ndarray) else f for f in frames])
    assert_groups_equal(group, back)
    assert back.samples[1] == {"prompt_len": 2, "reward": 1.1, "finish_reason": "stop", "latency_s": 0.25,
                               "reward_failed": False}


def test_group_buffer_follows_the_documented_layout():
    """The data frame's sections, in GROUP_SECTIONS order and dtypes, back to back."""
    group = make_group(seqlens=(5, 9, 3))
    n, n_tokens, offset = 3, 17, 0
    for name, dtype, per_token in GROUP_SECTIONS:
        count = n_tokens if per_token else n
        expected = np.frombuffer(group.data, np.dtype(dtype), count, offset)
        assert np.array_equal(getattr(group, name), expected) and getattr(group, name).dtype == expected.dtype, name
        assert np.shares_memory(getattr(group, name), group.data), name
        assert offset % np.dtype(dtype).itemsize == 0, name  # every section aligned to its item size
        offset += count * np.dtype(dtype).itemsize
    assert offset == group.data.nbytes == n * GROUP_BYTES_PER_SAMPLE + n_tokens * GROUP_BYTES_PER_TOKEN


def test_decoded_arrays_view_the_received_frame():
    """Zero copy on receipt: the arrays are views into the data frame's buffer, not copies."""
    codec = Codec("run1")
    group = make_group(seqlens=(1000, 2000))
    frames = [bytearray(memoryview(f).cast("B")) if isinstance(f, np.ndarray) else f
              for f in encode_group(codec, group)]
    back = decode_group(codec, frames)
    assert_groups_equal(group, back)
    for name in ARRAYS:
        assert np.shares_memory(getattr(back, name), np.frombuffer(frames[1], np.uint8)), name
    first_token = 2 * GROUP_BYTES_PER_SAMPLE  # input_ids follow the 2 samples' rewards, seqlens, prompt_lens
    frames[1][first_token:first_token + 4] = (7).to_bytes(4, "little")  # writing the frame shows through
    assert back.input_ids[0] == 7


def test_bool_loss_mask_and_big_endian_arrays_are_normalised():
    codec = Codec("run1")
    group = make_group()
    group.loss_mask = group.loss_mask.astype(bool)  # replaced after construction: packed again on send
    group.behav_logp = group.behav_logp.astype(">f4")
    back = decode_group(codec, encode_group(codec, group))
    assert back.loss_mask.dtype == np.uint8 and back.behav_logp.dtype == np.dtype("<f4")
    assert np.array_equal(back.loss_mask, group.loss_mask.astype(np.uint8))
    assert np.array_equal(back.behav_logp, group.behav_logp.astype("<f4"))
    fresh = TrajectoryGroup(**{**{f: getattr(group, f) for f in ("prompt_id", "worker_id", "finish_reasons")},
                               **{name: getattr(group, name) for name in ARRAYS}})  # normalised when built
    assert fresh.loss_mask.dtype == np.uint8 and fresh.behav_logp.dtype == np.dtype("<f4")
    assert fresh.rewards.dtype == np.float64 and fresh.prompt_lens.dtype == np.int32


def test_inconsistent_groups_cannot_be_built():
    group = make_group()
    with pytest.raises(ValueError, match="versions has shape"):
        TrajectoryGroup(**{**_fields(group), "versions": group.versions[:-1]})
    with pytest.raises(ValueError, match="per-sample fields"):
        TrajectoryGroup(**{**_fields(group), "finish_reasons": ["stop"]})


def test_from_trajectories_keeps_per_sample_scalars_as_columns():
    class Traj:
        def __init__(self, n, reward, info):
            self.input_ids, self.loss_mask = np.arange(n), np.r_[np.zeros(1), np.ones(n - 1)]
            self.behav_logp, self.versions = np.zeros(n), np.full(n, 3)
            self.reward, self.prompt_len, self.finish_reason, self.info = reward, 1, "stop", info

    group = TrajectoryGroup.from_trajectories(
        prompt_id="0:1", worker_id="w", meta={"reward_failures": 1},
        trajectories=[Traj(3, 1.0, {"latency_s": 0.5}), Traj(4, 0.0, {"latency_s": 0.7, "reward_failed": True,
                                                                     "not_a_scalar": [1]})])
    assert group.info == {"latency_s": [0.5, 0.7], "reward_failed": [None, True]}
    codec = Codec("run1")
    back = decode_group(codec, encode_group(codec, group))
    assert back.samples == [
        {"prompt_len": 1, "reward": 1.0, "finish_reason": "stop", "latency_s": 0.5},
        {"prompt_len": 1, "reward": 0.0, "finish_reason": "stop", "latency_s": 0.7, "reward_failed": True},
    ]
    assert back.seqlens.tolist() == [3, 4] and back.versions.tolist() == [3] * 7 and back.meta["reward_failures"] == 1


def _fields(group: TrajectoryGroup) -> dict:
    return {f: getattr(group, f) for f in ("prompt_id", "worker_id", "finish_reasons", "info", "meta", *ARRAYS)}


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
    shifted = [frames[0] + frames[1][:1], frames[1][1:], frames[2]]
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


def _group_frames(data=None, **header_edits):
    """A valid group's frames (3 samples: lengths 5, 9, 3, prompt_len 2), header and data edited."""
    codec = Codec("run1")
    frames = [bytes(memoryview(f).cast("B")) if isinstance(f, np.ndarray) else f
              for f in encode_group(codec, make_group())]
    h = msgpack.unpackb(frames[0])
    for key, fn in header_edits.items():
        fn(h[key])
    if data is not None:
        buf = bytearray(frames[1])
        data(group_sections(buf, 3, 17), buf)
        frames[1] = bytes(buf)
    return [msgpack.packb(h, use_bin_type=True), *frames[1:]]


def _set_meta(index: int, field: int, value):
    def edit(meta):
        meta[index][field] = value
    return edit


def _set(section: str, index: int, value):
    def edit(views, buf):
        views[section][index] = value
    return edit


@pytest.mark.parametrize(
    "frames_fn, reason",
    [
        (lambda: _group_frames()[:-1], "bad_arrays"),  # the data frame missing
        (lambda: [_group_frames()[0], _group_frames()[1][:-4]], "bad_arrays"),  # truncated
        (lambda: [_group_frames()[0], _group_frames()[1] + b"x" * 13], "bad_arrays"),  # one token too many
        (lambda: _group_frames(a=_set_meta(0, 1, "<f8")), "bad_arrays"),  # dtype not allowed
        (lambda: _group_frames(a=_set_meta(0, 1, "|O")), "bad_arrays"),  # no object arrays
        (lambda: _group_frames(a=_set_meta(0, 2, [2**39, 2**39])), "bad_arrays"),  # huge declared shape
        (lambda: _group_frames(a=_set_meta(0, 2, [-1])), "bad_arrays"),
        (lambda: _group_frames(a=_set_meta(0, 2, [])), "bad_arrays"),  # not 1-D
        (lambda: _group_frames(a=_set_meta(0, 0, "evil")), "bad_arrays"),  # unknown array name
        (lambda: _group_frames(a=lambda a: a.append(a[0])) + [_group_frames()[1]], "bad_arrays"),  # a name twice
        (lambda: _group_frames(a=lambda a: a.clear())[:1], "bad_arrays"),  # no data array at all
        (lambda: _group_frames(b=lambda b: b["finish_reason"].pop()), "bad_arrays"),  # 2 samples ≠ 3 in data
        (lambda: _group_frames(data=_set("seqlens", 0, 6)), "bad_arrays"),  # lengths ≠ tokens sent
        (lambda: _group_frames(data=lambda v, _: (v["seqlens"].__setitem__(0, -1),
                                                  v["seqlens"].__setitem__(1, 15))), "bad_arrays"),  # negative
        (lambda: _group_frames(data=_set("prompt_lens", 0, 99)), "bad_body"),  # longer than its sequence
        (lambda: _group_frames(data=_set("prompt_lens", 2, -1)), "bad_body"),
        (lambda: _group_frames(b=lambda b: b["finish_reason"].__setitem__(0, 5)), "bad_body"),
        (lambda: _group_frames(b=lambda b: b.pop("finish_reason")), "bad_body"),
        (lambda: _group_frames(b=lambda b: b.__setitem__("finish_reason", "stop")), "bad_body"),
        (lambda: _group_frames(b=lambda b: b["info"]["latency_s"].pop()), "bad_body"),  # a column too short
        (lambda: _group_frames(b=lambda b: b["info"]["latency_s"].__setitem__(0, {"x": 1})), "bad_body"),
        (lambda: _group_frames(b=lambda b: b["info"].__setitem__("x", 1)), "bad_body"),  # not a column
        (lambda: _group_frames(b=lambda b: b["meta"].__setitem__("reward_failures", -1)), "bad_body"),
        (lambda: _group_frames(b=lambda b: b["meta"].__setitem__("reward_failures", 4)), "bad_body"),  # > samples
        (lambda: _group_frames(b=lambda b: b["meta"].__setitem__("reward_failures", True)), "bad_body"),
        (lambda: _group_frames(b=lambda b: b.__setitem__("samples", [])), "bad_body"),  # the old format's field
    ],
)
def test_malformed_groups_are_rejected(frames_fn, reason):
    assert reason_of(Codec("run1"), frames_fn()) == reason


def test_group_edits_that_stay_valid_decode():
    """The edit helpers above are not themselves what makes those messages invalid."""
    back = Codec("run1").decode(_group_frames(data=_set("prompt_lens", 0, 5), b=lambda b: b["meta"].update(
        reward_failures=3)))
    assert back.arrays["prompt_lens"].tolist() == [5, 2, 2] and back.body["meta"]["reward_failures"] == 3


def test_group_lengths_must_add_up_to_the_tokens_sent():
    codec = Codec("run1")
    group = make_group()
    group.seqlens = np.asarray([5, 9, -3], np.int32)
    assert reason_of(codec, encode_group(codec, group)) == "bad_arrays"
    group = make_group()
    group.seqlens = np.asarray([5, 9, 2], np.int32)
    assert reason_of(codec, encode_group(codec, group)) == "bad_arrays"


def test_reject_carries_a_non_negative_reward_failure_count():
    codec = Codec("run1")
    body = {"worker_id": "w", "prompt_id": "0:1", "reason": "reward_failed", "reward_failures": 2}
    assert codec.decode(codec.encode("reject", body)).body["reward_failures"] == 2
    assert reason_of(codec, codec.encode("reject", {**body, "reward_failures": -1})) == "bad_body"
    assert reason_of(codec, codec.encode("reject", {**body, "reward_failures": 1.0})) == "bad_body"
