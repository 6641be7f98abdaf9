"""The shadow repository: what the local Python-backend-only Triton is pointed at."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from avserve.repository import (
    ModelConfig,
    RepositoryError,
    add_tensorrt_accelerator,
    read_model_config,
    write_model_config,
)
from avserve.triton import build_shadow_repository
from avserve.triton.python_model import MODEL_PY


def test_onnx_models_are_rewritten_for_the_python_backend(tiny_repository: Path, tmp_path: Path, tiny) -> None:
    source_config = read_model_config(tiny_repository / "tiny_av" / "config.pbtxt")
    add_tensorrt_accelerator(source_config)  # a GPU-host option the CPU shadow must drop
    source_config.instance_group[0].kind = source_config.instance_group[0].KIND_GPU
    source_config.instance_group[0].count = 2
    write_model_config(tiny_repository / "tiny_av" / "config.pbtxt", source_config)
    before = tiny.tree_digest(tiny_repository)

    shadow = build_shadow_repository(tiny_repository, tmp_path / "shadow")

    assert shadow.rewritten == ("tiny_audio", "tiny_av") and not shadow.skipped
    config = read_model_config(shadow.path / "tiny_av" / "config.pbtxt")
    assert (config.backend, config.platform, config.default_model_filename) == ("python", "", "")
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU and config.instance_group[0].count == 2
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    # Everything the gateway and batching rely on is unchanged.
    assert list(config.input) == list(source_config.input) and list(config.output) == list(source_config.output)
    assert config.max_batch_size == source_config.max_batch_size
    assert config.dynamic_batching == source_config.dynamic_batching
    for key, value in source_config.parameters.items():
        assert config.parameters[key] == value
    assert config.parameters["onnx_model_filename"].string_value == "model.onnx"

    version_dir = shadow.path / "tiny_av" / "1"
    assert (version_dir / "model.onnx").is_symlink()
    assert (version_dir / "model.onnx").resolve() == (tiny_repository / "tiny_av" / "1" / "model.onnx").resolve()
    assert (shadow.path / "tiny_av" / "labels.txt").is_symlink()
    assert filecmp.cmp(version_dir / "model.py", MODEL_PY, shallow=False)
    assert tiny.tree_digest(tiny_repository) == before  # the source is untouched


def test_models_this_server_cannot_run_are_skipped_and_python_models_mirrored(
    tiny_repository: Path, tmp_path: Path
) -> None:
    engine = tiny_repository / "tiny_trt"
    (engine / "1").mkdir(parents=True)
    (engine / "1" / "model.plan").write_bytes(b"engine")
    write_model_config(engine / "config.pbtxt", ModelConfig(name="tiny_trt", platform="tensorrt_plan"))
    custom = tiny_repository / "custom"
    (custom / "1").mkdir(parents=True)
    (custom / "1" / "model.py").write_text("class TritonPythonModel: pass\n")
    write_model_config(custom / "config.pbtxt", ModelConfig(name="custom", backend="python"))

    shadow = build_shadow_repository(tiny_repository, tmp_path / "shadow")

    assert set(shadow.skipped) == {"tiny_trt"} and "tensorrt" in shadow.skipped["tiny_trt"]
    assert not (shadow.path / "tiny_trt").exists()
    assert shadow.mirrored == ("custom",) and (shadow.path / "custom").resolve() == custom.resolve()
    assert shadow.models == ("custom", "tiny_audio", "tiny_av")


def test_destination_must_be_empty(tiny_repository: Path, tmp_path: Path) -> None:
    (tmp_path / "shadow").mkdir()
    (tmp_path / "shadow" / "stale").mkdir()
    with pytest.raises(RepositoryError, match="not empty"):
        build_shadow_repository(tiny_repository, tmp_path / "shadow")
