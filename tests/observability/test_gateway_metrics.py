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
