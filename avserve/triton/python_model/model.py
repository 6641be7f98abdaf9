"""Triton Python-backend model that serves an exported `model.onnx` with onnxruntime.

The local `tritonserver` (from the nvidia-pytriton wheel) has only the Python backend, so
`avserve.triton` copies this file next to each ONNX model in a shadow repository. It keeps
the semantics of Triton's native ONNX Runtime backend that the exported configs target:
config inputs feed graph inputs by name, config outputs are read from the graph, and the
`intra_op_thread_count` / `inter_op_thread_count` / `execution_mode` parameters configure
the session. On GPU hosts the native backend serves the same `model.onnx` instead.

Under dynamic batching `execute` receives several requests: their inputs are concatenated
along the batch axis, the graph runs once, and the outputs are split back into exactly one
response per request, in order. A failing request gets an error response; it never takes
the other requests, or the model, down with it.
"""

import json
import os

import numpy as np
import onnxruntime as ort

# The stub runs the interpreter that started Triton (avserve.triton puts it first on PATH),
# so the project's contract module is importable here.
from avserve.contract import ONNX_FILENAME_PARAMETER, ONNX_MODEL_FILE

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (packaging and import checks): nothing to serve
    pb_utils = None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        onnx_path = os.path.join(version_dir, parameters.get(ONNX_FILENAME_PARAMETER, ONNX_MODEL_FILE))

        options = ort.SessionOptions()
        # 0 lets ONNX Runtime choose, like the native backend; exporters pin small numbers so
        # several model instances do not oversubscribe the cores.
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "0") or 0)
        options.inter_op_num_threads = int(parameters.get("inter_op_thread_count", "0") or 0)
        if parameters.get("execution_mode", "0") == "1":
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

        self.batching = config.get("max_batch_size", 0) > 0
        self.input_names = [tensor["name"] for tensor in config.get("input", [])]
        self.output_dtypes = {
            tensor["name"]: pb_utils.triton_string_to_numpy(tensor["data_type"]) for tensor in config.get("output", [])
        }
        # Fail the load (not the first request) when config and graph disagree.
        graph_inputs = {node.name for node in self.session.get_inputs()}
        graph_outputs = {node.name for node in self.session.get_outputs()}
        if set(self.input_names) != graph_inputs:
            raise pb_utils.TritonModelException(
                f"{self.name}: config inputs {sorted(self.input_names)} != graph inputs {sorted(graph_inputs)}"
            )
        unknown = sorted(set(self.output_dtypes) - graph_outputs)
        if unknown:
            raise pb_utils.TritonModelException(f"{self.name}: config outputs {unknown} are not graph outputs")
        self.output_names = list(self.output_dtypes)

    def execute(self, requests):
        responses = [None] * len(requests)
        feeds = {}
        for index, request in enumerate(requests):
            try:
                feeds[index] = self._read_inputs(request)
            except Exception as error:  # noqa: BLE001 - becomes this request's error response
                responses[index] = self._error(error)

        if feeds:
            try:
                results = self._run_together(list(feeds.values()))
            except Exception:  # noqa: BLE001
                # Retry one by one so the error lands on the request that caused it.
                results = []
                for feed in feeds.values():
                    try:
                        results.append(self._run(feed))
                    except Exception as error:  # noqa: BLE001
                        results.append(error)
            for index, result in zip(feeds, results):
                if isinstance(result, Exception):
                    responses[index] = self._error(result)
                else:
                    responses[index] = self._respond(requests[index], result)
        return responses

    def finalize(self):
        # Dropping the last reference frees the session's memory arena before the stub exits.
        self.session = None

    # ---- helpers ---------------------------------------------------------------------------

    def _read_inputs(self, request):
        feed = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            feed[name] = tensor.as_numpy()
        return feed

    def _run(self, feed):
        outputs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outputs))

    def _run_together(self, feeds):
        """One session run for all requests; returns one {output: array} per request."""
        if not self.batching or len(feeds) == 1:
            return [self._run(feed) for feed in feeds]
        sizes = [len(feed[self.input_names[0]]) for feed in feeds]
        batched = {name: np.concatenate([feed[name] for feed in feeds], axis=0) for name in self.input_names}
        outputs = self._run(batched)
        splits = np.cumsum(sizes)[:-1]
        per_output = {name: np.split(array, splits, axis=0) for name, array in outputs.items()}
        return [{name: parts[i] for name, parts in per_output.items()} for i in range(len(feeds))]

    def _respond(self, request, outputs):
        wanted = request.requested_output_names() or self.output_names
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(outputs[name], dtype=self.output_dtypes[name]))
            for name in self.output_names
            if name in wanted
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, error):
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(f"{self.name}: {type(error).__name__}: {error}")
        )
