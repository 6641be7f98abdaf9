"""AV-MAE behind POST /classify on the embedded backend and a real Triton, and the MBT it finetunes.

AV-MAE (training/models/avmae.py) has an audio and a video head on per-modality CLS tokens and
answers audio+video uploads with their mean. What its unimodal graphs compute depends on the
encoder: with "separate" encoders (avmae_tiny_separate) the audio head never sees video, so the
`_audio` graph is exactly the `_av` graph's audio head (`head`); with "mid" fusion (avmae_tiny:
2 separate + 2 joint layers) the modalities meet inside the encoder, so the `_audio` graph is the
encoder run on the audio tokens alone (`stream`), a different function from the `_av` graph's
audio head. Both are checked with the head-graph check the VATT and PEMT tests share (the
gateway's scores = onnxruntime on the decoded tensors = the torch model called with the upload's
modalities).

The finetuning path runs through the real trainer and exporter, a few steps each on a tiny
synthetic dataset: avmae_tiny pretrained with the masked objective, mbt_avmae_tiny finetuned
from it (`init_from`) with modality dropout, both runs exported with `export_run`. The
pretraining run (from scratch: `pretrained` null) is also the avmae_tiny every other test serves,
and the finetuned MBT's repository must say what it started from.

Cost: one shared export (avmae_tiny_separate) and one shared training+export, each done once
per test run whatever the xdist workers; a single test starts the one Triton server.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from gateway_helpers import wait_until_ready
from test_mbt import ATOL, reference  # noqa: F401  (reference: a fixture)
from test_vatt import assert_every_upload_kind_answered_by_its_graph, assert_models_say_the_unimodal_graphs_are_heads

from avserve.repository import load_model_spec
from avserve.triton import LocalTriton

SEPARATE = "avmae_tiny_separate"  # unimodal graphs: heads
MID = "avmae_tiny"  # unimodal graphs: streams; pretrained (masked) by the fixture
MBT = "mbt_avmae_tiny"  # finetuned from MID
SUFFIXES = ("av", "audio", "video")


def avmae_heads(family: str) -> dict[str, set[str]]:
    return {f"{family}_av": {"audio", "video"}, f"{family}_audio": {"audio"}, f"{family}_video": {"video"}}


MBT_HEADS = {f"{MBT}_{suffix}": {"cls"} for suffix in SUFFIXES}
PRETRAINED = f"{MID} (masked)"  # what export_run records for a run initialised from the pretraining run
MODALITY_DROPOUT = 0.5


# ---- the pretraining and finetuning runs ---------------------------------------------------------


@dataclass(frozen=True)
class Finetuning:
    pretrain: Path  # avmae_tiny, masked objective, from scratch
    finetune: Path  # mbt_avmae_tiny, supervised, init_from=pretrain, modality dropout
    repository: Path  # export_run of both: avmae_tiny_{av,audio,video}, mbt_avmae_tiny_{av,audio,video}


def _pretrain_finetune_export(root: Path) -> None:
    from training.data.synth import SynthConfig, generate_dataset
    from training.export import ExportOptions, export_run
    from training.trainer import TrainConfig, Trainer

    # 8 audio+video clips (6 in the train split): one batch of 4 per step, no evaluation.
    data = generate_dataset(root / "data", clips=8, seed=0, config=SynthConfig(unimodal_fraction=0.0), progress=False).parent
    common = dict(data=data, steps=2, batch_size=4, lr=1e-3, workers=0, progress=False, log_every=1, eval_split=None)
    Trainer(TrainConfig(model=MID, objective="masked", out=root / "pretrain", **common)).fit()
    Trainer(
        TrainConfig(model=MBT, out=root / "finetune", init_from=root / "pretrain", modality_dropout=MODALITY_DROPOUT, **common)
    ).fit()
    for run in ("pretrain", "finetune"):  # families: the run's model names
        export_run(root / run, root / "repository", ExportOptions(max_batch_size=16))


@pytest.fixture(scope="session")
def avmae_finetuning(tmp_path_factory, worker_id) -> Finetuning:
    """Trained and exported once per test run, shared by the xdist workers (as `_shared_export`
    in tests/conftest.py). Torch models come from the run directories (`load_run`), so a worker
    that did not train compares against the weights the repository holds."""
    from filelock import FileLock

    shared_root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    root = shared_root / "avmae_finetuning"
    finetuning = Finetuning(root / "pretrain", root / "finetune", root / "repository")
    with FileLock(str(root) + ".lock"):
        # The finetuned run's _video config is the last file written: without it, start over.
        if not (finetuning.repository / f"{MBT}_video" / "config.pbtxt").is_file():
            shutil.rmtree(root, ignore_errors=True)
            _pretrain_finetune_export(root)
    return finetuning


def torch_model(family: str, request):
    """The torch model a family's graphs were exported from (the runs' from their run directories)."""
    from training.checkpoint import load_run

    if family == SEPARATE:
        return request.getfixturevalue("avmae_separate_repository")[1]
    finetuning = request.getfixturevalue("avmae_finetuning")
    return load_run(finetuning.pretrain if family == MID else finetuning.finetune)[0]


# ---- gateways ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def separate_embedded(gateway_factory, avmae_separate_repository):
    return gateway_factory(repository=avmae_separate_repository[0], default_model=SEPARATE)


@pytest.fixture(scope="module")
def finetuned_embedded(gateway_factory, avmae_finetuning):
    """The embedded backend serving both runs' exports: avmae_tiny and mbt_avmae_tiny."""
    return gateway_factory(repository=avmae_finetuning.repository)


@pytest.fixture(scope="module")
def triton_repository(avmae_separate_repository, avmae_finetuning, tmp_path_factory) -> Path:
    """Both AV-MAE encoders in one repository, for one tritonserver."""
    repository = tmp_path_factory.mktemp("avmae_triton_repository")
    for source, family in ((avmae_separate_repository[0], SEPARATE), (avmae_finetuning.repository, MID)):
        for suffix in SUFFIXES:
            shutil.copytree(source / f"{family}_{suffix}", repository / f"{family}_{suffix}")
    return repository


@pytest.fixture(scope="module")
def avmae_triton(gateway_factory, triton_repository) -> Iterator:
    # Used by one test only: under xdist a module fixture is built once per worker that needs it.
    triton = LocalTriton(triton_repository, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=180).start()
    try:
        yield wait_until_ready(gateway_factory(backend="triton", triton_url=triton.grpc_url, request_timeout_seconds=30))
    finally:
        triton.stop()


def served(family: str, request) -> Path:
    """The repository holding `family`'s graphs; asks only for the fixture that makes it, so the
    avmae_tiny_separate tests do not wait for the training runs."""
    if family == SEPARATE:
        return request.getfixturevalue("avmae_separate_repository")[0]
    return request.getfixturevalue("avmae_finetuning").repository


def embedded(family: str, request):
    return request.getfixturevalue("separate_embedded" if family == SEPARATE else "finetuned_embedded")


# ---- the two encoders: upload kinds, head vs stream graphs, /v1/models ---------------------------

ENCODERS = {SEPARATE: "head", MID: "stream"}


@pytest.mark.parametrize("family", ENCODERS)
def test_embedded_answers_every_upload_kind_like_torch(family, request, clips, reference):
    assert_every_upload_kind_answered_by_its_graph(
        embedded(family, request), served(family, request), torch_model(family, request), family, avmae_heads(family),
        clips, reference, unimodal=ENCODERS[family],
    )  # fmt: skip


@pytest.mark.parametrize("family", ENCODERS)
def test_separate_unimodal_graphs_are_the_av_heads_and_mid_ones_are_not(family, request, clips, reference):
    """`head`: the audio-only graph on the av upload's audio gives the av graph's audio head.
    `stream`: with joint layers the audio graph is a different function (its scores differ by tens
    of times the tolerance the tests compare scores within), so serving it as a head would be wrong."""
    repository = served(family, request)
    av = reference(repository / f"{family}_av", clips.av)
    audio = reference(repository / f"{family}_audio", clips.av)  # decodes only the audio of the same file
    video = reference(repository / f"{family}_video", clips.av)
    assert load_model_spec(repository / f"{family}_audio").unimodal == ENCODERS[family]
    if family == SEPARATE:
        np.testing.assert_allclose(audio["logits"], av["head_audio"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(video["logits"], av["head_video"], rtol=0, atol=1e-6)
    else:
        assert np.abs(audio["logits"] - av["head_audio"]).max() > 10 * ATOL
        assert np.abs(video["logits"] - av["head_video"]).max() > 10 * ATOL


@pytest.mark.parametrize("family", ENCODERS)
def test_embedded_models_say_head_or_stream(family, request):
    body = assert_models_say_the_unimodal_graphs_are_heads(
        embedded(family, request), family, avmae_heads(family), "avmae", ENCODERS[family]
    )
    assert {f["name"]: f["routes"] for f in body["families"]}[family] == {
        "audio+video": f"{family}_av", "audio": f"{family}_audio", "video": f"{family}_video"
    }  # fmt: skip


@pytest.mark.slow
def test_triton_answers_every_upload_kind_like_torch(avmae_triton, request, clips, reference):
    """One tritonserver for the file: both encoders' three graphs, every upload kind, /v1/models."""
    for family, unimodal in ENCODERS.items():
        heads = avmae_heads(family)
        assert_every_upload_kind_answered_by_its_graph(
            avmae_triton, served(family, request), torch_model(family, request), family, heads, clips, reference,
            unimodal=unimodal,
        )  # fmt: skip
        body = assert_models_say_the_unimodal_graphs_are_heads(avmae_triton, family, heads, "avmae", unimodal)
        assert all(m["pretrained"] is None for m in body["models"])  # exported from no finetuning run


# ---- the finetuning path -------------------------------------------------------------------------


def test_the_exported_runs_record_what_they_started_from(avmae_finetuning):
    """export_run writes `pretrained` from the run's init_from (its run.json's model and
    objective), next to unimodal and modality_dropout; the from-scratch run has none."""
    for suffix in SUFFIXES:
        spec = load_model_spec(avmae_finetuning.repository / f"{MBT}_{suffix}")
        assert (spec.architecture, spec.family) == ("mbt", MBT)
        assert spec.parameters["pretrained"] == PRETRAINED and spec.pretrained == PRETRAINED
        assert spec.parameters["modality_dropout"] == repr(MODALITY_DROPOUT) and spec.modality_dropout == MODALITY_DROPOUT
        assert spec.unimodal == (None if suffix == "av" else "stream")
        if suffix != "av":
            assert spec.parameters["unimodal"] == "stream"
        scratch = load_model_spec(avmae_finetuning.repository / f"{MID}_{suffix}")
        assert "pretrained" not in scratch.parameters and scratch.pretrained is None
        assert "modality_dropout" not in scratch.parameters


def test_the_finetuned_streams_start_from_the_pretrained_encoder(request):
    """Every encoder weight matrix of the finetuned MBT is the pretrained AV-MAE's (by name; a
    joint layer, one module in AV-MAE, initialises both MBT streams), moved little by two SGD
    steps (relative change < 5 %), where a freshly initialised mbt_avmae_tiny is far from them."""
    import torch

    from training.models import create_model

    pretrained = torch_model(MID, request).state_dict()
    finetuned = torch_model(MBT, request).state_dict()
    torch.manual_seed(99)
    fresh = create_model(MBT, num_classes=12).state_dict()
    prefixes = ("encoders.", "patch_embed.", "pos_embed.", "cls_token.")
    matrices = [k for k, v in finetuned.items() if k.startswith(prefixes) and v.dim() > 1 and v.shape[-1] > 1]
    joint = {"encoders.audio.3.attn.qkv.weight", "encoders.video.3.attn.qkv.weight"}  # both from encoders.shared.3
    assert joint | {"patch_embed.video.proj.weight"} <= set(matrices)
    assert len(matrices) == 4 * 2 * 4 + 2 + 2 + 2  # per layer and stream: qkv, proj, fc1, fc2
    for key in matrices:
        scale = pretrained[key].norm()
        assert (finetuned[key] - pretrained[key]).norm() < 0.05 * scale, key
        assert (fresh[key] - pretrained[key]).norm() > 0.5 * scale, key


def test_embedded_models_show_the_pretraining(finetuned_embedded):
    body = assert_models_say_the_unimodal_graphs_are_heads(finetuned_embedded, MBT, MBT_HEADS, "mbt", "stream")
    models = {m["name"]: m for m in body["models"]}
    assert {name: m["pretrained"] for name, m in models.items()} == {
        **{f"{MBT}_{suffix}": PRETRAINED for suffix in SUFFIXES},
        **{f"{MID}_{suffix}": None for suffix in SUFFIXES},
    }
    assert {name: m["modality_dropout"] for name, m in models.items()} == {
        **{f"{MBT}_{suffix}": MODALITY_DROPOUT for suffix in SUFFIXES},
        **{f"{MID}_{suffix}": None for suffix in SUFFIXES},
    }
    with finetuned_embedded.client() as client:
        detail = client.get(f"/v1/models/{MBT}_audio").json()
    assert (detail["pretrained"], detail["unimodal"]) == (PRETRAINED, "stream")


def test_embedded_finetuned_answers_every_upload_kind_like_torch(finetuned_embedded, avmae_finetuning, request, clips, reference):
    assert_every_upload_kind_answered_by_its_graph(
        finetuned_embedded, avmae_finetuning.repository, torch_model(MBT, request), MBT, MBT_HEADS, clips, reference,
        unimodal="stream",
    )  # fmt: skip
