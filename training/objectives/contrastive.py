"""Audio-visual contrastive pretraining (Zorro Sec. 3.3 / App. B, after MMV).

MLP projectors (training/losses.py `ContrastiveProjectors`, saved in the checkpoint's
"projectors" slot, dropped for fine-tuning and export) map `forward_features`' audio, video and
fusion outputs to a common space; the loss is NCE(a, v) + NCE(a, f) + NCE(v, f) over the
global batch (embeddings are all-gathered under DDP). Only clips with both modalities pair up,
so clips lacking one are skipped by default. No labels: mixup and label smoothing are off, and
the classifier heads get no gradient.

Evaluation: the same NCE on the evaluation split and audio->video retrieval top-1; the score is
-NCE.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.evaluate import presence
from training.losses import ContrastiveProjectors, contrastive_loss
from training.models import AUDIO, VIDEO, AVClassifier

from .base import Objective, ObjectiveError, ObjectiveSetup, StepContext, detached, register_objective


@register_objective
class Contrastive(Objective):
    name = "contrastive"
    needs_labels = False
    default_missing = "skip"
    uses_every_parameter = False  # the classifiers (and Zorro's global query) are unused

    def __init__(self, setup: ObjectiveSetup):
        super().__init__(setup)
        self.projectors = ContrastiveProjectors(int(setup.model.feature_dim))

    @classmethod
    def default_recipe(cls, finetune: bool) -> str:
        return "contrastive"

    def forward(self, model: AVClassifier, **inputs: Any) -> dict[str, Tensor]:
        return self.projectors(model.forward_features(**inputs))

    def training_loss(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        audio, video = ctx.inputs(batch)
        with ctx.autocast():
            embeddings = net(audio=audio, video=video)
        both = (batch["has_audio"] & batch["has_video"]).to(ctx.device)
        loss, parts = contrastive_loss(embeddings, mask=both)
        if not parts:
            raise ObjectiveError(
                f"contrastive objective: the model gives no audio/video/fusion features "
                f"(got {sorted(embeddings)}), or no clip has both modalities"
            )
        return loss, dict(detached(parts, "loss/"))

    @torch.no_grad()
    def eval_batch(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Any]:
        audio, video = ctx.inputs(batch)
        with ctx.autocast():
            embeddings = net(audio=audio, video=video, present=presence(audio, video, batch["has_audio"], batch["has_video"], ctx.device))
        return {
            "has_audio": batch["has_audio"].numpy(),
            "has_video": batch["has_video"].numpy(),
            "embeddings": {k: v.float().cpu().numpy() for k, v in embeddings.items()},
        }

    def score(self, outputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        both = outputs["has_audio"] & outputs["has_video"]
        embeddings = {k: torch.from_numpy(v[both]) for k, v in outputs["embeddings"].items()}
        total, parts = contrastive_loss(embeddings, gather=False)
        result: dict[str, Any] = {"nce": float(total), **{f"nce/{k}": float(v) for k, v in parts.items()}}
        if AUDIO in embeddings and VIDEO in embeddings and len(embeddings[AUDIO]):
            similarity = F.normalize(embeddings[AUDIO], dim=-1) @ F.normalize(embeddings[VIDEO], dim=-1).T
            result["retrieval_a2v_top1"] = float((similarity.argmax(1) == torch.arange(len(similarity))).float().mean())
            result["retrieval_chance"] = 1.0 / len(similarity)
        result["score"] = -result["nce"]
        return result

    def describe(self, result: dict[str, Any]) -> str:
        return f"nce {result['nce']:.4f}, a->v retrieval top-1 {result.get('retrieval_a2v_top1', float('nan')):.3f}"
