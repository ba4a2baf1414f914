"""The wire format: a msgpack header frame, raw array frames, an optional HMAC frame. No pickle.

    frame 0      msgpack map {"v": PROTOCOL_VERSION, "t": type, "run": run_id, "b": body,
                              "a": [[name, dtype, shape], ...]}
    frame 1..n   the raw bytes of each array in "a", in order (C-contiguous, little-endian numpy dtypes)
    last frame   HMAC-SHA256(secret, each preceding frame as an 8-byte length + its bytes), when a secret is set

Small messages are one frame (plus the MAC). A trajectory group (type "group") is two: its header
body holds worker_id, prompt_id, the per-sample `finish_reason` list, optional `info` columns
(name → one scalar or nil per sample) and optional `meta` (per group, e.g. reward_failures); its one
array, "data" (uint8), packs every number of the group, for n samples and N tokens in all:

    rewards f8[n] | seqlens i4[n] | prompt_lens i4[n] |
    input_ids i4[N] | versions i4[N] | behav_logp f4[N] | loss_mask u1[N]

(`GROUP_SECTIONS`; 16·n + 13·N bytes, each section aligned to its item size). One frame per group
keeps per-frame costs and per-array checks off the path; the receiver's arrays are views of it.

Decoding checks, in order: frame count and total size against the cap; the MAC (constant-time) when
a secret is set; frame 0 is a msgpack map with exactly the keys above (no extension types); the
protocol version; the run id; a registered message type; the body's fields and their exact types
(required present, unknown rejected); each array's name, dtype and shape against the registry and
its frame length; then the type's own check (a group: n from `finish_reason`, N from the data
length, the lengths adding up to N, 0 ≤ prompt_len ≤ length, the columns' lengths and scalar types,
reward_failures in [0, n]). Any failure raises `ProtocolError(reason)`, which receivers count by
reason while they keep running.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import msgpack
import numpy as np
import zmq

PROTOCOL_VERSION = 2  # 2: a group's numbers in one data frame, per-sample fields as columns
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
MAC_BYTES = 32
MAX_FRAMES = 16
HEADER_KEYS = frozenset({"v", "t", "run", "b", "a"})


class ProtocolError(Exception):
    """A message that must be rejected; `reason` is a short, countable label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Message:
    type: str
    body: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # zmq frames the arrays view into (kept alive with the message)
    frames: Sequence[Any] = field(default_factory=tuple, repr=False)


# ----------------------------------------------------------------------------- registry

# A body field: (accepted python types, required). msgpack gives int/float/str/bytes/bool/None/list/dict.
FieldSpec = tuple[tuple[type, ...], bool]


@dataclass(frozen=True)
class MessageSpec:
    fields: dict[str, FieldSpec]
    arrays: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> allowed dtype strings
    # extra validation (body, arrays): raises ProtocolError, or returns the arrays the receiver gets (None: as sent)
    check: Callable[[dict, dict], dict | None] | None = None

    def __post_init__(self) -> None:
        # (key, exact types, required): msgpack builds exact built-in types, so `type(v) in types` is
        # isinstance without subclasses (a bool is no int here unless bool is listed).
        plan = tuple((key, frozenset(types), required) for key, (types, required) in self.fields.items())
        object.__setattr__(self, "plan", plan)


REGISTRY: dict[str, MessageSpec] = {}

INT = (int,)
NUM = (int, float)
STR = (str,)
LIST = (list,)
MAP = (dict,)


def register_message(name: str, fields: dict[str, FieldSpec], arrays: dict[str, tuple[str, ...]] | None = None,
                     check: Callable[[dict, dict], dict | None] | None = None) -> None:
    """Add (or replace) a message type; receivers reject types that are not registered."""
    REGISTRY[name] = MessageSpec(dict(fields), dict(arrays or {}), check)


def _req(types: tuple[type, ...]) -> FieldSpec:
    return (types, True)


def _opt(types: tuple[type, ...]) -> FieldSpec:
    return (types, False)


def _check_grant(body: dict, arrays: dict) -> None:
    for item in body["items"]:
        if not isinstance(item, dict) or set(item) != {"prompt_id", "record"}:
            raise ProtocolError("bad_body", "grant items must be maps with prompt_id and record")
        if not isinstance(item["prompt_id"], str) or not isinstance(item["record"], dict):
            raise ProtocolError("bad_body", "grant item prompt_id must be str and record a map")


def _check_reject(body: dict, arrays: dict) -> None:
    if body.get("reward_failures", 0) < 0:
        raise ProtocolError("bad_body", "reject reward_failures must be >= 0")


def _check_str_list(key: str) -> Callable[[dict, dict], None]:
    def check(body: dict, arrays: dict) -> None:
        if not all(isinstance(x, str) for x in body[key]):
            raise ProtocolError("bad_body", f"{key} must be a list of strings")

    return check


# A trajectory group's numbers travel in ONE frame ("data"), sections back to back, for n samples and N
# tokens (all samples' tokens concatenated); 8-byte items first, so every section is aligned to its itemsize:
GROUP_SECTIONS: tuple[tuple[str, str, bool], ...] = (  # (name, dtype, per token? else per sample)
    ("rewards", "<f8", False),
    ("seqlens", "<i4", False),
    ("prompt_lens", "<i4", False),
    ("input_ids", "<i4", True),
    ("versions", "<i4", True),
    ("behav_logp", "<f4", True),
    ("loss_mask", "|u1", True),
)
GROUP_BYTES_PER_SAMPLE = 16
GROUP_BYTES_PER_TOKEN = 13
_INFO_TYPES = frozenset({type(None), bool, int, float, str})
_STR_ONLY = frozenset({str})


_F8, _I4, _F4, _U1 = np.dtype("<f8"), np.dtype("<i4"), np.dtype("<f4"), np.dtype("|u1")


def group_sections(data: Any, n: int, n_tokens: int) -> dict[str, np.ndarray]:
    """Views of the sections of a group's data buffer (uint8, 16·n + 13·N bytes), laid out as GROUP_SECTIONS."""
    # NOTE: unrolled (tests check it against GROUP_SECTIONS): this runs once per received group.
    fb, t = np.frombuffer, 4 * n_tokens
    o1 = 8 * n
    o2 = o1 + 4 * n
    o3 = o2 + 4 * n
    o4 = o3 + t
    o5 = o4 + t
    o6 = o5 + t
    return {"rewards": fb(data, _F8, n, 0), "seqlens": fb(data, _I4, n, o1), "prompt_lens": fb(data, _I4, n, o2),
            "input_ids": fb(data, _I4, n_tokens, o3), "versions": fb(data, _I4, n_tokens, o4),
            "behav_logp": fb(data, _F4, n_tokens, o5), "loss_mask": fb(data, _U1, n_tokens, o6)}


def _check_group(body: dict, arrays: dict) -> dict:
    reasons = body["finish_reason"]
    n = len(reasons)
    data = arrays.get("data")
    if data is None or data.ndim != 1:
        raise ProtocolError("bad_arrays", "a group has one 1-D data array")
    tail = data.shape[0] - GROUP_BYTES_PER_SAMPLE * n
    if tail < 0 or tail % GROUP_BYTES_PER_TOKEN:
        raise ProtocolError("bad_arrays", f"{data.shape[0]} data bytes do not fit {n} samples")
    n_tokens = tail // GROUP_BYTES_PER_TOKEN
    views = group_sections(data, n, n_tokens)
    # NOTE: plain Python on the few per-sample values; numpy calls on tiny arrays cost more than they save.
    lens = views["seqlens"].tolist()
    if sum(lens) != n_tokens:
        raise ProtocolError("bad_arrays", f"sequence lengths do not add up to the {n_tokens} tokens sent")
    for p, length in zip(views["prompt_lens"].tolist(), lens):
        if not 0 <= p <= length:  # so no length is negative either
            if length < 0:
                raise ProtocolError("bad_arrays", "a sequence length is negative")
            raise ProtocolError("bad_body", "a sample's prompt_len is negative or exceeds its sequence length")
    # NOTE: exact `type(...) is` checks: msgpack builds exact built-in types, and bool is no number here.
    if not {*map(type, reasons)} <= _STR_ONLY:
        raise ProtocolError("bad_body", "finish_reason must be a list of strings")
    info = body.get("info")
    if info:
        for key, column in info.items():
            if type(column) is not list or len(column) != n or not {*map(type, column)} <= _INFO_TYPES:
                raise ProtocolError("bad_body", f"info {key[:40]!r} must be a list of {n} scalars")
    meta = body.get("meta")
    if meta and "reward_failures" in meta:
        failures = meta["reward_failures"]
        if type(failures) is not int or not 0 <= failures <= n:
            raise ProtocolError("bad_body", "meta reward_failures must be an int in [0, samples]")
    views["data"] = data
    return views


register_message("hello", {"worker_id": _req(STR), "pid": _req(INT), "host": _req(STR), "slots": _req(INT)})
register_message("welcome", {"version": _req(INT), "heartbeat_s": _req(NUM)})
register_message("want", {"worker_id": _req(STR), "n": _req(INT), "seen": _opt(INT)})
register_message("grant", {"items": _req(LIST)}, check=_check_grant)
register_message("reject", {"worker_id": _req(STR), "prompt_id": _req(STR), "reason": _req(STR),
                            "reward_failures": _opt(INT)}, check=_check_reject)
register_message("heartbeat", {"worker_id": _req(STR), "running": _req(LIST)}, check=_check_str_list("running"))
register_message("bye", {"worker_id": _req(STR)})
register_message("cancel", {"prompt_ids": _req(LIST)}, check=_check_str_list("prompt_ids"))
register_message("error", {"message": _req(STR)})
register_message("version", {"version": _req(INT)})
register_message("shutdown", {"reason": _req(STR)})
register_message(
    "group",
    {"worker_id": _req(STR), "prompt_id": _req(STR), "finish_reason": _req(LIST), "info": _opt(MAP),
     "meta": _opt(MAP)},
    arrays={"data": ("|u1",)},
    check=_check_group,
)


# ----------------------------------------------------------------------------- codec


def new_run_secret() -> bytes:
    """A fresh per-run secret for message authentication (32 random bytes)."""
    return os.urandom(32)


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("bad_header", "msgpack extension types are not accepted")


_DTYPES: dict[str, np.dtype] = {}


def _dtype(name: str) -> np.dtype:
    """np.dtype(name), cached (only registry-allowed names get here)."""
    dt = _DTYPES.get(name)
    if dt is None:
        dt = _DTYPES[name] = np.dtype(name)
    return dt


_FRAME = zmq.Frame
_PACKERS = threading.local()  # one reusable msgpack Packer per thread (cheaper than packb's per call)


def _frame_bytes(frame: Any) -> memoryview:
    """A read-only view of a frame's bytes (zmq.Frame, bytes, memoryview or numpy array)."""
    if type(frame) is zmq.Frame:
        return frame.buffer
    if isinstance(frame, np.ndarray):
        return memoryview(frame).cast("B")
    return memoryview(frame)


class Codec:
    def __init__(self, run_id: str, secret: bytes | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.run_id = run_id
        self.secret = secret
        self.max_message_bytes = max_message_bytes

    def _mac(self, frames: Iterable[Any]) -> bytes:
        assert self.secret is not None
        h = hmac.new(self.secret, digestmod=hashlib.sha256)
        for f in frames:
            view = _frame_bytes(f)
            h.update(view.nbytes.to_bytes(8, "little"))
            h.update(view)
        return h.digest()

    def encode(self, type: str, body: dict, arrays: dict[str, np.ndarray] | None = None) -> list[Any]:
        """Frames for one message. Arrays are sent as they are (no copy) when already contiguous."""
        spec = REGISTRY.get(type)
        if spec is None:
            raise ValueError(f"unregistered message type {type!r}")
        meta, payload = [], []
        for name, arr in (arrays or {}).items():
            arr = np.ascontiguousarray(arr)
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            meta.append([name, arr.dtype.str, list(arr.shape)])
            payload.append(arr)
        packer = getattr(_PACKERS, "packer", None)
        if packer is None:
            packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
        header = packer.pack({"v": PROTOCOL_VERSION, "t": type, "run": self.run_id, "b": body, "a": meta})
        frames: list[Any] = [header, *payload]
        if self.secret is not None:
            frames.append(self._mac(frames))
        return frames

    def decode(self, frames: Sequence[Any]) -> Message:
        n = len(frames)
        if n == 0 or n > MAX_FRAMES:
            raise ProtocolError("bad_frames", f"{n} frames")
        views = [f.buffer if type(f) is _FRAME else _frame_bytes(f) for f in frames]
        total = 0
        for v in views:
            total += v.nbytes
        if total > self.max_message_bytes:
            raise ProtocolError("too_large", f"{total} bytes > {self.max_message_bytes}")
        if self.secret is not None:
            if n < 2 or views[-1].nbytes != MAC_BYTES:
                raise ProtocolError("bad_mac", "missing MAC frame")
            if not hmac.compare_digest(self._mac(frames[:-1]), bytes(views[-1])):
                raise ProtocolError("bad_mac", "MAC mismatch")
            views = views[:-1]
        try:
            header = msgpack.unpackb(views[0], raw=False, strict_map_key=True, ext_hook=_reject_ext,
                                     use_list=True)
        except ProtocolError:
            raise
        except Exception as e:  # msgpack raises several unrelated exception types on bad input
            raise ProtocolError("bad_header", type(e).__name__) from None
        if type(header) is not dict or header.keys() != HEADER_KEYS:
            raise ProtocolError("bad_header", "header must be a map with keys v, t, run, b, a")
        if header["v"] != PROTOCOL_VERSION or type(header["v"]) is not int:
            raise ProtocolError("bad_version", f"protocol version {header['v']!r}")
        if header["run"] != self.run_id:
            raise ProtocolError("bad_run", "message from another run")
        mtype = header["t"]
        spec = REGISTRY.get(mtype) if type(mtype) is str else None
        if spec is None:
            raise ProtocolError("unknown_type", repr(mtype)[:40])
        body = header["b"]
        if type(body) is not dict:
            raise ProtocolError("bad_body", "body must be a map")
        present = 0
        for key, types, required in spec.plan:
            if key in body:
                present += 1
                if type(body[key]) not in types:
                    raise ProtocolError("bad_body", f"{mtype}: field {key} has type {type(body[key]).__name__}")
            elif required:
                raise ProtocolError("bad_body", f"{mtype}: missing field {key}")
        if present != len(body):
            unknown = sorted(set(body) - set(spec.fields))
            raise ProtocolError("bad_body", f"{mtype}: unknown field(s) {unknown[:3]}")
        meta = header["a"]
        if type(meta) is list and not meta and len(views) == 1:
            arrays: dict[str, np.ndarray] = {}
        else:
            arrays = self._decode_arrays(mtype, spec, meta, views[1:])
        if spec.check is not None:
            arrays = spec.check(body, arrays) or arrays
        return Message(mtype, body, arrays, frames)

    def _decode_arrays(self, mtype: str, spec: MessageSpec, meta: Any, views: Sequence[memoryview]) -> dict:
        if type(meta) is not list or len(meta) != len(views):
            raise ProtocolError("bad_arrays", f"{mtype}: {len(views)} array frames for the declared arrays")
        arrays: dict[str, np.ndarray] = {}
        for entry, view in zip(meta, views):
            if type(entry) is not list or len(entry) != 3:
                raise ProtocolError("bad_arrays", "array entries are [name, dtype, shape]")
            name, dtype, shape = entry
            if type(name) is not str or type(dtype) is not str or type(shape) is not list:
                raise ProtocolError("bad_arrays", "array entries are [name, dtype, shape]")
            allowed = spec.arrays.get(name)
            if allowed is None or name in arrays:
                raise ProtocolError("bad_arrays", f"{mtype}: unexpected array {name[:40]!r}")
            if dtype not in allowed:
                raise ProtocolError("bad_arrays", f"{name}: dtype {dtype[:10]!r} not in {allowed}")
            count = 1
            for d in shape:
                if type(d) is not int or not 0 <= d < 2**40:  # not bool, not float
                    raise ProtocolError("bad_arrays", f"{name}: bad shape")
                count *= d
            dt = _DTYPES.get(dtype) or _dtype(dtype)
            if count * dt.itemsize != view.nbytes:
                raise ProtocolError("bad_arrays", f"{name}: {view.nbytes} bytes for shape {shape[:4]} {dtype}")
            arr = np.frombuffer(view, dt)
            arrays[name] = arr if len(shape) == 1 else arr.reshape(shape)
        return arrays
