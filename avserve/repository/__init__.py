"""The Triton model repository: the only interface between training and serving.

    repo = load_repository("model_repository")      # every model, validated
    spec = repo.route("zorro_tiny", {"audio"})       # which model serves audio-only clips
    spec.sample_rate, spec.clip_samples, spec.labels

    config = new_model_config(NewModelConfig(...))  # the exporter's side
    write_model_config(model_dir / "config.pbtxt", config)

Configs are read and written with Triton's own protobuf schema (`model_config_pb2`), so
anything accepted here is accepted by Triton. Torch-free.
"""

from .config import (
    NUMPY_DTYPES,
    ONNX_BACKEND,
    ONNX_PLATFORM,
    BatchingConfig,
    ModelConfig,
    NewModelConfig,
    TensorConfig,
    add_tensorrt_accelerator,
    model_config_text,
    new_model_config,
    read_model_config,
    write_model_config,
)
from .errors import RepositoryError
from .repository import Repository, load_repository
from .spec import MISSING_MODALITY_POLICIES, MODALITIES, UNIMODAL_KINDS, ModelSpec, TensorSpec, load_model_spec

__all__ = [
    "MISSING_MODALITY_POLICIES",
    "MODALITIES",
    "NUMPY_DTYPES",
    "ONNX_BACKEND",
    "ONNX_PLATFORM",
    "UNIMODAL_KINDS",
    "BatchingConfig",
    "ModelConfig",
    "ModelSpec",
    "NewModelConfig",
    "Repository",
    "RepositoryError",
    "TensorConfig",
    "TensorSpec",
    "add_tensorrt_accelerator",
    "load_model_spec",
    "load_repository",
    "model_config_text",
    "new_model_config",
    "read_model_config",
    "write_model_config",
]
