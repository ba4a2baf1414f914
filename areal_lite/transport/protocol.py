"""The wire format: a msgpack header frame, raw array frames, an optional HMAC frame. No pickle.

    frame 0      msgpack map {"v": PROTOCOL_VERSION, "t": type, "run": run_id, "b": body, "a": [[name, dtype, shape], ...]}
    frame 1..n   the raw bytes of each array in "a", in order (C-contiguous, little-endian numpy dtypes)
    last frame   HMAC-SHA256(secret, each preceding frame as an 8-byte length + its bytes), when a secret is set

Small messages are one frame (plus the MAC). Decoding checks, in order: frame count and total size
against the cap; the MAC (constant-time) when a secret is set; frame 0 is a msgpack map with exactly
the keys above (no extension types); the protocol version; the run id; a registered message type;
the body's fields and their types (required present, unknown rejected); each array's name, dtype and
shape against the registry and its frame length. Any failure raises `ProtocolError(reason)`, which
receivers count by reason while they keep running.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
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
    check: Callable[[dict, dict], None] | None = None  # extra validation (body, arrays) -> raise ProtocolError


REGISTRY: dict[str, MessageSpec] = {}

INT = (int,)
NUM = (int, float)
STR = (str,)
LIST = (list,)
MAP = (dict,)


def register_message(name: str, fields: dict[str, FieldSpec], arrays: dict[str, tuple[str, ...]] | None = None,
                     check: Callable[[dict, dict], None] | None = None) -> None:
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


def _check_str_list(key: str) -> Callable[[dict, dict], None]:
    def check(body: dict, arrays: dict) -> None:
        if not all(isinstance(x, str) for x in body[key]):
            raise ProtocolError("bad_body", f"{key} must be a list of strings")

    return check


GROUP_TOKEN_ARRAYS = ("input_ids", "loss_mask", "behav_logp", "versions")
SAMPLE_FIELDS: dict[str, tuple[type, ...]] = {"prompt_len": INT, "reward": NUM, "finish_reason": STR}


def _check_group(body: dict, arrays: dict) -> None:
    missing = [n for n in (*GROUP_TOKEN_ARRAYS, "seqlens") if n not in arrays]
    if missing:
        raise ProtocolError("bad_arrays", f"group lacks {', '.join(missing)}")
    seqlens = arrays["seqlens"]
    # NOTE: plain Python on the few per-sample values; numpy calls on tiny arrays cost more than they save.
    lens = seqlens.tolist() if seqlens.ndim == 1 else None
    if lens is None or any(n < 0 for n in lens):
        raise ProtocolError("bad_arrays", "seqlens must be a 1-D array of non-negative lengths")
    total = sum(lens)
    for name in GROUP_TOKEN_ARRAYS:
        a = arrays[name]
        if a.ndim != 1 or a.shape[0] != total:
            raise ProtocolError("bad_arrays", f"{name} has shape {a.shape}, expected ({total},)")
    samples = body["samples"]
    if len(samples) != len(lens):
        raise ProtocolError("bad_body", f"{len(samples)} samples but {len(lens)} sequences")
    # NOTE: exact `type(...) is` checks: msgpack builds exact built-in types, and bool is no number here.
    for s, n in zip(samples, lens):
        if type(s) is not dict:
            raise ProtocolError("bad_body", "each sample must be a map")
        prompt_len, reward = s.get("prompt_len"), s.get("reward")
        if type(prompt_len) is not int or type(s.get("finish_reason")) is not str or (
                type(reward) is not float and type(reward) is not int):
            raise ProtocolError("bad_body", f"sample fields {', '.join(SAMPLE_FIELDS)} missing or of the wrong type")
        if not 0 <= prompt_len <= n:
            raise ProtocolError("bad_body", "a sample's prompt_len exceeds its sequence length")


register_message("hello", {"worker_id": _req(STR), "pid": _req(INT), "host": _req(STR), "slots": _req(INT)})
register_message("welcome", {"version": _req(INT), "heartbeat_s": _req(NUM)})
register_message("want", {"worker_id": _req(STR), "n": _req(INT), "seen": _opt(INT)})
register_message("grant", {"items": _req(LIST)}, check=_check_grant)
register_message("reject", {"worker_id": _req(STR), "prompt_id": _req(STR), "reason": _req(STR)})
register_message("heartbeat", {"worker_id": _req(STR), "running": _req(LIST)}, check=_check_str_list("running"))
register_message("bye", {"worker_id": _req(STR)})
register_message("cancel", {"prompt_ids": _req(LIST)}, check=_check_str_list("prompt_ids"))
register_message("error", {"message": _req(STR)})
register_message("version", {"version": _req(INT)})
register_message("shutdown", {"reason": _req(STR)})
register_message(
    "group",
    {"worker_id": _req(STR), "prompt_id": _req(STR), "samples": _req(LIST), "meta": _opt(MAP)},
    arrays={
        "input_ids": ("<i4",),
        "loss_mask": ("|u1", "|b1"),
        "behav_logp": ("<f4",),
        "versions": ("<i4",),
        "seqlens": ("<i4",),
    },
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


def _frame_bytes(frame: Any) -> memoryview:
    """A read-only view of a frame's bytes (zmq.Frame, bytes, memoryview or numpy array)."""
    buf = getattr(frame, "buffer", None)
    if buf is not None:
        return buf
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
        header = msgpack.packb(
            {"v": PROTOCOL_VERSION, "t": type, "run": self.run_id, "b": body, "a": meta}, use_bin_type=True
        )
        frames: list[Any] = [header, *payload]
        if self.secret is not None:
            frames.append(self._mac(frames))
        return frames

    def decode(self, frames: Sequence[Any]) -> Message:
        n = len(frames)
        if n == 0 or n > MAX_FRAMES:
            raise ProtocolError("bad_frames", f"{n} frames")
        views = [_frame_bytes(f) for f in frames]
        total = sum(v.nbytes for v in views)
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
        if not isinstance(header, dict) or set(header) != HEADER_KEYS:
            raise ProtocolError("bad_header", "header must be a map with keys v, t, run, b, a")
        if header["v"] != PROTOCOL_VERSION:
            raise ProtocolError("bad_version", f"protocol version {header['v']!r}")
        if header["run"] != self.run_id:
            raise ProtocolError("bad_run", "message from another run")
        mtype = header["t"]
        spec = REGISTRY.get(mtype) if isinstance(mtype, str) else None
        if spec is None:
            raise ProtocolError("unknown_type", repr(mtype)[:40])
        body = header["b"]
        if not isinstance(body, dict):
            raise ProtocolError("bad_body", "body must be a map")
        for key, (types, required) in spec.fields.items():
            if key not in body:
                if required:
                    raise ProtocolError("bad_body", f"{mtype}: missing field {key}")
                continue
            value = body[key]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise ProtocolError("bad_body", f"{mtype}: field {key} has type {type(value).__name__}")
        unknown = set(body) - set(spec.fields)
        if unknown:
            raise ProtocolError("bad_body", f"{mtype}: unknown field(s) {sorted(unknown)[:3]}")
        arrays = self._decode_arrays(mtype, spec, header["a"], views[1:])
        if spec.check is not None:
            spec.check(body, arrays)
        return Message(mtype, body, arrays, frames)

    def _decode_arrays(self, mtype: str, spec: MessageSpec, meta: Any, views: Sequence[memoryview]) -> dict:
        if not isinstance(meta, list) or len(meta) != len(views):
            raise ProtocolError("bad_arrays", f"{mtype}: {len(views)} array frames for the declared arrays")
        arrays: dict[str, np.ndarray] = {}
        for entry, view in zip(meta, views):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], str) and isinstance(entry[2], list)):
                raise ProtocolError("bad_arrays", "array entries are [name, dtype, shape]")
            name, dtype, shape = entry
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
            dt = _dtype(dtype)
            if count * dt.itemsize != view.nbytes:
                raise ProtocolError("bad_arrays", f"{name}: {view.nbytes} bytes for shape {shape[:4]} {dtype}")
            arr = np.frombuffer(view, dtype=dt)
            arrays[name] = arr if len(shape) == 1 else arr.reshape(shape)
        return arrays
