"""The repository contract reader/writer: typed specs, route table, and every RepositoryError."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import json_format, text_format

from avserve.repository import (
    ModelConfig,
    ModelSpec,
    RepositoryError,
    add_tensorrt_accelerator,
    load_model_spec,
    load_repository,
    model_config_text,
    read_model_config,
    write_model_config,
)


def test_specs_decode_the_contract(tiny_repository: Path) -> None:
    spec = load_model_spec(tiny_repository / "tiny_av")
    assert (spec.name, spec.family, spec.architecture) == ("tiny_av", "tiny", "linear")
    assert (spec.platform, spec.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert spec.modalities == frozenset({"audio", "video"})
    assert spec.sample_rate == 16000 and isinstance(spec.sample_rate, int)
    assert spec.clip_seconds == pytest.approx(0.01) and isinstance(spec.clip_seconds, float)
    assert (spec.num_frames, spec.image_size, spec.clip_samples) == (2, 8, 160)
    assert spec.heads == ("audio", "video") and spec.answer_output == "logits"
    assert spec.missing_modality == "route"
    assert spec.labels == ("dog", "piano", "rain") and spec.num_classes == 3
    assert spec.versions == (1,) and spec.path == tiny_repository / "tiny_av"
    assert spec.max_batch_size == 16 and spec.dynamic_batching
    assert spec.input("video").dims == (2, 8, 8, 3) and spec.input("video").numpy_dtype == "uint8"
    assert spec.output("head_video").data_type == "TYPE_FP32"
    assert spec.parameters["intra_op_thread_count"] == "1"


def test_unimodal_and_modality_dropout_parameters(tiny_repository: Path) -> None:
    """Optional: absent is None; `unimodal` says what a unimodal graph computes (head | stream),
    `modality_dropout` how the run was trained (written by export_run)."""
    spec = load_model_spec(tiny_repository / "tiny_audio")
    assert (spec.unimodal, spec.modality_dropout) == (None, None)
    for unimodal, dropout, expected in (("head", "0", ("head", 0.0)), (" stream ", "0.3", ("stream", 0.3))):
        _set("unimodal", unimodal)(tiny_repository / "tiny_audio")
        _set("modality_dropout", dropout)(tiny_repository / "tiny_audio")
        spec = load_model_spec(tiny_repository / "tiny_audio")
        assert (spec.unimodal, spec.modality_dropout) == expected and isinstance(spec.modality_dropout, float)
        # The same decoding from Triton's model-config JSON (the gateway's Triton backend).
        config = read_model_config(tiny_repository / "tiny_audio" / "config.pbtxt")
        as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
        from_json = ModelSpec.from_model_config(as_json)
        assert (from_json.unimodal, from_json.modality_dropout) == expected


def test_repository_route_table(tiny_repository: Path) -> None:
    repo = load_repository(tiny_repository)
    assert sorted(repo.models) == ["tiny_audio", "tiny_av"]
    assert repo.families == ["tiny"]
    assert repo.routes["tiny"] == {frozenset({"audio"}): "tiny_audio", frozenset({"audio", "video"}): "tiny_av"}
    assert repo.route("tiny", {"audio"}).name == "tiny_audio"
    assert repo.route("tiny", {"video"}) is None
    with pytest.raises(RepositoryError, match="no model named"):
        repo.model("nope")


def test_from_model_config_accepts_protobuf_and_json(tiny_repository: Path) -> None:
    on_disk = load_model_spec(tiny_repository / "tiny_av")
    config = read_model_config(tiny_repository / "tiny_av" / "config.pbtxt")
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    for source in (config, as_json, {"config": as_json}):
        spec = ModelSpec.from_model_config(source, labels=on_disk.labels)
        assert spec.inputs == on_disk.inputs and spec.outputs == on_disk.outputs
        assert (spec.modalities, spec.sample_rate, spec.labels) == (on_disk.modalities, 16000, on_disk.labels)


def test_written_config_round_trips_and_is_atomic(tiny_repository: Path, tmp_path: Path) -> None:
    config = read_model_config(tiny_repository / "tiny_audio" / "config.pbtxt")
    target = tmp_path / "copy" / "config.pbtxt"
    write_model_config(target, config)
    assert read_model_config(target) == config
    assert [p.name for p in target.parent.iterdir()] == ["config.pbtxt"]  # no temp file left
    with pytest.raises(RepositoryError, match="without a name"):
        write_model_config(tmp_path / "x.pbtxt", ModelConfig())


def test_tensorrt_accelerator_config(tiny_repository: Path) -> None:
    config = read_model_config(tiny_repository / "tiny_av" / "config.pbtxt")
    add_tensorrt_accelerator(config, precision_mode="FP16", engine_cache_path="/cache/trt")
    add_tensorrt_accelerator(config, precision_mode="FP16", engine_cache_path="/cache/trt")  # idempotent
    text = model_config_text(config)
    reparsed = text_format.Parse(text, ModelConfig())
    accelerators = reparsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"]
    assert dict(accelerators[0].parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/cache/trt",
    }
    assert 'name: "tensorrt"' in text and 'value: "FP16"' in text
    assert reparsed.backend == "onnxruntime"  # TensorRT runs inside the ORT backend
    with pytest.raises(ValueError):
        add_tensorrt_accelerator(config, precision_mode="FP8")


# ---- every way a repository can break ---------------------------------------------------------


def _edit_config(model_dir: Path, change: Callable[[ModelConfig], None]) -> None:
    config = read_model_config(model_dir / "config.pbtxt")
    change(config)
    write_model_config(model_dir / "config.pbtxt", config)


def _set(key: str, value: str) -> Callable[[Path], None]:
    def edit(model_dir: Path) -> None:
        def change(config: ModelConfig) -> None:
            config.parameters[key].string_value = value

        _edit_config(model_dir, change)

    return edit


def _audio_dims(dims: list[int]) -> Callable[[Path], None]:
    def edit(model_dir: Path) -> None:
        def change(config: ModelConfig) -> None:
            del config.input[0].dims[:]
            config.input[0].dims.extend(dims)

        _edit_config(model_dir, change)

    return edit


def _rename(config: ModelConfig) -> None:
    config.name = "other"


BROKEN = {
    "malformed config": (lambda d: (d / "config.pbtxt").write_text("name: tiny_audio {"), "malformed model config"),
    "unknown config field": (
        lambda d: (d / "config.pbtxt").write_text('name: "tiny_audio"\nmax_batch: 3\n'),
        "malformed model config",
    ),
    "missing config": (lambda d: (d / "config.pbtxt").unlink(), "no config.pbtxt"),
    "name mismatch": (lambda d: _edit_config(d, _rename), "does not match its directory"),
    "missing labels": (lambda d: (d / "labels.txt").unlink(), "missing labels file labels.txt"),
    "label count": (lambda d: (d / "labels.txt").write_text("dog\npiano\n"), "2 labels but output 'logits' has 3"),
    "missing model file": (lambda d: (d / "1" / "model.onnx").unlink(), "missing model file 1/model.onnx"),
    "no version": (lambda d: shutil.rmtree(d / "1"), "no version directory"),
    "unknown modality": (_set("modalities", "audio+smell"), "unknown modality 'smell'"),
    "modalities vs inputs": (_set("modalities", "video"), "do not match the inputs"),
    "sample rate not an int": (_set("sample_rate", "16k"), "sample_rate='16k' is not an integer"),
    "clip seconds not a number": (_set("clip_seconds", "long"), "clip_seconds='long' is not a number"),
    "clip length vs dims": (_set("clip_seconds", "1.0"), r"audio dims \[160\] but sample_rate\*clip_seconds = 16000"),
    "audio rank": (_audio_dims([2, 80]), "input 'audio' must be TYPE_FP32"),
    "answer output": (_set("answer_output", "scores"), "answer_output 'scores' is not an output"),
    "head without output": (_set("heads", "audio,video"), "no output named head_video"),
    "missing-modality policy": (_set("missing_modality", "guess"), "missing_modality 'guess'"),
    "unimodal kind": (_set("unimodal", "exact"), r"unimodal='exact' is not one of \['head', 'stream'\]"),
    "unimodal kind is case-sensitive": (_set("unimodal", "Head"), r"unimodal='Head' is not one of"),
    "modality dropout not a number": (_set("modality_dropout", "some"), "modality_dropout='some' is not a number"),
    "modality dropout above 1": (_set("modality_dropout", "1.5"), r"modality_dropout='1.5' must be a fraction in \[0, 1\]"),
    "modality dropout NaN": (_set("modality_dropout", "nan"), r"modality_dropout='nan' must be a fraction"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_model_is_a_clear_repository_error(case: str, tiny_repository: Path) -> None:
    breakage, message = BROKEN[case]
    breakage(tiny_repository / "tiny_audio")
    with pytest.raises(RepositoryError, match=message) as caught:
        load_repository(tiny_repository)
    assert "tiny_audio" in str(caught.value)  # names the model (directory or file) at fault


def test_all_problems_are_reported_together(tiny_repository: Path) -> None:
    (tiny_repository / "tiny_audio" / "labels.txt").unlink()
    (tiny_repository / "tiny_av" / "1" / "model.onnx").unlink()
    with pytest.raises(RepositoryError) as caught:
        load_repository(tiny_repository)
    assert "tiny_audio: missing labels" in str(caught.value) and "tiny_av: missing model file" in str(caught.value)


def test_two_models_for_one_route_is_an_error(tiny_repository: Path) -> None:
    shutil.copytree(tiny_repository / "tiny_audio", tiny_repository / "tiny_audio_copy")
    _edit_config(tiny_repository / "tiny_audio_copy", lambda c: setattr(c, "name", "tiny_audio_copy"))
    with pytest.raises(RepositoryError, match="both serve family 'tiny' with modalities 'audio'"):
        load_repository(tiny_repository)


def test_missing_or_empty_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="not a directory"):
        load_repository(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".git").mkdir()  # hidden directories are not models
    with pytest.raises(RepositoryError, match="has no models"):
        load_repository(tmp_path / "empty")


def test_a_family_an_export_is_still_swapping_in_is_left_out(tiny_repository: Path, tmp_path: Path) -> None:
    """A pending `.export-<family>.json` (an export killed mid-swap, training/export.py) names
    models that may be half old, half new: the loader and the local Triton's shadow skip them."""
    import json

    from avserve.triton.shadow import build_shadow_repository

    journal = tiny_repository / ".export-tiny.json"
    journal.write_text(json.dumps({"family": "tiny", "staging": "x", "install": {"tiny_av": 1}, "remove": []}))
    repo = load_repository(tiny_repository)
    assert sorted(repo.models) == ["tiny_audio"]
    assert build_shadow_repository(tiny_repository, tmp_path / "shadow").models == ("tiny_audio",)
    journal.write_text("{half a jour")  # still being written: its swap has not begun
    assert sorted(load_repository(tiny_repository).models) == ["tiny_audio", "tiny_av"]
    journal.write_text(json.dumps({"family": "tiny", "staging": "x", "install": {"tiny_av": 1}, "remove": ["tiny_audio"]}))
    with pytest.raises(RepositoryError, match="has no models"):
        load_repository(tiny_repository)
