"""VATT behind POST /classify on the embedded backend and a real Triton: all three upload kinds.

VATT (training/models/vatt.py) takes raw PCM straight into its graph (128-sample segments, no
spectrogram), has an audio and a video head on independent transformers, and answers audio+video
uploads with the mean of the two (late fusion). Its unimodal graphs are `head` graphs: the audio
graph computes exactly the audio+video graph's audio head. Every answer is checked against the
exported graph run by onnxruntime (and the torch model) on the tensors decoded from the file.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from gateway_helpers import NUM_LABELS, post_clip, wait_until_ready
from test_mbt import KINDS, assert_scores, decoded_inputs, reference, softmax  # noqa: F401  (reference: a fixture)

from avserve.repository import load_model_spec
from avserve.triton import LocalTriton

VATT = "vatt_tiny"
HEADS = {f"{VATT}_av": {"audio", "video"}, f"{VATT}_audio": {"audio"}, f"{VATT}_video": {"video"}}


@pytest.fixture(scope="module")
def vatt_embedded(gateway_factory, vatt_repository):
    repository, _ = vatt_repository
    return gateway_factory(repository=repository, default_model=VATT)


@pytest.fixture(scope="module")
def vatt_triton(gateway_factory, vatt_repository) -> Iterator:
    repository, _ = vatt_repository
    triton = LocalTriton(repository, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=180).start()
    try:
        yield wait_until_ready(gateway_factory(backend="triton", triton_url=triton.grpc_url, request_timeout_seconds=30))
    finally:
        triton.stop()


@pytest.fixture
def vatt_gateway(request):
    return request.getfixturevalue({"embedded": "vatt_embedded", "triton": "vatt_triton"}[request.param])


BACKENDS = ["embedded", pytest.param("triton", marks=pytest.mark.slow)]


def assert_every_upload_kind_answered_by_its_graph(
    gateway, repository, model, family, heads, clips, reference, unimodal: str = "head"
) -> None:
    """For a family whose unimodal graphs are `head` graphs (VATT, PEMT; or `stream` graphs, as
    `unimodal` says: AV-MAE's mid fusion, MBT): each upload kind is answered by its own graph,
    with the scores onnxruntime gives on the decoded tensors, and those are the torch model's on
    the same inputs (every head, and the answer), the unimodal ones a call with one modality."""
    import torch

    backend = gateway.settings.backend
    with gateway.client() as client:
        for kind, (suffix, used) in KINDS.items():
            clip = getattr(clips, kind)
            model_dir = repository / f"{family}_{suffix}"
            response = post_clip(client, clip, model=family, top_k=NUM_LABELS)
            assert response.status_code == 200, response.text
            body = response.json()
            kind_of_graph = None if kind == "av" else unimodal
            assert body["model"] == {
                "name": model_dir.name, "version": "1", "family": family, "backend": backend, "unimodal": kind_of_graph,
            }  # fmt: skip
            assert body["modalities"] == {"present": used, "used": used, "zero_filled": [], "degraded": False}
            expected = reference(model_dir, clip)
            labels = load_model_spec(model_dir).labels
            assert_scores(body["predictions"], expected["logits"], labels)
            assert set(body["heads"]) == heads[model_dir.name]
            for head, top in body["heads"].items():
                assert_scores(top, expected[f"head_{head}"], labels)
            with torch.no_grad():
                out = model(**{name: torch.from_numpy(x) for name, x in decoded_inputs(model_dir, clip).items()})
            np.testing.assert_allclose(softmax(out["logits"][0].numpy()), expected["logits"], rtol=0, atol=1e-4)
            for head in heads[model_dir.name]:
                np.testing.assert_allclose(softmax(out[head][0].numpy()), expected[f"head_{head}"], rtol=0, atol=1e-4)


def assert_models_say_the_unimodal_graphs_are_heads(gateway, family, heads, architecture, unimodal: str = "head") -> dict:
    """/v1/models lists the family's three models (other families may be served too) with their
    heads, `unimodal: head` (or as `unimodal` says) on the two unimodal ones; returns the body."""
    with gateway.client() as client:
        body = client.get("/v1/models").json()
    models = {m["name"]: m for m in body["models"] if m["family"] == family}
    assert set(models) == set(heads)
    assert {name: m["unimodal"] for name, m in models.items()} == {
        f"{family}_av": None, f"{family}_audio": unimodal, f"{family}_video": unimodal,
    }  # fmt: skip
    assert {name: set(m["heads"]) for name, m in models.items()} == heads
    assert {m["architecture"] for m in models.values()} == {architecture}
    return body


@pytest.mark.parametrize("vatt_gateway", BACKENDS, indirect=True)
def test_every_upload_kind_is_answered_by_its_graph(vatt_gateway, vatt_repository, clips, reference):
    repository, model = vatt_repository
    assert_every_upload_kind_answered_by_its_graph(vatt_gateway, repository, model, VATT, HEADS, clips, reference)


def test_unimodal_answers_are_the_av_answers_heads(vatt_embedded, vatt_repository, clips, reference):
    """A `head` graph: the audio-only graph on the av upload's audio gives the av graph's audio head."""
    repository, _ = vatt_repository
    av = reference(repository / f"{VATT}_av", clips.av)
    audio = reference(repository / f"{VATT}_audio", clips.av)  # decodes only the audio of the same file
    video = reference(repository / f"{VATT}_video", clips.av)
    np.testing.assert_allclose(audio["logits"], av["head_audio"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(video["logits"], av["head_video"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("vatt_gateway", BACKENDS, indirect=True)
def test_models_say_the_unimodal_graphs_are_heads(vatt_gateway):
    assert_models_say_the_unimodal_graphs_are_heads(vatt_gateway, VATT, HEADS, "vatt")
