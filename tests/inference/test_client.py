"""The inference client against real embedded servers: routing, failover, interruptible generation."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

import pytest

from areal_lite.inference.client import GenerationError, InferenceClient, SamplingParams, ServerAdmin
from areal_lite.inference.embedded.local_server import start_local_server
from tests.inference.conftest import SERVER_ARGS
from tests.inference.helpers import generate_greedy

PROMPT = list(range(10, 30))


def _finished(url: str) -> int:
    return int(ServerAdmin([url]).server_info()[0]["num_finished_reqs"])


@pytest.fixture
def two_servers(tiny_model_dir, tmp_path):
    with start_local_server(tiny_model_dir, extra_args=SERVER_ARGS, log_path=tmp_path / "a.log") as a, \
            start_local_server(tiny_model_dir, extra_args=SERVER_ARGS, log_path=tmp_path / "b.log") as b:
        yield a, b


@pytest.mark.timeout(120)
def test_two_servers_share_load(two_servers):
    a, b = two_servers
    before = {s.url: _finished(s.url) for s in (a, b)}

    async def run():
        async with InferenceClient([a.url, b.url]) as client:
            sp = SamplingParams(max_new_tokens=24, temperature=1.0, ignore_eos=True)
            return await asyncio.gather(*(client.agenerate(PROMPT, sp) for _ in range(16)))

    results = asyncio.run(run())
    assert all(len(r.output_ids) == 24 and r.finish_reason == "length" for r in results)
    served = {s.url: _finished(s.url) - before[s.url] for s in (a, b)}
    assert sum(served.values()) == 16
    assert min(served.values()) >= 4, served  # least-loaded routing spreads concurrent requests


@pytest.mark.timeout(180)
def test_killed_server_is_routed_around_and_probed_back(tiny_model_dir, tmp_path):
    a = start_local_server(tiny_model_dir, extra_args=SERVER_ARGS, log_path=tmp_path / "a.log")
    b = start_local_server(tiny_model_dir, extra_args=SERVER_ARGS, log_path=tmp_path / "b.log")
    port_b = b.port
    started = [a, b]
    try:
        os.kill(b.proc.pid, signal.SIGKILL)
        b.proc.wait(timeout=10)

        async def run(client, n):
            sp = SamplingParams(max_new_tokens=8, temperature=1.0, ignore_eos=True)
            return await asyncio.gather(*(client.agenerate(PROMPT, sp) for _ in range(n)))

        async def scenario():
            client = InferenceClient([a.url, b.url], probe_interval=0.5, retries=3)
            try:
                first = await run(client, 8)
                dead = next(s for s in client.servers if s.url == b.url)
                assert not dead.healthy and client.stats["server_failures"] >= 1
                # The server comes back on the same port: a /health probe returns it to rotation.
                b2 = await asyncio.to_thread(
                    start_local_server, tiny_model_dir, port=port_b, extra_args=SERVER_ARGS,
                    log_path=tmp_path / "b2.log",
                )
                started.append(b2)
                deadline = time.monotonic() + 30
                while not dead.healthy and time.monotonic() < deadline:
                    await run(client, 2)
                    await asyncio.sleep(0.3)
                assert dead.healthy
                second = await run(client, 8)
                return first, second
            finally:
                await client.aclose()

        first, second = asyncio.run(scenario())
        assert all(len(r.output_ids) == 8 for r in first + second)
        assert {r.server for r in first} == {a.url}
        assert b.url in {r.server for r in second}
    finally:
        for server in started:
            server.stop()


class _HangingServer:
    """Accepts TCP connections and never answers (a hung server)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self._stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.timeout(120)
def test_hanging_server_times_out_and_leaves_rotation(embedded_server):
    hung = _HangingServer()
    try:
        async def run():
            client = InferenceClient([hung.url, embedded_server.url], request_timeout=1.0, probe_interval=60)
            try:
                sp = SamplingParams(max_new_tokens=8, temperature=1.0, ignore_eos=True)
                results = await asyncio.gather(*(client.agenerate(PROMPT, sp) for _ in range(6)))
                return results, client
            finally:
                await client.aclose()

        results, client = asyncio.run(run())
        assert all(len(r.output_ids) == 8 and r.server == embedded_server.url for r in results)
        assert not next(s for s in client.servers if s.url == hung.url).healthy
    finally:
        hung.close()


@pytest.mark.timeout(120)
def test_all_servers_down_raises_after_retries(tmp_path):
    async def run():
        client = InferenceClient(["http://127.0.0.1:9"], retries=1, request_timeout=2.0, probe_interval=0.2)
        try:
            await client.agenerate(PROMPT, SamplingParams(max_new_tokens=4))
        finally:
            await client.aclose()

    with pytest.raises(GenerationError):
        asyncio.run(run())


@pytest.mark.timeout(120)
def test_bad_request_is_not_retried(embedded_server):
    async def run():
        async with InferenceClient([embedded_server.url]) as client:
            await client.agenerate([], SamplingParams(max_new_tokens=4))  # empty input: HTTP 400

    with pytest.raises(ValueError, match="rejected the request"):
        asyncio.run(run())


@pytest.mark.timeout(180)
def test_interrupted_generation_equals_uninterrupted(tiny_model_dir, tmp_path, ref_model):
    """Pause mid-generation (a weight swap): the client resubmits prompt + partial output with the
    remaining budget after continue; greedy output equals one uninterrupted request, and the
    versions show the swap."""
    n = 160
    with start_local_server(tiny_model_dir, extra_args=SERVER_ARGS, log_path=tmp_path / "s.log") as server:
        admin = ServerAdmin([server.url])

        async def run():
            async with InferenceClient([server.url]) as client:
                sp = SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)
                task = asyncio.create_task(client.agenerate(PROMPT, sp))
                # Wait until the request is decoding, then pause, bump the version, continue.
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    info = (await asyncio.to_thread(admin.server_info))[0]
                    if info["num_running_reqs"] > 0:
                        break
                    await asyncio.sleep(0.005)
                await asyncio.to_thread(admin.pause)
                await asyncio.to_thread(admin.call_all, "/update_weight_version", {"new_version": "7"})
                await asyncio.to_thread(admin.resume)
                return await task

        result = asyncio.run(run())
    assert result.finish_reason == "length" and len(result.output_ids) == n
    assert result.num_interruptions >= 1
    assert result.output_ids == generate_greedy(ref_model, PROMPT, n)
    assert len(result.logprobs) == len(result.versions) == n
    assert result.versions[0] in (0, 7) and result.versions[-1] == 7
    assert sorted(set(result.versions)) in ([0, 7], [7]) and result.versions == sorted(result.versions)
