"""Supervised classification: one loss per head on labelled clips (Zorro A3.1, MBT B3).

Per step: label smoothing and mixup from the recipe (MBT: one lambda per modality), then
`--modality-dropout` (a fraction of audio+video clips made audio- or video-only, which is how
MBT learns its unimodal routes), then the model on the mixed batch with each clip's `present`
flags (training/models/base.py, "Mixed batches"). Each head's loss counts only the clips the
head exists for (`model.heads_for(present)`), training/losses.py `supervised_loss`.

Option `class_balance` (`--objective-set class_balance=true`; VATT's AudioSet fine-tuning):
each clip's loss is scaled by the mean over its labels of 1 / (clips of the batch sharing the
label), training/losses.py `label_balance_weights`. Computed on the batch's own labels, mixed up
as the targets are when mixup is on, before label smoothing (smoothing would give every clip
every class).

Evaluation: each head on its clips, the served prediction (mean of a clip's heads) and each
kind of clip, top-1 / top-5 / mAP, and AUC / d-prime for multi-label data (training/evaluate.py
`score_outputs`); the score is the served top-1 (mAP for multi-label data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from training.augment import drop_modalities, mixup
from training.evaluate import batch_logits, presence, score_outputs, valid_head_masks
from training.losses import label_balance_weights, smooth_targets, supervised_loss
from training.models import AVClassifier

from .base import Objective, ObjectiveSetup, StepContext, detached, register_objective


@dataclass(frozen=True)
class SupervisedOptions:
    class_balance: bool = False  # VATT App. A.3: a clip's loss / the per-batch count of its labels

    def __post_init__(self) -> None:
        if not isinstance(self.class_balance, bool):
            raise ValueError(f"class_balance must be true or false, not {self.class_balance!r}")


@register_objective
class Supervised(Objective):
    name = "supervised"
    Options = SupervisedOptions
    supports_modality_dropout = True

    def __init__(self, setup: ObjectiveSetup):
        super().__init__(setup)
        self.num_classes = len(setup.classes)
        self.multilabel = setup.multilabel
        self.recipe = setup.recipe
        self.modality_dropout = setup.modality_dropout
        if not isinstance(self.options, SupervisedOptions):  # a setup made without options: the defaults
            self.options = SupervisedOptions()

    @classmethod
    def default_recipe(cls, finetune: bool) -> str:
        return "finetune" if finetune else "supervised_scratch"

    def forward(self, model: AVClassifier, **inputs: Any) -> dict[str, Tensor]:
        return model(**inputs)

    def training_loss(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        audio, video = ctx.inputs(batch)
        has_audio, has_video = batch["has_audio"], batch["has_video"]
        logs: dict[str, float] = {}
        labels = smooth_targets(batch["target"].to(ctx.device), self.num_classes)  # [B, C], unsmoothed
        target = smooth_targets(batch["target"].to(ctx.device), self.num_classes, self.recipe.label_smoothing)
        if self.recipe.mixup_alpha > 0:
            mixed = mixup(
                audio,
                video,
                target,
                self.recipe.mixup_alpha,
                rng=ctx.rng,
                has_audio=has_audio,
                has_video=has_video,
                per_modality=self.recipe.modality_mixup,
            )
            audio, video, target = mixed.audio, mixed.video, mixed.target
            labels = mixed.lam * labels + (1.0 - mixed.lam) * labels[mixed.perm]
            has_audio, has_video = mixed.has_audio, mixed.has_video
            logs["mixup_lambda"] = mixed.lam
        if self.modality_dropout > 0:
            dropped = drop_modalities(audio, video, has_audio, has_video, self.modality_dropout, ctx.rng)
            audio, video, has_audio, has_video = dropped.audio, dropped.video, dropped.has_audio, dropped.has_video
            logs["modality_dropped"] = dropped.dropped
        masks = valid_head_masks(ctx.model, has_audio.numpy(), has_video.numpy())
        valid = {head: torch.from_numpy(mask).to(ctx.device) for head, mask in masks.items()}
        with ctx.autocast():
            out = net(audio=audio, video=video, present=presence(audio, video, has_audio, has_video, ctx.device))
        weights = label_balance_weights(labels) if self.options.class_balance else None
        loss, per_head = supervised_loss(out, target, ctx.model.head_names, self.multilabel, valid, weights)
        logs.update(detached(per_head, "loss/"))
        return loss, logs

    def eval_batch(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Any]:
        return {
            "target": batch["target"].numpy(),
            "has_audio": batch["has_audio"].numpy(),
            "has_video": batch["has_video"].numpy(),
            "logits": batch_logits(net, batch, ctx.device, ctx.autocast),
        }

    def score(self, outputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        result = score_outputs(
            ctx.model, outputs["logits"], outputs["target"], outputs["has_audio"], outputs["has_video"], self.multilabel
        )
        result["score"] = result.get("average", {}).get("mAP" if self.multilabel else "top1", float("nan"))
        return result

    def describe(self, result: dict[str, Any]) -> str:
        heads = ", ".join(f"{h} {m['top1']:.3f}" for h, m in result.get("heads", {}).items())
        average = result.get("average", {})
        audioset = f", AUC {average['AUC']:.3f}, d-prime {average['d_prime']:.3f}" if "AUC" in average else ""
        return (
            f"top-1: {heads} | average {average.get('top1', float('nan')):.3f} "
            f"(mAP {average.get('mAP', float('nan')):.3f}{audioset})"
        )
