"""What an objective is: the one interface between the trainer's loop and what it optimises.

The trainer (training/trainer.py) runs data, steps, DDP, AMP, checkpoints and resume, and knows
no objective by name. An objective says:

    Options                  its own settings (a dataclass; `--objective-set key=value`)
    needs_labels             False: label-only regularisers (mixup, label smoothing) are off
    default_missing          how clips lacking a modality enter: "zero" (zero-filled, flagged)
                             or "skip" (dropped from the dataset)
    supports_modality_dropout  whether `--modality-dropout` means anything to it
    uses_every_parameter     False when some model parameters get no gradient (e.g. the
                             classifier under a pretraining loss): DDP must look for them
    text_input               a TextSpec if the objective reads captions (the dataset then adds
                             text, text_mask, has_text to each item; training/data/dataset.py)
    default_recipe(finetune) the optimiser recipe (training/optim.py) it trains with by default
    configure_model(model)   one-off changes to the model (e.g. switch off input augmentation)
    its child modules        what it wraps around the model (projectors, decoders, a text
                             tower): trained with it, saved in the checkpoint's slot of the same
                             name, never exported
    forward(model, ...)      the computation DDP sees as one forward (model + extra modules)
    training_loss(net, batch, ctx) -> (loss, logs)
    eval_batch(net, batch, ctx) -> per-clip numpy arrays (the trainer gathers them over ranks)
    score(outputs) -> metrics, with "score" (higher is better: picks best.pt)
    describe(result) -> the one-line evaluation log
    write_pictures(model, batch, directory, names)
                             optional: pictures of what it does on a few evaluation clips
                             (masked: reconstructions), written into <run>/pictures after
                             training and by `avserve pictures`; [] = none to draw

A new objective is one file in training/objectives/ with `@register_objective` on its class.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from training.data.text import TextSpec
from training.errors import TrainError
from training.models import AUDIO, VIDEO, AVClassifier
from training.optim import Recipe


class ObjectiveError(TrainError):
    """A bad objective name or option, or a model the objective cannot train."""


@dataclass(frozen=True)
class NoOptions:
    """An objective without settings of its own."""


@dataclass
class ObjectiveSetup:
    """What the trainer knows when it builds the objective."""

    model: AVClassifier
    classes: list[str]
    multilabel: bool
    recipe: Recipe
    modality_dropout: float = 0.0
    options: Any = NoOptions()


@dataclass
class StepContext:
    """Per-run facts an objective's step and evaluation need."""

    model: AVClassifier  # the classifier itself (not DDP-wrapped)
    device: torch.device
    rng: np.random.Generator  # the trainer's augmentation generator (saved for resume)
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def inputs(self, batch: Mapping[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """The batch's audio and video on the device (None when the dataset gives none)."""
        audio = batch[AUDIO].to(self.device, non_blocking=True) if AUDIO in batch else None
        video = batch[VIDEO].to(self.device, non_blocking=True) if VIDEO in batch else None
        return audio, video


class Objective(nn.Module, abc.ABC):
    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    needs_labels: ClassVar[bool] = True
    default_missing: ClassVar[str] = "zero"
    supports_modality_dropout: ClassVar[bool] = False
    uses_every_parameter: ClassVar[bool] = True
    text_input: ClassVar[TextSpec | None] = None

    def __init__(self, setup: ObjectiveSetup):
        super().__init__()
        self.options = setup.options

    @classmethod
    @abc.abstractmethod
    def default_recipe(cls, finetune: bool) -> str: ...

    def configure_model(self, model: AVClassifier) -> None:
        """Called once before training; raise ObjectiveError if the model cannot be trained this way."""

    @abc.abstractmethod
    def forward(self, model: AVClassifier, **inputs: Any) -> Any: ...

    @abc.abstractmethod
    def training_loss(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """One step's loss. `net(**inputs)` runs `self.forward(model, **inputs)` through DDP."""

    @abc.abstractmethod
    def eval_batch(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Any]:
        """Per-clip results of one evaluation batch: arrays (or dicts of arrays) with the batch first."""

    @abc.abstractmethod
    def score(self, outputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Metrics over the whole evaluation split, including "score" (higher is better)."""

    @abc.abstractmethod
    def describe(self, result: dict[str, Any]) -> str:
        """The evaluation log line after "eval@STEP [SPLIT]: "."""

    def write_pictures(self, model: AVClassifier, batch: dict[str, Tensor], directory: Path, names: list[str]) -> list[Path]:
        """Pictures of what the objective does on `batch` (one clip per name), written into
        `directory`; the files written ([] when the objective has nothing to draw)."""
        return []

    @classmethod
    def parse_options(cls, values: Mapping[str, Any]) -> Any:
        """`--objective-set` values as this objective's Options (ObjectiveError names the valid keys)."""
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(values) - fields)
        if unknown:
            valid = ", ".join(sorted(fields)) or "none"
            raise ObjectiveError(f"objective {cls.name!r} has no option(s) {unknown}; its options: {valid}")
        try:
            return cls.Options(**values)
        except (TypeError, ValueError) as error:
            raise ObjectiveError(f"bad option for objective {cls.name!r}: {error}") from None


class TrainingModule(nn.Module):
    """The classifier and the objective's extra modules as ONE module, so DDP sees a single
    forward per step and the optimiser one set of parameters."""

    def __init__(self, model: AVClassifier, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, **inputs: Any) -> Any:
        return self.objective(self.model, **inputs)


# ---- the registry --------------------------------------------------------------------------

_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: makes `cls` available to `avserve train --objective <cls.name>`."""
    if cls.name in _OBJECTIVES:
        raise ValueError(f"objective {cls.name!r} is already registered")
    _OBJECTIVES[cls.name] = cls
    return cls


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def get_objective(name: str) -> type[Objective]:
    try:
        return _OBJECTIVES[name]
    except KeyError:
        raise ObjectiveError(f"unknown objective {name!r}; choose from {', '.join(list_objectives())}") from None


# ---- helpers -------------------------------------------------------------------------------


def concatenate(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenates per-batch results (arrays, or dicts of arrays) along the batch axis."""
    out: dict[str, Any] = {}
    for key, first in parts[0].items():
        if isinstance(first, dict):
            out[key] = concatenate([p[key] for p in parts])
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def select(outputs: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """The same structure keeping `rows` (an index array or boolean mask) of every array."""
    return {k: select(v, rows) if isinstance(v, dict) else v[rows] for k, v in outputs.items()}


def detached(values: Mapping[str, Tensor], prefix: str) -> Iterator[tuple[str, float]]:
    """(prefix + key, float) pairs for logging per-part losses."""
    for key, value in values.items():
        yield f"{prefix}{key}", float(value.detach())
