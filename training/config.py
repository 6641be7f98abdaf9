"""`TrainConfig`: everything one training run is given. Torch-free, so the command line can
derive `avserve train`'s options from it (training/cli.py) without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """One training run (training/trainer.py). Every field is also an `avserve train` option
    (training/cli.py derives them from this class: the `help` metadata is the option's help)."""

    model: str = field(metadata={"help": "Model preset (avserve models / training.models.list_models()), e.g. zorro_tiny."})
    data: str | Path = field(metadata={"help": "Dataset: a manifest CSV, a directory, or a data cache (avserve data cache)."})
    out: str | Path = field(metadata={"help": "Run directory (run.json, last.pt, best.pt, metrics.jsonl, eval.json)."})
    objective: str = field(default="supervised", metadata={"help": "What to optimise (training.objectives): supervised, contrastive, masked, ..."})
    objective_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "The objective's options (--objective-set key=value)."})
    epochs: float | None = field(default=None, metadata={"help": "Epochs (default 10 if --steps is not given)."})
    steps: int | None = field(default=None, metadata={"help": "Optimiser steps (instead of --epochs)."})
    batch_size: int = field(default=8, metadata={"help": "Clips per step per process (global = x world size)."})
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"help": "Model config fields (--set key=value)."})
    recipe: str | None = field(default=None, metadata={"help": "Optimiser recipe (training.optim.RECIPES); default: the objective's."})
    lr: float | None = field(default=None, metadata={"help": "Peak learning rate (default: the recipe's)."})
    weight_decay: float | None = field(default=None, metadata={"help": "Weight decay (default: the recipe's)."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Linear warm-up steps (default: the recipe's)."})
    layer_decay: float | None = field(default=None, metadata={"help": "Layer-wise LR decay factor, e.g. 0.75 (default: the recipe's)."})
    scale_lr: bool = field(default=False, metadata={"help": "Multiply the recipe LR by global batch / 256 (Zorro)."})
    label_smoothing: float | None = field(default=None, metadata={"help": "Label smoothing (default: the recipe's)."})
    mixup_alpha: float | None = field(default=None, metadata={"help": "Mixup Beta(alpha, alpha); 0 = off (default: the recipe's)."})
    modality_mixup: bool | None = field(default=None, metadata={"help": "One mixup lambda per modality (MBT) or one for both (default: the recipe's)."})
    grad_clip: float | None = field(default=None, metadata={"help": "Clip the gradient norm to this value (default: the recipe's)."})
    init_from: str | Path | None = field(default=None, metadata={"help": "Fine-tune from a run directory (its best.pt), a .pt file, or a timm ViT state dict (.safetensors/.pth: ImageNet init, docs/models.md)."})
    linear_probe: bool = field(
        default=False,
        metadata={"help": "Train only the classifier heads on a frozen backbone (VATT's linear evaluation); usually with --init-from a pretrained run."},
    )
    resume: bool = field(default=False, metadata={"help": "Continue the run in --out from its last.pt (none yet, e.g. killed before its first checkpoint: start at step 0)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default="val", metadata={"help": "Split to evaluate on (none: no evaluation; falls back to 'test')."})
    missing: str | None = field(default=None, metadata={"help": "Clips lacking a modality: zero (zero-filled, flagged) | skip (default: the objective's)."})
    modality_dropout: float = field(default=0.0, metadata={"help": "Fraction of audio+video clips made audio- or video-only per batch (trains MBT's unimodal routes)."})
    class_cap: int | None = field(
        default=None,
        metadata={"help": "Train on a greedy subset with at most N clips per class, a clip counting for each of its labels "
                          "(MBT's AS-500K: 200000); seeded, see `avserve data subset`."},
    )  # fmt: skip
    sampling: str = field(
        default="shuffle",
        metadata={"help": "shuffle: every clip once per epoch | balanced: draw clips with replacement, each with weight "
                          "sum over its labels of 1/clips with that label (every class about equally often)."},
    )  # fmt: skip
    amp: str = field(default="auto", metadata={"help": "Mixed precision: auto (CUDA only) | off | bf16 | fp16."})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N."})
    seed: int = field(default=0, metadata={"help": "Seed for initialisation, sampling and augmentation."})
    eval_every: int | None = field(default=None, metadata={"help": "Evaluate every N steps (default once per epoch)."})
    log_every: int = field(default=10, metadata={"help": "Write a metrics.jsonl line every N steps."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    max_eval_clips: int | None = field(default=None, metadata={"help": "Evaluate on at most this many clips."})
    stop_at: int | None = field(default=None, metadata={"help": "Stop (after a checkpoint) at this step, keeping the schedule of --steps; continue with --resume."})
