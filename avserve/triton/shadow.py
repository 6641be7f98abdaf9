"""Mirror a model repository into one the local, Python-backend-only Triton can serve.

The user's repository targets Triton's native ONNX Runtime backend (what the NGC container
runs on GPU hosts) and must stay byte-for-byte untouched. The shadow copy lives in a temp
dir and differs only where it has to:

    <shadow>/<model>/config.pbtxt      rewritten: backend "python", instances on CPU
    <shadow>/<model>/labels.txt  ->    symlink to the source (every other file too)
    <shadow>/<model>/<v>/model.onnx -> symlink to the source (big files are never copied)
    <shadow>/<model>/<v>/model.py      our onnxruntime Python-backend model

Inputs, outputs, batching, parameters and instance counts are kept, so batching and
statistics behave as they would under the native backend.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from avserve.contract import CONFIG_FILE, ONNX_FILENAME_PARAMETER, ONNX_MODEL_FILE
from avserve.repository import ModelConfig, RepositoryError, read_model_config, write_model_config
from avserve.repository.repository import model_directories
from avserve.triton.python_model import MODEL_PY

# Backends the bundled server has, served from the source files as they are.
NATIVE_BACKENDS = frozenset({"python"})


@dataclass(frozen=True)
class ShadowRepository:
    source: Path
    path: Path
    rewritten: tuple[str, ...] = ()  # onnxruntime models now served by our model.py
    mirrored: tuple[str, ...] = ()  # models the local server runs as they are
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it cannot run here

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted(self.rewritten + self.mirrored))


def build_shadow_repository(source: Path, destination: Path) -> ShadowRepository:
    """Write the shadow of `source` into `destination` (created; must not exist or be empty)."""
    source = Path(source).resolve()
    destination = Path(destination)
    if not source.is_dir():
        raise RepositoryError(f"{source}: model repository is not a directory")
    destination.mkdir(parents=True, exist_ok=True)
    if any(destination.iterdir()):
        raise RepositoryError(f"{destination}: shadow repository destination is not empty")

    rewritten: list[str] = []
    mirrored: list[str] = []
    skipped: dict[str, str] = {}
    for model_dir in model_directories(source):
        config = read_model_config(model_dir / CONFIG_FILE)
        backend = _backend_of(config)
        if backend == "onnxruntime":
            _shadow_onnx_model(model_dir, destination / model_dir.name, config)
            rewritten.append(model_dir.name)
        elif backend in NATIVE_BACKENDS or config.platform == "ensemble":
            (destination / model_dir.name).symlink_to(model_dir, target_is_directory=True)
            mirrored.append(model_dir.name)
        else:
            skipped[model_dir.name] = f"backend {backend!r} is not in the local tritonserver (NGC container only)"
    return ShadowRepository(
        source=source, path=destination, rewritten=tuple(rewritten), mirrored=tuple(mirrored), skipped=skipped
    )


def python_backend_config(config: ModelConfig) -> ModelConfig:
    """The same model config, served by our Python-backend model.py on the CPU."""
    shadow = ModelConfig()
    shadow.CopyFrom(config)
    shadow.ClearField("platform")
    shadow.backend = "python"
    # The Python backend loads `default_model_filename` (model.py); model.py finds the ONNX file here.
    shadow.parameters[ONNX_FILENAME_PARAMETER].string_value = config.default_model_filename or ONNX_MODEL_FILE
    shadow.ClearField("default_model_filename")
    # This machine has no GPU: GPU instance groups would fail to load, so the same counts run on CPU.
    for group in shadow.instance_group:
        group.kind = mc.ModelInstanceGroup.Kind.KIND_CPU
        group.ClearField("gpus")
    # TensorRT/CUDA accelerators belong to the native backend on GPU hosts.
    if shadow.HasField("optimization"):
        shadow.optimization.ClearField("execution_accelerators")
    return shadow


def _backend_of(config: ModelConfig) -> str:
    if config.backend:
        return config.backend
    return {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}.get(config.platform, config.platform)


def _shadow_onnx_model(model_dir: Path, shadow_dir: Path, config: ModelConfig) -> None:
    shadow_dir.mkdir()
    if not config.name:
        config.name = model_dir.name  # Triton's rule; our writer insists on a name
    write_model_config(shadow_dir / CONFIG_FILE, python_backend_config(config))
    for entry in sorted(model_dir.iterdir()):
        if entry.name == CONFIG_FILE:
            continue
        if entry.is_dir() and entry.name.isdigit():
            version_dir = shadow_dir / entry.name
            version_dir.mkdir()
            # Symlink every file (model.onnx, and model.onnx.data when weights are external:
            # onnxruntime looks for it next to the path it opened).
            for item in sorted(entry.iterdir()):
                if item.name != MODEL_PY.name:
                    (version_dir / item.name).symlink_to(item)
            shutil.copyfile(MODEL_PY, version_dir / MODEL_PY.name)
        else:
            (shadow_dir / entry.name).symlink_to(entry)
