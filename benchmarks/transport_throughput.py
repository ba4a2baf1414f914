"""Trajectory transport throughput against the raw ZeroMQ multipart ceiling, over tcp loopback.

    python -m benchmarks.transport_throughput [--out out.json] [--sizes 64K,4M] [--rounds 9] \
        [--mb-per-trial 256] [--hmac]

A sender process streams trajectory groups to this process over tcp 127.0.0.1; throughput is
payload bytes per second at the receiver, from the first message to the last. Every path sends the
same frames (the group's header and data frame, about the given size) through sockets with the same
options (HWM 1000 both ends, the same zero-copy threshold, the receiver's size cap), in the same
process layout (sender process → receiving process):
- raw: plain zmq PUSH → PULL, `send_multipart` of the already-encoded frames, `recv_multipart` of
  every frame, nothing encoded or decoded;
- codec: our path: `AsyncPusher.send_group` (encode + send, asyncio) → `PullReceiver.recv` +
  `TrajectoryGroup.from_message` (validate + zero-copy decode);
- codec+hmac (with `--hmac`): the same with a run secret (every frame authenticated both ends).
Each round runs every path twice, ABBA order (raw, codec, codec, raw; the next round starts from the
other end), so drift from a noisy neighbour hits all paths alike; a round's ratio is the path's
mean rate over the raw mean rate of that round, and the reported ratio is the median over rounds.
Also reported: CPU seconds per message of each side (all threads of the process, zmq I/O included),
which the machine's load disturbs less than wall time. Prints a table; `--out` writes JSON.
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
import zmq.asyncio

from areal_lite.transport import AsyncPusher, Codec, PullReceiver, TrajectoryGroup
from areal_lite.transport.sockets import ZERO_COPY_MIN_BYTES, _configure

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
    """Serves trials: (mode, address, nbytes, count) → sends `count` messages, answers CPU seconds used."""
    ctx = zmq.Context()
    actx = zmq.asyncio.Context(ctx)
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
            sock.copy_threshold = ZERO_COPY_MIN_BYTES  # as AsyncPusher's
            sock.connect(address)
            cpu0 = time.process_time()
            for _ in range(count):
                sock.send_multipart(frames, copy=False)
            sock.close()  # lingers until all is sent
        else:
            codec = Codec(RUN_ID, SECRET if mode == "codec+hmac" else None)
            pusher = AsyncPusher(codec, address, context=actx)
            pusher.socket.setsockopt(zmq.LINGER, -1)

            async def push() -> None:
                for _ in range(count):
                    await pusher.send_group(group)
                pusher.socket.close()

            cpu0 = time.process_time()
            asyncio.run(push())
        conn.send(time.process_time() - cpu0)
    ctx.term()


# ----------------------------------------------------------------------------- receiver (this process)


def _receive(mode: str, count: int, start_trial) -> tuple[float, float, int]:
    """Bind, start the sender, receive `count` messages: (seconds and CPU seconds from the first message
    to the last, bytes per message)."""
    codec = Codec(RUN_ID, SECRET if mode == "codec+hmac" else None)
    if mode == "raw":
        sock = zmq.Context.instance().socket(zmq.PULL)
        _configure(sock, codec, receiver=True)  # the same options as PullReceiver
        sock.setsockopt(zmq.RCVHWM, HWM)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        start_trial(f"tcp://127.0.0.1:{port}")
        frames = sock.recv_multipart(copy=False)
        t0, cpu0 = time.perf_counter(), time.process_time()
        size = sum(len(f.buffer) for f in frames)
        for _ in range(count - 1):
            sock.recv_multipart(copy=False)
        t1, cpu1 = time.perf_counter(), time.process_time()
        sock.close()
        return t1 - t0, cpu1 - cpu0, size
    receiver = PullReceiver(codec)
    start_trial(receiver.address)
    t0 = cpu0 = 0.0
    for i in range(count):
        msg = receiver.recv(timeout=60)
        if msg is None:
            raise RuntimeError(f"{mode}: message {i} of {count} did not arrive")
        group = TrajectoryGroup.from_message(msg)
        if i == 0:
            t0, cpu0 = time.perf_counter(), time.process_time()
            size = sum(len(memoryview(f)) if not hasattr(f, "buffer") else len(f.buffer) for f in msg.frames)
            size -= 32 if codec.secret else 0  # the MAC is overhead, not payload
            assert group.num_samples == SAMPLES_PER_GROUP
    t1, cpu1 = time.perf_counter(), time.process_time()
    if receiver.rejected:
        raise RuntimeError(f"{mode}: messages rejected: {dict(receiver.rejected)}")
    receiver.close()
    return t1 - t0, cpu1 - cpu0, size


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * mult)


def run(sizes: Sequence[int], modes: Sequence[str], rounds: int, mb_per_trial: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_sender, args=(child,), daemon=True)
    proc.start()
    # per (size, mode): one entry per round, each the mean over the round's two trials
    rates: dict[tuple[int, str], list[float]] = {(s, m): [] for s in sizes for m in modes}
    recv_cpu: dict[tuple[int, str], list[float]] = {k: [] for k in rates}
    send_cpu: dict[tuple[int, str], list[float]] = {k: [] for k in rates}
    payload: dict[int, int] = {}
    try:
        for r in range(rounds):
            for size in sizes:
                count = max(8, int(mb_per_trial * 1e6 / size))
                half = list(modes) if r % 2 == 0 else list(reversed(modes))
                trials: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
                for mode in half + half[::-1]:  # ABBA
                    elapsed, cpu, nbytes = _receive(mode, count, lambda addr: parent.send((mode, addr, size, count)))
                    sent_cpu = parent.recv()
                    if not isinstance(sent_cpu, float):
                        raise RuntimeError("sender failed")
                    payload[size] = nbytes
                    trials[mode].append(((count - 1) * nbytes / elapsed / 1e6, cpu / (count - 1), sent_cpu / count))
                for mode in modes:
                    rates[size, mode].append(statistics.mean(t[0] for t in trials[mode]))
                    recv_cpu[size, mode].append(statistics.mean(t[1] for t in trials[mode]))
                    send_cpu[size, mode].append(statistics.mean(t[2] for t in trials[mode]))
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
                "ratios_to_raw": ratios, "ratio_to_raw": statistics.median(ratios),
                "recv_cpu_us_per_msg": statistics.median(recv_cpu[size, mode]) * 1e6,
                "send_cpu_us_per_msg": statistics.median(send_cpu[size, mode]) * 1e6,
            })
    return {"results": results}


def human(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} KB"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.transport_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="Write the results as JSON here.")
    p.add_argument("--sizes", default="64K,4M", help="Group sizes (token array bytes), comma separated.")
    p.add_argument("--rounds", type=int, default=9, help="Rounds (each path twice per size per round, ABBA).")
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

    print(f"{'group':>8} {'path':>11} {'MB/s (median)':>14} {'msgs/s':>9} {'vs raw':>7} {'rounds':>12} "
          f"{'recv CPU µs/msg':>16} {'send CPU µs/msg':>16}")
    for r in report["results"]:
        spread = f"{min(r['ratios_to_raw']):.2f}-{max(r['ratios_to_raw']):.2f}"
        print(f"{human(r['size']):>8} {r['mode']:>11} {r['median_mb_per_s']:>14,.0f} {r['msgs_per_s']:>9,.0f} "
              f"{r['ratio_to_raw']:>7.2f} {spread:>12} {r['recv_cpu_us_per_msg']:>16,.0f} "
              f"{r['send_cpu_us_per_msg']:>16,.0f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
