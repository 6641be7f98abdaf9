"""TritonBackend against a real tritonserver (LocalTriton) serving the exported Zorro models
(plus the lookup model, whose failures happen inside the model at run time)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from avserve.backends import (
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    InferenceFailed,
    TritonSettings,
    create_backend,
)
from avserve.backends.triton import TritonBackend, parse_classification
from avserve.repository import RepositoryError, load_repository
from avserve.triton import LocalTriton

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ZORRO_MODELS = ("zorro_tiny_av", "zorro_tiny_audio", "zorro_tiny_video")
# What a spec read from Triton shares with the one read from disk: everything but where the
# model lives and how it runs (the local server runs the ONNX file via the Python backend).
SERVING_ONLY_FIELDS = ("platform", "backend", "path", "versions", "parameters")


@pytest.fixture(scope="module")
def served_repository(zorro_dir: Path, lookup_repository: Path, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("triton_backend") / "model_repository"
    repo.mkdir()
    for model_dir in [*(zorro_dir / name for name in ZORRO_MODELS), lookup_repository / "lookup"]:
        (repo / model_dir.name).symlink_to(model_dir, target_is_directory=True)
    return repo


@pytest.fixture(scope="module")
def triton_server(served_repository: Path) -> Iterator[LocalTriton]:
    server = LocalTriton(served_repository, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=90)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def backend(triton_server: LocalTriton) -> AsyncIterator[TritonBackend]:
    backend = create_backend("triton", url=triton_server.grpc_url, settings=TritonSettings(startup_timeout=30))
    await backend.start()
    yield backend
    await backend.close()


async def test_specs_and_labels_come_from_triton(backend, served_repository: Path) -> None:
    assert await backend.ready()
    on_disk = load_repository(served_repository)
    assert sorted(backend.repository.models) == sorted(on_disk.models)
    assert backend.repository.routes == on_disk.routes
    for name, expected in on_disk.models.items():
        actual = backend.repository.model(name)
        assert actual.labels == expected.labels and len(actual.labels) == actual.num_classes
        blank = dict.fromkeys(SERVING_ONLY_FIELDS)
        assert dataclasses.replace(actual, **blank) == dataclasses.replace(expected, **blank)
        # The exporter's parameters survive; Triton's copy only adds the local server's own.
        assert expected.parameters.items() <= actual.parameters.items()


async def test_answers_equal_onnxruntime(backend, onnx_reference, inputs_for, assert_same) -> None:
    for seed, model in enumerate(ZORRO_MODELS):
        inputs = inputs_for(model, 1, seed)
        assert_same(await backend.infer(model, inputs, deadline=time.monotonic() + 30), onnx_reference(model, inputs))
    inputs = inputs_for("zorro_tiny_av", 2, 9)  # a request may carry several clips
    answer = await backend.infer("zorro_tiny_av", inputs, outputs=["logits", "head_video"])
    assert_same(answer, onnx_reference("zorro_tiny_av", inputs), names=["logits", "head_video"])


def _statistics(server: LocalTriton, model: str) -> tuple[int, int]:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


async def test_concurrent_requests_are_batched_by_triton(
    backend, triton_server, onnx_reference, inputs_for, assert_same
) -> None:
    inferences_before, executions_before = _statistics(triton_server, "zorro_tiny_audio")
    requests = [inputs_for("zorro_tiny_audio", 1, seed) for seed in range(32)]
    answers = await asyncio.gather(*(backend.infer("zorro_tiny_audio", inputs) for inputs in requests))
    for inputs, answer in zip(requests, answers):
        assert_same(answer, onnx_reference("zorro_tiny_audio", inputs))
    # Triton updates its statistics just after responding: poll until they settle.
    for _ in range(50):
        inferences, executions = _statistics(triton_server, "zorro_tiny_audio")
        if inferences - inferences_before >= 32:
            break
        await asyncio.sleep(0.1)
    assert inferences - inferences_before == 32
    assert executions - executions_before < 32
    stats = backend.stats()["zorro_tiny_audio"]
    assert stats.completed >= 32 and stats.in_flight == 0


async def test_a_failing_request_fails_alone(backend, inputs_for) -> None:
    good = [inputs_for("lookup", 1, seed) for seed in range(6)]
    poisoned = {"audio": np.full((1, 16), 99.0, np.float32)}  # out of the lookup table: the model raises
    results = await asyncio.gather(
        *(backend.infer("lookup", inputs) for inputs in good[:3]),
        backend.infer("lookup", poisoned),
        *(backend.infer("lookup", inputs) for inputs in good[3:]),
        return_exceptions=True,
    )
    failure = results.pop(3)
    assert isinstance(failure, InferenceFailed) and "lookup" in str(failure), failure
    assert all(isinstance(result, dict) and result["logits"].shape == (1, 3) for result in results), results
    # Checked before sending: a clear message, and Triton never sees the request.
    with pytest.raises(InferenceFailed, match=r"shape \[1, 8\], expected \['batch', 16\]"):
        await backend.infer("lookup", {"audio": np.zeros((1, 8), np.float32)})
    with pytest.raises(BackendUnavailable, match="not served"):
        await backend.infer("mbt_av", good[0])


async def test_deadlines(backend, inputs_for) -> None:
    inputs = inputs_for("zorro_tiny_av")
    with pytest.raises(BackendTimeout):
        await backend.infer("zorro_tiny_av", inputs, deadline=time.monotonic() - 0.1)
    # A deadline too short for the model: gRPC's DEADLINE_EXCEEDED, mapped.
    began = time.monotonic()
    with pytest.raises(BackendTimeout):
        await backend.infer("zorro_tiny_av", inputs, deadline=began + 0.001)
    assert time.monotonic() - began < 1.0
    assert backend.stats()["zorro_tiny_av"].expired >= 2


async def test_too_many_requests_in_flight_are_shed(triton_server, inputs_for) -> None:
    backend = TritonBackend(triton_server.grpc_url, TritonSettings(max_in_flight=2, fetch_labels=False))
    await backend.start()
    try:
        inputs = inputs_for("zorro_tiny_video")
        results = await asyncio.gather(
            *(backend.infer("zorro_tiny_video", inputs) for _ in range(8)), return_exceptions=True
        )
    finally:
        await backend.close()
    shed = [result for result in results if isinstance(result, BackendOverloaded)]
    assert len(shed) == 6 and all(error.retry_after_seconds > 0 for error in shed)
    assert not await backend.ready()
    with pytest.raises(BackendUnavailable):
        await backend.infer("zorro_tiny_video", inputs)


async def test_start_gives_up_on_an_absent_server() -> None:
    from avserve.triton.server import free_ports

    (port,) = free_ports(1)
    backend = TritonBackend(f"127.0.0.1:{port}", TritonSettings(startup_timeout=0.5, reconnect_interval=0.1))
    began = time.monotonic()
    with pytest.raises(BackendUnavailable, match="not ready within"):
        await backend.start()
    assert time.monotonic() - began < 3
    assert not await backend.ready()
    await backend.close()


def test_grpc_errors_map_to_backend_errors() -> None:
    """The mapping table, on the exception type tritonclient raises (statuses that a local
    server cannot be made to produce on demand, such as RESOURCE_EXHAUSTED)."""
    backend = TritonBackend("127.0.0.1:1")
    cases = {
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses"): BackendUnavailable,
        ("StatusCode.NOT_FOUND", "Request for unknown model"): BackendUnavailable,
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"): BackendTimeout,
        ("StatusCode.RESOURCE_EXHAUSTED", "too many requests"): BackendOverloaded,
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size"): BackendOverloaded,
        ("StatusCode.RESOURCE_EXHAUSTED", "Sent message larger than max (5000000 vs. 4194304)"): InferenceFailed,
        ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'audio'"): InferenceFailed,
        ("StatusCode.INTERNAL", "model raised"): InferenceFailed,
    }
    for (status, message), expected in cases.items():
        error = backend._error(InferenceServerException(message, status=status), object(), "m")  # type: ignore[arg-type]
        assert type(error) is expected, (status, message, error)


def test_classification_strings_give_labels_by_index() -> None:
    entries = np.array([[b"0.9:2:rain", b"0.5:0:dog", b"0.1:1:a:b"]], dtype=object)
    assert parse_classification(entries, 3, "m") == ["dog", "a:b", "rain"]
    with pytest.raises(RepositoryError, match="without labels"):
        parse_classification(np.array([b"0.9:2"], dtype=object), 1, "m")


def test_a_call_its_channel_cancels_is_backend_unavailable_not_a_crash():
    """gRPC cancels the calls of a channel closed under them (the lost server's client replaced):
    that is Triton going away, a 503, not the request's cancellation escaping as a 500. A real
    cancellation of the request's own task (its deadline, its client gone) still propagates."""
    backend = TritonBackend("127.0.0.1:1", TritonSettings(startup_timeout=1))

    async def run() -> None:
        with pytest.raises(BackendUnavailable, match="connection to Triton lost"):
            with backend._mapped_errors(None, "zorro_tiny_av"):
                raise asyncio.CancelledError()  # what grpc.aio raises when its channel closes

        async def waiting() -> None:
            with backend._mapped_errors(None, "zorro_tiny_av"):
                await asyncio.sleep(30)

        task = asyncio.ensure_future(waiting())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
