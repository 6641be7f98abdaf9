"""Masked reconstruction pretraining (an audio-visual MAE, after AV-MAE Sec. 3 / He et al.'s MAE).

For every clip, a random fraction of each modality's patch tokens is masked (AV-MAE Sec. 4.1:
90 % of video tokens, 50 % of audio tokens); the classifier's encoder sees only the visible
tokens, through the token-level interface (training/models/base.py: `tokenize`,
`encode_tokens`, `patch_targets`), so any architecture that implements it pretrains this way
(Zorro, MBT). A small decoder (the "decoder" slot of the checkpoint, dropped for fine-tuning
and export) re-inserts a learned mask token at every masked position, adds its own position
embeddings, runs a few transformer layers over both modalities' sequences together (AV-MAE's
"early" decoder: the one that lets each modality help reconstruct the other when the
encoder keeps them apart), and predicts each token's patch. The loss is the MSE on the
masked tokens only, per modality, summed with equal weights (Sec. 3.4).

Targets are the clean patches (the objective switches the model's SpecAugment / frequency
jitter off): log-mel values for audio, normalised pixels for video. `norm_targets` (default
on) standardises each target patch by its own mean and variance first: AV-MAE leaves it open
("additional standardisation may also be applied"); MAE and VideoMAE, which it cites, do it
and report better representations, so we do too.

A clip lacking a modality (with --missing zero) adds nothing to that modality's loss.
Evaluation: the same loss on the evaluation split with masks fixed per clip (seeded by the
clip's index), so scores are comparable across evaluations; the score is minus the total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from training.evaluate import presence
from training.models import AVClassifier
from training.models.layers import LearnedPositionEmbedding, TransformerBlock, init_vit_weights

from .base import Objective, ObjectiveError, ObjectiveSetup, StepContext, detached, register_objective


@dataclass(frozen=True)
class MaskedOptions:
    mask_ratio_audio: float = 0.5  # AV-MAE Sec. 4.1: alpha_a
    mask_ratio_video: float = 0.9  # AV-MAE Sec. 4.1: alpha_v
    decoder_dim: int | None = None  # default: half the encoder width (Table 15: 384 for ViT-B's 768)
    decoder_depth: int = 4  # Table 15
    decoder_heads: int | None = None  # default: decoder_dim / 64 (Table 15: 6 at 384), at least 1
    norm_targets: bool = True  # per-patch standardised targets (see the module docstring)

    def __post_init__(self) -> None:
        for name in ("mask_ratio_audio", "mask_ratio_video"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if self.decoder_depth < 1:
            raise ValueError("decoder_depth must be >= 1")

    def ratio(self, modality: str) -> float:
        return getattr(self, f"mask_ratio_{modality}")


class ReconstructionDecoder(nn.Module):
    """Encoded visible tokens of each modality -> a patch prediction for every token position."""

    def __init__(self, encoder_dim: int, token_counts: dict[str, int], patch_dims: dict[str, int], options: MaskedOptions):
        super().__init__()
        dim = options.decoder_dim or max(encoder_dim // 2, 8)
        heads = options.decoder_heads or max(1, dim // 64)
        self.modalities = tuple(token_counts)
        self.embed = nn.Linear(encoder_dim, dim)  # MAE: encoder width -> decoder width
        self.mask_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, dim)) for m in self.modalities})
        self.pos_embed = nn.ModuleDict({m: LearnedPositionEmbedding(n, dim) for m, n in token_counts.items()})
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(options.decoder_depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.predict = nn.ModuleDict({m: nn.Linear(dim, patch_dims[m]) for m in self.modalities})
        self.apply(init_vit_weights)
        for token in self.mask_token.values():
            nn.init.normal_(token, std=0.02)

    def forward(self, encoded: dict[str, Tensor], keep: dict[str, Tensor]) -> dict[str, Tensor]:
        sequences, sizes = [], []
        for m in encoded:
            visible = self.embed(encoded[m])
            batch, kept, dim = visible.shape
            full = self.mask_token[m].expand(batch, self.pos_embed[m].embedding.shape[1], dim)
            full = full.scatter(1, keep[m].unsqueeze(-1).expand(-1, -1, dim), visible)  # unshuffle
            sequences.append(self.pos_embed[m](full))
            sizes.append(full.shape[1])
        x = torch.cat(sequences, dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return {m: self.predict[m](part) for m, part in zip(encoded, x.split(sizes, dim=1), strict=True)}


def random_keep(batch: int, count: int, ratio: float, device: torch.device, seeds: list[int] | None = None) -> Tensor:
    """[batch, kept] sorted indices of the tokens left visible: a uniformly random subset of
    count - int(count * ratio) per row (MAE's rounding: the mask count is floored). `seeds` fixes
    each row's draw (evaluation); otherwise the global torch generator draws (resumable)."""
    kept = max(1, count - int(count * ratio))
    if seeds is None:
        noise = torch.rand(batch, count, device=device)
    else:
        noise = torch.stack([torch.rand(count, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
    return noise.argsort(dim=1)[:, :kept].sort(dim=1).values


@register_objective
class MaskedReconstruction(Objective):
    name = "masked"
    Options = MaskedOptions
    needs_labels = False
    default_missing = "skip"
    uses_every_parameter = False  # the classifier heads get no gradient

    def __init__(self, setup: ObjectiveSetup):
        super().__init__(setup)
        model = setup.model
        if not model.supports_tokens:
            raise ObjectiveError(
                f"the masked objective needs the token-level interface (training/models/base.py), "
                f"which {type(model).__name__} does not implement"
            )
        modalities = max((frozenset(m) for m in model.servable_modalities), key=len)
        counts = {m: n for m, n in model.token_counts.items() if m in modalities}
        dims = {m: d for m, d in model.patch_dims.items() if m in modalities}
        self.decoder = ReconstructionDecoder(int(model.feature_dim), counts, dims, setup.options)

    @classmethod
    def default_recipe(cls, finetune: bool) -> str:
        return "masked"

    def configure_model(self, model: AVClassifier) -> None:
        model.set_input_augmentation(False)  # clean inputs and targets

    def forward(self, model: AVClassifier, audio=None, video=None, present=None, seeds=None) -> dict[str, Any]:
        tokens = model.tokenize(audio=audio, video=video)
        keep = {
            m: random_keep(x.shape[0], x.shape[1], self.options.ratio(m), x.device, seeds) for m, x in tokens.items()
        }
        visible = {m: x.gather(1, keep[m].unsqueeze(-1).expand(-1, -1, x.shape[-1])) for m, x in tokens.items()}
        encoded = model.encode_tokens(visible, present, return_tokens=True).tokens
        with torch.no_grad():
            targets = model.patch_targets(audio=audio, video=video)
        return {"predictions": self.decoder(encoded, keep), "targets": targets, "keep": keep}

    def errors(self, outputs: dict[str, Any]) -> dict[str, Tensor]:
        """{modality: [B] mean squared error over each clip's masked tokens}."""
        errors = {}
        for m, prediction in outputs["predictions"].items():
            target = outputs["targets"][m].float()
            if self.options.norm_targets:
                target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
            squared = (prediction.float() - target).pow(2).mean(-1)  # [B, N]
            masked = torch.ones_like(squared, dtype=torch.bool).scatter(1, outputs["keep"][m], False)
            errors[m] = (squared * masked).sum(1) / masked.sum(1)
        return errors

    def training_loss(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        audio, video = ctx.inputs(batch)
        present = presence(audio, video, batch["has_audio"], batch["has_video"], ctx.device)
        with ctx.autocast():
            outputs = net(audio=audio, video=video, present=present)
        per_modality = {}
        for m, error in self.errors(outputs).items():
            has = batch[f"has_{m}"].to(ctx.device).to(error.dtype)
            per_modality[m] = (error * has).sum() / has.sum().clamp_min(1.0)
        loss = torch.stack(list(per_modality.values())).sum()
        return loss, dict(detached(per_modality, "loss/"))

    @torch.no_grad()
    def eval_batch(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Any]:
        audio, video = ctx.inputs(batch)
        present = presence(audio, video, batch["has_audio"], batch["has_video"], ctx.device)
        seeds = [int(i) for i in batch["index"]]
        with ctx.autocast():
            outputs = net(audio=audio, video=video, present=present, seeds=seeds)
        return {
            "has_audio": batch["has_audio"].numpy(),
            "has_video": batch["has_video"].numpy(),
            "error": {m: e.float().cpu().numpy() for m, e in self.errors(outputs).items()},
        }

    def score(self, outputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for m, error in outputs["error"].items():
            has = outputs[f"has_{m}"]
            if has.any():
                result[f"reconstruction/{m}"] = float(error[has].mean())
        result["reconstruction"] = sum(result.values())
        result["score"] = -result["reconstruction"]
        return result

    def describe(self, result: dict[str, Any]) -> str:
        parts = ", ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in result.items() if k.startswith("reconstruction/"))
        return f"reconstruction mse {result['reconstruction']:.4f} ({parts})"
