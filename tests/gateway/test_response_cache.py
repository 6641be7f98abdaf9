"""The response cache (avserve/gateway/response_cache.py): off by default; on, a repeated request
is answered without a probe or decode, and anything that could change the answer misses."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest
from gateway_helpers import FAMILY, assert_error, post_clip
from prometheus_client.parser import text_string_to_metric_families

from avserve.gateway.classifier import ClassifyParams
from avserve.gateway.response_cache import ResponseCache
from avserve.gateway.schemas import ClassifyResponse
from avserve.repository import Repository, load_repository


def metrics(client) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }


def media_calls(client) -> float:
    return metrics(client)[("avserve_media_calls_total", ())]


def cache_counts(client) -> dict[str, float]:
    samples = metrics(client)
    counts = {name: samples[(f"avserve_response_cache_{name}_total", ())] for name in ("hits", "misses", "bypasses", "stores")}
    counts["capacity_evictions"] = samples[("avserve_response_cache_evictions_total", (("reason", "capacity"),))]
    counts["bytes"] = samples[("avserve_response_cache_bytes", ())]
    counts["entries"] = samples[("avserve_response_cache_entries", ())]
    return counts


def with_free_box(clip: Path, directory: Path, payload: bytes) -> Path:
    """The same clip plus a trailing ISO BMFF `free` box: other bytes, the same decoded media."""
    copy = directory / f"{clip.stem}-{payload.hex()}{clip.suffix}"
    copy.write_bytes(clip.read_bytes() + struct.pack(">I", 8 + len(payload)) + b"free" + payload)
    return copy


@pytest.fixture(scope="module")
def cached_gateway(gateway_factory, serving_repository):
    return gateway_factory(repository=serving_repository, default_model=FAMILY, response_cache_bytes=1024 * 1024)


def test_off_by_default_every_request_decodes(embedded_gateway, clips):
    assert embedded_gateway.settings.response_cache_bytes == 0
    with embedded_gateway.client() as client:
        calls = media_calls(client)
        answers = [post_clip(client, clips.audio, top_k=2) for _ in range(2)]
        assert media_calls(client) - calls == 2  # one media call (probe + decode) each
        counts = cache_counts(client)
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["cache"] is None and "x-cache" not in answer.headers
    assert counts["hits"] == counts["misses"] == counts["entries"] == 0


def test_a_repeated_request_is_a_hit_without_probe_or_decode(cached_gateway, clips):
    with cached_gateway.client() as client:
        before = cache_counts(client)
        miss = post_clip(client, clips.av, top_k=3)
        calls = media_calls(client)
        hit = post_clip(client, clips.av, top_k=3)
        assert media_calls(client) == calls  # no probe, no decode
        after = cache_counts(client)
    assert miss.status_code == hit.status_code == 200, (miss.text, hit.text)
    assert (miss.json()["cache"], miss.headers["x-cache"]) == ("miss", "miss")
    assert (hit.json()["cache"], hit.headers["x-cache"]) == ("hit", "hit")
    assert after["hits"] - before["hits"] == 1 and after["misses"] - before["misses"] == 1
    assert after["entries"] - before["entries"] == 1 and after["bytes"] > before["bytes"]
    first, second = miss.json(), hit.json()
    assert second["request_id"] == hit.headers["x-request-id"] != first["request_id"]
    assert second["timings_ms"]["probe"] == second["timings_ms"]["decode"] == second["timings_ms"]["inference"] == 0
    assert second["timings_ms"]["total"] >= second["timings_ms"]["upload"] > 0
    unchanged = ("model", "modalities", "predictions", "heads", "windows", "media")
    assert {k: second[k] for k in unchanged} == {k: first[k] for k in unchanged}


def test_other_parameters_or_other_bytes_miss(cached_gateway, clips, tmp_path):
    other_bytes = with_free_box(clips.av, tmp_path, b"other")
    with cached_gateway.client() as client:
        assert post_clip(client, clips.av, top_k=4).json()["cache"] in ("miss", "hit")  # warm this key
        assert post_clip(client, clips.av, top_k=4).json()["cache"] == "hit"
        before = cache_counts(client)
        variants = [
            post_clip(client, clips.av, top_k=5),
            post_clip(client, clips.av, top_k=4, modality="audio"),
            post_clip(client, clips.av, top_k=4, start=0.5),
            post_clip(client, clips.av, top_k=4, duration=1.0),
            post_clip(client, other_bytes, top_k=4),
        ]
        assert cache_counts(client)["hits"] == before["hits"]
        # ... and the other bytes decode to the same answer: only the key differed.
        assert post_clip(client, other_bytes, top_k=4).json()["cache"] == "hit"
        reference = post_clip(client, clips.av, top_k=4).json()
    assert [v.json()["cache"] for v in variants] == ["miss"] * len(variants)
    assert variants[-1].json()["predictions"] == reference["predictions"]


def test_cache_control_no_cache_recomputes_and_no_store_leaves_the_cache_alone(cached_gateway, clips):
    with cached_gateway.client() as client:
        post_clip(client, clips.video, top_k=2)
        assert post_clip(client, clips.video, top_k=2).json()["cache"] == "hit"
        before, calls = cache_counts(client), media_calls(client)
        for directive in ("no-cache", "no-store", "max-age=0, no-cache"):
            client.headers["Cache-Control"] = directive
            bypassed = post_clip(client, clips.video, top_k=2)
            assert (bypassed.json()["cache"], bypassed.headers["x-cache"]) == ("bypass", "bypass")
        del client.headers["Cache-Control"]
        assert media_calls(client) - calls == 3  # three probes and decodes, one media call each
        after = cache_counts(client)
        assert post_clip(client, clips.video, top_k=2).json()["cache"] == "hit"
    assert after["bypasses"] - before["bypasses"] == 3 and after["hits"] == before["hits"]
    assert after["stores"] - before["stores"] == 2  # no-cache refreshes the entry, no-store does not


def test_errors_are_not_cached(cached_gateway, clips):
    with cached_gateway.client() as client:
        before, calls = cache_counts(client), media_calls(client)
        for _ in range(2):
            assert_error(post_clip(client, clips.audio, start=100), 422, "invalid_window")
        assert media_calls(client) - calls == 2  # probed both times
        after = cache_counts(client)
    assert after["stores"] == before["stores"] and after["misses"] - before["misses"] == 2


def test_entries_are_evicted_least_recently_used_first_beyond_the_byte_bound(gateway_factory, serving_repository, clips):
    gateway = gateway_factory(repository=serving_repository, default_model=FAMILY, response_cache_bytes=8 * 1024)
    with gateway.client() as client:
        for top_k in (1, 2, 3, 4, 5, 6):
            assert post_clip(client, clips.audio, top_k=top_k).json()["cache"] == "miss"
            counts = cache_counts(client)
            assert counts["bytes"] <= 8 * 1024
        assert counts["capacity_evictions"] > 0 and counts["entries"] == 6 - counts["capacity_evictions"]
        assert post_clip(client, clips.audio, top_k=6).json()["cache"] == "hit"  # the newest stays
        assert post_clip(client, clips.audio, top_k=1).json()["cache"] == "miss"  # the oldest went first


# ---- the key, against real repositories -------------------------------------------------------


def _answer(name: str) -> ClassifyResponse:
    return ClassifyResponse.model_validate({
        "request_id": "first", "model": {"name": name, "version": "1", "family": FAMILY, "backend": "embedded"},
        "modalities": {"present": ["audio"], "used": ["audio"]}, "predictions": [{"label": "a", "score": 1.0}],
        "windows": [{"start": 0.0, "duration": 2.0}],
        "media": {"container": "mp4", "duration": 2.0, "size_bytes": 10, "audio": None, "video": None},
        "timings_ms": {"upload": 1, "probe": 1, "decode": 1, "inference": 1, "total": 4},
    })  # fmt: skip


def test_a_new_model_version_or_a_reloaded_repository_misses(zorro_repository):
    repository = load_repository(zorro_repository[0])
    params = ClassifyParams(family=FAMILY, modality="auto", top_k=5, start=0.0, duration=None)
    cache = ResponseCache(1024 * 1024)
    key = cache.key(b"clip", ".mp4", "embedded", repository, params)
    assert cache.put(key, _answer(f"{FAMILY}_audio"), model=f"{FAMILY}_audio", route="audio")
    hit = cache.get(cache.key(b"clip", ".mp4", "embedded", repository, params))
    assert hit is not None and hit.answer("second", upload_seconds=0.001, total_seconds=0.002).request_id == "second"
    # Every parameter is in the key, and so are the backend and the file's extension.
    for other in (dataclasses.replace(params, top_k=4), dataclasses.replace(params, modality="audio")):
        assert cache.key(b"clip", ".mp4", "embedded", repository, other).digest != key.digest
    assert cache.key(b"clip", ".aac", "embedded", repository, params).digest != key.digest
    assert cache.key(b"clip", ".mp4", "triton", repository, params).digest != key.digest

    # Version 2 of the family's audio model (a Triton backend re-reading the index after a reload).
    bumped = Repository.from_specs(
        dataclasses.replace(spec, versions=(2,)) if spec.name == f"{FAMILY}_audio" else spec
        for spec in repository.models.values()
    )
    assert cache.get(cache.key(b"clip", ".mp4", "embedded", bumped, params)) is None
    assert cache.entries == 0 and cache.stats.evictions["models_changed"] == 1
    # An answer computed against the replaced repository is not stored under the new one.
    assert not cache.put(key, _answer(f"{FAMILY}_audio"), model=f"{FAMILY}_audio", route="audio")
    # The same versions re-read as a new repository object (a restarted Triton: maybe a
    # re-export, which keeps version 1) start a new generation too.
    again = cache.key(b"clip", ".mp4", "embedded", Repository.from_specs(bumped.models.values()), params)
    assert again.generation == key.generation + 2


@pytest.mark.parametrize(
    ("cache_control", "pragma", "lookup", "store"),
    [
        (None, None, True, True),
        ("no-cache", None, False, True),
        ("No-Cache, max-age=0", None, False, True),
        ("no-store", None, False, False),
        (None, "no-cache", False, True),
        ("max-age=60", "no-cache", True, True),  # Cache-Control wins over the HTTP/1.0 Pragma
    ],
)
def test_request_directives(cache_control, pragma, lookup, store):
    policy = ResponseCache(1).policy(cache_control, pragma)
    assert (policy.lookup, policy.store) == (lookup, store)
    assert not ResponseCache(0).policy(cache_control, pragma).active
