"""The gateway on the Triton backend with the real tritonserver: routes, answers equal to the
embedded backend's, and 503s (not hangs) while Triton is killed, with recovery on its own."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from gateway_helpers import FAMILY, NUM_LABELS, assert_error, post_clip, scores, wait_until_no_uploads, wait_until_ready

from avserve.triton import LocalTriton


def start_triton(repository, grpc_port: int = 0) -> LocalTriton:
    return LocalTriton(repository, http_port=0, grpc_port=grpc_port, metrics_port=0, startup_timeout=120).start()


@pytest.fixture(scope="module")
def triton_stack(zorro_repository, gateway_factory):
    repository, _ = zorro_repository
    triton = start_triton(repository)
    gateway = wait_until_ready(gateway_factory(backend="triton", triton_url=triton.grpc_url, request_timeout_seconds=20))
    state = {"triton": triton}
    yield gateway, state, repository
    state["triton"].stop()


def test_triton_gateway_is_ready_and_lists_the_models(triton_stack):
    gateway, _, _ = triton_stack
    with gateway.client() as client:
        ready = client.get("/readyz").json()
        models = client.get("/v1/models").json()
    assert ready["backend"] == "triton"
    assert set(ready["models"]) == {f"{FAMILY}_av", f"{FAMILY}_audio", f"{FAMILY}_video"}
    assert {m["name"]: m["num_labels"] for m in models["models"]} == dict.fromkeys(ready["models"], NUM_LABELS)


def test_triton_answers_match_the_embedded_backend(triton_stack, embedded_gateway, clips):
    gateway, _, _ = triton_stack
    with gateway.client() as triton_client, embedded_gateway.client() as embedded_client:
        for clip, suffix in ((clips.av, "av"), (clips.audio, "audio"), (clips.video, "video")):
            remote = post_clip(triton_client, clip, top_k=NUM_LABELS)
            local = post_clip(embedded_client, clip, top_k=NUM_LABELS)
            assert remote.status_code == 200, remote.text
            body = remote.json()
            assert body["model"]["name"] == f"{FAMILY}_{suffix}" and body["model"]["backend"] == "triton"
            # Identical: the same onnxruntime, file, session options and batch (one request at
            # a time) behind both backends.
            assert scores(body["predictions"]) == scores(local.json()["predictions"])
            assert set(body["heads"]) == set(local.json()["heads"])
            for head, top in body["heads"].items():
                assert scores(top) == scores(local.json()["heads"][head])
        full = post_clip(triton_client, clips.av, top_k=NUM_LABELS).json()
        audio_only = post_clip(triton_client, clips.audio, top_k=NUM_LABELS).json()
    expected = scores(full["heads"]["audio"])
    got = scores(audio_only["predictions"])
    assert len(got) == NUM_LABELS and got == expected  # bit for bit (docs/models.md)


def test_killing_triton_gives_503s_and_the_gateway_recovers_by_itself(triton_stack, clips):
    gateway, state, repository = triton_stack
    grpc_port = state["triton"].grpc_port
    payload = ("av.mp4", clips.av.read_bytes())
    results: list[tuple[float, int, float]] = []  # (sent at, status, seconds taken)
    began = time.monotonic()

    async def client_loop(client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            response = await client.post("/classify", files={"file": payload})
            results.append((sent - began, response.status_code, time.monotonic() - sent))
            if response.status_code != 200:
                assert_error(response, 503, "backend_unavailable")
                assert response.headers["retry-after"]
            await asyncio.sleep(0.02)

    async def scenario() -> dict[str, float]:
        stop = asyncio.Event()
        marks: dict[str, float] = {}
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            loops = [asyncio.create_task(client_loop(client, stop)) for _ in range(3)]
            await asyncio.sleep(1.0)
            marks["killed"] = time.monotonic() - began
            os.killpg(state["triton"].pid, signal.SIGKILL)  # no graceful shutdown: a crash
            state["triton"].stop()  # reap and clean its temp dir
            await asyncio.sleep(2.0)
            ready = await client.get("/readyz")
            assert_error(ready, 503, "not_ready")
            marks["restarting"] = time.monotonic() - began
            state["triton"] = await asyncio.to_thread(start_triton, repository, grpc_port)
            marks["restarted"] = time.monotonic() - began
            # No gateway restart: it must find the new server on its own.
            deadline = time.monotonic() + 30
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "the gateway did not become ready again"
                await asyncio.sleep(0.1)
            marks["ready"] = time.monotonic() - began
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*loops)
        return marks

    marks = asyncio.run(scenario())
    statuses = {status for _, status, _ in results}
    assert statuses <= {200, 503}, statuses
    # Requests in flight at the kill may get either answer; those done before it all succeeded.
    before = [s for t, s, took in results if t + took < marks["killed"]]
    down = [(s, took) for t, s, took in results if marks["killed"] + 0.5 < t < marks["restarting"]]
    after = [s for t, s, _ in results if t > marks["ready"] + 0.2]
    assert before and set(before) == {200}
    assert down and {s for s, _ in down} == {503}
    assert max(took for _, took in down) < 5.0, "requests hung while Triton was down"
    assert after and set(after) == {200}
    assert wait_until_no_uploads(gateway) == []


def test_gateway_without_triton_listens_and_answers_503(gateway_factory, clips):
    from gateway_helpers import free_port

    gateway = gateway_factory(backend="triton", triton_url=f"127.0.0.1:{free_port()}", triton_startup_timeout_seconds=1)
    with gateway.client() as client:
        assert client.get("/healthz").status_code == 200
        assert_error(client.get("/readyz"), 503, "not_ready")
        began = time.monotonic()
        assert_error(post_clip(client, clips.av), 503, "backend_unavailable")
        assert time.monotonic() - began < 2
