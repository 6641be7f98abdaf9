"""What the dashboards need from the gateway's registry: process CPU/memory, per-model stage latency."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from avserve.gateway.metrics import GatewayMetrics


def test_registry_exports_process_metrics_and_per_model_stage_latency():
    metrics = GatewayMetrics()
    metrics.stage_seconds.labels("total", "zorro_tiny_av", "av").observe(0.02)
    samples = {
        sample.name: sample
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
    }
    assert samples["process_cpu_seconds_total"].value > 0
    assert samples["process_resident_memory_bytes"].value > 0
    assert "python_info" in samples
    assert samples["avserve_stage_seconds_count"].labels == {"stage": "total", "model": "zorro_tiny_av", "route": "av"}
    # Two gateways in one process (tests) each get their own process collector without clashing.
    assert b"process_cpu_seconds_total" in generate_latest(GatewayMetrics().registry)


def test_series_the_dashboards_and_alerts_need_exist_at_zero_before_any_event():
    """A counter label value never incremented would have no series: its dashboard query and
    rule would return nothing (tests/observability/test_end_to_end.py checks that they do)."""
    metrics = GatewayMetrics()
    metrics.http_rejected(408, "request_header_timeout")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
    }
    for stream in ("audio", "video"):
        assert samples[("avserve_skipped_packets_total", (("stream", stream),))] == 0
        assert samples[("avserve_skipped_packet_bytes_total", (("stream", stream),))] == 0
    rejections = {
        dict(labels)["code"]: (dict(labels)["status"], value)
        for (name, labels), value in samples.items()
        if name == "avserve_http_rejections_total"
    }
    assert rejections == {
        "invalid_content_length": ("400", 0), "invalid_http_request": ("400", 0),
        "request_header_timeout": ("408", 1), "request_headers_too_large": ("431", 0),
    }  # fmt: skip
