"""One classify request after the upload: probe, route, decode, infer, post-process.

PyAV work runs in supervised worker processes (avserve.media.workers): a decoder crash, or a
file that needs more memory or CPU time than a worker may use, fails its own request with a
4xx and never the gateway; the event loop keeps accepting uploads and answering health checks.
The pool's size bounds how many probes and decodes run at once; admission control in front of
it (avserve.gateway.admission) keeps the queue short, and each request reports its worker time
to it through its ticket.

A request makes one worker call that opens the file once (avserve.media.reader): the route
depends on which streams decode, so we send the decode each possible route would need and the
worker picks after probing.
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
from avserve.media import DecodedAudio, DecodedVideo, MediaError, MediaInfo, MediaLimits
from avserve.media.reader import AudioInput, ClipWindow, DecodePlan, MediaRead, VideoInput, WindowPlan, read_media
from avserve.media.video import Sampling
from avserve.media.workers import MediaWorkers, MediaWorkersUnavailable
from avserve.repository import ModelSpec, RepositoryError
from avserve.contract import AUDIO, VIDEO, head_output
from avserve.views import view_probabilities

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
# Every set of streams a file can turn out to have; the worker decodes for the one it finds.
_STREAM_SETS = (frozenset({AUDIO, VIDEO}), frozenset({AUDIO}), frozenset({VIDEO}))


@dataclass(frozen=True)
class ClassifyParams:
    family: str
    modality: ModalityChoice
    top_k: int
    start: float
    duration: float | None
    sampling: Sampling = "exact"


Window = ClipWindow


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
    # The video's sampling mode and its chosen frames' largest distance from their targets (s).
    video_sampling: str | None = None
    max_frame_offset: float = 0.0


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
        repository = self.backend.repository

        stage = time.perf_counter()
        plans = {present: plan for present in _STREAM_SETS if (plan := self._plan(present, params)) is not None}
        read = await self._media(work, read_media, upload.path, plans, self.limits)
        info, present = read.info, read.present
        route = choose_route(repository, params.family, present, params.modality)
        if on_route is not None:
            on_route(route)
        spec = route.spec
        windows = plan_windows(spec, info.duration, params.start, params.duration, self.max_windows)
        if read.windows != windows:  # None: the worker had no plan for these streams, or the window did not fit
            # Route and windows are fine, so the plan itself failed: a model whose shapes do not
            # fit (raised here), or a mismatch that is a bug.
            self._plan_for(route, params)
            raise ApiError(500, "internal_error", "the media plan did not match the route")
        self.metrics.windows.observe(len(windows))
        # The worker's own clock splits the stage; queueing for a worker counts as probe time.
        elapsed = time.perf_counter() - stage
        timings["probe"] = max(0.0, elapsed - read.decode_seconds)
        timings["decode"] = read.decode_seconds
        batches = self._batches(work, route, read)
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
            media=_summary(info, work),
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

    def _plan(self, present: frozenset[str], params: ClassifyParams) -> DecodePlan | None:
        """What to decode if the file turns out to have `present`; None when that has no route
        (the request then fails after the probe, with the route's own error)."""
        try:
            route = choose_route(self.backend.repository, params.family, present, params.modality)
            return self._plan_for(route, params)
        except ApiError:
            return None

    def _plan_for(self, route: Route, params: ClassifyParams) -> DecodePlan:
        spec = route.spec
        audio = video = None
        if AUDIO in route.used:
            assert spec.sample_rate is not None  # the repository requires it of audio models
            audio = AudioInput(spec.sample_rate)
        if VIDEO in route.used:
            frames, height, width, _ = _checked(spec.input_shape, VIDEO)
            video = VideoInput(frames, height, width, params.sampling)
        return DecodePlan(audio, video, WindowPlan(spec.window_seconds, params.start, params.duration, self.max_windows))

    def _batches(self, work: _MediaWork, route: Route, read: MediaRead) -> list[dict[str, np.ndarray]]:
        """One input dict per window: the decoded modalities, the absent ones zero-filled."""
        spec = route.spec
        batches = []
        for index in range(len(read.windows or ())):
            inputs: dict[str, np.ndarray] = {}
            if AUDIO in route.used:
                inputs[AUDIO] = self._audio_input(work, spec, read.audio[index])
            if VIDEO in route.used:
                _tally_skipped(work, VIDEO, read.video[index])
                work.video_sampling = read.video[index].sampling
                work.max_frame_offset = max(work.max_frame_offset, read.video[index].max_offset)
                inputs[VIDEO] = read.video[index].frames[np.newaxis]
            if route.zero_filled:
                inputs.update(_checked(spec.zero_inputs, rows=1, names=sorted(route.zero_filled)))
            batches.append(inputs)
        return batches

    def _audio_input(self, work: _MediaWork, spec: ModelSpec, audio: DecodedAudio) -> np.ndarray:
        _tally_skipped(work, AUDIO, audio)
        samples = audio.samples
        wanted = spec.clip_samples
        if wanted is not None and len(samples) != wanted:
            # A window shorter than the model's clip (the last one, or a short `duration`):
            # silence after it, as the model saw for clips shorter than clip_seconds in training.
            samples = np.concatenate([samples, np.zeros(max(0, wanted - len(samples)), np.float32)])[:wanted]
        return samples[np.newaxis].astype(np.float32, copy=False)

    async def _infer(self, spec: ModelSpec, inputs: dict[str, np.ndarray], deadline: float) -> dict[str, np.ndarray]:
        try:
            return await self.backend.infer(spec.name, inputs, deadline=deadline)
        except BackendError as error:
            raise backend_error(error, self.retry_after_seconds) from None


# ---- helpers -------------------------------------------------------------------------------


def plan_windows(
    spec: ModelSpec, media_duration: float | None, start: float, duration: float | None, max_windows: int
) -> list[Window]:
    """The model-length windows covering `[start, start + duration)` (see WindowPlan.windows);
    a span that does not fit is a 422 `invalid_window`."""
    try:
        return WindowPlan(spec.window_seconds, start, duration, max_windows).windows(media_duration)
    except MediaError as error:
        raise media_error(error) from None


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


def _mean_probabilities(outputs: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    """Class probabilities of output `name` over the windows (batch row 0 of each): the softmax of
    their mean logits, as `avserve evaluate --views` averages views (avserve/views.py)."""
    return view_probabilities([np.asarray(output[name]).reshape(-1, output[name].shape[-1])[0] for output in outputs])


def _top(scores: np.ndarray, labels: tuple[str, ...], k: int) -> list[Prediction]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [Prediction(label=labels[i], score=float(scores[i])) for i in order]


def _tally_skipped(work: _MediaWork, modality: str, decoded: DecodedAudio | DecodedVideo) -> None:
    packets, size = work.skipped.get(modality, (0, 0))
    work.skipped[modality] = (packets + decoded.skipped_packets, size + decoded.skipped_bytes)


def _summary(info: MediaInfo, work: _MediaWork) -> MediaSummary:
    """What the probe found; skipped packets as the decodes counted them (the probe's for a stream not decoded)."""
    skipped = work.skipped
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
            skipped_packets=packets, skipped_bytes=size, sampling=work.video_sampling,
            max_frame_offset_ms=round(work.max_frame_offset * 1000, 3) if work.video_sampling else None,
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
