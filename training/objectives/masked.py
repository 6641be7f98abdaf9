"""Masked reconstruction pretraining: an audio-visual MAE (AV-MAE, Georgescu et al. 2023, Sec. 3;
after He et al.'s MAE).

For every clip, a random fraction of each modality's patch tokens is masked (AV-MAE Sec. 4.1:
90 % of video tokens, 50 % of audio tokens; the masked count is floored, as the released code
does); the classifier's encoder sees only the visible tokens, through the token-level interface
(training/models/base.py: `tokenize`, `encode_tokens`, `patch_targets`), so any architecture
that implements it pretrains this way (AV-MAE's own encoder, training/models/avmae.py, and Zorro,
MBT). A small decoder (the "decoder" slot of the checkpoint, dropped for fine-tuning and export)
re-inserts a learned mask token at every masked position, adds its own position embeddings,
runs a few transformer layers (Table 15) and predicts each token's patch. Its layers follow one
of the paper's decoder structures (Sec. 3.3, Table 1): "shared" (one set of layers run on each
modality's sequence on its own; the released configs' "same_decoder", our default), "separate"
(a set per modality) or "early" (one set over both sequences together, the one that lets each
modality help reconstruct the other when the encoder keeps them apart). The paper warns that a
"separate" encoder with a "separate" decoder is two unrelated MAEs.

Tasks (Sec. 3.4, Table 2):
  "joint"             the loss is the MSE on each modality's masked tokens only, the two
                      modalities summed with equal weights (the paper's default and best);
  "video_from_audio", "audio_from_video", "inpaint_both"
                      modality inpainting: the encoder sees the visible tokens of the source
                      modality only; the decoder reads [encoded source tokens || mask tokens], as
                      long as the target modality's token count, and the loss is on the trailing
                      mask-token positions. Which target patches those positions stand for the
                      paper leaves open; the released code (and so we) take the target's raster
                      positions n_visible .. N - 1, with the target's decoder positions 0 .. N - 1
                      added along the whole sequence. The paper reports inpainting converges only
                      at a low LR (1.6e-4 at batch 512, App. A.4) and never with separate encoders.

Targets are the clean patches (the objective switches the model's SpecAugment / frequency
jitter / time shift off): log-mel values for audio, normalised pixels for video. `norm_targets`
(default on) standardises each target patch by its own mean and variance first. AV-MAE leaves
it open ("additional standardisation may also be applied to x~"); its released configs train on
raw values, while MAE and VideoMAE, which it cites, standardise and report better fine-tuning
(MAE Table 1: +0.5 top-1). We standardise: it also keeps a patch's brightness, which the
synthetic set's classes do not depend on, from dominating the loss. `norm_targets=false` gives
the released code's raw targets.

A clip lacking a modality (with --missing zero) adds nothing to that modality's loss, and its
zero-filled stand-in reaches no other: the encoder and an "early" decoder keep its tokens out of
their keys, and under inpainting a clip lacking the source adds nothing to the target's loss.
Evaluation: the same loss on the evaluation split with masks fixed per clip (seeded by the
clip's index), so scores are comparable across evaluations; the score is minus the total.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from training.evaluate import presence
from training.models import AUDIO, VIDEO, AVClassifier
from training.models.base import Presence
from training.models.layers import LearnedPositionEmbedding, TransformerBlock, init_vit_weights

from .base import Objective, ObjectiveError, ObjectiveSetup, StepContext, detached, register_objective


DECODERS = ("shared", "separate", "early")
TASKS = ("joint", "video_from_audio", "audio_from_video", "inpaint_both")


@dataclass(frozen=True)
class MaskedOptions:
    mask_ratio_audio: float = 0.5  # AV-MAE Sec. 4.1: alpha_a
    mask_ratio_video: float = 0.9  # AV-MAE Sec. 4.1: alpha_v
    decoder: str = "shared"  # one of DECODERS (Sec. 3.3); "shared": the released configs' "same_decoder"
    decoder_dim: int | None = None  # default: half the encoder width (Table 15: 384 for ViT-B's 768, 512 for ViT-L)
    decoder_depth: int = 4  # Table 15
    decoder_heads: int | None = None  # default: decoder_dim / 64 (Table 15: 6 at 384, 8 at 512), at least 1
    norm_targets: bool = True  # per-patch standardised targets (see the module docstring)
    task: str = "joint"  # one of TASKS (Sec. 3.4): joint reconstruction or modality inpainting

    def __post_init__(self) -> None:
        for name in ("mask_ratio_audio", "mask_ratio_video"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if self.decoder_depth < 1:
            raise ValueError("decoder_depth must be >= 1")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {self.decoder!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")

    def ratio(self, modality: str) -> float:
        return getattr(self, f"mask_ratio_{modality}")

    @property
    def inpainting(self) -> tuple[tuple[str, str], ...]:
        """(source, target) pairs of the inpainting task; () for joint reconstruction."""
        pairs = {"video_from_audio": ((AUDIO, VIDEO),), "audio_from_video": ((VIDEO, AUDIO),)}
        pairs["inpaint_both"] = pairs["video_from_audio"] + pairs["audio_from_video"]
        return pairs.get(self.task, ())


class ReconstructionDecoder(nn.Module):
    """Encoded visible tokens -> a patch prediction per token position (Sec. 3.3, Table 15).

    Per modality: a linear map from the encoder's width, a learned mask token and new position
    embeddings (MAE's unshuffle: the visible tokens go back to their positions, mask tokens fill
    the rest). The transformer layers are arranged as `structure` says: "shared" (one set of
    layers run on each modality's sequence on its own), "separate" (a set per modality) or
    "early" (one set over both sequences concatenated, so each modality helps reconstruct the
    other). A final LayerNorm and a per-modality linear head to the patch dimension."""

    def __init__(self, encoder_dim: int, token_counts: dict[str, int], patch_dims: dict[str, int], options: MaskedOptions):
        super().__init__()
        dim = options.decoder_dim or max(encoder_dim // 2, 8)
        heads = options.decoder_heads or max(1, dim // 64)
        self.structure = options.decoder
        self.modalities = tuple(token_counts)

        def layers() -> nn.ModuleList:
            return nn.ModuleList(TransformerBlock(dim, heads) for _ in range(options.decoder_depth))

        self.embed = nn.ModuleDict({m: nn.Linear(encoder_dim, dim) for m in self.modalities})  # encoder width -> decoder width
        self.mask_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, dim)) for m in self.modalities})
        self.pos_embed = nn.ModuleDict({m: LearnedPositionEmbedding(n, dim) for m, n in token_counts.items()})
        self.blocks = nn.ModuleDict({m: layers() for m in self.modalities}) if self.structure == "separate" else layers()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.predict = nn.ModuleDict({m: nn.Linear(dim, patch_dims[m]) for m in self.modalities})
        self.apply(init_vit_weights)
        for token in self.mask_token.values():
            nn.init.normal_(token, std=0.02)

    def run(self, x: Tensor, target: str, attend: Tensor | None = None) -> Tensor:
        for block in self.blocks[target] if self.structure == "separate" else self.blocks:
            x = block(x, attend)
        return self.norm(x)

    def forward(self, encoded: dict[str, Tensor], keep: dict[str, Tensor], present: Presence | None = None) -> dict[str, Tensor]:
        """Joint reconstruction: {modality: [B, N_m, patch_dim]} for every position of each modality.
        With `present`, an "early" decoder keeps an absent modality's tokens out of each clip's keys."""
        sequences = {}
        for m in encoded:
            visible = self.embed[m](encoded[m])
            batch, _, dim = visible.shape
            full = self.mask_token[m].expand(batch, self.pos_embed[m].embedding.shape[1], dim)
            full = full.scatter(1, keep[m].unsqueeze(-1).expand(-1, -1, dim), visible)  # unshuffle
            sequences[m] = self.pos_embed[m](full)
        if self.structure == "early":
            order = list(sequences)
            sizes = [sequences[m].shape[1] for m in order]
            attend = None
            if present is not None and len(order) > 1:  # as AVMAE.joint_layer
                keys = torch.cat([present[m].bool()[:, None].expand(-1, n) for m, n in zip(order, sizes)], dim=1)
                attend = (keys | ~keys.any(dim=1, keepdim=True))[:, None, None, :]
            joint = self.run(torch.cat([sequences[m] for m in order], dim=1), order[0], attend)
            decoded = dict(zip(order, joint.split(sizes, dim=1), strict=True))
        else:
            decoded = {m: self.run(x, m) for m, x in sequences.items()}
        return {m: self.predict[m](x) for m, x in decoded.items()}

    def inpaint(self, encoded_source: Tensor, source: str, target: str) -> Tensor:
        """Modality inpainting (Sec. 3.4): the sequence [e_source || mask tokens of target], N_target
        long, with the target's decoder positions 0 .. N_target - 1 added, as the released code
        lays it out; the predictions for the trailing mask-token positions [B, N_t - n_vis, patch_dim]."""
        visible = self.embed[source](encoded_source)
        batch, seen, dim = visible.shape
        count = self.pos_embed[target].embedding.shape[1]
        masks = self.mask_token[target].expand(batch, count - seen, dim)
        decoded = self.run(self.pos_embed[target](torch.cat([visible, masks], dim=1)), target)
        return self.predict[target](decoded[:, seen:])


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


def modality_seeds(seeds: list[int] | None, modality: str) -> list[int] | None:
    """Each clip's evaluation seed made distinct per modality, so the audio and video masks of a
    clip are independent draws (the same seed would order the first tokens of both alike)."""
    if seeds is None:
        return None
    offset = (AUDIO, VIDEO).index(modality)
    return [2 * s + offset for s in seeds]


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
        options: MaskedOptions = setup.options
        for source, target in options.inpainting:
            if not {source, target} <= set(counts):
                raise ObjectiveError(f"inpainting {target} from {source} needs a model with both; {type(model).__name__} has {sorted(counts)}")
            seen = counts[source] - int(counts[source] * options.ratio(source))
            if seen >= counts[target]:
                raise ObjectiveError(
                    f"inpainting {target} from {source}: {seen} visible {source} tokens leave none of the {counts[target]} "
                    f"{target} positions to predict (raise mask_ratio_{source})"
                )
        self.decoder = ReconstructionDecoder(int(model.feature_dim), counts, dims, setup.options)

    @classmethod
    def default_recipe(cls, finetune: bool) -> str:
        return "masked"

    def configure_model(self, model: AVClassifier) -> None:
        model.set_input_augmentation(False)  # clean inputs and targets

    def forward(self, model: AVClassifier, audio=None, video=None, present=None, seeds=None) -> dict[str, Any]:
        tokens = model.tokenize(audio=audio, video=video)
        keep = {
            m: random_keep(x.shape[0], x.shape[1], self.options.ratio(m), x.device, modality_seeds(seeds, m))
            for m, x in tokens.items()
        }
        visible = {m: x.gather(1, keep[m].unsqueeze(-1).expand(-1, -1, x.shape[-1])) for m, x in tokens.items()}
        with torch.no_grad():
            targets = model.patch_targets(audio=audio, video=video)
        if not self.options.inpainting:
            encoded = model.encode_tokens(visible, present, return_tokens=True).tokens
            return {"predictions": self.decoder(encoded, keep, present), "targets": targets, "keep": keep}
        predictions, skipped = {}, {}
        for source, target in self.options.inpainting:  # the encoder sees the source modality only
            encoded = model.encode_tokens({source: visible[source]}, return_tokens=True).tokens[source]
            trailing = self.decoder.inpaint(encoded, source, target)
            seen = encoded.shape[1]
            # a full-length prediction whose first `seen` positions are not predicted (the loss's "kept")
            predictions[target] = torch.cat([trailing.new_zeros(trailing.shape[0], seen, trailing.shape[2]), trailing], dim=1)
            skipped[target] = torch.arange(seen, device=trailing.device).expand(trailing.shape[0], -1)
        return {"predictions": predictions, "targets": targets, "keep": skipped}

    def write_pictures(self, model: AVClassifier, batch: dict[str, Tensor], directory: Path, names: list[str]) -> list[Path]:
        """Spectrogram and frame-strip reconstructions (training/pictures.py) for a patch-token model."""
        if not hasattr(model, "unpatchify"):
            return []  # tokens that are not image patches (e.g. waveform segments): nothing to draw
        from training.pictures import write_pictures

        return write_pictures(model, self, batch, directory, names)

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

    def scored(self, has: dict[str, Tensor]) -> dict[str, Tensor]:
        """{modality: the clips whose error counts}: those that have it and, under inpainting, the
        source it is inpainted from (a zero-filled source has nothing to inpaint from)."""
        sources = {target: source for source, target in self.options.inpainting}
        return {m: has[m] & has[sources[m]] if m in sources else has[m] for m in has}

    def training_loss(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        audio, video = ctx.inputs(batch)
        present = presence(audio, video, batch["has_audio"], batch["has_video"], ctx.device)
        with ctx.autocast():
            outputs = net(audio=audio, video=video, present=present)
        per_modality = {}
        scored = self.scored({m: batch[f"has_{m}"].to(ctx.device).bool() for m in (AUDIO, VIDEO)})
        for m, error in self.errors(outputs).items():
            has = scored[m].to(error.dtype)
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
        scored = self.scored({m: batch[f"has_{m}"].bool() for m in (AUDIO, VIDEO)})
        return {
            "has_audio": scored[AUDIO].numpy(),
            "has_video": scored[VIDEO].numpy(),
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
