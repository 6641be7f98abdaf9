"""Every registered model: tiny presets run forward (all servable input sets), backward and
ONNX export with onnxruntime parity; paper-size presets get meta-device shape checks only."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.models import LOGITS_KEY, ModalityGraph, create_model, get_model_config, list_models

PAPER_MODEL_MAX_PARAMS = 20e6  # anything bigger is "paper size": meta device only in tests


def is_tiny(name: str) -> bool:
    return "tiny" in name


TINY = [n for n in list_models() if is_tiny(n)]
PAPER = [n for n in list_models() if not is_tiny(n)]


def inputs_for(model, modalities, batch, make_audio, make_video):
    cfg = model.config
    make = {"audio": lambda: make_audio(cfg, batch, seed=11), "video": lambda: make_video(cfg, batch, seed=12)}
    return {m: make[m]() for m in sorted(modalities)}


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_forward_every_servable_input_set(name, make_audio, make_video):
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert sum(p.numel() for p in model.parameters()) < PAPER_MODEL_MAX_PARAMS
    cfg = model.config
    for modalities in model.servable_modalities:
        with torch.no_grad():
            out = model(**inputs_for(model, modalities, 2, make_audio, make_video))
        heads = model.heads_for(modalities)
        assert set(out) == {*heads, LOGITS_KEY}
        for value in out.values():
            assert value.shape == (2, cfg.num_classes) and torch.isfinite(value).all()


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_backward_reaches_every_parameter(name, make_audio, make_video):
    torch.manual_seed(0)
    model = create_model(name).train()  # with augmentation, as the trainer runs it
    cfg = model.config
    batch = inputs_for(model, frozenset({"audio", "video"}), 8, make_audio, make_video)
    labels = torch.randint(0, cfg.num_classes, (8,))
    start = time.perf_counter()
    out = model(**batch)
    loss = sum(torch.nn.functional.cross_entropy(out[h], labels) for h in model.head_names)
    loss.backward()
    print(f"{name}: forward+backward at batch 8: {1000 * (time.perf_counter() - start):.0f} ms (first call)")
    missing = [n for n, p in model.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert not missing, missing

    # Audio-only training step: video-side (and fusion-stream) parameters get no gradient at all.
    # Architectures name their per-modality parameters with the modality (tested here).
    model.zero_grad(set_to_none=True)
    out = model(audio=batch["audio"])
    torch.nn.functional.cross_entropy(out[LOGITS_KEY], labels).backward()
    touched = {n for n, p in model.named_parameters() if p.grad is not None and torch.count_nonzero(p.grad) > 0}
    assert any("video" in n for n, _ in model.named_parameters()) and any("audio" in n for n in touched)
    assert not [n for n in touched if "video" in n or "fusion" in n]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape checks are constant for a fixed clip
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is deprecated (still the fastest)
@pytest.mark.filterwarnings("ignore:Constant folding - Only steps=1")  # exporter-internal note, no effect on results
@pytest.mark.parametrize("name", TINY)
def test_tiny_model_onnx_export_matches_torch(name, tmp_path, make_audio, make_video):
    """TorchScript exporter (dynamo=False), opset 17, dynamic batch: one graph per servable input
    set, run in onnxruntime at batch 1 and 3 against torch (atol 1e-4)."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    for modalities in model.servable_modalities:
        graph = ModalityGraph(model.export_module(), modalities).eval()  # what the exporter traces
        reference = ModalityGraph(model, modalities).eval()
        batch = inputs_for(model, modalities, 3, make_audio, make_video)
        example = tuple(batch[n][:1] for n in graph.input_names)
        path = tmp_path / f"{'_'.join(graph.input_names)}.onnx"
        names = [*graph.input_names, *graph.output_names]
        torch.onnx.export(
            graph, example, path, dynamo=False, opset_version=17,
            input_names=list(graph.input_names), output_names=list(graph.output_names),
            dynamic_axes={n: {0: "batch"} for n in names},
        )  # fmt: skip
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == list(graph.input_names)
        if "video" in graph.input_names:
            assert session.get_inputs()[graph.input_names.index("video")].type == "tensor(uint8)"
        for size in (1, 3):
            feeds = {n: batch[n][:size].numpy() for n in graph.input_names}
            outputs = session.run(None, feeds)
            with torch.no_grad():
                expected = reference(*(batch[n][:size] for n in graph.input_names))
            assert [o.name for o in session.get_outputs()] == list(graph.output_names)
            assert len(outputs) == 1 + len(graph.head_names)
            for got, want in zip(outputs, expected, strict=True):
                assert got.shape == (size, model.config.num_classes)
                np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


def test_dynamo_exporter_also_works(tmp_path, make_audio):
    """The newer torch.export-based exporter (opset 18, weights inline, dynamic batch) gives the same
    numbers. Only the audio graph, without onnxscript's optimiser pass: this exporter takes ~5-15 s
    per graph here, against ~0.3-1 s for the TorchScript one, and the test budget is shared."""
    torch.manual_seed(0)
    model = create_model("zorro_tiny").eval()
    graph = ModalityGraph(model, frozenset({"audio"})).eval()
    audio = make_audio(model.config, 3, seed=11)
    path = tmp_path / "audio.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        graph, (audio[:2],), path, dynamo=True, opset_version=18, external_data=False, optimize=False,
        input_names=["audio"], output_names=list(graph.output_names), dynamic_shapes=(({0: batch},),), verbose=False,
    )  # fmt: skip
    assert not (tmp_path / "audio.onnx.data").exists()  # weights inline: one self-contained file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in (1, 3):
        outputs = session.run(None, {"audio": audio[:size].numpy()})
        with torch.no_grad():
            expected = graph(audio[:size])
        for got, want in zip(outputs, expected, strict=True):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", PAPER)
def test_paper_model_on_meta_device(name):
    config = get_model_config(name)
    with torch.device("meta"):
        model = create_model(name)
        count = sum(p.numel() for p in model.parameters())
        assert count > PAPER_MODEL_MAX_PARAMS
        for modalities in model.servable_modalities:
            feeds = {}
            if "audio" in modalities:
                feeds["audio"] = torch.empty(1, config.clip_samples)
            if "video" in modalities:
                feeds["video"] = torch.empty(1, config.num_frames, config.image_size, config.image_size, 3, dtype=torch.uint8)
            out = model(**feeds)
            assert set(out) == {*model.heads_for(modalities), LOGITS_KEY}
            assert all(v.shape == (1, config.num_classes) and v.is_meta for v in out.values())
