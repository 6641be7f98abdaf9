"""Typed view of one served model: tensors, batching, preprocessing parameters, labels.

A `ModelSpec` comes from a `ModelConfig` protobuf (`ModelSpec.from_model_config`), either
read from `config.pbtxt` on disk (`load_model_spec`) or fetched from Triton's model-config
API (gRPC protobuf or HTTP JSON), so embedded and Triton mode see the same spec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from avserve.contract import (
    ANSWER_OUTPUT,
    AUDIO,
    CONFIG_FILE,
    HEAD_OUTPUT_PREFIX,
    MISSING_MODALITY_POLICIES,
    MODALITIES,
    ONNX_MODEL_FILE,
    PRECISIONS,
    UNIMODAL_KINDS,
    VIDEO,
    Param,
)

from .config import NUMPY_DTYPES, ModelConfig, read_model_config
from .errors import RepositoryError

# The file a version directory must hold when the config names none (Triton's defaults).
DEFAULT_MODEL_FILES = {
    "onnxruntime": ONNX_MODEL_FILE,
    "onnxruntime_onnx": ONNX_MODEL_FILE,
    "python": "model.py",
    "tensorrt": "model.plan",
    "tensorrt_plan": "model.plan",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `dims` excludes the batch dimension when the model batches."""

    name: str
    data_type: str  # Triton's name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]
    label_filename: str = ""

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(NUMPY_DTYPES[self.data_type])


@dataclass(frozen=True)
class ModelSpec:
    name: str
    platform: str
    backend: str
    max_batch_size: int
    dynamic_batching: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Decoded from `parameters` (the contract's preprocessing and routing metadata).
    family: str
    modalities: frozenset[str]
    architecture: str
    sample_rate: int | None
    clip_seconds: float | None
    num_frames: int | None
    image_size: int | None
    answer_output: str
    heads: tuple[str, ...]
    missing_modality: str
    unimodal: str | None = None  # one of UNIMODAL_KINDS, or None when the config does not say
    modality_dropout: float | None = None  # fraction of training clips made unimodal, when recorded
    pretrained: str | None = None  # "<model> (<objective>)" the weights were initialised from, when recorded
    precision: str | None = None  # one of PRECISIONS ("int8": quantized MatMuls), None when not stated (fp32)
    labels: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    path: Path | None = None  # the model directory, when read from disk
    parameters: Mapping[str, str] = field(default_factory=dict)  # every raw parameter

    # ---- convenience views -------------------------------------------------------------

    @property
    def clip_samples(self) -> int | None:
        audio = self.input(AUDIO) if AUDIO in self.modalities else None
        return audio.dims[0] if audio is not None and audio.dims[0] > 0 else None

    @property
    def num_classes(self) -> int:
        return len(self.labels) if self.labels else self.output(self.answer_output).dims[-1]

    @property
    def window_seconds(self) -> float | None:
        """Seconds of media one request to this model covers (None: the model takes any length)."""
        if self.clip_seconds is not None:
            return self.clip_seconds
        if self.clip_samples is not None and self.sample_rate:
            return self.clip_samples / self.sample_rate
        return None

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, f"model {self.name!r} has no input")

    def input_shape(self, name: str) -> tuple[int, ...]:
        """An input's dims (no batch axis) with variable (-1) entries filled from the
        preprocessing parameters; RepositoryError when the parameters do not say."""
        dims = self.input(name).dims
        if name == VIDEO and len(dims) == 4:  # [frames, height, width, 3]
            filled = (
                dims[0] if dims[0] > 0 else self.num_frames,
                dims[1] if dims[1] > 0 else self.image_size,
                dims[2] if dims[2] > 0 else self.image_size,
                dims[3],
            )
        elif name == AUDIO and len(dims) == 1 and dims[0] <= 0:
            seconds = self.window_seconds
            filled = (round(seconds * self.sample_rate) if seconds and self.sample_rate else None,)
        else:
            filled = dims
        if any(d is None or d <= 0 for d in filled):
            raise RepositoryError(f"model {self.name!r}: the size of input {name!r} {list(dims)} is not fixed by its parameters")
        return tuple(int(d) for d in filled)

    def zero_inputs(self, rows: int = 1, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Zero tensors for `names` (default: every input), with a batch axis of `rows` when the
        model batches: warm-up runs, label lookups, and the inputs a `zero_fill` route lacks."""
        batch = (rows,) if self.max_batch_size > 0 else ()
        wanted = [t.name for t in self.inputs] if names is None else list(names)
        return {n: np.zeros(batch + self.input_shape(n), self.input(n).numpy_dtype) for n in wanted}

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, f"model {self.name!r} has no output")

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def from_model_config(
        cls,
        config: ModelConfig | Mapping[str, Any],
        *,
        labels: Sequence[str] | None = None,
        versions: Sequence[int] = (),
        path: Path | None = None,
    ) -> ModelSpec:
        """Validate a config against the contract and decode it.

        `config` is a `ModelConfig`, or the JSON dict Triton's HTTP model-config API returns
        (also accepted wrapped as `{"config": {...}}`, the gRPC client's `as_json` shape).
        `labels` are checked against the answer output when given.
        """
        config = _as_model_config(config)
        where = str(path / CONFIG_FILE) if path is not None else f"model {config.name!r}"
        inputs = tuple(_tensor(t) for t in config.input)
        outputs = tuple(_tensor(t) for t in config.output)
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        decode = _Decoder(where, parameters)

        modalities = decode.modalities(inputs)
        answer_output = decode.text(Param.ANSWER_OUTPUT, ANSWER_OUTPUT)
        output_names = {t.name for t in outputs}
        if answer_output not in output_names:
            raise RepositoryError(f"{where}: answer_output {answer_output!r} is not an output ({sorted(output_names)})")
        heads = decode.heads(output_names)
        missing_modality = decode.text(Param.MISSING_MODALITY, "route")
        if missing_modality not in MISSING_MODALITY_POLICIES:
            raise RepositoryError(
                f"{where}: missing_modality {missing_modality!r} is not one of {sorted(MISSING_MODALITY_POLICIES)}"
            )
        unimodal = decode.choice(
            Param.UNIMODAL,
            UNIMODAL_KINDS,
            "what an audio-only or video-only graph computes: 'head' = exactly the audio+video model's head "
            "for that modality, 'stream' = the model run on that stream alone",
        )
        modality_dropout = decode.fraction(Param.MODALITY_DROPOUT)
        precision = decode.choice(
            Param.PRECISION, PRECISIONS, "the graph's numeric precision: 'int8' = quantized MatMul, 'fp32' = as traced"
        )
        if config.max_batch_size < 0:
            raise RepositoryError(f"{where}: max_batch_size must be >= 0, not {config.max_batch_size}")

        spec = cls(
            name=config.name,
            platform=config.platform,
            backend=config.backend,
            max_batch_size=config.max_batch_size,
            dynamic_batching=config.HasField("dynamic_batching"),
            inputs=inputs,
            outputs=outputs,
            family=decode.text(Param.FAMILY, config.name),
            modalities=modalities,
            architecture=decode.text(Param.ARCHITECTURE, ""),
            sample_rate=decode.integer(Param.SAMPLE_RATE),
            clip_seconds=decode.number(Param.CLIP_SECONDS),
            num_frames=decode.integer(Param.NUM_FRAMES),
            image_size=decode.integer(Param.IMAGE_SIZE),
            answer_output=answer_output,
            heads=heads,
            missing_modality=missing_modality,
            unimodal=unimodal,
            modality_dropout=modality_dropout,
            pretrained=decode.text(Param.PRETRAINED, "") or None,
            precision=precision,
            labels=tuple(labels or ()),
            versions=tuple(sorted(versions)),
            path=path,
            parameters=MappingProxyType(parameters),
        )
        _check_tensors(spec, where)
        if labels is not None:
            num_classes = spec.output(answer_output).dims[-1] if spec.output(answer_output).dims else 0
            if num_classes > 0 and len(spec.labels) != num_classes:
                raise RepositoryError(
                    f"{where}: {len(spec.labels)} labels but output {answer_output!r} has {num_classes} classes"
                )
        return spec


def load_model_spec(model_dir: Path) -> ModelSpec:
    """Read `<model_dir>/config.pbtxt`, its version directories and its labels file."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise RepositoryError(f"{model_dir}: no {CONFIG_FILE}")
    config = read_model_config(config_path)
    # Triton names a model after its directory; a different name in the config is an error there.
    if config.name and config.name != model_dir.name:
        raise RepositoryError(f"{config_path}: name {config.name!r} does not match its directory {model_dir.name!r}")
    config.name = model_dir.name

    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise RepositoryError(f"{model_dir}: no version directory (expected {model_dir}/1/)")
    model_file = config.default_model_filename or DEFAULT_MODEL_FILES.get(config.backend or config.platform, "")
    if model_file:
        for version in versions:
            if not (model_dir / str(version) / model_file).exists():
                raise RepositoryError(f"{model_dir}: missing model file {version}/{model_file}")

    labels = _read_labels(model_dir, config)
    return ModelSpec.from_model_config(config, labels=labels, versions=versions, path=model_dir)


# ---- helpers -------------------------------------------------------------------------------


def _as_model_config(config: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, Mapping):
        body = config["config"] if set(config) == {"config"} else config
        parsed = ModelConfig()
        try:
            json_format.ParseDict(dict(body), parsed, ignore_unknown_fields=True)
        except json_format.ParseError as error:
            raise RepositoryError(f"malformed model config JSON: {error}") from error
        return parsed
    raise TypeError(f"expected a ModelConfig or a JSON dict, got {type(config).__name__}")


def _tensor(tensor: mc.ModelInput | mc.ModelOutput) -> TensorSpec:
    return TensorSpec(
        name=tensor.name,
        data_type=mc.DataType.Name(tensor.data_type),
        dims=tuple(int(d) for d in tensor.dims),
        label_filename=getattr(tensor, "label_filename", ""),
    )


def _by_name(tensors: tuple[TensorSpec, ...], name: str, message: str) -> TensorSpec:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise KeyError(f"{message} {name!r}")


def _read_labels(model_dir: Path, config: ModelConfig) -> list[str]:
    # `in` first: indexing a protobuf map inserts the key.
    answer = config.parameters[Param.ANSWER_OUTPUT].string_value if Param.ANSWER_OUTPUT in config.parameters else ""
    answer = answer.strip() or ANSWER_OUTPUT
    output = next((o for o in config.output if o.name == answer), None)
    if output is None:
        return []  # from_model_config reports the missing answer output
    if not output.label_filename:
        raise RepositoryError(f"{model_dir / CONFIG_FILE}: output {answer!r} has no label_filename")
    path = model_dir / output.label_filename
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        raise RepositoryError(f"{model_dir}: missing labels file {output.label_filename}") from None
    # Triton maps line i to class i, so blank lines in the middle are kept; trailing ones are not classes.
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


@dataclass
class _Decoder:
    """Typed access to the string-valued `parameters`, with errors that name the file."""

    where: str
    parameters: dict[str, str]

    def text(self, key: str, default: str) -> str:
        return self.parameters.get(key, "").strip() or default

    def integer(self, key: str) -> int | None:
        raw = self.parameters.get(key, "").strip()
        if not raw:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise RepositoryError(f"{self.where}: parameter {key}={raw!r} is not an integer") from None
        if value <= 0:
            raise RepositoryError(f"{self.where}: parameter {key}={raw!r} must be positive")
        return value

    def _float(self, key: str) -> float | None:
        raw = self.parameters.get(key, "").strip()
        if not raw:
            return None
        try:
            return float(raw)
        except ValueError:
            raise RepositoryError(f"{self.where}: parameter {key}={raw!r} is not a number") from None

    def number(self, key: str) -> float | None:
        value = self._float(key)
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise RepositoryError(f"{self.where}: parameter {key}={self.parameters[key].strip()!r} must be a positive number")
        return value

    def choice(self, key: str, allowed: frozenset[str], meaning: str) -> str | None:
        raw = self.parameters.get(key, "").strip()
        if not raw:
            return None
        if raw not in allowed:
            raise RepositoryError(f"{self.where}: parameter {key}={raw!r} is not one of {sorted(allowed)} ({meaning})")
        return raw

    def fraction(self, key: str) -> float | None:
        value = self._float(key)
        if value is not None and not 0.0 <= value <= 1.0:  # also rejects NaN
            raise RepositoryError(f"{self.where}: parameter {key}={self.parameters[key].strip()!r} must be a fraction in [0, 1]")
        return value

    def modalities(self, inputs: tuple[TensorSpec, ...]) -> frozenset[str]:
        input_names = frozenset(t.name for t in inputs)
        raw = self.parameters.get(Param.MODALITIES, "").strip()
        # Without the parameter, the inputs themselves say which modalities the model takes.
        names = [m.strip() for m in raw.split("+")] if raw else sorted(input_names)
        unknown = [m for m in names if m not in MODALITIES]
        if unknown or not names:
            raise RepositoryError(
                f"{self.where}: unknown modality {', '.join(map(repr, unknown)) or repr(raw)} "
                f"(modalities are {' / '.join(sorted(MODALITIES))}, joined with '+')"
            )
        modalities = frozenset(names)
        if modalities != input_names:
            raise RepositoryError(
                f"{self.where}: modalities {raw or '+'.join(names)!r} do not match the inputs {sorted(input_names)}"
            )
        return modalities

    def heads(self, output_names: set[str]) -> tuple[str, ...]:
        raw = self.parameters.get(Param.HEADS, "").strip()
        if not raw:
            return tuple(sorted(n.removeprefix(HEAD_OUTPUT_PREFIX) for n in output_names if n.startswith(HEAD_OUTPUT_PREFIX)))
        heads = tuple(h.strip() for h in raw.split(",") if h.strip())
        missing = [h for h in heads if HEAD_OUTPUT_PREFIX + h not in output_names]
        if missing:
            raise RepositoryError(
                f"{self.where}: heads {missing} have no output named {', '.join(HEAD_OUTPUT_PREFIX + h for h in missing)}"
            )
        return heads


def _check_tensors(spec: ModelSpec, where: str) -> None:
    """Shape rules the gateway relies on, and agreement between parameters and dims."""
    if AUDIO in spec.modalities:
        audio = spec.input(AUDIO)
        if audio.data_type != "TYPE_FP32" or len(audio.dims) != 1:
            raise RepositoryError(
                f"{where}: input 'audio' must be TYPE_FP32 [clip_samples], not {audio.data_type} {list(audio.dims)}"
            )
        if spec.sample_rate is None:
            raise RepositoryError(f"{where}: an audio model needs parameter sample_rate")
        if spec.clip_seconds is not None and audio.dims[0] > 0:
            expected = round(spec.sample_rate * spec.clip_seconds)
            if expected != audio.dims[0]:
                raise RepositoryError(
                    f"{where}: audio dims [{audio.dims[0]}] but sample_rate*clip_seconds = {expected}"
                )
    if VIDEO in spec.modalities:
        video = spec.input(VIDEO)
        if video.data_type != "TYPE_UINT8" or len(video.dims) != 4 or video.dims[3] != 3:
            raise RepositoryError(
                f"{where}: input 'video' must be TYPE_UINT8 [num_frames, H, W, 3], "
                f"not {video.data_type} {list(video.dims)}"
            )
        frames, height, width, _ = video.dims
        if spec.num_frames is not None and frames > 0 and frames != spec.num_frames:
            raise RepositoryError(f"{where}: video dims have {frames} frames but num_frames = {spec.num_frames}")
        wrong_size = any(side > 0 and side != spec.image_size for side in (height, width))
        if spec.image_size is not None and wrong_size:
            raise RepositoryError(f"{where}: video frames are {height}x{width} but image_size = {spec.image_size}")
    answer = spec.output(spec.answer_output)
    if answer.data_type != "TYPE_FP32" or not answer.dims:
        raise RepositoryError(f"{where}: output {answer.name!r} must be TYPE_FP32 [num_classes]")
