"""Health, readiness, the model list, Prometheus metrics, OpenAPI and structured logs."""

from __future__ import annotations

import json
import logging

from gateway_helpers import FAMILY, NUM_LABELS, assert_error, post_clip
from prometheus_client.parser import text_string_to_metric_families

from avserve.gateway.observability import JsonFormatter


def metric_samples(text: str) -> dict[str, list]:
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_health_and_readiness(embedded_gateway):
    with embedded_gateway.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["backend"] == "embedded"
    assert {f"{FAMILY}_av", f"{FAMILY}_audio", f"{FAMILY}_video"} <= set(ready["models"])


def test_models_lists_inputs_modalities_labels_and_routes(embedded_gateway):
    with embedded_gateway.client() as client:
        body = client.get("/v1/models").json()
        detail = client.get(f"/v1/models/{FAMILY}_av").json()
        assert_error(client.get("/v1/models/nope"), 404, "unknown_model")
    assert body["backend"] == "embedded" and body["default_family"] == FAMILY
    models = {m["name"]: m for m in body["models"]}
    av, audio, video = (models[f"{FAMILY}_{s}"] for s in ("av", "audio", "video"))
    assert av["modalities"] == ["audio", "video"] and audio["modalities"] == ["audio"] and video["modalities"] == ["video"]
    assert av["inputs"] == [
        {"name": "audio", "data_type": "TYPE_FP32", "dims": [32000]},
        {"name": "video", "data_type": "TYPE_UINT8", "dims": [4, 64, 64, 3]},
    ]
    assert av["heads"] == ["audio", "video", "fusion", "global"] and audio["heads"] == ["audio"]
    assert all(m["num_labels"] == NUM_LABELS for m in models.values())
    assert av["sample_rate"] == 16000 and av["clip_seconds"] == 2.0 and av["num_frames"] == 4
    families = {f["name"]: f["routes"] for f in body["families"]}
    assert families[FAMILY] == {"audio": f"{FAMILY}_audio", "audio+video": f"{FAMILY}_av", "video": f"{FAMILY}_video"}
    assert families["zorro_zero_fill"] == {"audio+video": "zorro_zero_fill_av"}
    assert models["zorro_zero_fill_av"]["missing_modality"] == "zero_fill"
    assert len(detail["labels"]) == NUM_LABELS and detail["labels"][0]
    # The embedded backend says how it batches each model: its measured curve and the rows it chose.
    batching = av["batching"]
    assert sorted(batching["ms_per_clip"], key=int) == ["1", "2", "4", "8"]
    assert batching["max_rows"] in (1, 2, 4, 8) and batching["reason"] and detail["batching"] == batching


def test_prometheus_metrics(embedded_gateway, clips):
    with embedded_gateway.client() as client:
        before = metric_samples(client.get("/metrics").text)
        assert post_clip(client, clips.audio).status_code == 200
        truncated = clips.av.read_bytes()[:3000]
        assert client.post("/classify", files={"file": ("cut.mp4", truncated)}).status_code == 422
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = metric_samples(response.text)

    def grew(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("avserve_requests_total", model=f"{FAMILY}_audio", route="audio", status="200", code="ok") == 1
    assert grew("avserve_requests_total", status="422", code="corrupt_media") == 1
    assert grew("avserve_decode_errors_total", code="corrupt_media") == 1
    for stage in ("upload", "probe", "decode", "inference", "total"):
        assert grew("avserve_stage_seconds_count", stage=stage) >= 1, stage
        assert value(after, "avserve_stage_seconds_bucket", stage=stage, le="+Inf") == value(
            after, "avserve_stage_seconds_count", stage=stage
        )
    assert grew("avserve_upload_bytes_count") == 2
    assert grew("avserve_upload_bytes_sum") == clips.audio.stat().st_size + len(truncated)
    assert value(after, "avserve_requests_in_flight") == 0
    # The backend's own counters: batch sizes, queue depth, per model.
    assert grew("avserve_backend_batch_size_count", backend="embedded", model=f"{FAMILY}_audio") >= 1
    assert grew("avserve_backend_completed_total", model=f"{FAMILY}_audio") == 1
    assert "avserve_backend_queue_depth" in after


def test_openapi_documents_typed_responses_and_errors(embedded_gateway):
    with embedded_gateway.client() as client:
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    classify = schema["paths"]["/classify"]["post"]
    assert classify["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ClassifyResponse")
    for status in ("401", "403", "404", "413", "415", "422", "429", "502", "503", "504"):
        ref = classify["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse"), status
    assert "multipart/form-data" in classify["requestBody"]["content"]
    names = {p["name"] for p in classify["parameters"]}
    assert {"model", "modality", "top_k", "start", "duration", "timeout"} <= names
    components = schema["components"]["schemas"]
    assert {"ClassifyResponse", "ErrorResponse", "ModelsResponse", "Timings", "Modalities"} <= set(components)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_structured_log_line_carries_the_request_id(embedded_gateway, clips):
    handler = _Records()
    access = logging.getLogger("avserve.gateway.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        with embedded_gateway.client(headers={"X-Request-ID": "test-request-42"}) as client:
            response = post_clip(client, clips.video)
    finally:
        access.removeHandler(handler)
    assert response.headers["x-request-id"] == "test-request-42"
    assert response.json()["request_id"] == "test-request-42"
    entries = [json.loads(line) for line in handler.lines]
    mine = [e for e in entries if e.get("request_id") == "test-request-42"]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["path"] == "/classify" and entry["status"] == 200 and entry["model"] == f"{FAMILY}_video"
    assert entry["route"] == "video" and set(entry["timings_ms"]) >= {"decode", "inference"}
    assert entry["upload_bytes"] == clips.video.stat().st_size


def test_an_unsafe_request_id_is_replaced(embedded_gateway):
    with embedded_gateway.client(headers={"X-Request-ID": "bad id\twith spaces"}) as client:
        response = client.get("/healthz")
    assert response.headers["x-request-id"] != "bad id\twith spaces" and len(response.headers["x-request-id"]) == 32


def test_batch_policy_settings_reach_the_embedded_backend(monkeypatch):
    from avserve.gateway.settings import GatewaySettings

    assert GatewaySettings().embedded_settings().follow_batch_curve
    monkeypatch.setenv("AVSERVE_BATCH_POLICY", "always")
    monkeypatch.setenv("AVSERVE_BATCH_PAYS_BELOW", "0.8")
    forced = GatewaySettings().embedded_settings()
    assert forced.micro_batching and not forced.follow_batch_curve and forced.batch_pays_below == 0.8
    monkeypatch.setenv("AVSERVE_BATCH_POLICY", "off")
    assert not GatewaySettings().embedded_settings().micro_batching
