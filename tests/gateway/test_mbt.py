"""MBT behind POST /classify, on the embedded backend and the real Triton, alone and next to Zorro.

MBT (training/models/mbt.py) has a single head, `cls`, and its unimodal graphs are `stream`
graphs: the model run on one stream alone, not a head of the audio+video model. So, unlike
Zorro's tests (test_classify.py), no answer is checked against another route's head: every
answer is checked against the exported graph run directly by onnxruntime (and the torch
model) on the tensors decoded from the same file with the model's own preprocessing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from gateway_helpers import FAMILY as ZORRO
from gateway_helpers import NUM_LABELS, post_clip, scores, wait_until_ready

from avserve.media import decode_audio, decode_video
from avserve.repository import load_model_spec, read_model_config, write_model_config
from avserve.triton import LocalTriton

MBT = "mbt_tiny"
ATOL = 1e-4
# Upload kind (a `clips` attribute) -> the model suffix that must answer and the modalities it uses.
KINDS = {"av": ("av", ["audio", "video"]), "audio": ("audio", ["audio"]), "video": ("video", ["video"])}
# Heads each answering model reports; MBT's unimodal graphs keep the one head.
HEADS = {
    f"{ZORRO}_av": {"audio", "video", "fusion", "global"},
    f"{ZORRO}_audio": {"audio"},
    f"{ZORRO}_video": {"video"},
    **{f"{MBT}_{suffix}": {"cls"} for suffix, _ in KINDS.values()},
}
# What `export_run` records for a run trained with --modality-dropout 0.3 (set on the mixed
# repository's MBT configs, to see the parameter reach GET /v1/models through both backends).
MODALITY_DROPOUT = "0.3"

Probabilities = dict[str, np.ndarray]  # output name ("logits", "head_<name>") -> softmax [num_classes]


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mbt_gateway(gateway_factory, mbt_repository):
    """The embedded backend serving only the exported mbt_tiny_{av,audio,video}."""
    repository, _ = mbt_repository
    return gateway_factory(repository=repository, default_model=MBT)


@pytest.fixture(scope="module")
def mixed_repository(zorro_repository, mbt_repository, tmp_path_factory) -> Path:
    """Both families in one repository; MBT's configs say it was trained with modality dropout."""
    repository = tmp_path_factory.mktemp("mixed_repository")
    for source, _ in (zorro_repository, mbt_repository):
        for model_dir in source.iterdir():
            if not model_dir.name.startswith("."):
                shutil.copytree(model_dir, repository / model_dir.name)
    for suffix, _ in KINDS.values():
        config_path = repository / f"{MBT}_{suffix}" / "config.pbtxt"
        config = read_model_config(config_path)
        config.parameters["modality_dropout"].string_value = MODALITY_DROPOUT
        write_model_config(config_path, config)
    return repository


@pytest.fixture(scope="module")
def mixed_embedded(gateway_factory, mixed_repository):
    return gateway_factory(repository=mixed_repository)


@pytest.fixture(scope="module")
def mixed_triton(gateway_factory, mixed_repository) -> Iterator:
    """One real tritonserver for the module, serving both families, and a gateway in front."""
    triton = LocalTriton(mixed_repository, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=180).start()
    try:
        yield wait_until_ready(gateway_factory(backend="triton", triton_url=triton.grpc_url, request_timeout_seconds=30))
    finally:
        triton.stop()


@pytest.fixture(scope="module")
def reference() -> Callable[[Path, Path], Probabilities]:
    """`reference(model_dir, clip)`: the model's graph run by onnxruntime on the clip's first
    window, decoded as the gateway decodes it (one model-length window from 0 s)."""
    import onnxruntime as ort

    sessions: dict[Path, ort.InferenceSession] = {}

    def run(model_dir: Path, clip: Path) -> Probabilities:
        if model_dir not in sessions:
            path = str(model_dir / "1" / "model.onnx")
            sessions[model_dir] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        session = sessions[model_dir]
        names = [output.name for output in session.get_outputs()]
        logits = session.run(names, decoded_inputs(model_dir, clip))
        return {name: softmax(values[0]) for name, values in zip(names, logits, strict=True)}

    return run


def decoded_inputs(model_dir: Path, clip: Path) -> dict[str, np.ndarray]:
    spec = load_model_spec(model_dir)
    inputs = {}
    if "audio" in spec.modalities:
        audio = decode_audio(clip, sample_rate=spec.sample_rate, start=0.0, duration=spec.clip_seconds)
        assert audio.samples.shape == (spec.clip_samples,)
        inputs["audio"] = audio.samples[np.newaxis].astype(np.float32)
    if "video" in spec.modalities:
        size = (spec.image_size, spec.image_size)
        video = decode_video(clip, num_frames=spec.num_frames, size=size, start=0.0, duration=spec.clip_seconds)
        inputs["video"] = video.frames[np.newaxis]
    return inputs


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits.astype(np.float64) - logits.max())
    return exp / exp.sum()


# ---- checks --------------------------------------------------------------------------------------


def assert_scores(predictions: list[dict], expected: np.ndarray, labels: tuple[str, ...]) -> None:
    got = scores(predictions)
    assert sorted(got) == sorted(labels) and len(got) == NUM_LABELS
    np.testing.assert_allclose([got[label] for label in labels], expected, rtol=0, atol=ATOL)


def assert_answer(response, *, family: str, kind: str, backend: str, model_dir: Path, expected: Probabilities) -> dict:
    """The right model answered, undegraded, with the reference's scores (answer and heads)."""
    assert response.status_code == 200, response.text
    body = response.json()
    suffix, used = KINDS[kind]
    name = f"{family}_{suffix}"
    unimodal = None if kind == "av" else ("stream" if family == MBT else "head")
    assert body["model"] == {"name": name, "version": "1", "family": family, "backend": backend, "unimodal": unimodal}
    assert body["modalities"] == {"present": used, "used": used, "zero_filled": [], "degraded": False}
    labels = load_model_spec(model_dir).labels
    assert_scores(body["predictions"], expected["logits"], labels)
    heads = body["heads"] or {}
    if family == MBT:
        assert body["heads"] is None or set(heads) == {"cls"}, body["heads"]
    else:
        assert set(heads) == HEADS[name]
    for head, top in heads.items():
        assert_scores(top, expected[f"head_{head}"], labels)
    return body


# ---- MBT alone -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_embedded_mbt_answers_equal_onnxruntime_and_torch(mbt_gateway, mbt_repository, clips, reference, kind):
    import torch

    repository, model = mbt_repository
    clip = getattr(clips, kind)
    model_dir = repository / f"{MBT}_{KINDS[kind][0]}"
    with mbt_gateway.client() as client:
        response = post_clip(client, clip, top_k=NUM_LABELS)
    expected = reference(model_dir, clip)
    assert_answer(response, family=MBT, kind=kind, backend="embedded", model_dir=model_dir, expected=expected)
    # The reference is the torch model too: the graph the gateway ran is the model it was exported from.
    with torch.no_grad():
        out = model(**{name: torch.from_numpy(x) for name, x in decoded_inputs(model_dir, clip).items()})
    np.testing.assert_allclose(softmax(out["logits"][0].numpy()), expected["logits"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(softmax(out["cls"][0].numpy()), expected["head_cls"], rtol=0, atol=ATOL)


def test_mbt_routes_give_three_different_answers(mbt_repository, clips, reference):
    """`stream` graphs are the model on one stream alone, not a head of the audio+video answer;
    the answers also differ by far more than the 1e-4 the tests compare scores within."""
    repository, _ = mbt_repository
    answers = {
        kind: reference(repository / f"{MBT}_{suffix}", getattr(clips, kind))["logits"] for kind, (suffix, _) in KINDS.items()
    }
    for first, second in (("av", "audio"), ("av", "video"), ("audio", "video")):
        assert np.max(np.abs(answers[first] - answers[second])) > 100 * ATOL, (first, second)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_triton_mbt_answers_equal_onnxruntime(mixed_triton, mixed_repository, clips, reference, kind):
    clip = getattr(clips, kind)
    model_dir = mixed_repository / f"{MBT}_{KINDS[kind][0]}"
    with mixed_triton.client() as client:
        response = post_clip(client, clip, model=MBT, top_k=NUM_LABELS)
    expected = reference(model_dir, clip)
    assert_answer(response, family=MBT, kind=kind, backend="triton", model_dir=model_dir, expected=expected)


# ---- Zorro and MBT in one repository -------------------------------------------------------------

BACKENDS = ["embedded", pytest.param("triton", marks=pytest.mark.slow)]


@pytest.fixture
def mixed_gateway(request):
    return request.getfixturevalue({"embedded": "mixed_embedded", "triton": "mixed_triton"}[request.param])


@pytest.mark.parametrize("mixed_gateway", BACKENDS, indirect=True)
def test_each_request_picks_its_family(mixed_gateway, mixed_repository, clips, reference):
    backend = mixed_gateway.settings.backend
    with mixed_gateway.client() as client:
        for family in (ZORRO, MBT):
            for kind in KINDS:
                clip = getattr(clips, kind)
                model_dir = mixed_repository / f"{family}_{KINDS[kind][0]}"
                response = post_clip(client, clip, model=family, top_k=NUM_LABELS)
                assert_answer(
                    response, family=family, kind=kind, backend=backend, model_dir=model_dir,
                    expected=reference(model_dir, clip),
                )  # fmt: skip
        # Without `model`, the default family answers: the first by name, as GET /v1/models says.
        default = client.get("/v1/models").json()["default_family"]
        unnamed = post_clip(client, clips.audio).json()
    assert default == MBT and unnamed["model"]["name"] == f"{MBT}_audio"


@pytest.mark.parametrize("mixed_gateway", BACKENDS, indirect=True)
def test_models_say_what_unimodal_graphs_compute(mixed_gateway):
    with mixed_gateway.client() as client:
        listing = client.get("/v1/models")
        detail = client.get(f"/v1/models/{MBT}_audio")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == set(HEADS)
    assert {f["name"]: f["routes"] for f in body["families"]} == {
        family: {"audio+video": f"{family}_av", "audio": f"{family}_audio", "video": f"{family}_video"}
        for family in (MBT, ZORRO)
    }
    assert {name: m["unimodal"] for name, m in models.items()} == {
        f"{ZORRO}_av": None, f"{ZORRO}_audio": "head", f"{ZORRO}_video": "head",
        f"{MBT}_av": None, f"{MBT}_audio": "stream", f"{MBT}_video": "stream",
    }  # fmt: skip
    assert {name: m["modality_dropout"] for name, m in models.items()} == {
        name: (float(MODALITY_DROPOUT) if name.startswith(MBT) else None) for name in HEADS
    }
    assert {name: set(m["heads"]) for name, m in models.items()} == HEADS
    assert models[f"{MBT}_audio"]["architecture"] == "mbt" and models[f"{ZORRO}_audio"]["architecture"] == "zorro"
    assert detail.status_code == 200, detail.text
    assert (detail.json()["unimodal"], detail.json()["modality_dropout"]) == ("stream", float(MODALITY_DROPOUT))
