"""EmbeddedBackend on the real exported Zorro models, against onnxruntime run directly."""

from __future__ import annotations

import asyncio
import math
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
from avserve.backends.embedded import EmbeddedBackend, _ServedCost, choose_batch_policy, rows_worth_batching
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
    # Batching up to 8 rows whatever this noisy machine's curve says: the answers are the point.
    settings = EmbeddedSettings(
        micro_batching=micro_batching,
        max_batch_size=8,
        follow_batch_curve=False,
        batch_curve_seconds=0,
        intra_op_threads=1,
    )
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


async def start_a_long_run(backend: EmbeddedBackend, model: str, inputs_for) -> asyncio.Task:
    """Occupy `model` with a 16-clip request (the model's largest): what queues next waits for it."""
    blocker = asyncio.create_task(backend.infer(model, inputs_for(model, 16)))
    while backend.stats()[model].in_flight == 0:
        await asyncio.sleep(0)
    return blocker


async def test_deadlines(zorro_dir, inputs_for) -> None:
    backend = EmbeddedBackend(zorro_dir, EmbeddedSettings(batch_curve_seconds=0, intra_op_threads=1))
    await backend.start()
    try:
        inputs = inputs_for("zorro_tiny_av")
        with pytest.raises(BackendTimeout):  # already past: never queued
            await backend.infer("zorro_tiny_av", inputs, deadline=time.monotonic() - 1)
        blocker = await start_a_long_run(backend, "zorro_tiny_av", inputs_for)
        began = time.monotonic()
        with pytest.raises(BackendTimeout):  # passes while queued: fails at the deadline
            await backend.infer("zorro_tiny_av", inputs, deadline=began + 0.005)
        assert time.monotonic() - began < 0.4
        await blocker  # the batcher then finds the expired request and drops it
        await asyncio.sleep(0.01)
        stats = backend.stats()["zorro_tiny_av"]
        assert stats.expired == 2 and dict(stats.batch_sizes) == {16: 1} and stats.queue_depth == 0
        # A generous deadline is met.
        answer = await backend.infer("zorro_tiny_av", inputs, deadline=time.monotonic() + 5)
        assert answer["logits"].shape == (1, 12)
    finally:
        await backend.close()


async def test_close_fails_pending_requests(zorro_dir, inputs_for) -> None:
    backend = EmbeddedBackend(zorro_dir, EmbeddedSettings(batch_curve_seconds=0, intra_op_threads=1))
    await backend.start()
    inputs = inputs_for("zorro_tiny_av")
    blocker = await start_a_long_run(backend, "zorro_tiny_av", inputs_for)
    pending = [asyncio.create_task(backend.infer("zorro_tiny_av", inputs)) for _ in range(3)]
    await asyncio.sleep(0)  # they queue behind the running request
    assert backend.stats()["zorro_tiny_av"].queue_depth == 3
    await backend.close()
    results = await asyncio.wait_for(asyncio.gather(blocker, *pending, return_exceptions=True), timeout=5)
    assert all(isinstance(result, BackendUnavailable) for result in results), results
    assert not await backend.ready()
    with pytest.raises(BackendUnavailable):
        await backend.infer("zorro_tiny_av", inputs)
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
        lookup_repository,
        EmbeddedSettings(max_batch_size=16, follow_batch_curve=False, batch_curve_seconds=0),
        on_batch=events.append,
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


# ---- the batching policy ----------------------------------------------------------------------


async def test_a_request_to_an_idle_model_runs_at_once(zorro_dir, onnx_reference, inputs_for, assert_same) -> None:
    events: list[BatchEvent] = []
    # Batching on up to 8 rows with a huge delay: a lone request must still not wait for it.
    settings = EmbeddedSettings(max_delay_ms=5000, follow_batch_curve=False, intra_op_threads=1)
    backend = EmbeddedBackend(zorro_dir, settings, on_batch=events.append)
    await backend.start()
    try:
        assert backend.batch_policies()["zorro_tiny_audio"].max_rows == 8
        requests = [inputs_for("zorro_tiny_audio", 1, seed) for seed in range(3)]
        answers = [  # one after the other, as a closed-loop client sends them
            await backend.infer("zorro_tiny_audio", inputs, deadline=time.monotonic() + 4) for inputs in requests
        ]
        stats = backend.stats()["zorro_tiny_audio"]
    finally:
        await backend.close()
    for inputs, answer in zip(requests, answers):
        assert_same(answer, onnx_reference("zorro_tiny_audio", inputs))
    assert [(event.rows, event.held_seconds) for event in events] == [(1, 0.0)] * 3
    assert stats.held == 0 and dict(stats.batch_sizes) == {1: 3}


async def test_requests_queued_behind_a_running_batch_form_the_next_one(
    zorro_dir, onnx_reference, inputs_for, assert_same
) -> None:
    events: list[BatchEvent] = []
    settings = EmbeddedSettings(max_delay_ms=5000, follow_batch_curve=False, intra_op_threads=1)
    backend = EmbeddedBackend(zorro_dir, settings, on_batch=events.append)
    await backend.start()
    try:
        requests = [inputs_for("zorro_tiny_av", 1, seed) for seed in range(5)]
        first = asyncio.create_task(backend.infer("zorro_tiny_av", requests[0]))
        while backend.stats()["zorro_tiny_av"].in_flight == 0:  # the first runs alone, at once
            await asyncio.sleep(0)
        rest = [asyncio.create_task(backend.infer("zorro_tiny_av", inputs)) for inputs in requests[1:]]
        answers = await asyncio.gather(first, *rest)
        stats = backend.stats()["zorro_tiny_av"]
    finally:
        await backend.close()
    for inputs, answer in zip(requests, answers):
        assert_same(answer, onnx_reference("zorro_tiny_av", inputs))
    assert [(event.rows, event.held_seconds) for event in events] == [(1, 0.0), (4, 0.0)]
    assert events[1].queued_seconds > 0 and stats.held == 0


async def test_a_model_whose_curve_says_batching_does_not_pay_never_batches(
    zorro_dir, onnx_reference, inputs_for, assert_same
) -> None:
    # No batch can cost under 0.001x batch 1 per clip: whatever this machine measures, no size pays.
    settings = EmbeddedSettings(batch_pays_below=0.001, intra_op_threads=1)
    backend = EmbeddedBackend(zorro_dir, settings)
    await backend.start()
    try:
        policy = backend.batch_policies()["zorro_tiny_video"]
        requests = [inputs_for("zorro_tiny_video", 1, seed) for seed in range(8)]
        answers = await asyncio.gather(*(backend.infer("zorro_tiny_video", inputs) for inputs in requests))
        stats = backend.stats()["zorro_tiny_video"]
    finally:
        await backend.close()
    assert sorted(policy.ms_per_clip) == [1, 2, 4, 8] and all(ms > 0 for ms in policy.ms_per_clip.values())
    assert policy.max_rows == 1 and policy.partner_wait_ms == 0 and "does not pay" in policy.reason
    assert dict(stats.batch_sizes) == {1: 8} and stats.held == 0
    for inputs, answer in zip(requests, answers):
        assert_same(answer, onnx_reference("zorro_tiny_video", inputs))


def test_the_batch_policy_follows_the_curve() -> None:
    settings = EmbeddedSettings(max_delay_ms=2)
    # zorro_vit_b16's audio graph on this CPU: slower per clip at batch 8 than at batch 1.
    paper = choose_batch_policy({1: 251.0, 8: 288.0}, 8, settings)
    assert paper.max_rows == 1 and paper.partner_wait_ms == 0
    # The largest batch that pays, even where the curve is not monotonic.
    bumpy = choose_batch_policy({1: 10.0, 2: 9.5, 4: 8.5, 8: 9.5}, 8, settings)
    assert bumpy.max_rows == 4 and "batch 4 costs 0.85x" in bumpy.reason
    # A pair costing 1.3x a single (9 vs 2 x 4.5 ms): holding for a partner never pays.
    tiny = choose_batch_policy({1: 5.8, 2: 4.5, 4: 3.8, 8: 3.4}, 8, settings)
    assert tiny.max_rows == 8 and tiny.partner_wait_ms == 0
    # A pair costing 1.1x a single: hold while a partner is due within 1.5 t1 - t2 = 4 ms,
    # capped by max_delay_ms (2) and by t1 / 2 (5).
    cheap_pair = {1: 10.0, 2: 5.5, 4: 4.0}
    assert choose_batch_policy(cheap_pair, 4, settings).partner_wait_ms == pytest.approx(2.0)
    assert choose_batch_policy(cheap_pair, 4, EmbeddedSettings(max_delay_ms=50)).partner_wait_ms == pytest.approx(4.0)
    assert choose_batch_policy({1: 10.0, 2: 4.0}, 2, EmbeddedSettings(max_delay_ms=50)).partner_wait_ms == 5.0
    # Batch 2 not measured (a slow model): interpolated between 1 and 8, 9.5 ms a clip: no hold.
    assert choose_batch_policy({1: 10.0, 8: 6.5}, 8, EmbeddedSettings(max_delay_ms=50)).partner_wait_ms == 0
    # The overrides, and no curve.
    assert choose_batch_policy({1: 251.0, 8: 288.0}, 8, EmbeddedSettings(follow_batch_curve=False)).max_rows == 8
    assert choose_batch_policy({1: 10.0, 2: 4.0}, 2, EmbeddedSettings(micro_batching=False)).max_rows == 1
    unmeasured = choose_batch_policy({}, 8, settings)
    assert unmeasured.max_rows == 8 and unmeasured.partner_wait_ms == 0


def test_batches_are_sized_to_the_queue() -> None:
    # Per-clip cost at batch 1..8 (index 0 unused): batch 2 at 0.91x, batch 8 at 0.8x of batch 1.
    modest = [math.nan, 10.0, 9.1, 9.0, 8.8, 8.6, 8.4, 8.2, 8.0]
    # Two queued: batching them finishes the first later than it saves the second.
    assert rows_worth_batching(modest, 1) == 1 and rows_worth_batching(modest, 2) == 1
    # A deeper queue: a small batch drains it sooner for everyone behind.
    assert rows_worth_batching(modest, 8) == 2
    # Overload: full batches.
    assert rows_worth_batching(modest, 64) == 8
    # Near-perfect batching pays at any depth; no gain never does.
    assert rows_worth_batching([math.nan, 10.0, 5.0, 3.4, 2.5], 2) == 2
    assert rows_worth_batching([math.nan, 10.0, 10.0, 10.0, 10.0], 64) == 1


def test_batches_that_cost_more_as_served_than_the_curve_says_are_corrected() -> None:
    curve = [math.nan, 10.0, 8.0, 7.0, 6.0]
    served = _ServedCost()
    assert served.corrected(curve) == curve  # nothing served yet: the curve as measured
    for _ in range(5):
        served.observe(1, 12.0, 10.0)  # the machine is 1.2x slower than at start-up...
        served.observe(4, 12.0, 6.0)  # ...and batches of 4 run 2x slower than the curve
    assert 1.4 < served.factor < 1.7
    corrected = served.corrected(curve)
    assert corrected[1] == 10.0 and corrected[2:] == [ms * served.factor for ms in curve[2:]]
    # Batching no longer pays even for a deep queue; at the curve as measured it did.
    assert rows_worth_batching(corrected, 64) == 1 and rows_worth_batching(curve, 64) == 4
    # Single runs age that evidence: batching is tried again later.
    for _ in range(500):
        served.observe(1, 12.0, 10.0)
    assert served.factor < 1.01


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
