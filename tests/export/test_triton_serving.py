"""The exported Zorro repository on a real tritonserver: all three models, HTTP and gRPC."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from avserve.triton import LocalTriton

MODELS = {
    "zorro_tiny_av": ("audio", "video"),
    "zorro_tiny_audio": ("audio",),
    "zorro_tiny_video": ("video",),
}
OUTPUTS = {
    "zorro_tiny_av": ("logits", "head_audio", "head_video", "head_fusion", "head_global"),
    "zorro_tiny_audio": ("logits", "head_audio"),
    "zorro_tiny_video": ("logits", "head_video"),
}


@pytest.fixture(scope="module")
def triton(zorro_repository):
    server = LocalTriton(zorro_repository[0], http_port=0, grpc_port=0, metrics_port=0)
    server.start()
    yield server
    server.stop()


def make_inputs(model, batch, seed):
    rng = np.random.default_rng(seed)
    arrays = {
        "audio": rng.uniform(-1, 1, (batch, 32000)).astype(np.float32),
        "video": rng.integers(0, 256, (batch, 4, 64, 64, 3), dtype=np.uint8),
    }
    return {name: arrays[name] for name in MODELS[model]}


def in_process(repository, model, inputs):
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


def infer(protocol, server, model, inputs):
    client_module = {"http": httpclient, "grpc": grpcclient}[protocol]
    url = server.http_url.removeprefix("http://") if protocol == "http" else server.grpc_url
    client = client_module.InferenceServerClient(url)
    try:
        tensors = []
        for name, array in inputs.items():
            tensor = client_module.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "UINT8")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        outputs = [client_module.InferRequestedOutput(name) for name in OUTPUTS[model]]
        result = client.infer(model, tensors, outputs=outputs)
        return {name: result.as_numpy(name) for name in OUTPUTS[model]}
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 3])
def test_triton_answers_equal_onnxruntime_in_process(triton, zorro_repository, protocol, model, batch):
    inputs = make_inputs(model, batch, seed=batch)
    expected = in_process(zorro_repository[0], model, inputs)
    got = infer(protocol, triton, model, inputs)
    # The local Triton runs the same onnxruntime on the same file with the same (default)
    # session options, and a lone request is one batch of the same rows: identical arrays.
    for name in OUTPUTS[model]:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_unimodal_models_on_triton_give_the_full_models_heads(triton):
    both = make_inputs("zorro_tiny_av", 2, seed=9)
    av = infer("grpc", triton, "zorro_tiny_av", both)
    audio = infer("grpc", triton, "zorro_tiny_audio", {"audio": both["audio"]})
    video = infer("grpc", triton, "zorro_tiny_video", {"video": both["video"]})
    # Bit for bit (docs/models.md): one request at a time, each executed alone, so the three
    # graphs see the same batch.
    np.testing.assert_array_equal(audio["logits"], av["head_audio"])
    np.testing.assert_array_equal(video["logits"], av["head_video"])


def test_dynamic_batching_batches_concurrent_requests(triton, zorro_repository):
    client = grpcclient.InferenceServerClient(triton.grpc_url)

    def stats():
        return client.get_inference_statistics("zorro_tiny_audio").model_stats[0]

    before = stats()
    requests = [make_inputs("zorro_tiny_audio", 1, seed=100 + i) for i in range(24)]
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda inputs: infer("grpc", triton, "zorro_tiny_audio", inputs), requests))
    # Not bit for bit: the dynamic batcher ran these rows in batches of its choosing, and a
    # different batch composition may change onnxruntime's GEMM blocking in the last bits.
    for inputs, answer in zip(requests, answers):
        np.testing.assert_allclose(answer["logits"], in_process(zorro_repository[0], "zorro_tiny_audio", inputs)["logits"], atol=1e-5)
    deadline = time.monotonic() + 10  # statistics are updated just after the responses are sent
    while (after := stats()).inference_count - before.inference_count < 24 and time.monotonic() < deadline:
        time.sleep(0.05)
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    client.close()
    assert inferences == 24
    assert executions < inferences, f"no batching: {executions} executions for {inferences} inferences"
