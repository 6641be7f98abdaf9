"""Run directories and checkpoints.

A run directory holds:
  run.json        what was trained: model preset name, config overrides, resolved config,
                  classes, multilabel, objective, recipe, data source, ... (RunInfo)
  last.pt         full training state for --resume: "model" (the classifier), "modules" (one
                  slot per extra module of the objective: "projectors", "decoder", ...),
                  optimiser, scheduler, AMP grad scaler, step, epoch, best metric, RNG states
  best.pt         the same, at the best evaluation so far (what the exporter loads)
  metrics.jsonl   one JSON object per log line / evaluation
  eval.json       per-head and averaged metrics of the best and the last evaluation

`load_run(run_dir)` rebuilds the trained model from run.json + best.pt without the trainer;
`init_from(model, run_dir)` starts a fine-tuning from a run's classifier weights.

Format history: version 1 before the objectives refactor kept the contrastive projectors under
"projectors" (None for other objectives) instead of "modules"; `module_states` reads both.

Crash safety (a SIGKILL at any instant; tests/training/test_kill_resume.py):
  - every file is written to NAME.tmp, fsynced, renamed over NAME (atomic) and the directory
    fsynced: a reader sees the old or the new file, never a partial one, and a renamed file
    survives a power loss too (a kill alone would not need the fsyncs: the page cache outlives
    the process; they cost milliseconds per checkpoint). NAME.tmp is never read; the trainer
    removes stale ones (`remove_stale_temp_files`) under the run's lock;
  - best.pt is a hard link to last.pt written after it (`link_checkpoint`, a copy where the
    file system has no hard links), so best.pt is at most one checkpoint behind last.pt; last.pt
    records `best_step` and a resume puts best.pt right when a kill fell between the two;
  - metrics.jsonl is appended (and fsynced before each checkpoint): rows of steps after the
    checkpoint a run resumes from, and a half-written last line, are cut off on resume
    (`truncate_metrics`), so a resumed run's log is the uninterrupted run's, each row once;
  - one trainer per run directory: rank 0 holds a POSIX lock on metrics.jsonl while it trains
    (released by the kernel when the process dies, and not inherited by DataLoader workers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

RUN_FILE = "run.json"
LAST = "last.pt"
BEST = "best.pt"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
FORMAT_VERSION = 2
MODULES = "modules"  # the checkpoint key of the objective's extra modules, one slot each
TEMP_SUFFIX = ".tmp"  # NAME.tmp: a file being written, renamed over NAME when complete


class CheckpointError(RuntimeError):
    """A run directory or checkpoint is missing, incomplete or unreadable."""


@dataclass
class RunInfo:
    model: str
    overrides: dict[str, Any]
    classes: list[str]
    multilabel: bool
    objective: str = "supervised"
    objective_options: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # resolved model config (informational)
    data: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # batch size, steps, world size, seed, ...
    init_from: str | None = None  # the run (or checkpoint file) the weights were initialised from, absolute
    pretrained: str | None = None  # "<model> (<objective>)" of that run, read when training started
    result: dict[str, Any] = field(default_factory=dict)  # filled at the end (throughput, best)
    format_version: int = FORMAT_VERSION
    run_dir: str | None = None
    checkpoint: str | None = None  # set by load_run
    step: int | None = None  # set by load_run

    def model_overrides(self) -> dict[str, Any]:
        """Overrides to pass to create_model (num_classes always = the run's classes)."""
        return {**self.overrides, "num_classes": len(self.classes)}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("run_dir", "checkpoint", "step"):
            d.pop(key)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunInfo":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"model", "overrides", "classes", "multilabel"} - set(d)
        if missing:
            raise CheckpointError(f"run.json lacks {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})


def config_to_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        raw = dataclasses.asdict(config)
    else:
        raw = dict(vars(config))
    return json.loads(json.dumps(raw, default=_jsonable))


def _jsonable(x: Any):
    if isinstance(x, (set, frozenset, tuple)):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    return repr(x)


def fsync_directory(directory: str | Path) -> None:
    """Make the directory's entries (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(path.name + TEMP_SUFFIX)


def _install(tmp: Path, path: Path) -> None:
    """fsync tmp, rename it over path (atomic), fsync the directory."""
    _fsync_file(tmp)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def write_json(path: Path, data: Any) -> None:
    """Atomic, durable write (NAME.tmp, fsync, rename, fsync the directory)."""
    path = Path(path)
    tmp = _temp_path(path)
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    _install(tmp, path)


def read_run_info(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {run_dir} is not a training run directory")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    info = RunInfo.from_dict(data)
    info.run_dir = str(run_dir)
    return info


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic, durable save: NAME.tmp, fsync, rename over NAME, fsync the directory. A kill at
    any instant leaves NAME as it was or complete, plus perhaps a partial NAME.tmp nobody reads."""
    path = Path(path)
    tmp = _temp_path(path)
    torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    _install(tmp, path)


def link_checkpoint(source: Path, path: Path) -> None:
    """Make `path` the same checkpoint as `source` (best.pt = last.pt), atomically: a hard link
    (no second write; the next save of `source` renames a new file over it, so `path` keeps this
    content), or a copy where the file system has no hard links."""
    source, path = Path(source), Path(path)
    tmp = _temp_path(path)
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    _install(tmp, path)


def same_file(a: Path, b: Path) -> bool:
    """True if a and b are one file (hard links), False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def remove_stale_temp_files(run_dir: str | Path) -> list[str]:
    """Remove the NAME.tmp files a killed writer left in run_dir (call with the run's lock held:
    nobody else is writing). Returns their names."""
    removed = []
    for path in sorted(Path(run_dir).glob("*" + TEMP_SUFFIX)):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def truncate_metrics(file, step: int) -> tuple[int, int]:
    """Cut an open metrics.jsonl (binary, readable, writable) back to the rows of steps <= step.

    The trainer writes a step's rows before the checkpoint of that step, so the rows a
    checkpoint has seen are exactly a prefix of the file: the prefix ends at the first row
    of a later step, or at a line a kill left incomplete (no newline, not JSON). Returns
    (rows kept, rows cut); the file position is left at the new end."""
    file.seek(0)
    data = file.read()
    offset = kept = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line)
        except ValueError:
            break
        row_step = row.get("step", 0) if isinstance(row, dict) else None
        if not isinstance(row_step, int) or row_step > step:
            break
        offset += len(line)
        kept += 1
    cut = len(data[offset:].splitlines())
    if offset != len(data):
        file.truncate(offset)
    file.seek(offset)
    return kept, cut


class RunLockedError(CheckpointError):
    """Another process is training in this run directory."""


def lock_metrics_file(file, run_dir: str | Path) -> None:
    """Take the run's lock: a POSIX (fcntl) write lock on the open metrics.jsonl. The kernel
    releases it when the process dies, however it dies, and forked DataLoader workers do not
    inherit it. Raises RunLockedError if another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.lockf(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise RunLockedError(f"another process is training in {run_dir} (it holds {METRICS_FILE}); wait for it or stop it") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} has no model weights")
    return state


def module_states(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{slot: state dict} of the objective's extra modules in a checkpoint of any format version."""
    if MODULES in state:
        return dict(state[MODULES])
    legacy = state.get("projectors")  # format 1: the contrastive projectors, or None
    return {"projectors": legacy} if legacy is not None else {}


def resolve_checkpoint(run_or_file: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file: `run_or_file` itself if it is a file, else RUN/best.pt (or last.pt)."""
    p = Path(run_or_file)
    if p.is_file():
        return p
    if not p.is_dir():
        raise CheckpointError(f"{p} is neither a run directory nor a checkpoint file")
    order = [BEST, LAST] if prefer == "best" else [LAST, BEST]
    for name in order:
        if (p / name).is_file():
            return p / name
    raise CheckpointError(f"no checkpoint ({BEST} or {LAST}) in {p}")


def load_run(run_dir: str | Path, checkpoint: str = "best", map_location: str | torch.device = "cpu"):
    """Rebuilds a trained model: (model in eval mode, RunInfo).

    `checkpoint` is "best" (best.pt, what the exporter uses), "last", or a file name in run_dir.
    Raises CheckpointError for a missing run.json, a missing or corrupt checkpoint, or weights
    that do not fit the model described by run.json.
    """
    model, info, _ = load_run_with_state(run_dir, checkpoint, map_location)
    return model, info


def load_run_with_state(run_dir: str | Path, checkpoint: str = "best", map_location: str | torch.device = "cpu"):
    """`load_run`, plus the checkpoint's whole state (read once): (model, RunInfo, state)."""
    from training.models import create_model

    info = read_run_info(run_dir)
    name = {"best": BEST, "last": LAST}.get(checkpoint, checkpoint)
    path = Path(run_dir) / name
    state = load_checkpoint(path, map_location)
    try:
        model = create_model(info.model, **info.model_overrides())
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"cannot rebuild model {info.model!r} from {Path(run_dir) / RUN_FILE}: {error}") from error
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"weights in {path} do not match model {info.model!r}: {error}") from error
    model.eval()
    info.checkpoint = str(path)
    info.step = state.get("step")
    return model, info, state


def load_objective_modules(objective: torch.nn.Module, state: dict[str, Any], source: str | Path) -> None:
    """Loads each of the objective's extra modules (its child slots) from a checkpoint's state;
    CheckpointError names a slot the checkpoint (`source`) lacks."""
    saved = module_states(state)
    for slot, module in objective.named_children():
        if slot not in saved:
            raise CheckpointError(f"{source} has no {slot!r} module for the {getattr(objective, 'name', '')} objective")
        module.load_state_dict(saved[slot])


@dataclass
class InitReport:
    source: str
    loaded: list[str]
    missing: list[str]  # in the model, not in the checkpoint (left as initialised)
    unexpected: list[str]  # in the checkpoint, not in the model (ignored)
    mismatched: list[str]  # same name, different shape (left as initialised), "name: ckpt -> model"
    resized: list[str] = field(default_factory=list)  # position embeddings interpolated, "name: ckpt -> model"

    def summary(self) -> str:
        def short(names: list[str]) -> str:
            return ", ".join(names[:6]) + (f", ... (+{len(names) - 6})" if len(names) > 6 else "")

        lines = [f"init from {self.source}: loaded {len(self.loaded)} tensors"]
        for label, names in (
            ("resized", self.resized),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.mismatched),
        ):
            if names:
                lines.append(f"  {label} ({len(names)}): {short(names)}")
        return "\n".join(lines)


def pretraining_of(source: str | Path) -> str:
    """ "<model> (<objective>)" of the run (or checkpoint file beside its run.json) `source` names;
    the path itself when there is no run.json to read (a provenance note must not fail a run);
    "ImageNet ViT (timm state dict <file>)" for a ViT file (training/models/vit_import.py)."""
    from training.models import vit_import

    path = Path(source)
    if vit_import.is_vit_file(path):
        return vit_import.provenance(path)
    try:
        info = read_run_info(path if path.is_dir() else path.parent)
    except CheckpointError:
        return str(source)
    return f"{info.model} ({info.objective})"


def init_from(model: torch.nn.Module, source: str | Path) -> InitReport:
    """Loads every tensor of `source`'s classifier (a run dir: best.pt, else last.pt; or a .pt
    file) whose name matches the model; reports the rest. A position embedding whose token grid
    differs (another clip length, frame count or image size) is resized by interpolation when
    both models describe their grids (`position_embeddings()`, training/models/base.py); other
    shape mismatches are left as initialised. An objective's extra modules (projectors, decoders)
    live outside "model" and are never loaded: fine-tuning drops them.

    A timm ViT state-dict file (safetensors, or a torch .pth / .bin told by its keys) is converted
    instead: training/models/vit_import.py (MBT's and Zorro's ImageNet initialisation)."""
    from training.models import vit_import

    path = resolve_checkpoint(source, prefer="best")
    if vit_import.is_safetensors(path) or vit_import.is_vit_file(path):  # we never write safetensors
        return vit_import.init_from_vit(model, path)
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    target_grids = model.position_embeddings() if hasattr(model, "position_embeddings") else {}
    source_grids = _source_position_grids(path) if any(k in state for k in target_grids) else {}
    loadable, mismatched, resized = {}, [], []
    for key, value in state.items():
        if key not in own:
            continue
        if tuple(own[key].shape) == tuple(value.shape):
            loadable[key] = value
        elif key in target_grids and key in source_grids:
            loadable[key] = resize_position_embedding(value, source_grids[key], target_grids[key])
            resized.append(f"{key}: {tuple(value.shape)} -> {tuple(own[key].shape)}")
        else:
            mismatched.append(f"{key}: {tuple(value.shape)} -> {tuple(own[key].shape)}")
    result = model.load_state_dict(loadable, strict=False)
    missing = [k for k in result.missing_keys]
    # A tensor stored under several names (AV-MAE's tied layers: encoders.shared.<i> is also
    # encoders.audio.<i> and encoders.video.<i>) is not "unexpected" when one of its names loaded.
    loaded = {value.data_ptr() for value in loadable.values()}
    unexpected = [k for k in state if k not in own and state[k].data_ptr() not in loaded]
    return InitReport(str(path), sorted(loadable), missing, unexpected, mismatched, resized)


def _source_position_grids(checkpoint: Path) -> dict:
    """The position grids of the model a checkpoint was trained as (its run.json), built on the
    meta device (no memory); empty when the checkpoint has no run.json beside it."""
    from training.models import create_model

    try:
        info = read_run_info(checkpoint.parent)
    except CheckpointError:
        return {}
    with torch.device("meta"):
        source = create_model(info.model, **info.model_overrides())
    return source.position_embeddings()


def resize_position_embedding(embedding: torch.Tensor, source, target) -> torch.Tensor:
    """[1, prefix + prod(source.grid), D] -> [1, prefix + prod(target.grid), D]: the prefix (CLS)
    tokens kept, the grid part interpolated (bicubic over 2-D grids, as ViT / VATT fine-tuning
    resize them; trilinear over 3-D frame x row x column grids), or cropped / edge-extended when
    the target's `resize` is "crop" (positions in absolute time)."""
    if source.prefix_tokens != target.prefix_tokens or len(source.grid) != len(target.grid):
        raise CheckpointError(f"cannot resize a position embedding over {source} to {target}")
    prefix, grid = embedding[:, : source.prefix_tokens], embedding[:, source.prefix_tokens :]
    dim = grid.shape[-1]
    if target.resize == "crop":  # keep the positions both grids have; repeat the last one past the source's end
        volume = grid.reshape(1, *source.grid, dim)
        for axis, (have, want) in enumerate(zip(source.grid, target.grid, strict=True)):
            index = torch.arange(want, device=grid.device).clamp(max=have - 1)
            volume = volume.index_select(axis + 1, index)
        return torch.cat([prefix, volume.reshape(1, -1, dim)], dim=1)
    volume = grid.reshape(1, *source.grid, dim).movedim(-1, 1).float()  # [1, D, *grid]
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[len(source.grid)]
    resized = torch.nn.functional.interpolate(volume, size=tuple(target.grid), mode=mode, align_corners=False)
    resized = resized.movedim(1, -1).reshape(1, -1, dim).to(embedding.dtype)
    return torch.cat([prefix, resized], dim=1)
