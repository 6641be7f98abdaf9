"""Against one real tritonserver: loading, HTTP/gRPC answers, dynamic batching, config API."""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from avserve.repository import ModelSpec, load_repository
from avserve.triton import LocalTriton

pytestmark = pytest.mark.slow
MODELS = ("tiny_audio", "tiny_av", "tiny_lookup")


def infer(client, module, model: str, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One request through either tritonclient.http or tritonclient.grpc (same API)."""
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    requested = [module.InferRequestedOutput(name) for name in outputs]
    result = client.infer(model, tensors, outputs=requested)
    return {name: result.as_numpy(name) for name in outputs}


@pytest.fixture(scope="module")
def http_client(triton_server: LocalTriton):
    client = httpclient.InferenceServerClient(triton_server.http_url.removeprefix("http://"), concurrency=8)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(triton_server: LocalTriton):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield client
    client.close()


@pytest.fixture(params=["http", "grpc"])
def client(request, http_client, grpc_client):
    return (http_client, httpclient) if request.param == "http" else (grpc_client, grpcclient)


def test_models_load_and_are_ready(triton_server: LocalTriton, grpc_client, module_repository: Path) -> None:
    """Every model of the repository loads, is ready, and serves the tensors its files declare.
    (How fast the server starts is the benchmark's business, not a pass/fail here.)"""
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    index = grpc_client.get_model_repository_index(as_json=True)["models"]
    assert sorted((m["name"], m.get("version"), m.get("state")) for m in index) == [
        (model, "1", "READY") for model in MODELS
    ]
    on_disk = load_repository(module_repository)
    for model in MODELS:
        assert grpc_client.is_model_ready(model), model
        spec = on_disk.model(model)
        metadata = grpc_client.get_model_metadata(model, as_json=True)
        assert metadata["versions"] == ["1"], model
        batch = [-1] if spec.max_batch_size else []
        for served, declared in ((metadata["inputs"], spec.inputs), (metadata["outputs"], spec.outputs)):
            assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in served] == [
                (t.name, t.data_type.removeprefix("TYPE_"), [*batch, *t.dims]) for t in declared
            ], model
    assert triton_server.shadow is not None and set(triton_server.shadow.rewritten) == set(MODELS)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("model", ["tiny_audio", "tiny_av"])
def test_inference_matches_onnxruntime(client, model: str, batch: int, onnx_reference, tiny) -> None:
    connection, module = client
    inputs = tiny.inputs(model, batch, seed=batch)
    outputs = ("logits", "head_audio", "head_video") if model == "tiny_av" else ("logits", "head_audio")
    answer = infer(connection, module, model, inputs, outputs)
    expected = onnx_reference(model, inputs)
    for name in outputs:
        assert answer[name].shape == (batch, 3) and answer[name].dtype == np.float32
        np.testing.assert_allclose(answer[name], expected[name], rtol=1e-5, atol=1e-5)


def test_only_requested_outputs_are_returned(grpc_client, onnx_reference, tiny) -> None:
    inputs = tiny.inputs("tiny_av", 2, seed=7)
    result = grpc_client.infer(
        "tiny_av",
        [_grpc_input(name, array) for name, array in inputs.items()],
        outputs=[grpcclient.InferRequestedOutput("head_video")],
    )
    assert result.as_numpy("logits") is None
    np.testing.assert_allclose(result.as_numpy("head_video"), onnx_reference("tiny_av", inputs)["head_video"], rtol=1e-5)


def test_concurrent_requests_are_batched_and_answered_individually(
    triton_server: LocalTriton, grpc_client, onnx_reference, tiny
) -> None:
    before = _model_stats(grpc_client, "tiny_av")
    requests = [tiny.inputs("tiny_av", 1, seed=100 + i) for i in range(32)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda inputs: _grpc_infer(triton_server, "tiny_av", inputs), requests))
    for inputs, answer in zip(requests, answers):
        np.testing.assert_allclose(answer, onnx_reference("tiny_av", inputs)["logits"], rtol=1e-5, atol=1e-5)

    # Statistics update just after responses are sent: poll until all 32 are counted.
    deadline = time.monotonic() + 10
    while True:
        after = _model_stats(grpc_client, "tiny_av")
        inferences = after.inference_count - before.inference_count
        if inferences >= 32 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    executions = after.execution_count - before.execution_count
    assert inferences == 32
    assert executions < inferences, f"no batching: {executions} executions for {inferences} inferences"


def test_a_failing_request_does_not_fail_its_batch(triton_server: LocalTriton, onnx_reference, tiny) -> None:
    # Row 1000 is out of the table: onnxruntime fails on that request only; its batch-mates
    # (run together first, then one by one) still get their answers.
    requests = [tiny.inputs("tiny_lookup", 1, seed=200 + i) for i in range(8)]
    requests[3]["audio"][0, 0] = 1000.0

    def call(inputs):
        try:
            return _grpc_infer(triton_server, "tiny_lookup", inputs)
        except InferenceServerException as error:
            return error

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, requests))
    assert isinstance(answers[3], InferenceServerException)
    assert "tiny_lookup" in answers[3].message() and "indices" in answers[3].message().lower()
    for index, (inputs, answer) in enumerate(zip(requests, answers)):
        if index != 3:
            assert isinstance(answer, np.ndarray), answer
            np.testing.assert_allclose(answer, onnx_reference("tiny_lookup", inputs)["logits"], rtol=1e-5)
    # The model survived: it still answers.
    again = _grpc_infer(triton_server, "tiny_lookup", requests[0])
    np.testing.assert_allclose(again, answers[0], rtol=1e-6)


def test_wrong_shape_is_rejected_cleanly(client, tiny) -> None:
    connection, module = client
    with pytest.raises(InferenceServerException, match="audio"):
        infer(connection, module, "tiny_audio", {"audio": np.zeros((1, tiny.clip_samples + 1), np.float32)}, ("logits",))


@pytest.mark.parametrize("protocol", ["grpc_pb", "grpc_json", "http_json"])
def test_specs_from_the_model_config_api_match_the_files(
    protocol: str, http_client, grpc_client, module_repository: Path
) -> None:
    on_disk = load_repository(module_repository)
    for model in MODELS:
        if protocol == "grpc_pb":
            config = grpc_client.get_model_config(model).config
        elif protocol == "grpc_json":
            config = grpc_client.get_model_config(model, as_json=True)
        else:
            config = http_client.get_model_config(model)
        served = ModelSpec.from_model_config(config, labels=on_disk.model(model).labels)
        expected = on_disk.model(model)
        for field in (
            "name", "max_batch_size", "dynamic_batching", "inputs", "outputs", "family", "modalities",
            "sample_rate", "clip_seconds", "num_frames", "image_size", "answer_output", "heads",
            "missing_modality", "labels",
        ):  # fmt: skip
            assert getattr(served, field) == getattr(expected, field), (model, field)
        assert served.backend == "python"  # the shadow's, not the user's onnxruntime


def test_metrics_expose_latency_summaries(triton_server: LocalTriton, tiny) -> None:
    _grpc_infer(triton_server, "tiny_audio", tiny.inputs("tiny_audio", 1, seed=1))
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as response:
            text = response.read().decode()
        if 'nv_inference_request_success{model="tiny_audio"' in text and "quantile=" in text:
            break
        assert time.monotonic() < deadline, text[:2000]
        time.sleep(0.1)
    assert "nv_inference_request_summary_us" in text


def test_serving_leaves_the_source_repository_untouched(
    triton_server: LocalTriton, module_repository: Path, module_repository_digest: dict[str, str], tiny
) -> None:
    assert tiny.tree_digest(module_repository) == module_repository_digest
    assert 'backend: "onnxruntime"' in (module_repository / "tiny_av" / "config.pbtxt").read_text()
    # The shadow links back to the source files instead of copying them.
    shadow = triton_server.shadow.path
    assert (shadow / "tiny_av" / "1" / "model.onnx").resolve() == (module_repository / "tiny_av" / "1" / "model.onnx")


# ---- helpers --------------------------------------------------------------------------------


def _grpc_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def _grpc_infer(server: LocalTriton, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    # A client per call: concurrent requests then arrive on separate connections, like users.
    with grpcclient.InferenceServerClient(server.grpc_url) as connection:
        result = connection.infer(model, [_grpc_input(n, a) for n, a in inputs.items()])
        return result.as_numpy("logits")


def _model_stats(client: grpcclient.InferenceServerClient, model: str):
    stats = client.get_inference_statistics(model).model_stats
    return next(s for s in stats if s.name == model)
