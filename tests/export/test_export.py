"""The exporter: Triton model repository layout, graph parity, and failure hygiene."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from avserve.repository import load_repository, read_model_config
from training.export import ExportError, ExportOptions, export_model, export_run

from .conftest import make_run

REPO_ROOT = Path(__file__).resolve().parents[2]


def session(repository, name):
    return ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def run(repository, name, **inputs):
    sess = session(repository, name)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, inputs)))


def random_inputs(model, batch, seed):
    generator = np.random.default_rng(seed)
    cfg = model.config
    audio = generator.uniform(-1, 1, (batch, cfg.clip_samples)).astype(np.float32)
    video = generator.integers(0, 256, (batch, cfg.num_frames, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    return audio, video


def test_repository_layout_and_routes(exported):
    repository, models = exported
    assert sorted(models) == ["zorro_tiny_audio", "zorro_tiny_av", "zorro_tiny_video"]
    repo = load_repository(repository)  # the gateway's reader accepts what the exporter writes
    assert repo.routes["zorro_tiny"] == {
        frozenset({"audio", "video"}): "zorro_tiny_av",
        frozenset({"audio"}): "zorro_tiny_audio",
        frozenset({"video"}): "zorro_tiny_video",
    }
    av = repo.models["zorro_tiny_av"]
    assert av.heads == ("audio", "video", "fusion", "global")
    assert [o.name for o in av.outputs] == ["logits", "head_audio", "head_video", "head_fusion", "head_global"]
    assert (av.sample_rate, av.clip_seconds, av.num_frames, av.image_size) == (16000, 2.0, 4, 64)
    assert repo.models["zorro_tiny_audio"].heads == ("audio",)
    config = read_model_config(repository / "zorro_tiny_video" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert config.HasField("dynamic_batching") and config.version_policy.latest.num_versions == 1
    assert config.model_warmup[0].inputs["video"].zero_data
    assert list(config.input[0].dims) == [4, 64, 64, 3]
    assert not [p for p in repository.iterdir() if p.name.startswith(".")]  # no staging leftovers


@pytest.mark.parametrize("batch", [1, 3])
def test_each_graph_matches_torch(exported, tiny_run, batch):
    repository, _ = exported
    model = tiny_run[1]
    audio, video = random_inputs(model, batch, seed=batch)
    with torch.no_grad():
        expected = model(audio=torch.from_numpy(audio), video=torch.from_numpy(video))
        expected_audio = model(audio=torch.from_numpy(audio))
        expected_video = model(video=torch.from_numpy(video))
    av = run(repository, "zorro_tiny_av", audio=audio, video=video)
    audio_only = run(repository, "zorro_tiny_audio", audio=audio)
    video_only = run(repository, "zorro_tiny_video", video=video)
    # torch and onnxruntime are different kernels: equal up to float rounding, not bit for bit.
    for head in ("audio", "video", "fusion", "global"):
        np.testing.assert_allclose(av[f"head_{head}"], expected[head].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(av["logits"], expected["logits"].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(audio_only["logits"], expected_audio["logits"].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(video_only["logits"], expected_video["logits"].numpy(), atol=1e-4, rtol=0)
    # Within onnxruntime (same batch, same session options) the unimodal graphs are bit for bit
    # the full graph's heads (docs/models.md).
    np.testing.assert_array_equal(audio_only["logits"], av["head_audio"])
    np.testing.assert_array_equal(video_only["logits"], av["head_video"])


@pytest.mark.parametrize("batch", [1, 4])
def test_unimodal_graphs_equal_the_full_graphs_heads_on_real_clips(exported, tiny_run, real_clips, batch):
    repository, _ = exported
    audio, video = real_clips[0][:batch], real_clips[1][:batch]
    av = run(repository, "zorro_tiny_av", audio=audio, video=video)
    audio_only = run(repository, "zorro_tiny_audio", audio=audio)
    video_only = run(repository, "zorro_tiny_video", video=video)
    # docs/models.md: "bit for bit the full model's audio head". Exact, because both graphs run
    # the same batch with the same session options (a different batch composition may change
    # the GEMM blocking and the last bits; that is not what this compares).
    np.testing.assert_array_equal(audio_only["logits"], av["head_audio"])
    np.testing.assert_array_equal(video_only["logits"], av["head_video"])
    np.testing.assert_array_equal(audio_only["logits"], audio_only["head_audio"])  # one head: no averaging
    with torch.no_grad():
        expected = tiny_run[1](audio=torch.from_numpy(audio), video=torch.from_numpy(video))
    np.testing.assert_allclose(av["logits"], expected["logits"].numpy(), atol=1e-4, rtol=0)


def onnx_graph_flops(path, inputs) -> int:
    """FLOPs (2 per multiply-add) of every MatMul, Gemm and Conv of an exported graph, from the
    tensor shapes of one real onnxruntime run: what torch's FlopCounterMode counts, but of the
    file Triton serves."""
    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    nodes = [node for node in graph.node if node.op_type in ("MatMul", "Gemm", "Conv")]
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    shapes.update({name: array.shape for name, array in inputs.items()})
    probed = list(dict.fromkeys(n for node in nodes for n in (*node.input[:2], node.output[0]) if n not in shapes))
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in probed)
    sess = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    shapes.update(zip(probed, (array.shape for array in sess.run(probed, inputs))))
    total = 0
    for node in nodes:
        a, b, y = (shapes[name] for name in (node.input[0], node.input[1], node.output[0]))
        if node.op_type == "Conv":  # every output element: C_in / groups x kernel multiply-adds
            reduced = math.prod(b[1:])
        elif node.op_type == "Gemm":
            reduced = a[0] if any(attr.name == "transA" and attr.i for attr in node.attribute) else a[1]
        else:
            reduced = a[-1]
        total += 2 * math.prod(y) * reduced
    return total


def test_unimodal_graphs_cost_a_fraction_of_the_av_graph(exported, tiny_run):
    """Zorro's `_audio` and `_video` graphs hold one stream each, so they cost a fraction of `_av`.

    Counted on the exported files (an `_audio` graph that ran the whole model on zeroed video
    would give the same audio head: only its cost shows it), and cross-checked exactly with
    training.models.flops.route_flops (torch's FlopCounterMode on the meta device: what the bench
    and the docs report). zorro_tiny at batch 1: _av 200.6 MFLOPs, _audio 119.5 M (0.596x),
    _video 74.1 M (0.369x), as docs/models.md and the README say."""
    from training.models.flops import route_flops

    repository, _ = exported
    model = tiny_run[1]
    audio, video = random_inputs(model, 1, seed=0)
    routes = {"av": {"audio": audio, "video": video}, "audio": {"audio": audio}, "video": {"video": video}}
    flops = {route: onnx_graph_flops(repository / f"zorro_tiny_{route}" / "1" / "model.onnx", inputs) for route, inputs in routes.items()}
    ratios = {route: flops[route] / flops["av"] for route in ("audio", "video")}
    print(f"FLOPs per clip: {flops}; ratios to _av: {ratios}")
    # The ratios only move if the architecture does; 0.01 is well below any real change.
    assert ratios["audio"] == pytest.approx(0.596, abs=0.01), ratios
    assert ratios["video"] == pytest.approx(0.369, abs=0.01), ratios
    assert route_flops(model) == flops  # the count of the torch model on the meta device, exactly


def test_audio_graph_holds_only_the_audio_stream(exported):
    repository, models = exported
    assert models["zorro_tiny_audio"].file_bytes < models["zorro_tiny_av"].file_bytes
    assert models["zorro_tiny_video"].file_bytes < models["zorro_tiny_av"].file_bytes
    audio_inputs = [i.name for i in session(repository, "zorro_tiny_audio").get_inputs()]
    assert audio_inputs == ["audio"]


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_run(tmp_path / "nope", tmp_path / "repo")
    run_dir = tmp_path / "run"
    make_run(run_dir)
    (run_dir / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="corrupt"):
        export_run(run_dir, tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_unwritable_repository_is_a_clear_error(tiny_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot write to repository"):
        export_run(tiny_run[0], blocker / "repo")


def test_failed_export_leaves_the_previous_model_untouched(tiny_run, tmp_path):
    repository = tmp_path / "repo"
    export_model(tiny_run[1], [f"c{i}" for i in range(12)], repository, ExportOptions(family="fam"))
    before = {p: p.read_bytes() for p in repository.rglob("*") if p.is_file()}
    # A parity bound nothing can meet makes the export fail after the ONNX file is written.
    with pytest.raises(ExportError, match="differs from torch"):
        export_model(tiny_run[1], [f"c{i}" for i in range(12)], repository, ExportOptions(family="fam", tolerance=-1.0))
    after = {p: p.read_bytes() for p in repository.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in repository.iterdir()) == ["fam_audio", "fam_av", "fam_video"]


def test_reexport_replaces_the_model(tiny_run, tmp_path):
    repository = tmp_path / "repo"
    export_model(tiny_run[1], [f"c{i}" for i in range(12)], repository, ExportOptions(family="fam"))
    other = make_run(tmp_path / "other", seed=1)
    export_model(other, [f"d{i}" for i in range(12)], repository, ExportOptions(family="fam"))
    assert (repository / "fam_av" / "labels.txt").read_text().splitlines()[0] == "d0"
    assert sorted(p.name for p in repository.iterdir()) == ["fam_audio", "fam_av", "fam_video"]


def test_tensorrt_accelerator_config(tiny_run, tmp_path):
    export_model(tiny_run[1], [f"c{i}" for i in range(12)], tmp_path, ExportOptions(family="trt", runtime="tensorrt"))
    config = read_model_config(tmp_path / "trt_av" / "config.pbtxt")
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"]
    assert accelerators[0].parameters["precision_mode"] == "FP16"
    assert (tmp_path / "trt_av" / "1" / "model.onnx").is_file()  # the ORT backend still loads the ONNX graph


def test_tensorrt_plan_without_tensorrt_is_a_clear_error(tiny_run, tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed: the engine build itself is exercised on GPU hosts")
    except ImportError:
        pass
    with pytest.raises(ExportError, match="TensorRT"):
        export_model(tiny_run[1], [f"c{i}" for i in range(12)], tmp_path, ExportOptions(family="plan", runtime="tensorrt_plan"))
    assert list(tmp_path.iterdir()) == []


def test_cli_export_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "avserve.cli", "export", "--checkpoint", str(tmp_path / "missing"), "--repository", str(tmp_path / "r")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr


def test_committed_demo_repository_matches_the_exporter(zorro_repository):
    """model_repository/ keeps configs and labels in git (weights are built by `make demo`);
    they must be exactly what the exporter writes for the demo model. The run's shared export
    (tests/conftest.py) is that export: zorro_tiny with the synthetic set's labels and default
    options, in a repository of its own (its weights, which are not compared, are seeded)."""
    repository, _ = zorro_repository
    # The shared export names max_batch_size=16: that must still be the default for it to be
    # the default export.
    assert ExportOptions(family="zorro_tiny") == ExportOptions(family="zorro_tiny", max_batch_size=16)
    committed = REPO_ROOT / "model_repository"
    written = sorted(p.relative_to(repository) for p in repository.rglob("*") if p.is_file() and p.suffix != ".onnx")
    assert written, "the exporter wrote nothing"
    for relative in written:
        assert (committed / relative).read_text() == (repository / relative).read_text(), f"{relative} is stale: run `make demo`"
