"""Read, build and write Triton `config.pbtxt` files with Triton's own protobuf schema.

Parsing goes through `model_config_pb2.ModelConfig` and `google.protobuf.text_format`, so
whatever this module accepts, Triton accepts too (and the reverse): no hand-written
parser to drift from the server. The exporter writes configs with `new_model_config` +
`write_model_config`; GPU deployments add TensorRT with `add_tensorrt_accelerator`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .errors import RepositoryError

ModelConfig = mc.ModelConfig

# Triton data type names and the numpy dtype each one travels as on the wire.
NUMPY_DTYPES: dict[str, str] = {
    "TYPE_BOOL": "bool",
    "TYPE_UINT8": "uint8",
    "TYPE_UINT16": "uint16",
    "TYPE_UINT32": "uint32",
    "TYPE_UINT64": "uint64",
    "TYPE_INT8": "int8",
    "TYPE_INT16": "int16",
    "TYPE_INT32": "int32",
    "TYPE_INT64": "int64",
    "TYPE_FP16": "float16",
    "TYPE_FP32": "float32",
    "TYPE_FP64": "float64",
    "TYPE_STRING": "object",
}

# The platform/backend pair the exporter targets: Triton's native ONNX Runtime backend.
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"


def read_model_config(path: Path) -> ModelConfig:
    """Parse one `config.pbtxt`; a syntax error or unknown field is a `RepositoryError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise RepositoryError(f"{path}: cannot read model config: {error.strerror or error}") from error
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise RepositoryError(f"{path}: malformed model config: {error}") from error
    return config


def model_config_text(config: ModelConfig) -> str:
    """The `config.pbtxt` text of a config (what `write_model_config` writes)."""
    return text_format.MessageToString(config)


def write_model_config(path: Path, config: ModelConfig) -> Path:
    """Write `config` as text to `path` atomically (a reader never sees half a file)."""
    if not config.name:
        raise RepositoryError(f"{path}: refusing to write a model config without a name")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = model_config_text(config)
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".pbtxt", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class TensorConfig:
    """One input or output to put in a new config: name, Triton type, dims without batch."""

    name: str
    data_type: str  # "TYPE_FP32", "TYPE_UINT8", ...
    dims: tuple[int, ...]
    label_filename: str = ""  # outputs only: the classification labels file


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching knobs: a short queue delay trades a little latency for throughput."""

    max_queue_delay_microseconds: int = 2000
    preferred_batch_size: tuple[int, ...] = ()


@dataclass(frozen=True)
class NewModelConfig:
    """Everything `new_model_config` needs; defaults are the contract's."""

    name: str
    inputs: Sequence[TensorConfig]
    outputs: Sequence[TensorConfig]
    max_batch_size: int = 8
    parameters: Mapping[str, str] = field(default_factory=dict)
    batching: BatchingConfig | None = field(default_factory=BatchingConfig)
    instance_count: int = 1
    instance_kind: str = "KIND_AUTO"  # GPU when the host has one, CPU otherwise
    platform: str = ONNX_PLATFORM
    backend: str = ONNX_BACKEND


def new_model_config(spec: NewModelConfig) -> ModelConfig:
    """Build the ModelConfig of one exported model (native ONNX Runtime backend by default)."""
    config = ModelConfig(
        name=spec.name,
        platform=spec.platform,
        backend=spec.backend,
        max_batch_size=spec.max_batch_size,
    )
    for tensor in spec.inputs:
        config.input.add(name=tensor.name, data_type=_data_type(tensor.data_type), dims=list(tensor.dims))
    for tensor in spec.outputs:
        config.output.add(
            name=tensor.name,
            data_type=_data_type(tensor.data_type),
            dims=list(tensor.dims),
            label_filename=tensor.label_filename,
        )
    if spec.batching is not None:
        config.dynamic_batching.max_queue_delay_microseconds = spec.batching.max_queue_delay_microseconds
        config.dynamic_batching.preferred_batch_size.extend(spec.batching.preferred_batch_size)
    config.instance_group.add(count=spec.instance_count, kind=mc.ModelInstanceGroup.Kind.Value(spec.instance_kind))
    for key, value in spec.parameters.items():
        config.parameters[key].string_value = str(value)
    return config


def add_tensorrt_accelerator(
    config: ModelConfig,
    *,
    precision_mode: str = "FP16",
    max_workspace_size_bytes: int = 1 << 30,
    engine_cache_path: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> ModelConfig:
    """Ask Triton's ONNX Runtime backend to run the graph through TensorRT (GPU hosts only).

    The ORT backend reads these keys (onnxruntime_backend README); an engine cache avoids
    rebuilding TensorRT engines (minutes for big graphs) on every server start. Any existing
    TensorRT entry is replaced so calling this twice does not stack accelerators.
    """
    if precision_mode not in {"FP32", "FP16", "INT8"}:
        raise ValueError(f"precision_mode must be FP32, FP16 or INT8, not {precision_mode!r}")
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    kept = [accelerator for accelerator in accelerators if accelerator.name != "tensorrt"]
    del accelerators[:]
    accelerators.extend(kept)
    tensorrt = accelerators.add(name="tensorrt")
    tensorrt.parameters["precision_mode"] = precision_mode
    tensorrt.parameters["max_workspace_size_bytes"] = str(max_workspace_size_bytes)
    if engine_cache_path:
        tensorrt.parameters["trt_engine_cache_enable"] = "1"
        tensorrt.parameters["trt_engine_cache_path"] = engine_cache_path
    for key, value in (extra or {}).items():
        tensorrt.parameters[key] = str(value)
    return config


def _data_type(name: str) -> int:
    if name not in NUMPY_DTYPES:
        raise RepositoryError(f"unsupported tensor data type {name!r}")
    return mc.DataType.Value(name)
