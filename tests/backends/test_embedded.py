"""EmbeddedBackend on the real exported Zorro models, against onnxruntime run directly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from avserve.backends import (
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    BatchEvent,
    EmbeddedSettings,
    InferenceFailed,
    create_backend,
)
from avserve.backends.embedded import EmbeddedBackend
from avserve.repository import load_repository

pytestmark = pytest.mark.anyio

ZORRO_MODELS = ("zorro_tiny_av", "zorro_tiny_audio", "zorro_tiny_video")


@pytest.fixture
async def backend(zorro_dir) -> AsyncIterator[EmbeddedBackend]:
    backend = EmbeddedBackend(zorro_dir, EmbeddedSettings(intra_op_threads=1))
    await backend.start()
    yield backend
    await backend.close()


async def test_serves_the_repository_and_answers_like_onnxruntime(
    backend, zorro_dir, onnx_reference, inputs_for, assert_same
) -> None:
    assert await backend.ready()
    assert backend.repository.models == load_repository(zorro_dir).models
    for seed, model in enumerate(ZORRO_MODELS):
        inputs = inputs_for(model, 1, seed)
        assert_same(await backend.infer(model, inputs), onnx_reference(model, inputs))
    # Only the outputs asked for come back.
    inputs = inputs_for("zorro_tiny_av", 1, 7)
    answer = await backend.infer("zorro_tiny_av", inputs, outputs=["head_audio"])
    assert_same(answer, onnx_reference("zorro_tiny_av", inputs), names=["head_audio"])
    # start() is idempotent.
    await backend.start()
    assert await backend.ready()


@pytest.mark.parametrize("micro_batching", [True, False], ids=["batching", "no-batching"])
async def test_64_concurrent_requests_get_their_own_answers(
    zorro_dir, onnx_reference, inputs_for, assert_same, micro_batching: bool
) -> None:
    events: list[BatchEvent] = []
    settings = EmbeddedSettings(micro_batching=micro_batching, max_batch_size=8, max_delay_ms=5, intra_op_threads=1)
    backend = create_backend("embedded", repository_dir=zorro_dir, settings=settings, on_batch=events.append)
    await backend.start()
    try:
        requests = [inputs_for("zorro_tiny_av", 1, seed) for seed in range(64)]
        answers = await asyncio.gather(*(backend.infer("zorro_tiny_av", inputs) for inputs in requests))
        stats = backend.stats()["zorro_tiny_av"]
    finally:
        await backend.close()
    for inputs, answer in zip(requests, answers):
        assert_same(answer, onnx_reference("zorro_tiny_av", inputs))
    assert stats.requests == stats.completed == 64 and stats.queue_depth == stats.in_flight == 0
    assert sum(size * count for size, count in stats.batch_sizes.items()) == 64
    assert sum(event.rows for event in events if event.model == "zorro_tiny_av") == 64
    if micro_batching:
        assert max(stats.batch_sizes) > 1 and max(stats.batch_sizes) <= 8
        assert stats.batches < 64
    else:
        assert dict(stats.batch_sizes) == {1: 64}


async def test_a_full_queue_sheds_with_a_retry_after(zorro_dir, inputs_for) -> None:
    backend = EmbeddedBackend(zorro_dir, EmbeddedSettings(max_queue=4, max_batch_size=4, intra_op_threads=1))
    await backend.start()
    try:
        inputs = inputs_for("zorro_tiny_audio")
        # All 16 calls enqueue before the batcher gets the loop: exactly max_queue fit.
        results = await asyncio.gather(
            *(backend.infer("zorro_tiny_audio", inputs) for _ in range(16)), return_exceptions=True
        )
        stats = backend.stats()["zorro_tiny_audio"]
    finally:
        await backend.close()
    shed = [r for r in results if isinstance(r, BackendOverloaded)]
    answered = [r for r in results if isinstance(r, dict)]
    assert len(answered) == 4 and len(shed) == 12
    assert all(0 < error.retry_after_seconds < 10 for error in shed)
    assert error_code(shed[0]) == "overloaded"
    assert stats.rejected == 12 and stats.completed == 4


async def test_deadlines(zorro_dir, inputs_for) -> None:
    # A long batching delay: a lone request sits in the queue for half a second.
    backend = EmbeddedBackend(zorro_dir, EmbeddedSettings(max_delay_ms=500, intra_op_threads=1))
    await backend.start()
    try:
        inputs = inputs_for("zorro_tiny_audio")
        with pytest.raises(BackendTimeout):  # already past: never queued
            await backend.infer("zorro_tiny_audio", inputs, deadline=time.monotonic() - 1)
        began = time.monotonic()
        with pytest.raises(BackendTimeout):  # passes while queued: fails at the deadline
            await backend.infer("zorro_tiny_audio", inputs, deadline=began + 0.05)
        assert time.monotonic() - began < 0.4
        await asyncio.sleep(0.6)  # the batcher's flush comes and finds the request dropped
        stats = backend.stats()["zorro_tiny_audio"]
        assert stats.expired == 2 and stats.batches == 0 and stats.queue_depth == 0
        # A generous deadline is met.
        answer = await backend.infer("zorro_tiny_audio", inputs, deadline=time.monotonic() + 5)
        assert answer["logits"].shape == (1, 12)
    finally:
        await backend.close()


async def test_close_fails_pending_requests(zorro_dir, inputs_for) -> None:
    backend = EmbeddedBackend(zorro_dir, EmbeddedSettings(max_delay_ms=10_000, intra_op_threads=1))
    await backend.start()
    inputs = inputs_for("zorro_tiny_video")
    pending = [asyncio.create_task(backend.infer("zorro_tiny_video", inputs)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert backend.stats()["zorro_tiny_video"].queue_depth == 3
    await backend.close()
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout=5)
    assert all(isinstance(result, BackendUnavailable) for result in results), results
    assert not await backend.ready()
    with pytest.raises(BackendUnavailable):
        await backend.infer("zorro_tiny_video", inputs)
    with pytest.raises(BackendUnavailable):
        await backend.start()


async def test_a_malformed_request_fails_alone(backend, onnx_reference, inputs_for, assert_same) -> None:
    good = [inputs_for("zorro_tiny_av", 1, seed) for seed in range(8)]
    bad_shape = {"audio": np.zeros((1, 16000), np.float32), "video": good[0]["video"]}
    bad_dtype = {"audio": good[0]["audio"].astype(np.float64), "video": good[0]["video"]}
    results = await asyncio.gather(
        *(backend.infer("zorro_tiny_av", inputs) for inputs in good[:4]),
        backend.infer("zorro_tiny_av", bad_shape),
        backend.infer("zorro_tiny_av", bad_dtype),
        backend.infer("zorro_tiny_av", {"audio": good[0]["audio"]}),  # video missing
        backend.infer("zorro_tiny_av", good[0], outputs=["no_such_output"]),
        *(backend.infer("zorro_tiny_av", inputs) for inputs in good[4:]),
        return_exceptions=True,
    )
    answers, failures = results[:4] + results[8:], results[4:8]
    for inputs, answer in zip(good, answers):
        assert_same(answer, onnx_reference("zorro_tiny_av", inputs))
    assert all(isinstance(failure, InferenceFailed) for failure in failures), failures
    assert "shape [1, 16000], expected ['batch', 32000]" in str(failures[0])
    assert "float32" in str(failures[1]) and "missing ['video']" in str(failures[2])
    with pytest.raises(BackendUnavailable, match="not served"):
        await backend.infer("mbt_av", good[0])


async def test_a_run_time_failure_in_a_batch_fails_only_its_request(lookup_repository, inputs_for) -> None:
    events: list[BatchEvent] = []
    backend = EmbeddedBackend(
        lookup_repository, EmbeddedSettings(max_batch_size=16, max_delay_ms=20), on_batch=events.append
    )
    await backend.start()
    try:
        requests = [inputs_for("lookup", 1, seed) for seed in range(8)]
        poisoned = {"audio": np.full((1, 16), 99.0, np.float32)}  # row 99 of a 10-row table
        results = await asyncio.gather(
            *(backend.infer("lookup", inputs) for inputs in requests[:4]),
            backend.infer("lookup", poisoned),
            *(backend.infer("lookup", inputs) for inputs in requests[4:]),
            return_exceptions=True,
        )
        alone = [await backend.infer("lookup", inputs) for inputs in requests]
        stats = backend.stats()["lookup"]
    finally:
        await backend.close()
    failure = results.pop(4)
    assert isinstance(failure, InferenceFailed) and "lookup" in str(failure)
    for answer, expected in zip(results, alone):
        np.testing.assert_allclose(answer["logits"], expected["logits"], rtol=1e-6)
    # The whole batch failed once, then every request was rerun alone.
    assert events[0].requests == 9 and not events[0].ok
    assert [event.ok for event in events[1:10]] == [True] * 4 + [False] + [True] * 4
    assert stats.failed == 1 and stats.completed == 16


async def test_batches_in_flight_runs_batches_concurrently(zorro_dir, onnx_reference, inputs_for, assert_same) -> None:
    settings = EmbeddedSettings(batches_in_flight=2, max_batch_size=4, intra_op_threads=1)
    backend = EmbeddedBackend(zorro_dir, settings)
    await backend.start()
    try:
        requests = [inputs_for("zorro_tiny_video", 1, seed) for seed in range(24)]
        answers = await asyncio.gather(*(backend.infer("zorro_tiny_video", inputs) for inputs in requests))
    finally:
        await backend.close()
    for inputs, answer in zip(requests, answers):
        assert_same(answer, onnx_reference("zorro_tiny_video", inputs))


async def test_requests_carrying_several_rows(backend, onnx_reference, inputs_for, assert_same) -> None:
    inputs = inputs_for("zorro_tiny_audio", 3, 11)
    answers = await asyncio.gather(
        backend.infer("zorro_tiny_audio", inputs), backend.infer("zorro_tiny_audio", inputs_for("zorro_tiny_audio"))
    )
    assert_same(answers[0], onnx_reference("zorro_tiny_audio", inputs))
    with pytest.raises(InferenceFailed, match="exceeds model 'zorro_tiny_audio'"):
        await backend.infer("zorro_tiny_audio", inputs_for("zorro_tiny_audio", 17))


def test_factory_and_settings_are_checked(zorro_dir) -> None:
    with pytest.raises(ValueError, match="backend kind"):
        create_backend("tensorflow", repository_dir=zorro_dir)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repository_dir"):
        create_backend("embedded")
    with pytest.raises(ValueError):
        EmbeddedSettings(max_batch_size=0)
    with pytest.raises(ValueError):
        EmbeddedSettings(device="tpu")  # type: ignore[arg-type]


def error_code(error: Exception) -> str:
    return getattr(error, "code", "")
