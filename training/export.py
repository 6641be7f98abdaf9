"""Export a trained model to a Triton model repository (the one training/serving contract).

For every input set the architecture can serve faithfully (`model.servable_modalities`) the
exporter writes one Triton model, named after the family and the set:

    <family>_av     audio + video in; the averaged "logits" plus one "head_<name>" per head
    <family>_audio  audio in only: the graph holds just the audio stream and its head(s)
    <family>_video  video in only

Each model directory gets `config.pbtxt` (typed tensors, dynamic batching, instance group,
warm-up, version policy, labels, and the `parameters` the gateway preprocesses and routes
by), `1/model.onnx` (dynamic batch) and `labels.txt`. Every graph is run in onnxruntime
against the torch model before it is installed, and a model directory is swapped in whole:
a failed export leaves the repository as it was.

Runtimes (`ExportOptions.runtime`):
  "onnxruntime"  Triton's native ONNX Runtime backend (default; CPU or GPU).
  "tensorrt"     the same ONNX graph, run by the ORT backend's TensorRT execution
                 accelerator in FP16 (GPU hosts; engines are cached next to the model).
  "tensorrt_plan" a real TensorRT engine (`model.plan`, platform tensorrt_plan) built with
                 the `tensorrt` Python API and a batch optimisation profile; needs TensorRT
                 and a GPU (training/tensorrt.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from avserve.contract import (
    AUDIO,
    CONFIG_FILE,
    LABELS_FILE,
    MODEL_VERSION,
    ONNX_MODEL_FILE,
    ROUTE_SUFFIXES,
    VIDEO,
    Param,
    modalities_parameter,
)
from avserve.repository import (
    BatchingConfig,
    ModelConfig,
    NewModelConfig,
    TensorConfig,
    add_tensorrt_accelerator,
    new_model_config,
    write_model_config,
)
from training.models import AVClassifier, ModalityGraph

Runtime = Literal["onnxruntime", "tensorrt", "tensorrt_plan"]
RUNTIMES: tuple[str, ...] = ("onnxruntime", "tensorrt", "tensorrt_plan")


class ExportError(RuntimeError):
    """The export could not be completed; the repository is unchanged."""


@dataclass(frozen=True)
class ExportOptions:
    family: str | None = None  # default: the run's model preset name
    runtime: Runtime = "onnxruntime"
    max_batch_size: int = 16
    instance_count: int = 1
    # Dynamic batching waits this long for more requests: ~1 ms trades little latency for
    # batches under load (measured in loadtests/).
    max_queue_delay_microseconds: int = 1000
    # 17 is the newest opset TorchScript's exporter covers fully and what Triton 2.4x's ORT
    # backend (ORT 1.17+) runs.
    opset: int = 17
    # Parity bound between the torch model and the exported graph (issue 4 acceptance).
    tolerance: float = 1e-4
    # Unimodal requests of a family that lacks that graph: "route" = the gateway must find
    # another model of the family, "zero_fill" / "reject" per the architecture's own export.
    missing_modality: str = "route"
    # More `parameters` for every model's config.pbtxt (export_run adds how the run was trained).
    extra_parameters: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ExportError(f"runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        if self.max_batch_size < 1:
            raise ExportError("max_batch_size must be >= 1")
        if self.instance_count < 1:
            raise ExportError("instance_count must be >= 1")


@dataclass(frozen=True)
class ExportedModel:
    name: str
    directory: Path
    modalities: frozenset[str]
    heads: tuple[str, ...]
    file_bytes: int
    max_abs_diff: float  # torch vs exported graph, over batch 1 and batch 3


def export_run(run_dir: str | Path, repository: str | Path, options: ExportOptions = ExportOptions()) -> list[ExportedModel]:
    """Export the best checkpoint of a training run (see training/checkpoint.py)."""
    from training.checkpoint import CheckpointError, load_run

    try:
        model, info = load_run(run_dir)
    except CheckpointError as error:
        raise ExportError(str(error)) from error
    family = options.family or info.model
    extra = dict(options.extra_parameters)
    modality_dropout = float(info.train.get("modality_dropout") or 0.0)
    if modality_dropout > 0:  # tells a reader of the repository the unimodal graphs were trained for
        extra.setdefault(Param.MODALITY_DROPOUT, repr(modality_dropout))
    options = dataclasses.replace(options, family=family, extra_parameters=tuple(sorted(extra.items())))
    return export_model(model, info.classes, repository, options)


def export_model(
    model: AVClassifier, labels: Sequence[str], repository: str | Path, options: ExportOptions
) -> list[ExportedModel]:
    """Write one Triton model per servable input set of `model` into `repository`."""
    if not options.family:
        raise ExportError("a family name is required")
    if len(labels) != model.config.num_classes:
        raise ExportError(f"{len(labels)} labels for a model with {model.config.num_classes} classes")
    repository = Path(repository)
    try:
        repository.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=repository, prefix=".write-test-")
        probe.close()
    except OSError as error:
        raise ExportError(f"cannot write to repository {repository}: {error.strerror or error}") from error

    model = model.eval()
    exported = []
    for modalities in sorted(model.servable_modalities, key=lambda m: (-len(m), sorted(m))):
        name = f"{options.family}_{ROUTE_SUFFIXES[frozenset(modalities)]}"
        with _staged_model_directory(repository, name) as staging:
            exported.append(_export_one(model, frozenset(modalities), labels, name, staging, options))
    return [dataclasses.replace(e, directory=repository / e.name) for e in exported]


def _export_one(
    model: AVClassifier,
    modalities: frozenset[str],
    labels: Sequence[str],
    name: str,
    directory: Path,
    options: ExportOptions,
) -> ExportedModel:
    graph = ModalityGraph(model, modalities).eval()
    version_dir = directory / MODEL_VERSION
    version_dir.mkdir()
    onnx_path = version_dir / ONNX_MODEL_FILE
    example = example_inputs(model, graph.input_names, batch=2, seed=0)
    _export_onnx(graph, example, onnx_path, options.opset)
    max_abs_diff = check_parity(graph, onnx_path, options.tolerance)

    if options.runtime == "tensorrt_plan":
        from training.tensorrt import build_engine

        build_engine(onnx_path, version_dir / "model.plan", graph, max_batch_size=options.max_batch_size)
        onnx_path.unlink()  # the plan replaces the graph; keep the directory minimal

    config = model_config_for(model, graph, name, options)
    write_model_config(directory / CONFIG_FILE, config)
    (directory / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    model_file = next(version_dir.iterdir())
    return ExportedModel(name, directory, modalities, graph.head_names, model_file.stat().st_size, max_abs_diff)


def model_config_for(model: AVClassifier, graph: ModalityGraph, name: str, options: ExportOptions) -> ModelConfig:
    """The config.pbtxt of one exported graph: tensors, batching and the gateway's parameters."""
    cfg = model.config
    tensors = {
        AUDIO: TensorConfig(AUDIO, "TYPE_FP32", (cfg.clip_samples,)),
        VIDEO: TensorConfig(VIDEO, "TYPE_UINT8", (cfg.num_frames, cfg.image_size, cfg.image_size, 3)),
    }
    outputs = [
        TensorConfig(output, "TYPE_FP32", (cfg.num_classes,), label_filename=LABELS_FILE if i == 0 else "")
        for i, output in enumerate(graph.output_names)
    ]
    parameters = {
        Param.FAMILY: options.family,
        Param.ARCHITECTURE: model.architecture,
        Param.MODALITIES: modalities_parameter(graph.modalities),
        Param.SAMPLE_RATE: str(cfg.sample_rate),
        Param.CLIP_SECONDS: repr(float(cfg.clip_seconds)),
        Param.NUM_FRAMES: str(cfg.num_frames),
        Param.IMAGE_SIZE: str(cfg.image_size),
        Param.ANSWER_OUTPUT: graph.output_names[0],
        Param.HEADS: ",".join(graph.head_names),
        Param.MISSING_MODALITY: options.missing_modality,
        **dict(options.extra_parameters),
    }
    if len(graph.modalities) == 1:
        parameters[Param.UNIMODAL] = model.unimodal_graphs
    tensorrt_plan = options.runtime == "tensorrt_plan"
    config = new_model_config(
        NewModelConfig(
            name=name,
            inputs=[tensors[m] for m in graph.input_names],
            outputs=outputs,
            max_batch_size=options.max_batch_size,
            parameters=parameters,
            batching=BatchingConfig(max_queue_delay_microseconds=options.max_queue_delay_microseconds),
            instance_count=options.instance_count,
            instance_kind="KIND_GPU" if tensorrt_plan else "KIND_AUTO",
            platform="tensorrt_plan" if tensorrt_plan else "onnxruntime_onnx",
            backend="tensorrt" if tensorrt_plan else "onnxruntime",
        )
    )
    config.version_policy.latest.num_versions = 1
    # Warm-up runs one zero-filled batch-1 request per instance before the model is READY,
    # so the first user request does not pay for ORT's lazy initialisation.
    warmup = config.model_warmup.add(name="zeros_batch1", batch_size=1)
    for input_name in graph.input_names:
        tensor = tensors[input_name]
        warmup.inputs[input_name].data_type = config.input[graph.input_names.index(input_name)].data_type
        warmup.inputs[input_name].dims.extend(tensor.dims)
        warmup.inputs[input_name].zero_data = True
    if options.runtime == "tensorrt":
        add_tensorrt_accelerator(config, precision_mode="FP16", engine_cache_path=f"/tmp/avserve-trt-cache/{name}")
    return config


def example_inputs(model: AVClassifier, input_names: Sequence[str], batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random inputs of the exact served shapes and dtypes (PCM in [-1, 1], uint8 frames)."""
    cfg = model.config
    generator = torch.Generator().manual_seed(seed)
    make = {
        AUDIO: lambda: torch.rand(batch, cfg.clip_samples, generator=generator) * 2 - 1,
        VIDEO: lambda: torch.randint(
            0, 256, (batch, cfg.num_frames, cfg.image_size, cfg.image_size, 3), generator=generator, dtype=torch.uint8
        ),
    }
    return tuple(make[name]() for name in input_names)


def _export_onnx(graph: ModalityGraph, example: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    # The TorchScript exporter: 10-20x faster to export than the dynamo one here and its graphs
    # ran as fast in onnxruntime (tests/models/test_all_models.py proves both exporters work).
    names = [*graph.input_names, *graph.output_names]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings for constant shape checks; deprecation notice
            torch.onnx.export(
                graph,
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=list(graph.input_names),
                output_names=list(graph.output_names),
                dynamic_axes={n: {0: "batch"} for n in names},
            )
    except Exception as error:  # noqa: BLE001 - the exporter raises many types
        raise ExportError(f"ONNX export failed: {type(error).__name__}: {error}") from error


def check_parity(graph: ModalityGraph, onnx_path: Path, tolerance: float) -> float:
    """Largest |torch - onnxruntime| over every output at batch 1 and batch 3."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(onnx_path))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, seed in ((1, 1), (3, 2)):
        inputs = example_inputs(graph.model, graph.input_names, batch=batch, seed=seed)
        with torch.no_grad():
            expected = graph(*inputs)
        got = session.run(list(graph.output_names), {n: x.numpy() for n, x in zip(graph.input_names, inputs)})
        for name, want, have in zip(graph.output_names, expected, got, strict=True):
            diff = float(np.max(np.abs(want.numpy() - have)))
            if not diff <= tolerance:  # also catches NaN
                raise ExportError(f"{onnx_path}: output {name} differs from torch by {diff:.3g} at batch {batch}")
            worst = max(worst, diff)
    return worst


def _make_world_readable(directory: Path) -> None:
    # mkdtemp/mkstemp create 0700/0600 entries; Triton in a container often runs as another user.
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


@contextlib.contextmanager
def _staged_model_directory(repository: Path, name: str) -> Iterator[Path]:
    """Build a model directory beside its final place, then swap it in with renames.

    Triton ignores directories that hold no config.pbtxt yet, and a rename within one
    filesystem is atomic, so a server polling the repository never sees a half-written model;
    on any error the staging directory is removed and the previous model stays.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=repository))
    try:
        yield staging
        _make_world_readable(staging)
        target = repository / name
        retired = None
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".retired-{name}-", dir=repository))
            target.rename(retired / name)
        try:
            staging.rename(target)
        except OSError:
            if retired is not None:
                (retired / name).rename(target)  # put the previous model back
            raise
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
