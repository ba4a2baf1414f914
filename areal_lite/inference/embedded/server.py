"""The embedded engine behind SGLang's HTTP API (FastAPI; run by `launch_server`).

Endpoints and response shapes follow SGLang 0.5.x `sglang/srt/entrypoints/http_server.py`:
`/generate`, `/health`, `/health_generate`, `/model_info` (`/get_model_info`), `/server_info`
(`/get_server_info`), `/flush_cache`, `/abort_request`, `/pause_generation`, `/continue_generation`,
`/update_weights_from_disk`, `/init_weights_update_group`, `/destroy_weights_update_group`,
`/update_weights_from_distributed`, `/update_weight_version`, `/begin_weight_update`,
`/end_weight_update`. Bad requests get 400 with `{"error": {"message", "field", ...}}` naming the field.

With an API key every endpoint except `/health*`, `/ready*`, `/metrics*` needs `Authorization: Bearer
<key>` (SGLang's rule for its normal and admin-optional endpoints); refusals are 401 `{"error": "Unauthorized"}`.

The handlers only validate and translate: generation and every weight or pause change are queued to
the engine thread (`engine.Engine`), which runs them between steps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from areal_lite.inference.embedded import protocol as P
from areal_lite.inference.embedded.engine import Engine, EngineError, GenerationOutput, SamplingSpec
from areal_lite.inference.embedded.weights import WeightLoadError

logger = logging.getLogger("areal_lite.server")

OPEN_PATH_PREFIXES = ("/health", "/ready", "/metrics")
# The largest request body read (a full-context prompt as JSON ids is well under 1 MiB per 100k tokens);
# a bigger one is refused with 413 before it is held in memory.
MAX_BODY_BYTES = 32 << 20


class BodyTooLarge(P.RequestError):
    status = 413


class _ServerState:
    def __init__(self, engine: Engine, server_args: dict[str, Any], allowed_weight_dir: str | None):
        self.engine = engine
        self.server_args = server_args
        self.allowed_weight_dir = os.path.realpath(allowed_weight_dir) if allowed_weight_dir else None
        self.rejected_requests = 0
        self.unauthorized_requests = 0
        self.started = time.time()
        # SGLang's weight-update session: distributed updates only between begin and end (one open at a time).
        self.weight_update_session = False


def _bad(state: _ServerState, err: P.RequestError) -> JSONResponse:
    status = getattr(err, "status", 400)
    state.rejected_requests += 1
    logger.info("%d %s", status, err)
    body = err.to_json()
    body["error"]["code"] = status
    return JSONResponse(body, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or BodyTooLarge once it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body: {declared} bytes is more than the limit of {limit}", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body: more than the limit of {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _success(ok: bool, message: str, **extra) -> JSONResponse:
    return JSONResponse({"success": ok, "message": message, **extra}, status_code=200 if ok else 400)


def _resolve_future(fut: asyncio.Future, out: GenerationOutput) -> None:
    if not fut.done():
        fut.set_result(out)


def build_sampling_spec(engine: Engine, req: P.GenerateReqInput, prompt_len: int) -> SamplingSpec:
    """Engine sampling parameters for a validated request; RequestError when it cannot fit the context."""
    sp = req.sampling_params or P.SamplingParams()
    room = engine.context_length - prompt_len
    if room <= 0:
        raise P.RequestError(
            f"input_ids: prompt of {prompt_len} tokens leaves no room in the context length {engine.context_length}",
            "input_ids",
        )
    max_new = room if sp.max_new_tokens is None else sp.max_new_tokens
    if max_new > room:
        raise P.RequestError(
            f"sampling_params.max_new_tokens: prompt ({prompt_len}) + max_new_tokens ({max_new}) exceeds the "
            f"context length {engine.context_length}",
            "sampling_params.max_new_tokens",
        )
    stop = frozenset(sp.stop_token_ids or ())
    if any(not 0 <= t < engine.vocab_size for t in stop):
        raise P.RequestError("sampling_params.stop_token_ids: token id outside the vocabulary", "sampling_params.stop_token_ids")
    return SamplingSpec(
        max_new_tokens=max_new,
        temperature=1.0 if sp.temperature is None else sp.temperature,
        top_p=1.0 if sp.top_p is None else sp.top_p,
        top_k=-1 if sp.top_k is None else sp.top_k,
        min_new_tokens=sp.min_new_tokens or 0,
        stop_token_ids=stop,
        ignore_eos=bool(sp.ignore_eos),
    )


def format_generate_response(engine: Engine, req: P.GenerateReqInput, out: GenerationOutput) -> dict[str, Any]:
    """SGLang's non-streaming `/generate` body: text (when a tokenizer is loaded), output_ids, meta_info."""
    meta: dict[str, Any] = {
        "id": out.rid,
        "finish_reason": out.finish_reason,
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": len(out.output_ids),
        "cached_tokens": 0,
        "weight_version": out.weight_version,
        "weight_versions": out.weight_versions,
        "e2e_latency": out.e2e_latency,
    }
    tok = engine.tokenizer
    if req.return_logprob:
        if req.return_text_in_logprobs and tok is not None:
            texts = [tok.decode([t]) for t in out.output_ids]
        else:
            texts = [None] * len(out.output_ids)
        meta["output_token_logprobs"] = [list(x) for x in zip(out.output_logprobs, out.output_ids, texts)]
    body: dict[str, Any] = {}
    if tok is not None:
        skip = True if req.sampling_params is None else req.sampling_params.skip_special_tokens is not False
        body["text"] = tok.decode(out.output_ids, skip_special_tokens=skip)
    body["output_ids"] = out.output_ids
    body["meta_info"] = meta
    return body


def _add_api_key_middleware(app: FastAPI, api_key: str, state: _ServerState) -> None:
    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        path = request.url.path
        if request.method == "OPTIONS" or path.startswith(OPEN_PATH_PREFIXES):
            return await call_next(request)
        got = request.headers.get("authorization", "").encode()
        scheme, _, token = got.partition(b" ")
        if scheme.lower() != b"bearer" or not secrets.compare_digest(b"Bearer " + token, expected):
            state.unauthorized_requests += 1
            client = request.client.host if request.client else "?"
            # NOTE: never log the header: it may hold a near-miss of the real key.
            logger.warning("401 %s %s from %s: missing or wrong API key", request.method, path, client)
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return await call_next(request)


def build_app(
    engine: Engine,
    *,
    api_key: str | None = None,
    allowed_weight_dir: str | None = None,
    server_args: dict[str, Any] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app serving `engine` (already started); bodies over `max_body_bytes` get 413."""
    app = FastAPI(title="areal_lite embedded inference server", docs_url=None, redoc_url=None, openapi_url=None)
    state = _ServerState(engine, dict(server_args or {}), allowed_weight_dir)
    app.state.areal = state
    if api_key:
        _add_api_key_middleware(app, api_key, state)

    async def parse(model, request: Request):
        return P.parse_request(model, await _read_body(request, max_body_bytes))

    for add_routes in (_generation_routes, _info_routes, _control_routes, _weight_routes, _group_routes):
        add_routes(app, state, parse)

    @app.exception_handler(P.RequestError)
    async def reject(request: Request, err: P.RequestError):  # every endpoint's malformed input: 4xx, counted
        return _bad(state, err)

    return app


def _generation_routes(app: FastAPI, state: _ServerState, parse) -> None:
    """`/generate`."""
    engine = state.engine

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request):
        req = await parse(P.GenerateReqInput, request)
        if req.input_ids is not None:
            ids = req.input_ids
        elif engine.tokenizer is None:
            raise P.RequestError("text: the server runs with --skip-tokenizer-init; send input_ids", "text")
        else:
            ids = engine.tokenizer.encode(req.text)
        if not ids:
            field = "input_ids" if req.input_ids is not None else "text"
            raise P.RequestError(f"{field}: empty input", field)
        if min(ids) < 0 or max(ids) >= engine.vocab_size:
            raise P.RequestError(f"input_ids: token id outside the vocabulary [0, {engine.vocab_size})", "input_ids")
        spec = build_sampling_spec(engine, req, len(ids))
        rid = req.rid or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        try:
            engine.submit(rid, ids, spec, lambda out: loop.call_soon_threadsafe(_resolve_future, fut, out))
        except ValueError as e:
            raise P.RequestError(f"rid: {e}", "rid") from None
        except EngineError as e:
            return JSONResponse({"error": {"message": str(e), "code": 503}}, status_code=503)
        try:
            out = await fut
        except asyncio.CancelledError:
            engine.abort(rid)  # the client went away: free the slot
            raise
        return JSONResponse(format_generate_response(engine, req, out))


def _info_routes(app: FastAPI, state: _ServerState, parse) -> None:
    """`/health*`, `/model_info`, `/server_info` (and their deprecated names)."""
    engine = state.engine

    @app.get("/health")
    @app.get("/health_generate")
    async def health():
        return Response(status_code=200 if engine.alive else 503)

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info():
        cfg = engine.model.config
        return {
            "model_path": engine.model_path,
            "tokenizer_path": None if engine.tokenizer is None else engine.config.model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": engine.weight_version,
            "model_type": getattr(cfg, "model_type", None),
            "architectures": getattr(cfg, "architectures", None),
        }

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info():
        stats = engine.stats()
        return {
            **state.server_args,
            **stats,
            "context_length": engine.context_length,
            "rejected_requests": state.rejected_requests,
            "unauthorized_requests": state.unauthorized_requests,
            "startup_time": state.started,
            "version": "areal_lite",
            "internal_states": [{"weight_version": stats["weight_version"]}],
        }


def _control_routes(app: FastAPI, state: _ServerState, parse) -> None:
    """Cache, abort, pause and continue."""
    engine = state.engine

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache():
        try:
            await asyncio.wrap_future(engine.flush_cache())
        except RuntimeError as e:
            return PlainTextResponse(f"{e}\n", status_code=400)
        return PlainTextResponse("Cache flushed.\n")

    @app.post("/abort_request")
    async def abort_request(request: Request):
        req = await parse(P.AbortReq, request)
        await asyncio.wrap_future(engine.abort(req.rid, abort_all=req.abort_all))
        return Response(status_code=200)

    @app.post("/pause_generation")
    async def pause_generation(request: Request):
        req = await parse(P.PauseGenerationReqInput, request)
        await asyncio.wrap_future(engine.pause(req.mode))
        return {"message": "Generation paused successfully.", "status": "ok"}

    @app.post("/continue_generation")
    async def continue_generation(request: Request):
        await parse(P.ContinueGenerationReqInput, request)
        await asyncio.wrap_future(engine.resume())
        return {"message": "Generation continued successfully.", "status": "ok"}


def _weight_routes(app: FastAPI, state: _ServerState, parse) -> None:
    """Weights from disk, the version label, and SGLang's begin/end weight-update session."""
    engine = state.engine

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request):
        req = await parse(P.UpdateWeightFromDiskReqInput, request)
        path = _checked_weight_path(state, req.model_path)
        try:
            n = await asyncio.wrap_future(
                engine.update_weights_from_disk(path, weight_version=req.weight_version, abort_all_requests=req.abort_all_requests)
            )
        except (WeightLoadError, OSError, ValueError, RuntimeError) as e:
            logger.warning("update_weights_from_disk(%s) failed: %s", path, e)
            return _success(False, f"Failed to update weights: {e}", num_paused_requests=0)
        message = f"Succeeded to update model weights ({n} tensors)."
        if req.weight_version is not None:
            message += f" Weight version updated to {req.weight_version}."
        logger.info("weights loaded from %s, version %s", path, engine.weight_version)
        return _success(True, message, num_paused_requests=0)

    @app.post("/update_weight_version")
    async def update_weight_version(request: Request):
        req = await parse(P.UpdateWeightVersionReqInput, request)
        await asyncio.wrap_future(engine.update_weight_version(req.new_version, abort_all_requests=req.abort_all_requests))
        return _success(True, f"Weight version updated to {req.new_version}", new_version=req.new_version)

    @app.post("/begin_weight_update")
    async def begin_weight_update(request: Request):
        await parse(P.BeginWeightUpdateReqInput, request)
        if state.weight_update_session:
            return _success(False, "a weight-update session is already open; call end_weight_update() first")
        state.weight_update_session = True
        return _success(True, "Success")

    @app.post("/end_weight_update")
    async def end_weight_update(request: Request):
        await parse(P.EndWeightUpdateReqInput, request)
        if not state.weight_update_session:
            return _success(False, "no weight-update session is open; call begin_weight_update() first")
        state.weight_update_session = False
        return _success(True, "Success")


def _group_routes(app: FastAPI, state: _ServerState, parse) -> None:
    """The weight-update group: join, leave, receive a bucket."""
    engine = state.engine

    @app.post("/init_weights_update_group")
    async def init_weights_update_group(request: Request):
        req = await parse(P.InitWeightsUpdateGroupReqInput, request)
        try:
            # The rendezvous blocks until every member joins: keep it off the event loop and the engine.
            await asyncio.to_thread(
                engine.init_weights_update_group,
                master_address=req.master_address,
                master_port=req.master_port,
                rank_offset=req.rank_offset,
                world_size=req.world_size,
                group_name=req.group_name,
                backend=req.backend,
            )
        except Exception as e:  # a failed rendezvous is reported, the server keeps serving
            logger.warning("init_weights_update_group failed: %s", e)
            return _success(False, f"Failed to initialize custom process group: {e}.")
        return _success(True, "Succeeded to initialize custom process group.")

    @app.post("/destroy_weights_update_group")
    async def destroy_weights_update_group(request: Request):
        req = await parse(P.DestroyWeightsUpdateGroupReqInput, request)
        ok = await asyncio.to_thread(engine.destroy_weights_update_group, req.group_name)
        return _success(ok, "Succeeded to destroy custom process group." if ok else "The group to be destroyed does not exist.")

    @app.post("/update_weights_from_distributed")
    async def update_weights_from_distributed(request: Request):
        req = await parse(P.UpdateWeightsFromDistributedReqInput, request)
        if not state.weight_update_session:
            return _success(False, "update_weights_from_distributed must run between begin_weight_update() "
                                   "and end_weight_update()")
        try:
            await asyncio.wrap_future(
                engine.update_weights_from_distributed(
                    req.names,
                    req.dtypes,
                    req.shapes,
                    group_name=req.group_name,
                    weight_version=req.weight_version,
                    abort_all_requests=req.abort_all_requests,
                    flattened=req.load_format == "flattened_bucket",
                )
            )
        except Exception as e:  # the group may be broken; report and keep serving
            logger.warning("update_weights_from_distributed failed: %s", e)
            return _success(False, f"Failed to update parameter online: {e}")
        message = "Succeeded to update parameter online."
        if req.weight_version is not None:
            message += f" Weight version updated to {req.weight_version}."
        return _success(True, message)


def _checked_weight_path(state: _ServerState, model_path: str) -> str:
    """The real path of a weight directory; RequestError outside --allowed-weight-dir or when absent."""
    real = os.path.realpath(model_path)
    root = state.allowed_weight_dir
    if root is not None and os.path.commonpath([root, real]) != root:
        raise P.RequestError(f"model_path: {model_path!r} is outside the allowed weight directory", "model_path")
    if not os.path.isdir(real):
        raise P.RequestError(f"model_path: {model_path!r} is not a directory", "model_path")
    return real
