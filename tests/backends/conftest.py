"""Fixtures for the backend tests: real exported Zorro models, onnxruntime as the reference,
and a tiny torch-free "lookup" model whose failures happen inside onnxruntime at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from avserve.repository import BatchingConfig, NewModelConfig, TensorConfig, new_model_config, write_model_config

ZORRO_MODELS = ("zorro_tiny_av", "zorro_tiny_audio", "zorro_tiny_video")
CLIP_SAMPLES, NUM_FRAMES, IMAGE_SIZE = 32000, 4, 64
LOOKUP_SAMPLES, LOOKUP_ROWS, LOOKUP_CLASSES = 16, 10, 3

Inputs = dict[str, np.ndarray]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def make_inputs(model: str, batch: int = 1, seed: int = 0) -> Inputs:
    """Random inputs of the right dtype and shape for one of the test models."""
    rng = np.random.default_rng(seed)
    if model == "lookup":
        return {"audio": rng.integers(0, LOOKUP_ROWS, (batch, LOOKUP_SAMPLES)).astype(np.float32)}
    inputs: Inputs = {}
    if model in ("zorro_tiny_av", "zorro_tiny_audio"):
        inputs["audio"] = rng.standard_normal((batch, CLIP_SAMPLES)).astype(np.float32)
    if model in ("zorro_tiny_av", "zorro_tiny_video"):
        inputs["video"] = rng.integers(0, 256, (batch, NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return inputs


@pytest.fixture(scope="session")
def zorro_dir(zorro_repository) -> Path:
    return zorro_repository[0]


@pytest.fixture(scope="session")
def onnx_reference(zorro_dir: Path) -> Callable[[str, Inputs], Inputs]:
    """The exported graph run directly by onnxruntime, one call per request: the truth."""
    import onnxruntime as ort

    sessions: dict[str, ort.InferenceSession] = {}

    def run(model: str, inputs: Inputs) -> Inputs:
        if model not in sessions:
            path = zorro_dir / model / "1" / "model.onnx"
            sessions[model] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session = sessions[model]
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    return run


def assert_outputs_equal(actual: Inputs, expected: Inputs, names=None) -> None:
    names = list(expected) if names is None else list(names)
    assert sorted(actual) == sorted(names)
    for name in names:
        # Batched and single runs may pick different kernels: equal up to float rounding.
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _lookup_graph() -> onnx.ModelProto:
    """audio values are row indices into a table: an out-of-range value fails inside
    onnxruntime (Gather), after every shape and dtype check has passed."""
    nodes = [
        helper.make_node("Cast", ["audio"], ["rows"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "rows"], ["picked"], axis=0),
        helper.make_node("ReduceMean", ["picked"], ["logits"], axes=[1], keepdims=0),
    ]
    table = np.random.default_rng(5).standard_normal((LOOKUP_ROWS, LOOKUP_CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "lookup",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["B", LOOKUP_SAMPLES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", LOOKUP_CLASSES])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def lookup_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("lookup_repository")
    model_dir = repo / "lookup"
    (model_dir / "1").mkdir(parents=True)
    onnx.save(_lookup_graph(), model_dir / "1" / "model.onnx")
    (model_dir / "labels.txt").write_text("a\nb\nc\n")
    config = new_model_config(
        NewModelConfig(
            name="lookup",
            inputs=(TensorConfig("audio", "TYPE_FP32", (LOOKUP_SAMPLES,)),),
            outputs=(TensorConfig("logits", "TYPE_FP32", (LOOKUP_CLASSES,), label_filename="labels.txt"),),
            max_batch_size=16,
            batching=BatchingConfig(max_queue_delay_microseconds=1000),
            parameters={"family": "lookup", "modalities": "audio", "sample_rate": "16000", "answer_output": "logits"},
        )
    )
    write_model_config(model_dir / "config.pbtxt", config)
    return repo


# With --import-mode=importlib test modules cannot import conftest: helpers travel as fixtures.


@pytest.fixture(scope="session")
def inputs_for() -> Callable[..., Inputs]:
    return make_inputs


@pytest.fixture(scope="session")
def assert_same() -> Callable[..., None]:
    return assert_outputs_equal
