"""One async client for every inference server that speaks the SGLang HTTP API.

Used the same way against SGLang (GPU) and the embedded engine (CPU):
- `InferenceClient.agenerate` sends `/generate` requests to the least-loaded healthy server, keeps
  a request's continuations on that server, retries a failed request elsewhere, and takes a server
  that fails or hangs out of rotation until a `/health` probe brings it back.
- Interruptible generation: when the trainer pauses the servers to swap weights, in-flight requests
  come back with `finish_reason.type == "abort"` and their partial output. The client resubmits at
  once with prompt + tokens so far and the remaining budget; the paused server holds the request
  until `/continue_generation`. Tokens, log-probs and per-token versions are concatenated, so the
  result equals one uninterrupted request except for the versions.
- `ServerAdmin` holds the calls the trainer and launchers make: pause/continue, weight updates,
  server info, health.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import aiohttp

logger = logging.getLogger("areal_lite.client")

# The fields this client sends; the SGLang contract test checks each against SGLang's dataclasses.
CLIENT_GENERATE_FIELDS = ("input_ids", "sampling_params", "return_logprob", "rid")
CLIENT_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "min_new_tokens",
    "stop_token_ids",
    "ignore_eos",
)
# A server that aborts this many times in a row without producing a token is treated as failing.
MAX_EMPTY_ABORTS = 1000


class GenerationError(RuntimeError):
    """A request failed on every server it was tried on."""


@dataclass
class GenerationResult:
    output_ids: list[int]
    logprobs: list[float]
    versions: list[int]  # weight version that produced each output token
    finish_reason: str  # "stop" | "length"
    prompt_len: int
    num_interruptions: int = 0
    latency_s: float = 0.0
    server: str = ""


@dataclass
class _Server:
    url: str
    inflight: int = 0
    healthy: bool = True
    next_probe: float = 0.0
    failures: int = 0
    probing: bool = False


@dataclass
class SamplingParams:
    """The sampling fields we send (names as SGLang's `SamplingParams`)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_new_tokens: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def to_request(self, max_new_tokens: int | None = None) -> dict[str, Any]:
        params = {
            "max_new_tokens": self.max_new_tokens if max_new_tokens is None else max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_new_tokens": self.min_new_tokens,
            "ignore_eos": self.ignore_eos,
        }
        if self.stop_token_ids:
            params["stop_token_ids"] = list(self.stop_token_ids)
        return params


def parse_version(value: Any) -> int:
    """SGLang reports `weight_version` as a string; areal_lite's versions are integers ('default' → 0)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class InferenceClient:
    def __init__(
        self,
        addrs: Sequence[str],
        *,
        api_key: str | None = None,
        request_timeout: float = 600.0,
        retries: int = 3,
        probe_interval: float = 2.0,
        connect_timeout: float = 10.0,
    ):
        if not addrs:
            raise ValueError("no inference server addresses")
        self.servers = [_Server(a.rstrip("/")) for a in addrs]
        self.api_key = api_key
        self.request_timeout = request_timeout
        self.retries = retries
        self.probe_interval = probe_interval
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._healthy_event: asyncio.Event | None = None
        self._rr = itertools.count()
        self.stats = {"requests": 0, "interruptions": 0, "retries": 0, "server_failures": 0}

    async def __aenter__(self) -> "InferenceClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=connector, headers=_auth_headers(self.api_key)
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    # ------------------------------------------------------------------ routing

    async def _pick(self, exclude: set[str]) -> _Server:
        """The healthy server with the fewest requests in flight; waits while none is healthy."""
        deadline = time.monotonic() + self.request_timeout
        while True:
            now = time.monotonic()
            for s in self.servers:
                if not s.healthy and not s.probing and now >= s.next_probe:
                    s.probing = True
                    asyncio.get_running_loop().create_task(self._probe(s))
            candidates = [s for s in self.servers if s.healthy and s.url not in exclude]
            if not candidates:
                candidates = [s for s in self.servers if s.healthy]
            if candidates:
                offset = next(self._rr)
                n = len(candidates)
                # Ties go round-robin so that equal servers share load from the first request.
                return min(
                    (candidates[(offset + i) % n] for i in range(n)), key=lambda s: s.inflight
                )
            if now >= deadline:
                raise GenerationError("no healthy inference server")
            if self._healthy_event is None:
                self._healthy_event = asyncio.Event()
            self._healthy_event.clear()
            wait = min(self.probe_interval, max(0.0, deadline - now))
            try:
                await asyncio.wait_for(self._healthy_event.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass

    async def _probe(self, s: _Server) -> None:
        try:
            async with self._get_session().get(
                f"{s.url}/health", timeout=aiohttp.ClientTimeout(total=self.connect_timeout)
            ) as resp:
                ok = resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            ok = False
        s.probing = False
        if ok:
            s.healthy = True
            s.failures = 0
            logger.info("server %s is back in rotation", s.url)
            if self._healthy_event is not None:
                self._healthy_event.set()
        else:
            s.next_probe = time.monotonic() + self.probe_interval

    def _mark_failed(self, s: _Server, reason: str) -> None:
        self.stats["server_failures"] += 1
        s.failures += 1
        if s.healthy:
            logger.warning("server %s taken out of rotation: %s", s.url, reason)
        s.healthy = False
        s.next_probe = time.monotonic() + self.probe_interval

    # ------------------------------------------------------------------ generation

    async def agenerate(
        self, input_ids: Sequence[int], sampling: SamplingParams, *, rid: str | None = None
    ) -> GenerationResult:
        """Generate one answer for `input_ids`, resubmitting across pauses and server failures."""
        rid = rid or uuid.uuid4().hex
        prompt = list(input_ids)
        out_ids: list[int] = []
        logprobs: list[float] = []
        versions: list[int] = []
        interruptions = 0
        empty_aborts = 0
        attempts = 0
        tried: set[str] = set()
        server = await self._pick(tried)
        t0 = time.monotonic()
        self.stats["requests"] += 1
        while True:
            remaining = sampling.max_new_tokens - len(out_ids)
            if remaining <= 0:
                return self._result(prompt, out_ids, logprobs, versions, "length", interruptions, t0, server)
            payload = {
                "input_ids": prompt + out_ids,
                "sampling_params": sampling.to_request(max_new_tokens=remaining),
                "return_logprob": True,
                "rid": f"{rid}-{interruptions}-{attempts}",
            }
            if out_ids and sampling.min_new_tokens:
                payload["sampling_params"]["min_new_tokens"] = max(0, sampling.min_new_tokens - len(out_ids))
            try:
                meta, new_ids = await self._post_generate(server, payload)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, GenerationError) as e:
                attempts += 1
                self.stats["retries"] += 1
                self._mark_failed(server, f"{type(e).__name__}: {e}")
                if attempts > self.retries:
                    raise GenerationError(f"request {rid} failed {attempts} times; last on {server.url}: {e}") from e
                tried.add(server.url)
                server = await self._pick(tried)
                continue
            version = parse_version(meta.get("weight_version"))
            token_logprobs = meta.get("output_token_logprobs") or []
            if len(token_logprobs) != len(new_ids):
                raise GenerationError(
                    f"server {server.url} returned {len(new_ids)} tokens but {len(token_logprobs)} logprobs"
                )
            out_ids.extend(new_ids)
            logprobs.extend(float(lp[0]) for lp in token_logprobs)
            versions.extend([version] * len(new_ids))
            finish = (meta.get("finish_reason") or {}).get("type", "stop")
            if finish != "abort":
                reason = "length" if finish == "length" else "stop"
                return self._result(prompt, out_ids, logprobs, versions, reason, interruptions, t0, server)
            # Paused for a weight swap: continue from here under the new weights.
            interruptions += 1
            self.stats["interruptions"] += 1
            empty_aborts = empty_aborts + 1 if not new_ids else 0
            if empty_aborts >= MAX_EMPTY_ABORTS:
                raise GenerationError(f"server {server.url} aborted request {rid} {empty_aborts} times in a row")

    async def _post_generate(self, server: _Server, payload: dict) -> tuple[dict, list[int]]:
        server.inflight += 1
        try:
            async with self._get_session().post(
                f"{server.url}/generate",
                json=payload,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            ) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    if resp.status == 400:
                        # Our request is wrong: retrying elsewhere cannot help.
                        raise ValueError(f"server {server.url} rejected the request: {text}")
                    raise GenerationError(f"HTTP {resp.status} from {server.url}: {text}")
                body = await resp.json()
        finally:
            server.inflight -= 1
        return body["meta_info"], list(body["output_ids"])

    @staticmethod
    def _result(prompt, out_ids, logprobs, versions, reason, interruptions, t0, server) -> GenerationResult:
        return GenerationResult(
            output_ids=out_ids,
            logprobs=logprobs,
            versions=versions,
            finish_reason=reason,
            prompt_len=len(prompt),
            num_interruptions=interruptions,
            latency_s=time.monotonic() - t0,
            server=server.url,
        )


class ServerAdmin:
    """Control-plane calls to a set of servers (all at once), for the trainer and the launchers."""

    def __init__(self, addrs: Sequence[str], *, api_key: str | None = None, timeout: float = 300.0,
                 skip_unreachable: bool = False):
        self.addrs = [a.rstrip("/") for a in addrs]
        self.api_key = api_key
        self.timeout = timeout
        # A server that refuses the connection (down, being restarted by the launcher) is logged and
        # skipped instead of failing the call; its result is None.
        self.skip_unreachable = skip_unreachable

    async def _call(self, session: aiohttp.ClientSession, method: str, url: str, payload: dict | None) -> Any:
        async with session.request(method, url, json=payload) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"{method} {url} -> HTTP {resp.status}: {text[:300]}")
            if not text:
                return None
            try:
                return await resp.json(content_type=None)
            except ValueError:
                return text

    async def acall_all(self, path: str, payload: dict | None = None, *, method: str = "POST") -> list[Any]:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout, headers=_auth_headers(self.api_key)) as session:
            results = await asyncio.gather(
                *(self._call(session, method, f"{a}{path}", payload) for a in self.addrs), return_exceptions=True
            )
        for addr, r in zip(self.addrs, results):
            if isinstance(r, aiohttp.ClientConnectionError) and self.skip_unreachable:
                logger.warning("%s%s skipped: server unreachable (%s)", addr, path, type(r).__name__)
            elif isinstance(r, BaseException):
                raise r
        return [None if isinstance(r, BaseException) else r for r in results]

    def call_all(self, path: str, payload: dict | None = None, *, method: str = "POST") -> list[Any]:
        """Synchronous `acall_all` for threads without an event loop (the trainer)."""
        return asyncio.run(self.acall_all(path, payload, method=method))

    def pause(self) -> None:
        self.call_all("/pause_generation", {"mode": "abort"})

    def resume(self) -> None:
        self.call_all("/continue_generation", {})

    def update_weights_from_disk(self, path: str, version: int) -> list[Any]:
        return self.call_all(
            "/update_weights_from_disk",
            {"model_path": path, "weight_version": str(version), "abort_all_requests": False},
        )

    def weight_versions(self) -> list[int | None]:
        """The weight version each server serves (SGLang's `/model_info`); None where unreachable
        (with `skip_unreachable`)."""
        return [None if info is None else parse_version(info.get("weight_version"))
                for info in self.call_all("/model_info", method="GET")]

    def server_info(self) -> list[dict]:
        return self.call_all("/server_info", method="GET")  # /get_server_info is deprecated in SGLang

    def healthy(self) -> list[bool]:
        async def probe() -> list[bool]:
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout, headers=_auth_headers(self.api_key)) as s:

                async def one(a: str) -> bool:
                    try:
                        async with s.get(f"{a}/health") as r:
                            return r.status == 200
                    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                        return False

                return await asyncio.gather(*(one(a) for a in self.addrs))

        return asyncio.run(probe())
