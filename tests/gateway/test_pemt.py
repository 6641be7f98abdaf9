"""PEMT behind POST /classify on the embedded backend and a real Triton: all three upload kinds.

PEMT (training/models/pemt.py) cuts a clip into units (pemt_tiny: four 0.5-s units of 4 frames
at 64x64 and 8,000 samples at 16 kHz), embeds each with a CNN, and contextualises the unit
embeddings with g_V, g_A and h_AV. It has an audio, a video and a fusion head and answers
audio+video uploads with their mean; its unimodal graphs are `head` graphs (f_A -> g_A -> head is
exactly the audio+video graph's audio head). The exported graphs hold each orthogonal Sigma as a
constant (`export_module()`: ONNX has no matrix exponential); the repository's model has random
Sigmas, so a graph that lost them would not match the torch model. Every answer is checked
against the exported graph run by onnxruntime and against the torch model, on the tensors
decoded from the file.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from gateway_helpers import wait_until_ready
from test_mbt import decoded_inputs, reference  # noqa: F401  (reference: a fixture)
from test_vatt import assert_every_upload_kind_answered_by_its_graph, assert_models_say_the_unimodal_graphs_are_heads

from avserve.repository import load_model_spec
from avserve.triton import LocalTriton

PEMT = "pemt_tiny"
HEADS = {f"{PEMT}_av": {"audio", "video", "fusion"}, f"{PEMT}_audio": {"audio"}, f"{PEMT}_video": {"video"}}


@pytest.fixture(scope="module")
def pemt_embedded(gateway_factory, pemt_repository):
    repository, _ = pemt_repository
    return gateway_factory(repository=repository, default_model=PEMT)


@pytest.fixture(scope="module")
def pemt_triton(gateway_factory, pemt_repository) -> Iterator:
    repository, _ = pemt_repository
    triton = LocalTriton(repository, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=180).start()
    try:
        yield wait_until_ready(gateway_factory(backend="triton", triton_url=triton.grpc_url, request_timeout_seconds=30))
    finally:
        triton.stop()


@pytest.fixture
def pemt_gateway(request):
    return request.getfixturevalue({"embedded": "pemt_embedded", "triton": "pemt_triton"}[request.param])


BACKENDS = ["embedded", pytest.param("triton", marks=pytest.mark.slow)]


def test_test_media_decode_to_pemt_tiny_inputs(pemt_repository, clips):
    """The shared test clips (64x48 at 10 fps, 20 frames; 2 s of 16 kHz audio) give pemt_tiny's
    exact inputs: 16 distinct 64x64 frames (4 per unit) and 32,000 samples (8,000 per unit)."""
    repository, model = pemt_repository
    cfg = model.config
    spec = load_model_spec(repository / f"{PEMT}_av")
    assert (spec.sample_rate, spec.clip_seconds, spec.num_frames, spec.image_size) == (16_000, 2.0, 16, 64)
    assert spec.architecture == "pemt"
    inputs = decoded_inputs(repository / f"{PEMT}_av", clips.av)
    assert inputs["audio"].shape == (1, cfg.clip_samples) and inputs["audio"].dtype == np.float32
    assert inputs["video"].shape == (1, cfg.num_frames, cfg.image_size, cfg.image_size, 3) and inputs["video"].dtype == np.uint8
    frames = inputs["video"][0]
    assert len({frame.tobytes() for frame in frames}) == cfg.num_frames  # no unit is a repeated frame
    assert np.abs(inputs["audio"]).max() > 0.05  # every unit has sound
    units = inputs["audio"][0].reshape(cfg.num_units, -1)
    assert units.shape == (4, 8_000) and (np.abs(units).max(axis=1) > 0.05).all()


def test_the_exported_model_has_rotated_sigmas(pemt_repository):
    """The fixture exported a model whose Sigma matrices are not the identity they start as."""
    import torch

    _, model = pemt_repository
    sigmas = model.orthogonal_matrices()
    assert len(sigmas) == 18
    for sigma in sigmas:
        eye = torch.eye(sigma.shape[0])
        assert (sigma - eye).abs().max() > 0.1 and (sigma @ sigma.T - eye).abs().max() < 1e-5


@pytest.mark.parametrize("pemt_gateway", BACKENDS, indirect=True)
def test_every_upload_kind_is_answered_by_its_graph(pemt_gateway, pemt_repository, clips, reference):
    """...and the torch model it is compared with computes its Sigma = expm(A - A^T), not a frozen copy."""
    repository, model = pemt_repository
    assert_every_upload_kind_answered_by_its_graph(pemt_gateway, repository, model, PEMT, HEADS, clips, reference)


def test_unimodal_answers_are_the_av_answers_heads(pemt_repository, clips, reference):
    """A `head` graph: the audio-only graph on the av upload's audio gives the av graph's audio
    head; the av answer is the mean of its three heads (not of the unimodal answers alone)."""
    repository, _ = pemt_repository
    av = reference(repository / f"{PEMT}_av", clips.av)
    audio = reference(repository / f"{PEMT}_audio", clips.av)  # decodes only the audio of the same file
    video = reference(repository / f"{PEMT}_video", clips.av)
    np.testing.assert_allclose(audio["logits"], av["head_audio"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(video["logits"], av["head_video"], rtol=0, atol=1e-6)
    assert np.abs(av["head_fusion"] - av["head_audio"]).max() > 1e-4 and np.abs(av["head_fusion"] - av["head_video"]).max() > 1e-4


@pytest.mark.parametrize("pemt_gateway", BACKENDS, indirect=True)
def test_models_say_the_unimodal_graphs_are_heads(pemt_gateway):
    body = assert_models_say_the_unimodal_graphs_are_heads(pemt_gateway, PEMT, HEADS, "pemt")
    assert {f["name"]: f["routes"] for f in body["families"]} == {
        PEMT: {"audio+video": f"{PEMT}_av", "audio": f"{PEMT}_audio", "video": f"{PEMT}_video"}
    }
