"""Run directories and checkpoints.

A run directory holds:
  run.json        what was trained: model preset name, config overrides, resolved config,
                  classes, multilabel, objective, recipe, data source, ... (RunInfo)
  last.pt         full training state for --resume: model, projectors (contrastive), optimiser,
                  scheduler, AMP grad scaler, step, epoch, best metric, RNG states
  best.pt         the same, at the best evaluation so far (what the exporter loads)
  metrics.jsonl   one JSON object per log line / evaluation
  eval.json       per-head and averaged metrics of the best and the last evaluation

`load_run(run_dir)` rebuilds the trained model from run.json + best.pt without the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

RUN_FILE = "run.json"
LAST = "last.pt"
BEST = "best.pt"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A run directory or checkpoint is missing, incomplete or unreadable."""


@dataclass
class RunInfo:
    model: str
    overrides: dict[str, Any]
    classes: list[str]
    multilabel: bool
    objective: str = "supervised"
    config: dict[str, Any] = field(default_factory=dict)  # resolved model config (informational)
    data: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # batch size, steps, world size, seed, ...
    init_from: str | None = None
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


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


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
    """Atomic save (write to a temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    os.replace(tmp, path)


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
    return model, info


@dataclass
class InitReport:
    source: str
    loaded: list[str]
    missing: list[str]  # in the model, not in the checkpoint (left as initialised)
    unexpected: list[str]  # in the checkpoint, not in the model (ignored)
    mismatched: list[str]  # same name, different shape (left as initialised), "name: ckpt -> model"

    def summary(self) -> str:
        def short(names: list[str]) -> str:
            return ", ".join(names[:6]) + (f", ... (+{len(names) - 6})" if len(names) > 6 else "")

        lines = [f"init from {self.source}: loaded {len(self.loaded)} tensors"]
        for label, names in (("missing", self.missing), ("unexpected", self.unexpected), ("shape-mismatched", self.mismatched)):
            if names:
                lines.append(f"  {label} ({len(names)}): {short(names)}")
        return "\n".join(lines)


def init_from(model: torch.nn.Module, source: str | Path) -> InitReport:
    """Loads every tensor of `source` (a run dir: best.pt, else last.pt; or a .pt file) whose name
    and shape match the model; reports the rest. Projector weights of a contrastive run live
    under a separate key and are therefore never loaded (dropped for fine-tuning)."""
    path = resolve_checkpoint(source, prefer="best")
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    loadable, mismatched = {}, []
    for key, value in state.items():
        if key in own:
            if tuple(own[key].shape) == tuple(value.shape):
                loadable[key] = value
            else:
                mismatched.append(f"{key}: {tuple(value.shape)} -> {tuple(own[key].shape)}")
    result = model.load_state_dict(loadable, strict=False)
    missing = [k for k in result.missing_keys]
    unexpected = [k for k in state if k not in own]
    return InitReport(str(path), sorted(loadable), missing, unexpected, mismatched)
