"""Trajectory transport throughput against the raw ZeroMQ multipart ceiling, over tcp loopback.

    python -m areal_lite.bench.transport_throughput [--out out.json] [--sizes 64K,4M] [--rounds 5] \
        [--mb-per-trial 256] [--hmac]

A sender process streams trajectory groups to this process over tcp 127.0.0.1; throughput is
payload bytes per second at the receiver, from the first message to the last. Compared on the same
bytes (the group's array payload of the given size, plus its msgpack header):
- raw: plain zmq PUSH → PULL, `send_multipart` of the already-encoded frames, nothing decoded;
- codec: our path: `AsyncPusher.send_group` (encode + zero-copy send) → `PullReceiver.recv` +
  `TrajectoryGroup.from_message` (validate + zero-copy decode);
- codec+hmac (with `--hmac`): the same with a run secret (every frame authenticated both ends).
Trials interleave (raw, codec, ... per round, the order alternating), so a noisy neighbour hits all
paths alike; the ratio is the median of the per-round ratios. Prints a table; `--out` writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from typing import Any, Sequence

import numpy as np
import zmq

from areal_lite.transport import AsyncPusher, Codec, PullReceiver, TrajectoryGroup
from areal_lite.transport.sockets import _configure

RUN_ID = "bench"
SECRET = b"b" * 32
BYTES_PER_TOKEN = 13  # input_ids int32 + loss_mask uint8 + behav_logp float32 + versions int32
SAMPLES_PER_GROUP = 8
HWM = 1000


def make_group(nbytes: int, seed: int = 0) -> TrajectoryGroup:
    """A group of 8 samples whose token arrays total about `nbytes`."""
    rng = np.random.default_rng(seed)
    per = max(2, nbytes // BYTES_PER_TOKEN // SAMPLES_PER_GROUP)
    n = per * SAMPLES_PER_GROUP
    mask = np.ones(n, np.uint8)
    return TrajectoryGroup(
        prompt_id="0:0", worker_id="bench",
        input_ids=rng.integers(0, 150_000, n).astype(np.int32), loss_mask=mask,
        behav_logp=-rng.random(n).astype(np.float32), versions=np.zeros(n, np.int32),
        seqlens=np.full(SAMPLES_PER_GROUP, per, np.int32), prompt_lens=np.ones(SAMPLES_PER_GROUP, np.int32),
        rewards=np.ones(SAMPLES_PER_GROUP), finish_reasons=["length"] * SAMPLES_PER_GROUP,
    )


def encoded_bytes(codec: Codec, group: TrajectoryGroup) -> list[bytes]:
    return [f.tobytes() if isinstance(f, np.ndarray) else bytes(f) for f in codec.encode(*group.to_message())]


# ----------------------------------------------------------------------------- sender process


def _sender(conn) -> None:
    """Serves trials: (mode, address, nbytes, count) → sends `count` messages, answers 'done'."""
    ctx = zmq.Context()
    actx = __import__("zmq.asyncio").asyncio.Context(ctx)
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        mode, address, nbytes, count = cmd
        group = make_group(nbytes)
        if mode == "raw":
            frames = encoded_bytes(Codec(RUN_ID), group)
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, HWM)
            sock.setsockopt(zmq.LINGER, -1)
            sock.connect(address)
            for _ in range(count):
                sock.send_multipart(frames, copy=False)
            sock.close()  # lingers until all is sent
        else:
            codec = Codec(RUN_ID, SECRET if mode == "codec+hmac" else None)

            async def push() -> None:
                pusher = AsyncPusher(codec, address, context=actx)
                pusher.socket.setsockopt(zmq.LINGER, -1)
                for _ in range(count):
                    await pusher.send_group(group)
                pusher.socket.close()

            asyncio.run(push())
        conn.send("done")
    ctx.term()


# ----------------------------------------------------------------------------- receiver (this process)


def _receive(mode: str, count: int, start_trial) -> tuple[float, int]:
    """Bind, start the sender, receive `count` messages; (seconds first → last, bytes per message)."""
    codec = Codec(RUN_ID, SECRET if mode == "codec+hmac" else None)
    if mode == "raw":
        sock = zmq.Context.instance().socket(zmq.PULL)
        _configure(sock, codec, receiver=True)  # the same options as PullReceiver
        sock.setsockopt(zmq.RCVHWM, HWM)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        start_trial(f"tcp://127.0.0.1:{port}")
        t0 = 0.0
        for i in range(count):
            frames = sock.recv_multipart(copy=False)
            if i == 0:
                t0 = time.perf_counter()
                size = sum(len(f.buffer) for f in frames)
        t1 = time.perf_counter()
        sock.close()
        return t1 - t0, size
    receiver = PullReceiver(codec)
    start_trial(receiver.address)
    t0 = 0.0
    for i in range(count):
        msg = receiver.recv(timeout=60)
        if msg is None:
            raise RuntimeError(f"{mode}: message {i} of {count} did not arrive")
        group = TrajectoryGroup.from_message(msg)
        if i == 0:
            t0 = time.perf_counter()
            size = sum(len(memoryview(f)) if not hasattr(f, "buffer") else len(f.buffer) for f in msg.frames)
            size -= 32 if codec.secret else 0  # the MAC is overhead, not payload
            assert group.num_samples == SAMPLES_PER_GROUP
    t1 = time.perf_counter()
    if receiver.rejected:
        raise RuntimeError(f"{mode}: messages rejected: {dict(receiver.rejected)}")
    receiver.close()
    return t1 - t0, size


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * mult)


def run(sizes: Sequence[int], modes: Sequence[str], rounds: int, mb_per_trial: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_sender, args=(child,), daemon=True)
    proc.start()
    rates: dict[tuple[int, str], list[float]] = {(s, m): [] for s in sizes for m in modes}
    payload: dict[int, int] = {}
    try:
        for r in range(rounds):
            for size in sizes:
                count = max(8, int(mb_per_trial * 1e6 / size))
                order = list(modes) if r % 2 == 0 else list(reversed(modes))
                for mode in order:
                    elapsed, nbytes = _receive(mode, count, lambda addr: parent.send((mode, addr, size, count)))
                    if parent.recv() != "done":
                        raise RuntimeError("sender failed")
                    payload[size] = nbytes
                    rates[size, mode].append((count - 1) * nbytes / elapsed / 1e6)
    finally:
        parent.send(None)
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    results = []
    for size in sizes:
        raw = rates[size, "raw"]
        for mode in modes:
            ratios = [x / y for x, y in zip(rates[size, mode], raw)]
            results.append({
                "size": size, "payload_bytes": payload[size], "mode": mode,
                "mb_per_s": rates[size, mode], "median_mb_per_s": statistics.median(rates[size, mode]),
                "msgs_per_s": statistics.median(rates[size, mode]) * 1e6 / payload[size],
                "ratio_to_raw": statistics.median(ratios),
            })
    return {"results": results}


def human(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} KB"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="areal_lite.bench.transport_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="Write the results as JSON here.")
    p.add_argument("--sizes", default="64K,4M", help="Group sizes (token array bytes), comma separated.")
    p.add_argument("--rounds", type=int, default=5, help="Interleaved rounds (each path once per size per round).")
    p.add_argument("--mb-per-trial", type=float, default=256.0, help="Megabytes sent per trial.")
    p.add_argument("--hmac", action="store_true", help="Also measure the authenticated path.")
    args = p.parse_args(argv)
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",")]
    except ValueError:
        print(f"error: --sizes {args.sizes!r}: expected sizes like 64K,4M", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.mb_per_trial <= 0 or any(s < BYTES_PER_TOKEN * SAMPLES_PER_GROUP * 2 for s in sizes):
        print("error: --rounds must be >= 1, --mb-per-trial > 0, each size >= 208 bytes", file=sys.stderr)
        return 2
    modes = ["raw", "codec", *(["codec+hmac"] if args.hmac else [])]
    report = run(sizes, modes, args.rounds, args.mb_per_trial)
    report["config"] = {"sizes": sizes, "rounds": args.rounds, "mb_per_trial": args.mb_per_trial, "modes": modes}
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                         "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}

    print(f"{'group':>8} {'path':>11} {'MB/s (median)':>14} {'msgs/s':>9} {'vs raw':>7}")
    for r in report["results"]:
        print(f"{human(r['size']):>8} {r['mode']:>11} {r['median_mb_per_s']:>14,.0f} {r['msgs_per_s']:>9,.0f} "
              f"{r['ratio_to_raw']:>7.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
