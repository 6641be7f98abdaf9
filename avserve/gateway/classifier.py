"""One classify request after the upload: probe, route, decode, infer, post-process.

PyAV work runs in supervised worker processes (avserve.media.workers): a decoder crash, or a
file that needs more memory or CPU time than a worker may use, fails its own request with a
4xx and never the gateway; the event loop keeps accepting uploads and answering health checks.
The pool's size bounds how many probes and decodes run at once; admission control in front of
it (avserve.gateway.admission) keeps the queue short, and each request reports its worker time
to it through its ticket.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from avserve.backends.base import BackendError, InferenceBackend
from avserve.media import (
    DecodedAudio, DecodedVideo, MediaError, MediaInfo, MediaLimits, decode_audio, decode_video, probe,
)
from avserve.media.workers import MediaWorkers, MediaWorkersUnavailable
from avserve.repository import ModelSpec, RepositoryError
from avserve.contract import AUDIO, VIDEO, head_output

from .admission import Ticket
from .errors import ApiError, backend_error, media_error
from .metrics import GatewayMetrics
from .routing import ModalityChoice, Route, choose_route
from .schemas import (
    AudioSummary,
    ClassifyResponse,
    MediaSummary,
    Modalities,
    Prediction,
    ScoredWindow,
    ServedModel,
    Timings,
    VideoSummary,
)
from .upload import Upload

T = TypeVar("T")
# A window shorter than this would round to no audio sample / no frame period at all.
_MIN_WINDOW_SECONDS = 1e-3


@dataclass(frozen=True)
class ClassifyParams:
    family: str
    modality: ModalityChoice
    top_k: int
    start: float
    duration: float | None


@dataclass(frozen=True)
class Window:
    start: float
    duration: float | None  # None: to the end of the clip (models without a fixed length)


@dataclass
class Outcome:
    """What the request handler needs for the response, the metrics and the log line."""

    response: ClassifyResponse
    route: Route


@dataclass
class _MediaWork:
    """One request's calls into the media workers: its deadline and the worker time used."""

    deadline: float  # absolute time.monotonic()
    seconds: float = 0.0
    # Damaged packets the decodes skipped, per decoded modality: (packets, bytes).
    skipped: dict[str, tuple[int, int]] = field(default_factory=dict)


class Classifier:
    def __init__(
        self,
        backend: InferenceBackend,
        workers: MediaWorkers,
        metrics: GatewayMetrics,
        limits: MediaLimits,
        *,
        max_windows: int,
        retry_after_seconds: int,
    ) -> None:
        self.backend = backend
        self.workers = workers
        self.metrics = metrics
        self.limits = limits
        self.max_windows = max_windows
        self.retry_after_seconds = retry_after_seconds

    async def classify(
        self, upload: Upload, params: ClassifyParams, *, deadline: float, began: float, request_id: str,
        on_route: Callable[[Route], None] | None = None, ticket: Ticket | None = None,
    ) -> Outcome:
        """`deadline` is absolute `time.monotonic()`; `began` is the request's `perf_counter()` start;
        `ticket` (admission control) learns the worker time the media stage took."""
        timings = {"upload": upload.seconds}
        work = _MediaWork(deadline)

        stage = time.perf_counter()
        info = await self._media(work, probe, upload.path, self.limits)
        timings["probe"] = time.perf_counter() - stage

        present = frozenset(m for m, has in ((AUDIO, info.has_audio), (VIDEO, info.has_video)) if has)
        route = choose_route(self.backend.repository, params.family, present, params.modality)
        if on_route is not None:
            on_route(route)
        spec = route.spec
        windows = plan_windows(spec, info.duration, params.start, params.duration, self.max_windows)
        self.metrics.windows.observe(len(windows))

        stage = time.perf_counter()
        batches = await self._decode(work, upload, route, windows)
        timings["decode"] = time.perf_counter() - stage
        if ticket is not None:
            ticket.media_done(work.seconds)

        stage = time.perf_counter()
        outputs = await _all(self._infer(spec, inputs, deadline) for inputs in batches)
        timings["inference"] = time.perf_counter() - stage

        answer = _mean_probabilities(outputs, spec.answer_output)
        heads = {head: _mean_probabilities(outputs, head_output(head)) for head in spec.heads}
        labels = _labels(spec)
        top_k = min(params.top_k, len(labels))
        timings["total"] = time.perf_counter() - began
        response = ClassifyResponse(
            request_id=request_id,
            model=ServedModel(
                name=spec.name,
                version=str(spec.versions[-1]) if spec.versions else None,
                family=spec.family,
                backend=self.backend.name,
                unimodal=spec.unimodal,
            ),
            modalities=Modalities(
                present=sorted(present),
                used=sorted(route.used),
                zero_filled=sorted(route.zero_filled),
                degraded=route.degraded,
            ),
            predictions=_top(answer, labels, top_k),
            heads={head: _top(scores, labels, top_k) for head, scores in heads.items()} or None,
            windows=[ScoredWindow(start=w.start, duration=_window_length(w, info)) for w in windows],
            media=_summary(info, work.skipped),
            timings_ms=Timings(**{name: round(seconds * 1000, 3) for name, seconds in timings.items()}),
        )
        _count_skipped(self.metrics, response.media)
        return Outcome(response, route)

    # ---- stages ----------------------------------------------------------------------------

    async def _media(self, work: _MediaWork, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a PyAV call in a media worker, bounded by the request's deadline; its MediaError
        (the file's fault, including a crashed or over-limit worker) becomes the client's error."""
        try:
            result = await self.workers.run(function, *args, timeout=work.deadline - time.monotonic(), **kwargs)
        except MediaError as error:
            self.metrics.decode_errors.labels(error.code.value).inc()
            raise media_error(error) from None
        except MediaWorkersUnavailable as error:
            raise ApiError(503, "media_workers_unavailable", str(error), {"Retry-After": str(self.retry_after_seconds)}) from None
        work.seconds += result.seconds
        return result.value

    async def _decode(self, work: _MediaWork, upload: Upload, route: Route, windows: list[Window]) -> list[dict[str, np.ndarray]]:
        spec = route.spec
        jobs: list[Awaitable[np.ndarray]] = []
        for window in windows:
            if AUDIO in route.used:
                jobs.append(self._decode_audio(work, upload, spec, window))
            if VIDEO in route.used:
                jobs.append(self._decode_video(work, upload, spec, window))
        decoded = iter(await _all(jobs))
        batches = []
        for _ in windows:
            inputs = {modality: next(decoded) for modality in sorted(route.used)}
            if route.zero_filled:
                inputs.update(_checked(spec.zero_inputs, rows=1, names=sorted(route.zero_filled)))
            batches.append(inputs)
        return batches

    async def _decode_audio(self, work: _MediaWork, upload: Upload, spec: ModelSpec, window: Window) -> np.ndarray:
        assert spec.sample_rate is not None  # the repository requires it of audio models
        audio = await self._media(
            work, decode_audio, upload.path, sample_rate=spec.sample_rate, start=window.start,
            duration=window.duration, limits=self.limits,
        )  # fmt: skip
        _tally_skipped(work, AUDIO, audio)
        samples = audio.samples
        wanted = spec.clip_samples
        if wanted is not None and len(samples) != wanted:
            # A window shorter than the model's clip (the last one, or a short `duration`):
            # silence after it, as the model saw for clips shorter than clip_seconds in training.
            samples = np.concatenate([samples, np.zeros(max(0, wanted - len(samples)), np.float32)])[:wanted]
        return samples[np.newaxis].astype(np.float32, copy=False)

    async def _decode_video(self, work: _MediaWork, upload: Upload, spec: ModelSpec, window: Window) -> np.ndarray:
        frames, height, width, _ = _checked(spec.input_shape, VIDEO)
        video = await self._media(
            work, decode_video, upload.path, num_frames=frames, size=(height, width), start=window.start,
            duration=window.duration, limits=self.limits,
        )  # fmt: skip
        _tally_skipped(work, VIDEO, video)
        return video.frames[np.newaxis]

    async def _infer(self, spec: ModelSpec, inputs: dict[str, np.ndarray], deadline: float) -> dict[str, np.ndarray]:
        try:
            return await self.backend.infer(spec.name, inputs, deadline=deadline)
        except BackendError as error:
            raise backend_error(error, self.retry_after_seconds) from None


# ---- helpers -------------------------------------------------------------------------------


def plan_windows(
    spec: ModelSpec, media_duration: float | None, start: float, duration: float | None, max_windows: int
) -> list[Window]:
    """Cover `[start, start + duration)` with windows of the model's clip length.

    Without `duration` one model-length window is scored. A span longer than the model's
    clip is split into consecutive windows whose scores are averaged; the span is first cut
    at the end of the clip, so asking for "60 s" of a 5 s file scores the 5 s there are.
    """
    if media_duration is not None and start >= media_duration:
        raise ApiError(
            422, "invalid_window", f"start {start} s is past the end of the clip ({media_duration:.3f} s)"
        )
    length = spec.window_seconds
    if length is None:  # the model takes any length: score the requested span at once
        return [Window(start, duration)]
    span = length if duration is None else duration
    if duration is not None and media_duration is not None:
        span = min(span, media_duration - start)
    count = max(1, math.ceil(span / length - 1e-9))
    if count > max_windows:
        raise ApiError(
            422,
            "invalid_window",
            f"duration {duration} s needs {count} windows of {length} s, more than the limit of {max_windows}",
        )
    windows = []
    for index in range(count):
        offset = index * length
        windows.append(Window(start + offset, max(_MIN_WINDOW_SECONDS, min(length, span - offset))))
    return windows


def _window_length(window: Window, info: MediaInfo) -> float:
    if window.duration is not None:
        return window.duration
    return max(0.0, (info.duration or 0.0) - window.start)


def _checked(spec_method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A ModelSpec shape query, its RepositoryError as a 502: the model, not the upload, is at fault."""
    try:
        return spec_method(*args, **kwargs)
    except RepositoryError as error:
        raise ApiError(502, "model_misconfigured", str(error)) from None


def _labels(spec: ModelSpec) -> tuple[str, ...]:
    return spec.labels or tuple(f"class_{i}" for i in range(spec.num_classes))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _mean_probabilities(outputs: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    """Class probabilities of output `name`, averaged over the windows (batch row 0 of each)."""
    rows = [_softmax(np.asarray(output[name], dtype=np.float64).reshape(-1, output[name].shape[-1])[0]) for output in outputs]
    return np.mean(rows, axis=0)


def _top(scores: np.ndarray, labels: tuple[str, ...], k: int) -> list[Prediction]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [Prediction(label=labels[i], score=float(scores[i])) for i in order]


def _tally_skipped(work: _MediaWork, modality: str, decoded: DecodedAudio | DecodedVideo) -> None:
    packets, size = work.skipped.get(modality, (0, 0))
    work.skipped[modality] = (packets + decoded.skipped_packets, size + decoded.skipped_bytes)


def _summary(info: MediaInfo, skipped: dict[str, tuple[int, int]]) -> MediaSummary:
    """What the probe found; skipped packets as the decodes counted them (the probe's for a stream not decoded)."""
    audio = video = None
    if info.audio is not None:
        packets, size = skipped.get(AUDIO, (info.audio.skipped_packets, info.audio.skipped_bytes))
        audio = AudioSummary(
            codec=info.audio.codec, sample_rate=info.audio.sample_rate, channels=info.audio.channels,
            skipped_packets=packets, skipped_bytes=size,
        )  # fmt: skip
    if info.video is not None:
        packets, size = skipped.get(VIDEO, (info.video.skipped_packets, info.video.skipped_bytes))
        video = VideoSummary(
            codec=info.video.codec, width=info.video.display_width, height=info.video.display_height, fps=info.video.fps,
            skipped_packets=packets, skipped_bytes=size,
        )  # fmt: skip
    return MediaSummary(
        container=info.container, duration=info.duration, size_bytes=info.size_bytes, audio=audio, video=video
    )


def _count_skipped(metrics: GatewayMetrics, media: MediaSummary) -> None:
    for modality, stream in ((AUDIO, media.audio), (VIDEO, media.video)):
        if stream is not None and stream.skipped_packets:
            metrics.skipped_packets.labels(modality).inc(stream.skipped_packets)
            metrics.skipped_bytes.labels(modality).inc(stream.skipped_bytes)


async def _all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Like gather, but the first failure cancels the rest (no orphaned tasks or warnings)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
