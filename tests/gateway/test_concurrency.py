"""200 concurrent uploads against the embedded backend: all answered, nothing left on disk."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from gateway_helpers import FAMILY, scores, wait_until_no_uploads

CONCURRENT = 200


def test_200_concurrent_requests_all_succeed(embedded_gateway, clips):
    uploads = [clips.av, clips.audio, clips.video]
    payloads = [(path.name, path.read_bytes()) for path in uploads]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=CONCURRENT)
        async with httpx.AsyncClient(base_url=embedded_gateway.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/classify", files={"file": payloads[i % 3]}) for i in range(CONCURRENT))
            )

    began = time.monotonic()
    responses = asyncio.run(run())
    elapsed = time.monotonic() - began
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * CONCURRENT, {s: statuses.count(s) for s in set(statuses)}
    names = [r.json()["model"]["name"] for r in responses]
    assert names == [f"{FAMILY}_{('av', 'audio', 'video')[i % 3]}" for i in range(CONCURRENT)]
    # Identical uploads get the same answers, however they were batched: equal up to float
    # rounding, not bit for bit, because a different batch composition may change onnxruntime's
    # GEMM blocking in the last bits.
    for i in range(3, CONCURRENT):
        expected = scores(responses[i % 3].json()["predictions"])
        assert scores(responses[i].json()["predictions"]) == pytest.approx(expected, abs=1e-5)
    assert len({r.json()["request_id"] for r in responses}) == CONCURRENT
    assert wait_until_no_uploads(embedded_gateway) == []
    print(f"{CONCURRENT} concurrent requests in {elapsed:.2f} s")
