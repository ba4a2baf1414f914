"""The records of a wandb offline run, read with wandb's own protobuf messages.

An offline run's `run-<id>.wandb` file is a LevelDB-style log (a 7-byte `:W&B` header, then 32 KiB
blocks of records: crc32c(4) length(2) type(1) data, a payload split over FIRST/MIDDLE/LAST records
when it crosses a block) of `wandb.proto.wandb_internal_pb2.Record` messages. This wandb version
has no Python reader for it (the writer is its Go core), so the tests read the framing here and
let wandb's protobuf classes decode each record.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def run_config(records: list) -> tuple[str, dict]:
    """(run id, config) of an offline run: the run record's config and every later config update."""
    run_id, config = "", {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id = r.run.run_id
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
    config.pop("_wandb", None)
    return run_id, config
