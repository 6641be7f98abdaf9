"""Prometheus metrics of one gateway app (its own registry, so several apps can share a process).

Request counts, per-stage latency, in-flight requests, upload sizes and decode errors are
recorded by the gateway as requests run. Batch sizes and queue depths are the backend's:
a collector reads its `stats()` snapshot at scrape time, so the two never disagree.

Requests the HTTP layer refuses before the application sees them (avserve/gateway/server.py:
malformed, oversized or too slow request heads) are counted here too: the app's lifespan hands
its `GatewayMetrics` to the server as ASGI lifespan state under `LIFESPAN_STATE_KEY`, the dict
uvicorn gives every connection's protocol (`app_state`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

STAGES = ("upload", "probe", "decode", "inference", "total")
# Seconds: from a warm tiny model (~1 ms) to a request close to the default 30 s deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UPLOAD_BUCKETS = tuple(float(2**p) for p in range(10, 31, 2))  # 1 KiB .. 1 GiB
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# The lifespan state key under which the app hands its GatewayMetrics to the HTTP protocol.
LIFESPAN_STATE_KEY = "avserve.gateway_metrics"
# What the HTTP layer answers itself (server.py), exported at 0 from the start.
HTTP_REJECTIONS = (
    ("400", "invalid_content_length"),
    ("400", "invalid_http_request"),
    ("408", "request_header_timeout"),
    ("431", "request_headers_too_large"),
)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "avserve_requests",
            "Classify requests by served model, modality route, HTTP status and error code.",
            ["model", "route", "status", "code"],
            registry=self.registry,
        )
        # model/route: the served model and modality route ("none" and the family's name when a
        # request was refused before routing), so latency can be read per model and per route.
        self.stage_seconds = Histogram(
            "avserve_stage_seconds",
            "Time spent per stage of a classify request (upload, probe, decode, inference, total).",
            ["stage", "model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "avserve_requests_in_flight", "Classify requests being handled now.", registry=self.registry
        )
        self.upload_bytes = Histogram(
            "avserve_upload_bytes", "Size of accepted uploads.", buckets=UPLOAD_BUCKETS, registry=self.registry
        )
        self.upload_bytes_total = Counter(
            "avserve_upload_bytes_received", "Upload bytes spooled to disk.", registry=self.registry
        )
        self.decode_errors = Counter(
            "avserve_decode_errors", "Uploads refused by probing or decoding, by media error code.", ["code"],
            registry=self.registry,
        )
        # stream: audio or video. What /classify answers reported in `media.<stream>.skipped_packets`.
        self.skipped_packets = Counter(
            "avserve_skipped_packets", "Damaged packets skipped while decoding answered requests, by stream.",
            ["stream"], registry=self.registry,
        )  # fmt: skip
        self.skipped_bytes = Counter(
            "avserve_skipped_packet_bytes", "Bytes of the damaged packets skipped, by stream.", ["stream"],
            registry=self.registry,
        )
        for stream in ("audio", "video"):  # exported at 0 from the start
            self.skipped_packets.labels(stream)
            self.skipped_bytes.labels(stream)
        self.http_rejections = Counter(
            "avserve_http_rejections",
            "Requests the HTTP layer answered with an error before the application saw them, by status and code.",
            ["status", "code"], registry=self.registry,
        )  # fmt: skip
        for status, code in HTTP_REJECTIONS:
            self.http_rejections.labels(status, code)
        self.windows = Histogram(
            "avserve_windows_per_request", "Model-length windows scored per classify request.",
            buckets=(1, 2, 4, 8, 16, 32), registry=self.registry,
        )
        # process_cpu_seconds_total, process_resident_memory_bytes, ... and python_info: the
        # dashboards' CPU and memory panels (this registry is not the global default one).
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def http_rejected(self, status: int, code: str) -> None:
        """One request refused by the HTTP layer (server.GatewayHttpProtocol)."""
        self.http_rejections.labels(str(status), code).inc()

    def watch_media(self, workers: Any, admission: Any) -> None:
        """Export the media workers' failures and the admission queue at every scrape."""
        self.registry.register(_MediaCollector(workers, admission))

    def watch_cache(self, cache: Any) -> None:
        """Export the response cache's counters and size at every scrape (zeros when it is off)."""
        self.registry.register(_CacheCollector(cache))

    def watch_backend(self, backend: Any) -> None:
        """Export the backend's own counters (when it keeps any) at every scrape."""
        stats = getattr(backend, "stats", None)
        if callable(stats):
            self.registry.register(_BackendCollector(stats, getattr(backend, "name", "unknown")))


class _MediaCollector(Collector):
    def __init__(self, workers: Any, admission: Any) -> None:
        self._workers = workers
        self._admission = admission

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        calls = CounterMetricFamily("avserve_media_calls", "Probe and decode calls sent to the media workers.")
        calls.add_metric([], self._workers.stats.calls)
        failures = CounterMetricFamily(
            "avserve_media_failures",
            "Media worker calls lost to a limit or a dead worker: crashed, cpu_limit, memory_limit, timeout, cancelled.",
            labels=["reason"],
        )
        for reason in ("crashed", "cpu_limit", "memory_limit", "timeout", "cancelled"):
            failures.add_metric([reason], self._workers.stats.failures.get(reason, 0))
        pending = GaugeMetricFamily(
            "avserve_media_pending_requests", "Admitted requests whose probe and decodes are not done yet."
        )
        pending.add_metric([], self._admission.pending)
        service = GaugeMetricFamily(
            "avserve_media_service_seconds", "Moving average of the worker time one request's media work takes."
        )
        service.add_metric([], self._admission.service)
        wait = GaugeMetricFamily("avserve_media_predicted_wait_seconds", "Predicted wait for a media worker now.")
        wait.add_metric([], self._admission.predicted_wait())
        yield from (calls, failures, pending, service, wait)


class _CacheCollector(Collector):
    def __init__(self, cache: Any) -> None:
        self._cache = cache

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        cache, stats = self._cache, self._cache.stats
        unlabelled = (
            (CounterMetricFamily, "hits", "Classify requests answered from the response cache, without decoding.", stats.hits),
            (CounterMetricFamily, "misses", "Response cache lookups that found nothing: the answer was computed.", stats.misses),
            (CounterMetricFamily, "bypasses", "Requests whose Cache-Control (no-cache, no-store) skipped the cache lookup.",
             stats.bypasses),
            (CounterMetricFamily, "stores", "Answers stored in the response cache.", stats.stores),
            (GaugeMetricFamily, "bytes", "Bytes the response cache's entries weigh now.", cache.bytes),
            (GaugeMetricFamily, "entries", "Answers in the response cache now.", cache.entries),
            (GaugeMetricFamily, "capacity_bytes", "The response cache's bound (AVSERVE_RESPONSE_CACHE_BYTES); 0 = off.",
             cache.max_bytes),
        )
        for kind, name, text, value in unlabelled:
            family = kind(f"avserve_response_cache_{name}", text)
            family.add_metric([], value)
            yield family
        evictions = CounterMetricFamily(
            "avserve_response_cache_evictions",
            "Entries dropped: capacity (LRU, over the byte bound), expired (TTL), models_changed (a new repository).",
            labels=["reason"],
        )
        for reason, count in stats.evictions.items():
            evictions.add_metric([reason], count)
        yield evictions


class _BackendCollector(Collector):
    def __init__(self, stats: Callable[[], Any], backend: str) -> None:
        self._stats = stats
        self._backend = backend

    def describe(self) -> list:
        return []  # names depend on the snapshot; skip the registry's duplicate-name check

    def collect(self) -> Iterator[Any]:
        try:
            snapshot = self._stats()
        except Exception:  # a scrape must not fail because the backend is restarting
            return
        labels = ["backend", "model"]
        queue = GaugeMetricFamily("avserve_backend_queue_depth", "Requests waiting in the backend.", labels=labels)
        running = GaugeMetricFamily("avserve_backend_in_flight", "Requests in a running batch.", labels=labels)
        counts = {
            name: CounterMetricFamily(f"avserve_backend_{name}", f"Backend requests: {name}.", labels=labels)
            for name in ("requests", "completed", "rejected", "expired", "failed", "unavailable", "batches")
        }
        batch_sizes = HistogramMetricFamily(
            "avserve_backend_batch_size", "Rows per executed backend batch.", labels=labels
        )
        for model, stats in sorted(snapshot.items()):
            values = [self._backend, model]
            queue.add_metric(values, stats.queue_depth)
            running.add_metric(values, stats.in_flight)
            for name, family in counts.items():
                family.add_metric(values, getattr(stats, name))
            sizes = dict(stats.batch_sizes)
            buckets = [(str(float(bound)), sum(n for size, n in sizes.items() if size <= bound)) for bound in BATCH_BUCKETS]
            buckets.append(("+Inf", sum(sizes.values())))
            rows = sum(size * n for size, n in sizes.items())
            batch_sizes.add_metric(values, buckets, sum_value=rows)
        yield queue
        yield running
        yield from counts.values()
        yield batch_sizes
