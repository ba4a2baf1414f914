"""Both directions of `/generate` checked by SGLang's own decoders (its HTTP server's contract gate,
`sglang.api.v1.api_types`): every body our client sends, resubmissions after an abort included, is a
valid SGLang `GenerateRequest`; every response our embedded server returns is a valid `GenerateResponse`."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from aiohttp import web

from areal_lite.inference.client import InferenceClient, SamplingParams
from areal_lite.utils.net import free_port


async def _client_bodies() -> list[dict]:
    """Bodies the client sends to a server that aborts the first request after 2 tokens (a weight swap)."""
    bodies: list[dict] = []

    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        first = len(bodies) == 1
        n = 2 if first else body["sampling_params"]["max_new_tokens"]
        finish = {"type": "abort", "message": "paused"} if first else {"type": "length", "length": n}
        return web.json_response({"output_ids": [5] * n, "meta_info": {
            "id": body["rid"], "finish_reason": finish, "weight_version": "3" if first else "4",
            "output_token_logprobs": [[-0.5, 5, None]] * n, "prompt_tokens": len(body["input_ids"]),
            "completion_tokens": n}})

    app = web.Application()
    app.router.add_post("/generate", generate)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with InferenceClient([f"http://127.0.0.1:{port}"]) as client:
            for sampling in (SamplingParams(max_new_tokens=6, temperature=0.0, min_new_tokens=4, stop_token_ids=[2, 3]),
                             SamplingParams(max_new_tokens=3, temperature=1.0, top_p=0.9, top_k=-1)):
                await client.agenerate([1, 2, 3], sampling)
    finally:
        await runner.cleanup()
    return bodies


@pytest.mark.timeout(120)
def test_client_requests_pass_sglangs_generate_contract(sglang_run):
    bodies = asyncio.run(_client_bodies())
    assert len(bodies) == 3  # the aborted request was resubmitted with its partial output appended
    assert bodies[1]["input_ids"] == [1, 2, 3, 5, 5] and bodies[1]["sampling_params"]["min_new_tokens"] == 2
    errors = sglang_run("decode-generate", bodies)["errors"]
    assert errors == [None] * len(bodies), list(zip(errors, map(json.dumps, bodies)))
    # The decoder is not a rubber stamp: it refuses what SGLang refuses.
    bad = sglang_run("decode-generate", [{**bodies[0], "sampling_params": {"temperature": "hot"}}])["errors"]
    assert bad[0] is not None


@pytest.mark.timeout(120)
def test_embedded_server_responses_pass_sglangs_contract(sglang_run, embedded_server):
    responses = []
    for body in (
        {"input_ids": [7, 8, 9], "return_logprob": True, "sampling_params": {"max_new_tokens": 5, "temperature": 0}},
        {"input_ids": [7, 8], "sampling_params": {"max_new_tokens": 3, "ignore_eos": True}},
        {"text": "12+3=", "return_logprob": True, "return_text_in_logprobs": True,
         "sampling_params": {"max_new_tokens": 4, "top_k": 5, "stop_token_ids": [1]}},
    ):
        r = httpx.post(f"{embedded_server.url}/generate", json=body, timeout=60)
        assert r.status_code == 200, r.text
        responses.append(r.json())
    errors = sglang_run("decode-response", responses)["errors"]
    assert errors == [None] * len(responses), list(zip(errors, responses))
