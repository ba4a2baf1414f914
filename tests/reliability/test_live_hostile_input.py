"""Hostile input against every socket and HTTP route of a live run, while it trains.

A real run (the local launcher, a tiny model, one epoch of 32 prompts) is attacked after its first
step: malformed, truncated, oversized and wrong-type frames on the controller's trajectory socket
(PULL) and control socket (ROUTER) (its PUB socket only sends), and malformed, truncated, wrong-type
and oversized bodies on every POST route of the inference server. Every one is refused and counted
(`transport/rejected` and `server/rejected_requests` in the run's metrics rise by exactly what was
sent), the run finishes, every prompt of the epoch is trained exactly once, and staleness stays in
[0, η]. Nothing is valid: a well-formed `hello` or `/pause_generation` is a client, not an attack (on
one host the sockets listen on loopback only, which the test checks too).
"""

from __future__ import annotations

import json

import httpx
import msgpack
import numpy as np
import psutil
import pytest
import zmq

from areal_lite.inference.embedded.server import MAX_BODY_BYTES
from areal_lite.transport import Codec
from areal_lite.transport.protocol import DEFAULT_MAX_MESSAGE_BYTES
from areal_lite.utils.runenv import RunEnv
from tests.e2e.conftest import read_jsonl, run_dir, write_config
from tests.reliability.audit import ListenWatch, assert_epoch_trained_once, assert_metrics_sound, epoch_config, launched
from tests.transport.test_protocol import BODIES, make_group

LOCAL = "areal_lite.launcher.local"
ETA = 1
POST_ROUTES = ["/generate", "/abort_request", "/pause_generation", "/continue_generation", "/update_weights_from_disk",
               "/init_weights_update_group", "/destroy_weights_update_group", "/update_weights_from_distributed",
               "/update_weight_version", "/begin_weight_update", "/end_weight_update"]


def frames_of(codec: Codec, type_: str, body: dict, arrays=None) -> list[bytes]:
    return [f.tobytes() if isinstance(f, np.ndarray) else bytes(f) for f in codec.encode(type_, body, arrays)]


def hostile_frames(codec: Codec, channel: str) -> dict[str, list[bytes]]:
    """Named invalid messages for the trajectory ("group") or control channel; none is valid there."""
    group = frames_of(codec, *make_group().to_message())
    hello = frames_of(codec, "hello", BODIES["hello"])
    good = group if channel == "group" else hello
    header = msgpack.unpackb(good[0], raw=False)
    half = (DEFAULT_MAX_MESSAGE_BYTES >> 1) + 1  # two frames, each under libzmq's cap, together over it
    out = {
        "garbage": [b"\x00garbage\xff"],
        "empty frame": [b""],
        "truncated header": [good[0][: len(good[0]) // 2], *good[1:]],
        "huge declared length": [b"\xdb\xff\xff\xff\xff" + b"x" * 8],
        "header not a map": [msgpack.packb([1, 2, 3])],
        "wrong-type version": [msgpack.packb({**header, "v": "2"}), *good[1:]],
        "wrong-type body": [msgpack.packb({**header, "b": "not a map"}), *good[1:]],
        "unknown type": [msgpack.packb({**header, "t": "launch_missiles"}), *good[1:]],
        "other run": frames_of(Codec("someone-else"), "hello", BODIES["hello"]),
        "extra frame": [*good, b"one too many"],
        "oversized": [good[0], b"\0" * half, b"\0" * half],
    }
    if channel == "group":
        out["truncated array"] = [*group[:-1], group[-1][: len(group[-1]) // 2]]
        out["missing array frame"] = group[:-1]
        out["wrong channel (hello)"] = hello
        bad = make_group()
        bad.seqlens = bad.seqlens + 1  # lengths that do not add up to the tokens sent
        out["lengths do not add up"] = frames_of(codec, *bad.to_message())
    else:
        out["wrong channel (group)"] = group
        out["sent the wrong way (grant)"] = frames_of(codec, "grant", BODIES["grant"])
        out["missing key"] = [msgpack.packb({**header, "b": {"worker_id": "x"}})]
        out["extra key"] = [msgpack.packb({**header, "b": {**BODIES["hello"], "admin": True}})]
        out["wrong-type field"] = [msgpack.packb({**header, "b": {**BODIES["hello"], "slots": "many"}})]
    return out


def attack_sockets(env: RunEnv) -> int:
    """Send every hostile message to both bound sockets of the controller; returns how many."""
    codec = Codec(env.run_id)
    ctx = zmq.Context.instance()
    sent = 0
    for channel, kind, port in (("group", zmq.PUSH, env.trajectory_port), ("control", zmq.DEALER, env.control_port)):
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 30_000)
        sock.connect(env.address(port))
        for frames in hostile_frames(codec, channel).values():
            sock.send_multipart(frames)
            sent += 1
        sock.close()  # lingers until all is sent
    return sent


def attack_http(url: str) -> int:
    """Malformed, truncated, wrong-type and oversized bodies on every POST route; returns how many."""
    bodies = {
        "not json": b"{not json",
        "truncated json": b'{"input_ids": [1, 2',
        "wrong top-level type": b"[1, 2, 3]",
        "wrong field type": json.dumps({"input_ids": "abc", "mode": 5, "model_path": 7, "group_name": [],
                                        "new_version": {}, "names": 3}).encode(),
        "oversized": b" " * (MAX_BODY_BYTES + 1),
    }
    sent = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for route in POST_ROUTES:
            for name, body in bodies.items():
                r = client.post(route, content=body, headers={"content-type": "application/json"})
                sent += 1
                assert 400 <= r.status_code < 500, (route, name, r.status_code, r.text[:200])
    return sent


@pytest.mark.timeout(600)
def test_hostile_input_on_every_socket_and_route_during_a_run(tmp_path, tiny_model_dir):
    # A slower server keeps the run going while the attack lasts (it is sent after the first step).
    cfg = write_config(tmp_path, tiny_model_dir, epoch_config({"rollout": {"max_head_offpolicyness": ETA},
                                                               "server": {"debug_step_delay_s": 0.05}}))
    rdir = run_dir(tmp_path)
    with launched(LOCAL, cfg) as launch:
        listening = ListenWatch(launch.proc.pid)
        launch.wait_for_step(rdir, 0)
        env = RunEnv.from_environ(psutil.Process(launch.pids["trainer"]).environ())
        n_zmq = attack_sockets(env)
        n_http = attack_http(env.server_addrs[0])
        # A later step's metrics hold the counts (they are cumulative).
        launch.wait_for(lambda: read_jsonl(rdir / "metrics.jsonl")[-1].get("transport/rejected", 0) >= n_zmq
                        and read_jsonl(rdir / "metrics.jsonl")[-1].get("server/rejected_requests", 0) >= n_http,
                        "the rejections in the metrics", timeout=240)
        assert launch.wait(300) == 0, launch.output
        listening = listening.stop()
    last = read_jsonl(rdir / "metrics.jsonl")[-1]
    print(f"\nhostile input during a run: {n_zmq} ZeroMQ messages, {n_http} HTTP requests; "
          f"transport/rejected {last['transport/rejected']:.0f}, server/rejected_requests "
          f"{last['server/rejected_requests']:.0f}")
    assert last["transport/rejected"] == n_zmq and last["server/rejected_requests"] == n_http
    assert last["rollout/workers"] == 1  # no rogue worker joined
    assert_epoch_trained_once(rdir)
    assert_metrics_sound(rdir, eta=ETA)
    assert set(listening) == {"127.0.0.1"}, listening  # one host: loopback only, torchrun's store included
    assert launch.leftovers() == []
