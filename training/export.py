"""Export a trained model to a Triton model repository (the one training/serving contract).

For every input set the architecture can serve faithfully (`model.servable_modalities`) the
exporter writes one Triton model, named after the family and the set:

    <family>_av     audio + video in; the averaged "logits" plus one "head_<name>" per head
    <family>_audio  audio in only: the graph holds just the audio stream and its head(s)
    <family>_video  video in only

Each model directory gets `config.pbtxt` (typed tensors, dynamic batching, instance group,
warm-up, version policy, labels, and the `parameters` the gateway preprocesses and routes
by), `1/model.onnx` (dynamic batch) and `labels.txt`. Every graph is run in onnxruntime
against the torch model before it is installed.

A family is exported all or nothing (tests/export/test_kill_export.py kills `avserve export`
at random moments):
  1. under a lock on the repository (flock on its directory: one export at a time; the kernel
     drops it when the process dies), a previous export a kill interrupted is completed and
     its leftovers are removed;
  2. every model of the family is built in one staging directory beside the repository,
     `<parent>/.<repository name>.export-<family>-*` (same file system, so the models can be
     renamed in; outside the repository because the real tritonserver loads every directory
     in it, hidden ones included, and one that fails to load keeps a --strict-readiness
     server unready), checked and fsynced. Where the parent is on another file system or not
     writable, the staging directory is `<repository>/.staging-<family>-*` instead (the
     gateway's loader and the Triton shadow builder skip hidden entries; native Triton does
     not);
  3. commit: a journal `<repository>/.export-<family>.json` (a file: Triton ignores files; it
     holds the staged directories' inode numbers and the family's models to remove) is written
     atomically, then each `<family>_<route>` is exchanged with its staged version by one atomic
     renameat2(RENAME_EXCHANGE) each (two renames where the file system lacks it), models of
     the family the new export does not have are moved out, the journal is removed, and the
     staging directory (now holding the previous versions) deleted.
A kill before the journal exists leaves the previous set untouched; a kill after it leaves a
journal the next export rolls forward (a name whose inode is the staged one is done). Each
model directory is at every instant either the complete previous or the complete new one
(without RENAME_EXCHANGE: or briefly absent, between its two renames); the three exchanges are
not atomic as a group, so a kill inside that loop (microseconds, with no I/O in it) leaves a
mix until the next `avserve export` into the repository completes it
(`recover_repository`); meanwhile the gateway's repository loader and the local Triton's shadow
leave out the models a pending `.export-<family>.json` names (avserve.repository.model_directories).

Runtimes (`ExportOptions.runtime`):
  "onnxruntime"  Triton's native ONNX Runtime backend (default; CPU or GPU).
  "tensorrt"     the same ONNX graph, run by the ORT backend's TensorRT execution
                 accelerator in FP16 (GPU hosts; engines are cached next to the model).
  "tensorrt_plan" a real TensorRT engine (`model.plan`, platform tensorrt_plan) built with
                 the `tensorrt` Python API and a batch optimisation profile; needs TensorRT
                 and a GPU (training/tensorrt.py).

Precision (`ExportOptions.quantize`): "none" keeps the fp32 graph; "int8" replaces it with its
onnxruntime dynamic quantization (int8 MatMul, training/quantize.py), records
`precision: int8` in config.pbtxt, and writes `quantization.json` (how, and the int8 vs fp32
parity: top-1 agreement and max |probability difference| on a dataset split given as
`parity_data`, else on generated inputs) into the model directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import shutil
import sys
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
    EXPORT_JOURNAL_PREFIX,
    EXPORT_JOURNAL_SUFFIX,
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
from training.checkpoint import fsync_directory
from training.models import AVClassifier, ModalityGraph
from training.quantize import (
    QUANTIZATION_FILE,
    QUANTIZE_CHOICES,
    QUANTIZED_OPS,
    PARITY_CLIPS,
    QuantParity,
    dataset_batches,
    generated_batches,
    int8_parity,
    parity_label,
    quantize_graph,
)

Runtime = Literal["onnxruntime", "tensorrt", "tensorrt_plan"]
RUNTIMES: tuple[str, ...] = ("onnxruntime", "tensorrt", "tensorrt_plan")


STAGING_PREFIX = ".staging-"  # <repository>/.staging-<family>-*: staging where it cannot go beside it
RETIRED_PREFIX = ".retired-"  # left by exporters before the journal; removed like staging
SIBLING_INFIX = ".export-"  # <parent>/.<repository name>.export-<family>-*: staging beside the repository


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
    # "int8": onnxruntime dynamic quantization of the graphs' MatMul (training/quantize.py).
    quantize: str = "none"
    # Dataset whose `parity_split` clips measure int8 vs fp32 parity (None: generated inputs).
    parity_data: Path | None = None
    parity_split: str = "test"
    parity_clips: int = PARITY_CLIPS  # at most this many clips of the split

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ExportError(f"runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        if self.quantize not in QUANTIZE_CHOICES:
            raise ExportError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, not {self.quantize!r}")
        if self.quantize == "int8" and self.runtime != "onnxruntime":
            raise ExportError(
                f"quantize int8 makes onnxruntime graphs; runtime {self.runtime!r} builds its own precision "
                "(TensorRT INT8 needs calibration and is not supported)"
            )
        if self.parity_data is not None and self.quantize == "none":
            raise ExportError("parity_data measures int8 against fp32: it needs quantize int8")
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
    max_abs_diff: float  # torch vs exported graph, over batch 1 and batch 3 (the fp32 graph)
    precision: str = "fp32"
    int8_parity: QuantParity | None = None  # int8 vs the fp32 graph, when quantized


def export_run(run_dir: str | Path, repository: str | Path, options: ExportOptions = ExportOptions()) -> list[ExportedModel]:
    """Export the best checkpoint of a training run (see training/checkpoint.py)."""
    from training.checkpoint import CheckpointError, load_run, pretraining_of

    try:
        model, info = load_run(run_dir)
    except CheckpointError as error:
        raise ExportError(str(error)) from error
    family = options.family or info.model
    extra = dict(options.extra_parameters)
    modality_dropout = float(info.train.get("modality_dropout") or 0.0)
    if modality_dropout > 0:  # tells a reader of the repository the unimodal graphs were trained for
        extra.setdefault(Param.MODALITY_DROPOUT, repr(modality_dropout))
    pretrained = info.pretrained or (pretraining_of(info.init_from) if info.init_from else None)
    if pretrained:  # and what they started from (e.g. an AV-MAE-pretrained encoder)
        extra.setdefault(Param.PRETRAINED, pretrained)
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
    except OSError as error:
        raise ExportError(f"cannot write to repository {repository}: {error.strerror or error}") from error
    with _repository_lock(repository):
        try:
            probe = tempfile.NamedTemporaryFile(dir=repository, prefix=".write-test-")
            probe.close()
        except OSError as error:
            raise ExportError(f"cannot write to repository {repository}: {error.strerror or error}") from error
        model = model.eval()
        root = repository.resolve()
        try:
            for note in recover_repository(root):
                print(f"note: {note}", file=sys.stderr, flush=True)
            staging = new_staging_directory(root, options.family)
        except OSError as error:
            raise ExportError(f"cannot prepare repository {repository}: {error}") from error
        try:
            exported = []
            for modalities in sorted(model.servable_modalities, key=lambda m: (-len(m), sorted(m))):
                name = f"{options.family}_{ROUTE_SUFFIXES[frozenset(modalities)]}"
                (staging / name).mkdir()
                exported.append(_export_one(model, frozenset(modalities), labels, name, staging / name, options))
                _make_world_readable(staging / name)
            _fsync_tree(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _commit(root, options.family, staging, [e.name for e in exported])
    return [dataclasses.replace(e, directory=repository / e.name) for e in exported]


def _export_one(
    model: AVClassifier,
    modalities: frozenset[str],
    labels: Sequence[str],
    name: str,
    directory: Path,
    options: ExportOptions,
) -> ExportedModel:
    graph = ModalityGraph(model.export_module(), modalities).eval()
    version_dir = directory / MODEL_VERSION
    version_dir.mkdir()
    onnx_path = version_dir / ONNX_MODEL_FILE
    example = example_inputs(model, graph.input_names, batch=2, seed=0)
    _export_onnx(graph, example, onnx_path, options.opset)
    max_abs_diff = check_parity(graph, onnx_path, options.tolerance, reference=ModalityGraph(model, modalities).eval())
    parity = _quantize(model, graph, onnx_path, directory, options) if options.quantize == "int8" else None

    if options.runtime == "tensorrt_plan":
        from training.tensorrt import build_engine

        build_engine(onnx_path, version_dir / "model.plan", graph, max_batch_size=options.max_batch_size)
        onnx_path.unlink()  # the plan replaces the graph; keep the directory minimal

    config = model_config_for(model, graph, name, options)
    write_model_config(directory / CONFIG_FILE, config)
    (directory / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    model_file = next(version_dir.iterdir())
    precision = "int8" if parity is not None else "fp32"
    return ExportedModel(
        name, directory, modalities, graph.head_names, model_file.stat().st_size, max_abs_diff, precision, parity
    )


def _quantize(model: AVClassifier, graph: ModalityGraph, onnx_path: Path, directory: Path, options: ExportOptions) -> QuantParity:
    """Replace the (parity-checked) fp32 graph with its int8 version; measure and record parity."""
    from training.data.records import DatasetError

    fp32_path = onnx_path.with_name("model.fp32.onnx")
    onnx_path.rename(fp32_path)
    try:
        quantize_graph(fp32_path, onnx_path)
    except Exception as error:  # noqa: BLE001 - the quantizer raises many types
        raise ExportError(f"int8 quantization of {directory.name} failed: {type(error).__name__}: {error}") from error
    if options.parity_data is not None:
        batches = dataset_batches(model, graph.input_names, options.parity_data, options.parity_split, options.parity_clips)
    else:
        batches = generated_batches(model, graph.input_names)
    try:
        parity = int8_parity(
            fp32_path, onnx_path, batches, parity_label(options.parity_data, options.parity_split), graph.output_names[0]
        )
    except DatasetError as error:
        raise ExportError(f"parity data: {error}") from error
    fp32_path.unlink()
    if not parity.max_prob_diff <= 1.0:  # NaN or inf: the int8 graph is broken
        raise ExportError(f"{directory.name}: the int8 graph's outputs are not finite")
    record = {
        "precision": "int8",
        "method": "onnxruntime dynamic quantization",
        "quantized_ops": list(QUANTIZED_OPS),
        "weights": "int8, per output channel, 7-bit range (reduce_range)",
        "activations": "uint8, quantized per call from their own range",
        "parity_vs_fp32": parity.to_dict(),
    }
    (directory / QUANTIZATION_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return parity


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
    if options.quantize == "int8":
        parameters[Param.PRECISION] = "int8"
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


def check_parity(graph: ModalityGraph, onnx_path: Path, tolerance: float, reference: ModalityGraph | None = None) -> float:
    """Largest |torch - onnxruntime| over every output at batch 1 and batch 3; torch is
    `reference` (the model itself) when the traced `graph` ran its export_module()."""
    reference = graph if reference is None else reference
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(onnx_path))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, seed in ((1, 1), (3, 2)):
        inputs = example_inputs(graph.model, graph.input_names, batch=batch, seed=seed)
        with torch.no_grad():
            expected = reference(*inputs)
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


# ---- the commit: all of a family's models or none ---------------------------------------------


@contextlib.contextmanager
def _repository_lock(repository: Path) -> Iterator[None]:
    """One export into a repository at a time: flock on the directory itself (no lock file to
    leave behind; released by the kernel when the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    try:
        fd = os.open(repository, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        raise ExportError(f"cannot open repository {repository}: {error.strerror or error}") from error
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"note: waiting for another export into {repository}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _commit(repository: Path, family: str, staging: Path, names: list[str]) -> None:
    """Swap the staged models of `family` in (see the module docstring)."""
    family_names = {f"{family}_{suffix}" for suffix in ROUTE_SUFFIXES.values()}
    journal = {
        "family": family,
        "staging": os.path.relpath(staging, repository),
        "install": {name: os.stat(staging / name).st_ino for name in names},
        "remove": sorted(n for n in family_names - set(names) if os.path.lexists(repository / n)),
    }
    path = _journal_path(repository, family)
    try:
        _write_durably(path, json.dumps(journal, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        _roll_forward(repository, path, journal)
    except OSError as error:
        raise ExportError(
            f"could not swap the new {family} models into {repository}: {error}; "
            f"the next `avserve export` into it completes the swap ({path.name})"
        ) from error


def _roll_forward(repository: Path, journal_path: Path, journal: dict) -> bool:
    """Put every staged model of a journal in place (idempotent: a name whose inode is the
    staged one is done), move the family's dropped models out, then remove the journal and
    the staging directory (which holds the replaced versions). True if anything was swapped."""
    staging = repository / journal["staging"]
    swapped = False
    for name, inode in journal["install"].items():
        live, new = repository / name, staging / name
        if _inode(live) == inode:
            continue
        if _inode(new) != inode:
            raise ExportError(f"{journal_path}: the staged {name} is gone; remove the journal and export again")
        if os.path.lexists(live):
            _exchange(new, live, staging / f"{name}.previous")
        else:
            os.rename(new, live)
        swapped = True
    for name in journal["remove"]:
        if os.path.lexists(repository / name):
            os.rename(repository / name, staging / f"{name}.removed")
            swapped = True
    fsync_directory(repository)
    journal_path.unlink()
    fsync_directory(repository)
    shutil.rmtree(staging, ignore_errors=True)
    return swapped


def new_staging_directory(repository: Path, family: str) -> Path:
    """An empty directory on the repository's file system, outside it where possible."""
    real = Path(repository).resolve()
    try:
        if real.parent != real and os.stat(real.parent).st_dev == os.stat(real).st_dev:
            return Path(tempfile.mkdtemp(prefix=f".{real.name}{SIBLING_INFIX}{family}-", dir=real.parent))
    except OSError:  # the parent is not writable: stage inside
        pass
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{family}-", dir=real))


def _stale_staging_directories(repository: Path) -> list[Path]:
    real = repository.resolve()
    inside = [p for p in real.iterdir() if p.name.startswith((STAGING_PREFIX, RETIRED_PREFIX))]
    prefix = f".{real.name}{SIBLING_INFIX}"
    beside = [
        p for p in (real.parent.glob(prefix + "*") if real.parent != real else [])
        if SIBLING_INFIX not in p.name[len(prefix):]  # not repository "<name>.export-x"'s
    ]  # fmt: skip
    return sorted(p for p in inside + beside if p.is_dir() and not p.is_symlink())


def recover_repository(repository: str | Path) -> list[str]:
    """Complete the exports a kill interrupted after their commit began (their journals) and
    remove what killed exports left (staging directories, temp files). Call with the
    repository's lock held (export_model does). Returns what it did, one line each."""
    repository = Path(repository).resolve()
    notes = []
    for path in sorted(repository.glob(f"{EXPORT_JOURNAL_PREFIX}*{EXPORT_JOURNAL_SUFFIX}")):
        try:
            journal = json.loads(path.read_text())
            staging_ok = (repository / journal["staging"]).is_dir()
        except (OSError, ValueError, KeyError, TypeError):
            journal, staging_ok = None, False
        if not staging_ok:  # the commit had finished (only its clean-up was cut short)
            path.unlink(missing_ok=True)
            continue
        swapped = _roll_forward(repository, path, journal)
        notes.append(f"{'completed' if swapped else 'cleaned up after'} the interrupted export of {journal['family']} in {repository}")
    for path in _stale_staging_directories(repository):
        shutil.rmtree(path, ignore_errors=True)
        notes.append(f"removed {path} (left by an export that was killed)")
    for path in sorted(repository.iterdir()):
        if path.is_file() and (path.name.startswith(".write-test-") or path.name.startswith(EXPORT_JOURNAL_PREFIX) and path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)
    return notes


def _journal_path(repository: Path, family: str) -> Path:
    return repository / f"{EXPORT_JOURNAL_PREFIX}{family}{EXPORT_JOURNAL_SUFFIX}"


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return None


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux 3.15+, glibc 2.28+, most local file systems);
    False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _exchange(new: Path, live: Path, previous: Path) -> None:
    """Put `new` at `live`. With RENAME_EXCHANGE `live` is never missing (the replaced version
    ends up at `new`'s path); without, it is moved to `previous` first (a moment without it)."""
    if not _renameat2_exchange(new, live):
        os.rename(live, previous)
        os.rename(new, live)


def _fsync_tree(root: Path) -> None:
    """Everything staged is on disk before the journal makes it the repository's next state
    (a kill alone would not need this; a power loss after the renames would)."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(Path(directory))


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)
