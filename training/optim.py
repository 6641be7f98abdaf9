"""Optimisers and learning-rate schedules as named recipes (Zorro Table 5, MBT B3).

A recipe fixes the optimiser, base learning rate, weight decay, warm-up and the regularisers the
paper pairs with it. Everything can be overridden (toy-size runs need other values):
`resolve_recipe("supervised_scratch", lr=1e-3, warmup_steps=20)`.

Learning-rate scaling: Zorro states "LR scaling factor batch_size/256" (A3.3) without saying
whether the Table 5 values are before or after it; with `scale_lr=True` the recipe LR is
multiplied by global_batch/256. Off by default (the Table 5 LRs are used as given).

Schedule: linear warm-up from 0 to the peak LR over `warmup_steps`, then cosine decay to
`final_lr_fraction * peak` at the last step, over half a cosine period (`cosine_period`; VATT's
pretraining uses a quarter), or linearly (`decay="linear"`, PEMT App. A.4). Zorro: "cosine-decay LR schedule ... and LR warm-up"; the warm-up
length is not stated, we default to 5 % of the steps; MBT: 2.5 epochs.

Parameter groups (`parameter_groups`), the same for every recipe:
  * weight decay only on the weights of Linear / Conv / Embedding layers: never on norms,
    biases, position embeddings or learned tokens (CLS, fusion, bottleneck, queries; the BERT /
    ViT / MAE convention), nor on what a model lists in `no_weight_decay()`;
  * `layer_decay` (AV-MAE Table 16: 0.75): the LR of layer id i is lr * decay^(top - i), with
    ids from the model (embeddings 0, encoder block k at k + 1; training/models/base.py), so
    the pretrained bottom of the network moves least; the objective's extra modules sit at the
    top;
  * `lr_scale`: (fnmatch pattern over parameter names, multiplier) pairs, e.g. PEMT's orthogonal
    matrices at 1/10 of the LR. Names are the checkpoint's: model parameters as in the model's
    state dict, an objective's extra modules as "<slot>.<name>" (e.g. "projectors.proj.audio...").
The LR schedule multiplies every group's own LR by the same factor.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str  # "adam" | "adamw" | "sgd"
    lr: float
    weight_decay: float
    momentum: float = 0.9  # sgd only
    warmup_fraction: float = 0.05  # of total steps (used if warmup_epochs is None)
    warmup_epochs: float | None = None
    final_lr_fraction: float = 0.0
    # The share of a cosine period the decay covers: 0.5 is the usual half period (peak -> final,
    # flat at both ends), 0.25 VATT's quarter period (steepest at the end).
    cosine_period: float = 0.5
    decay: str = "cosine"  # "cosine" | "linear" (PEMT: "warm-up ... then linear decay")
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    modality_mixup: bool = False  # MBT Sec. 4.2: an independent mixup lambda per modality
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw (torch's default)
    amsgrad: bool = False  # adam / adamw: AMSGrad's running maximum of the second moment (PEMT)
    layer_decay: float | None = None  # layer-wise LR decay factor (None: off)
    grad_clip: float | None = None  # clip the global gradient norm to this (None: off)
    lr_scale: tuple[tuple[str, float], ...] = ()  # (parameter name pattern, LR multiplier)
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("supervised_scratch", "adam", 3e-4, 1e-6, source="Zorro Table 5: Zorro-ViT, supervised, AS, scratch"),
        Recipe("supervised_scratch_baseline", "adam", 1e-4, 1e-6, source="Zorro Table 5: Two Streams / Vanilla / Bottleneck, supervised, AS, scratch"),
        Recipe("supervised_yt8m", "adam", 8e-5, 1e-6, source="Zorro Table 5: Zorro-ViT, supervised, YT8M, scratch"),
        Recipe("contrastive", "adam", 5e-5, 1e-6, source="Zorro Table 5: Zorro-ViT, contrastive, AS / ACAV, scratch"),
        Recipe("finetune", "sgd", 0.01, 0.0, source="Zorro Table 5: Zorro-ViT, VGGSound, FT from ACAV-100M / YT-8M (SGD m=0.9)"),
        Recipe(
            "finetune_audioset",
            "sgd",
            0.08,
            1e-6,
            label_smoothing=0.15,
            mixup_alpha=0.3,
            source="Zorro Table 5: Zorro-ViT, AS-500k, FT from ACAV-100M; A3.3: label smoothing 0.15, mixup Beta(0.3, 0.3)",
        ),
        Recipe("finetune_kinetics", "sgd", 0.05, 0.0, source="Zorro Table 5: Zorro-ViT, K400 (V+A), FT from ACAV-100M"),
        Recipe("finetune_esc50", "adam", 9e-4, 1e-3, source="Zorro Table 5: Zorro-ViT, ESC-50, FT"),
        Recipe(
            "mbt",
            "sgd",
            0.5,
            0.0,
            warmup_epochs=2.5,
            mixup_alpha=0.3,
            modality_mixup=True,
            source="MBT B3: synchronous SGD m=0.9, base LR 0.5, cosine, 2.5-epoch warm-up, modality mixup 0.3 (batch 64)",
        ),
        Recipe(
            "avmae_finetune",
            "sgd",
            0.8,
            0.0,
            warmup_epochs=2.5,
            layer_decay=0.75,
            grad_clip=1.0,
            mixup_alpha=0.5,
            label_smoothing=0.3,
            source="AV-MAE Table 16 (VGGSound, A / V / AV): SGD m=0.9, base LR 0.8 at batch 64, layer-wise decay 0.75, "
            "cosine, 2.5 warm-up epochs, gradient clipping 1.0, mixup 0.5, label smoothing 0.3 (stochastic depth 0.3 "
            "is the model's drop_path: mbt_vit_b16's default)",
        ),
        Recipe(
            "vatt",
            "adam",
            1e-4,
            0.0,
            warmup_fraction=0.02,
            final_lr_fraction=0.5,
            cosine_period=0.25,
            source="VATT App. A.2.4: Adam, LR 1e-4, 10k warm-up steps of 500k (2 %), quarter-period cosine from 1e-4 "
            "to 5e-5, batch 2048; weight decay not stated (none)",
        ),
        Recipe(
            "vatt_finetune",
            "sgd",
            0.005,
            0.0,
            warmup_fraction=0.025,
            label_smoothing=0.1,
            source="VATT App. A.3.1 (video action recognition): SGD m=0.9, LR 0.005, 2.5k warm-up steps of 100k, "
            "half-period cosine to 0, label smoothing 0.1, batch 64, no DropToken",
        ),
        Recipe(
            "linear_probe",
            "adam",
            5e-4,
            0.0,
            source="VATT App. A.3 linear evaluation: Adam, LR 5e-4, batch 64, frozen backbone (the paper's low-rank "
            "classifier with 10% of components per step is not reproduced: a plain linear head)",
        ),
        Recipe(
            "pemt",
            "adamw",
            1e-4,
            1e-4,
            amsgrad=True,
            betas=(0.9, 0.98),
            warmup_fraction=0.06,
            decay="linear",
            lr_scale=(("*rotation.generator", 0.1),),
            source="PEMT App. A.4: AMSGrad AdamW (0.9, 0.98), weight decay 1e-4, LR 1e-4 and 1e-5 for the orthogonal "
            "parameters, warm-up over the first 6 % of iterations then linear decay (batch 256, 220k iterations)",
        ),
        Recipe(
            "pemt_finetune",
            "adamw",
            1e-3,
            1e-4,
            amsgrad=True,
            betas=(0.9, 0.98),
            warmup_fraction=0.06,
            decay="linear",
            lr_scale=(("*rotation.generator", 0.1), ("heads.*", 5.0), ("*_cnn.*", 5.0)),
            source="PEMT App. A.4, Kinetics-Sounds: LR 1e-3 for the transformers, 5e-3 for the classifier and the CNNs, "
            "1e-4 for the orthogonal parameters; AMSGrad AdamW as in pretraining (batch 32, 24k iterations)",
        ),
        Recipe(
            "masked",
            "adam",
            3e-4,
            0.0,
            betas=(0.9, 0.95),
            warmup_epochs=40,
            source="AV-MAE Table 14: Adam (0.9, 0.95), no weight decay, base LR 3e-4 at batch 512, cosine, 40 warm-up epochs",
        ),
    ]
}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def resolve_recipe(name: str, **overrides) -> Recipe:
    """The named recipe with non-None overrides applied (lr, weight_decay, momentum, ...)."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; choose from {', '.join(list_recipes())}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(RECIPES[name], **changes)


@dataclass
class Schedule:
    peak_lr: float
    total_steps: int
    warmup_steps: int
    final_lr_fraction: float = 0.0
    cosine_period: float = 0.5
    decay: str = "cosine"

    def __post_init__(self) -> None:
        if self.decay not in ("cosine", "linear"):
            raise ValueError(f"decay must be cosine or linear, not {self.decay!r}")

    def factor(self, step: int) -> float:
        """Multiplier of peak_lr at optimiser step `step` (0-based)."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / decay_steps))
        if self.decay == "linear":
            return self.final_lr_fraction + (1.0 - self.final_lr_fraction) * (1.0 - progress)
        # cos over [0, 2 pi period], rescaled to fall from 1 to 0 (period 0.5: (1 + cos(pi p)) / 2)
        end = math.cos(2.0 * math.pi * self.cosine_period)
        cosine = (math.cos(2.0 * math.pi * self.cosine_period * progress) - end) / (1.0 - end)
        return self.final_lr_fraction + (1.0 - self.final_lr_fraction) * cosine

    __call__ = factor


def warmup_steps_for(recipe: Recipe, total_steps: int, steps_per_epoch: int, warmup_steps: int | None = None) -> int:
    if warmup_steps is not None:
        return max(0, min(int(warmup_steps), total_steps))
    if recipe.warmup_epochs is not None:
        return max(0, min(int(round(recipe.warmup_epochs * steps_per_epoch)), total_steps))
    return max(0, min(int(round(recipe.warmup_fraction * total_steps)), total_steps))


def effective_lr(recipe: Recipe, global_batch: int, scale_lr: bool, reference_batch: int = 256) -> float:
    return recipe.lr * (global_batch / reference_batch if scale_lr else 1.0)


# Modules whose `weight` is a learned projection (decayed); every other parameter is not.
DECAYED_WEIGHT_OWNERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def parameter_groups(
    model: nn.Module, extra_modules: Mapping[str, nn.Module], recipe: Recipe, lr: float
) -> list[dict]:
    """Optimiser parameter groups for `model` (an AVClassifier) and an objective's extra modules
    (slot name -> module): see the module docstring. Each group has "params", "lr",
    "weight_decay" and a readable "name"; groups are ordered by first parameter."""
    no_decay_names = set(getattr(model, "no_weight_decay", lambda: set())())
    top_layer = int(getattr(model, "num_layer_ids", 1)) - 1
    groups: dict[tuple[bool, float], dict] = {}

    def add(prefix: str, module: nn.Module, layer_of) -> None:
        for owner_name, owner in module.named_modules():
            for param_name, param in owner.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                local = f"{owner_name}.{param_name}" if owner_name else param_name
                name = f"{prefix}{local}"
                decay = isinstance(owner, DECAYED_WEIGHT_OWNERS) and param_name == "weight" and local not in no_decay_names
                scale = _lr_multiplier(recipe, name, layer_of(local), top_layer)
                key = (decay, scale)
                if key not in groups:
                    groups[key] = {
                        "params": [],
                        "lr": lr * scale,
                        "weight_decay": recipe.weight_decay if decay else 0.0,
                        "name": f"{'decay' if decay else 'no_decay'} x{scale:.4g}",
                    }
                groups[key]["params"].append(param)

    add("", model, getattr(model, "layer_id", lambda name: top_layer))
    for slot, module in extra_modules.items():
        add(f"{slot}.", module, lambda name: top_layer)
    return list(groups.values())


def _lr_multiplier(recipe: Recipe, name: str, layer: int, top_layer: int) -> float:
    scale = recipe.layer_decay ** (top_layer - layer) if recipe.layer_decay else 1.0
    for pattern, multiplier in recipe.lr_scale:
        if fnmatch.fnmatchcase(name, pattern):
            scale *= multiplier
    return scale


def build_optimizer(params: Iterable[torch.nn.Parameter] | list[dict], recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimiser over parameters, or over `parameter_groups` (their own LR and decay)."""
    params = list(params)
    if params and not isinstance(params[0], dict):
        params = [p for p in params if p.requires_grad]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=recipe.betas, weight_decay=recipe.weight_decay, amsgrad=recipe.amsgrad)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=recipe.betas, weight_decay=recipe.weight_decay, amsgrad=recipe.amsgrad)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR whose lambda is the warm-up + cosine factor; its state_dict holds the step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
