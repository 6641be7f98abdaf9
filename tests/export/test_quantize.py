"""`avserve export --quantize int8`: integer graphs that load, serve and answer like fp32."""

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from avserve.backends import EmbeddedSettings
from avserve.backends.embedded import EmbeddedBackend
from avserve.repository import load_repository, read_model_config
from training.export import ExportError, ExportOptions, export_model
from training.quantize import QUANTIZATION_FILE, softmax

from .conftest import make_run

LABELS = [f"class_{i}" for i in range(12)]


def decisive(model):
    """A freshly initialised model's logits differ by ~0.005 between classes, so any graph
    "agrees" on noise; heads scaled x1000 answer decisively, and a quantization error shows up
    in the probabilities (the error scales with the logits, the comparison stays fair)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("classifiers.", "classifier.")):
                parameter.mul_(1000)
    return model.eval()


@pytest.fixture(scope="module")
def int8_and_fp32(tmp_path_factory):
    torch.manual_seed(0)
    from training.models import create_model

    model = decisive(create_model("zorro_tiny", num_classes=len(LABELS)))
    fp32 = tmp_path_factory.mktemp("fp32")
    int8 = tmp_path_factory.mktemp("int8")
    export_model(model, LABELS, fp32, ExportOptions(family="zorro_tiny"))
    exported = export_model(model, LABELS, int8, ExportOptions(family="zorro_tiny", quantize="int8"))
    return model, fp32, int8, {m.name: m for m in exported}


def inputs(model, names, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    cfg = model.config
    arrays = {
        "audio": rng.uniform(-1, 1, (batch, cfg.clip_samples)).astype(np.float32),
        "video": rng.integers(0, 256, (batch, cfg.num_frames, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
    }
    return {name: arrays[name] for name in names}


def run(repository, name, feeds):
    session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_int8_graphs_hold_integer_matmuls_and_say_int8(int8_and_fp32):
    _, fp32, int8, exported = int8_and_fp32
    for name in ("zorro_tiny_av", "zorro_tiny_audio", "zorro_tiny_video"):
        graph = onnx.load(str(int8 / name / "1" / "model.onnx")).graph
        ops = Counter(node.op_type for node in graph.node)
        assert ops["DynamicQuantizeLinear"] > 0 and ops["MatMulInteger"] > 0, ops
        # Every MatMul with weights is quantized (also those whose shared weight the exporter
        # routes through an Identity); the fp32 ones left multiply activations (attention).
        weights = {tensor.name for tensor in graph.initializer}
        weights |= {node.output[0] for node in graph.node if node.op_type == "Identity" and node.input[0] in weights}
        fp32_weight_matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and weights & set(n.input)]
        assert not fp32_weight_matmuls
        assert ops["MatMulInteger"] >= 20
        assert (int8 / name / "1" / "model.onnx").stat().st_size < 0.7 * (fp32 / name / "1" / "model.onnx").stat().st_size
        assert read_model_config(int8 / name / "config.pbtxt").parameters["precision"].string_value == "int8"
        record = json.loads((int8 / name / QUANTIZATION_FILE).read_text())
        assert record["precision"] == "int8" and record["parity_vs_fp32"]["inputs"] == "generated"
        assert exported[name].precision == "int8"
        assert exported[name].int8_parity.top1_agreement == record["parity_vs_fp32"]["top1_agreement"]
    repository, fp32_repository = load_repository(int8), load_repository(fp32)
    assert {m.precision for m in repository.models.values()} == {"int8"}
    assert {m.precision for m in fp32_repository.models.values()} == {None}  # fp32 exports do not state it
    assert not (fp32 / "zorro_tiny_av" / QUANTIZATION_FILE).exists()


@pytest.mark.parametrize("name", ["zorro_tiny_av", "zorro_tiny_audio", "zorro_tiny_video"])
def test_int8_answers_like_fp32(int8_and_fp32, name):
    model, fp32, int8, exported = int8_and_fp32
    feeds = inputs(model, {"av": ["audio", "video"], "audio": ["audio"], "video": ["video"]}[name.rsplit("_", 1)[1]], batch=16)
    want, got = run(fp32, name, feeds)["logits"], run(int8, name, feeds)["logits"]
    assert want.std(axis=-1).min() > 1.0  # decisive: the comparison below can fail
    agreement = (want.argmax(-1) == got.argmax(-1)).mean()
    assert agreement >= 14 / 16, agreement
    # The quantization error is a few percent of the spread of the logits (at most ~10% on these
    # random weights); a wrong scale, a saturated product or a dropped bias would be of the order
    # of the spread itself.
    spread = want.std(axis=-1).mean()
    assert np.abs(got - want).mean() < 0.1 * spread and np.abs(got - want).max() < 0.3 * spread
    assert np.abs(softmax(got) - softmax(want)).max() < 0.2
    assert exported[name].int8_parity.top1_agreement >= 0.9


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_int8_repository_serves_through_the_embedded_backend(int8_and_fp32, anyio_backend):
    model, fp32, int8, _ = int8_and_fp32
    backend = EmbeddedBackend(int8, EmbeddedSettings(intra_op_threads=1))
    await backend.start()
    try:
        assert await backend.ready()
        assert backend.repository.models["zorro_tiny_av"].precision == "int8"
        feeds = inputs(model, ["audio", "video"], batch=1, seed=3)
        answer = await backend.infer("zorro_tiny_av", feeds)
    finally:
        await backend.close()
    direct = run(int8, "zorro_tiny_av", feeds)
    np.testing.assert_allclose(answer["logits"], direct["logits"], rtol=0, atol=1e-4)
    assert answer["logits"].argmax() == run(fp32, "zorro_tiny_av", feeds)["logits"].argmax()


def test_int8_repository_serves_through_triton(int8_and_fp32):
    from avserve.triton import LocalTriton

    from .test_triton_serving import infer

    model, _, int8, _ = int8_and_fp32
    server = LocalTriton(int8, http_port=0, grpc_port=0, metrics_port=0)
    server.start()
    try:
        feeds = inputs(model, ["audio"], batch=2, seed=4)
        got = infer("http", server, "zorro_tiny_audio", feeds)
    finally:
        server.stop()
    np.testing.assert_allclose(got["logits"], run(int8, "zorro_tiny_audio", feeds)["logits"], rtol=0, atol=1e-4)


def test_mbt_int8_export_loads(tmp_path):
    """MBT applies one classifier to both CLS tokens: the quantizer's Gemm rewrite must not
    transpose the shared weight twice (the graph then fails to load)."""
    from training.models import create_model

    torch.manual_seed(1)
    model = decisive(create_model("mbt_tiny", num_classes=len(LABELS)))
    options = ExportOptions(family="mbt_tiny", quantize="int8", tolerance=1e-2)  # logits x1000: float rounding too
    exported = export_model(model, LABELS, tmp_path, options)
    assert {m.name for m in exported} == {"mbt_tiny_av", "mbt_tiny_audio", "mbt_tiny_video"}
    feeds = inputs(model, ["audio", "video"], batch=8, seed=5)
    got = run(tmp_path, "mbt_tiny_av", feeds)["logits"]
    with torch.no_grad():
        want = model(audio=torch.from_numpy(feeds["audio"]), video=torch.from_numpy(feeds["video"]))["logits"].numpy()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 7 / 8


def test_pemt_int8_export_quantizes_every_projection(tmp_path):
    """PEMT with random Sigmas: every V^T and U Sigma projection (one weight each in the graph:
    PEMT.export_module folds U Sigma), the CNNs' projections to the unit embedding and the MLP
    heads become integer MatMuls; only the attention products and the log-mel filterbank stay
    fp32. With decisive heads (the MLP's last layer x1000) int8 answers like the torch model."""
    from training.models import create_model

    torch.manual_seed(1)
    model = create_model("pemt_tiny", num_classes=len(LABELS))
    generator = torch.Generator().manual_seed(2)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name in model.orthogonal_parameter_names():
            parameters[name].copy_(torch.randn(parameters[name].shape, generator=generator))
        for head in model.heads.values():
            head[2].weight.mul_(1000)
            head[2].bias.mul_(1000)
    model.eval()
    options = ExportOptions(family="pemt_tiny", quantize="int8", tolerance=1e-2)  # logits x1000: float rounding too
    exported = {m.name: m for m in export_model(model, LABELS, tmp_path, options)}
    assert set(exported) == {"pemt_tiny_av", "pemt_tiny_audio", "pemt_tiny_video"}
    cfg = model.config
    for name, exported_model in exported.items():
        modalities, heads = sorted(exported_model.modalities), exported_model.heads
        graph = onnx.load(str(tmp_path / name / "1" / "model.onnx")).graph
        ops = Counter(node.op_type for node in graph.node)
        applications = cfg.depth * (3 if len(modalities) == 2 else 1)  # layer applications (mid fusion)
        assert ops["MatMulInteger"] == 12 * applications + len(modalities) + 2 * len(heads), ops
        weights = {tensor.name for tensor in graph.initializer}
        weights |= {node.output[0] for node in graph.node if node.op_type == "Identity" and node.input[0] in weights}
        assert not [n.name for n in graph.node if n.op_type == "MatMul" and weights & set(n.input)]

        feeds = inputs(model, modalities, batch=16, seed=6)
        got = run(tmp_path, name, feeds)
        with torch.no_grad():
            out = model(**{m: torch.from_numpy(x) for m, x in feeds.items()})
        for output in ("logits", *(f"head_{h}" for h in heads)):
            want = out[output.removeprefix("head_")].numpy()
            assert want.std(axis=-1).min() > 1.0  # decisive
            spread = want.std(axis=-1).mean()
            assert (want.argmax(-1) == got[output].argmax(-1)).mean() >= 14 / 16, (name, output)
            assert np.abs(got[output] - want).mean() < 0.1 * spread and np.abs(got[output] - want).max() < 0.3 * spread
        assert np.abs(softmax(got["logits"]) - softmax(out["logits"].numpy())).max() < 0.2
        parity = exported_model.int8_parity
        print(f"{name}: {parity.summary()}")
        assert parity.top1_agreement >= 0.9 and parity.max_prob_diff < 0.2


def test_parity_on_a_dataset_split(tmp_path, small_synth):
    from training.data.synth import CLASS_NAMES
    from training.models import create_model

    data = small_synth
    torch.manual_seed(0)
    model = decisive(create_model("zorro_tiny", num_classes=len(CLASS_NAMES)))
    options = ExportOptions(family="zorro_tiny", quantize="int8", parity_data=data, parity_split="train", parity_clips=4)
    exported = export_model(model, CLASS_NAMES, tmp_path / "repository", options)
    for exported_model in exported:
        parity = exported_model.int8_parity
        assert parity.inputs == f"{data} split train" and parity.clips == 4
        assert parity.top1_fp32 is not None and 0.0 <= parity.top1_int8 <= 1.0
    with pytest.raises(ExportError, match="split 'nope'"):
        export_model(model, CLASS_NAMES, tmp_path / "other", ExportOptions(family="x", quantize="int8", parity_data=data, parity_split="nope"))


def test_bad_quantize_values_are_clear_errors(tmp_path):
    with pytest.raises(ExportError, match="quantize must be one of none, int8, not 'int4'"):
        ExportOptions(quantize="int4")
    with pytest.raises(ExportError, match="TensorRT INT8"):
        ExportOptions(quantize="int8", runtime="tensorrt")
    with pytest.raises(ExportError, match="needs quantize int8"):
        ExportOptions(parity_data=tmp_path)
    run_dir = tmp_path / "run"
    make_run(run_dir)
    result = subprocess.run(
        [sys.executable, "-m", "avserve.cli", "export", "--checkpoint", str(run_dir), "--repository", str(tmp_path / "r"), "--quantize", "fp16"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "error: quantize must be one of none, int8, not 'fp16'"
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_models_endpoint_says_int8(int8_and_fp32, tmp_path):
    from fastapi.testclient import TestClient

    from avserve.gateway import GatewaySettings, create_app

    _, _, int8, _ = int8_and_fp32
    settings = GatewaySettings(repository=int8, upload_dir=tmp_path, default_model="zorro_tiny", log_format="text")
    with TestClient(create_app(settings)) as client:
        body = client.get("/v1/models").json()
        detail = client.get("/v1/models/zorro_tiny_audio").json()
    assert {m["name"]: m["precision"] for m in body["models"]} == {
        "zorro_tiny_av": "int8", "zorro_tiny_audio": "int8", "zorro_tiny_video": "int8"
    }  # fmt: skip
    assert detail["precision"] == "int8"
