"""VATT's pretraining: NCE(video, audio) + lambda * MIL-NCE(video, text) in two common spaces
(Akbari et al. 2021, Sec. 3.3-3.4, Eq. 4-6; digest part B).

The objective owns what is never served: the text tower (`VATTTextEncoder`: a 2^16-word
embedding, T5 relative bias, a Small transformer or, in VATT-MA, the model's shared backbone) and
the common-space projections (`CommonSpaces`):

    z_v,va = g_v->va(z_video)   two linear layers with a ReLU between, 512-d
    z_a,va = g_a->va(z_audio)   linear, 512-d
    z_t,vt = g_t->vt(z_text)    linear, 256-d
    z_v,vt = g_v->vt(z_v,va)    linear, 256-d: video reaches the text space *through* the
                                audio space (the paper's hierarchy: audio finer, text coarser)

with batch normalisation after every linear layer and l2-normalised outputs. z_m is the AGG
output of each transformer.

DropToken (Sec. 3.1.1): in training a random `drop_token_rate` (the config's 0.5) of each clip's
video and audio tokens is dropped after their positions are added (model.tokenize), and the
backbones see the rest (model.encode_tokens). Evaluation sees every token.

Losses, tau = 0.07, lambda = 1, averaged over the clips that take part:
    NCE(v, a)       clip i's (video, audio) pair against every non-matching pair that involves
                    clip i's video or clip i's audio (its row and its column of the batch's
                    similarity matrix): the paper's "all non-matching pairs in a batch" read
                    as the usual two-directional InfoNCE (MMV, MIL-NCE's code);
    MIL-NCE(v, t)   the positives are all the captions of clip i (its "bag"; the paper's five
                    nearest narrations), the negatives every caption of another clip with clip
                    i's video and every other video with clip i's captions.
Clips without text feed nothing to the text tower and leave the MIL-NCE term (the paper feeds
zeros and excludes them; "zeros" that are then excluded change nothing, so we skip the work);
clips without audio leave the NCE term; clips without video leave both. Under DDP the embeddings
are all-gathered so the negatives cover the global batch.

Evaluation: both losses on the evaluation split, text->video retrieval R@1 / R@5 (each caption a
query, every clip with video a candidate; chance k / candidates) and, for single-label data,
the class-level R@1 (the top video shares the caption's class), and video->audio top-1. The
score is -(NCE + MIL-NCE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.data.text import TextSpec
from training.losses import gather_with_grad
from training.models import AUDIO, VIDEO, AVClassifier
from training.models.vatt import TEXT, VATT, CommonSpaces, VATTConfig, VATTTextEncoder

from .base import Objective, ObjectiveError, ObjectiveSetup, StepContext, detached, register_objective
from .masked import random_keep

VATT_TAU = 0.07  # Sec. 3.4: tau = 0.07
VATT_TEXT_WEIGHT = 1.0  # Sec. 3.4: lambda = 1


@dataclass(frozen=True)
class VATTOptions:
    tau: float = VATT_TAU
    text_weight: float = VATT_TEXT_WEIGHT  # lambda; 0 trains video-audio only
    drop_token_rate: float | None = None  # default: the model config's (0.5, Sec. 4.1)

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.drop_token_rate is not None and not 0.0 <= self.drop_token_rate < 1.0:
            raise ValueError(f"drop_token_rate {self.drop_token_rate} outside [0, 1)")


def multiple_instance_nce(video: Tensor, texts: Tensor, valid: Tensor, tau: float) -> Tensor:
    """MIL-NCE over N clips: video [N, D], texts [N, K, D], valid [N, K] bool (each clip >= 1).

    Clip i: -log( sum_{k valid} e^{v_i.t_ik/tau} / (that + sum over every non-matching pair
    (v_i, t_jk), (v_j, t_ik), j != i) ). With K = 1 it is the two-directional NCE."""
    n = video.shape[0]
    sim = torch.einsum("id,jkd->ijk", video, texts) / tau  # [N videos, N clips' texts, K]
    sim = sim.masked_fill(~valid[None], float("-inf"))
    eye = torch.eye(n, dtype=torch.bool, device=video.device)[:, :, None]
    positives = sim.diagonal(dim1=0, dim2=1).T  # [N, K]: clip i's video with its own captions
    rows = sim.masked_fill(eye, float("-inf")).reshape(n, -1)  # v_i with other clips' captions
    columns = sim.masked_fill(eye, float("-inf")).transpose(0, 1).reshape(n, -1)  # other videos with clip i's captions
    numerator = torch.logsumexp(positives, dim=1)
    denominator = torch.logsumexp(torch.cat([positives, rows, columns], dim=1), dim=1)
    return (denominator - numerator).mean()


def _scatter_rows(values: Tensor, rows: Tensor, batch: int) -> Tensor:
    """values [M, ...] placed at `rows` of a zero tensor [batch, ...]."""
    out = values.new_zeros((batch, *values.shape[1:]))
    return out.index_copy(0, rows, values)


@register_objective
class VATTContrastive(Objective):
    name = "vatt_nce"
    Options = VATTOptions
    needs_labels = False
    default_missing = "zero"  # video-only clips still pair with text; audio-only ones sit out
    uses_every_parameter = False  # the classification heads get no gradient
    text_input = TextSpec()

    def __init__(self, setup: ObjectiveSetup):
        super().__init__(setup)
        model = setup.model
        if not isinstance(model, VATT):
            raise ObjectiveError(f"the vatt_nce objective trains VATT models (vatt_*), not {type(model).__name__}")
        cfg = model.config
        spec = self.text_input
        if (cfg.vocab_size, cfg.max_words) != (spec.vocab_size, spec.max_words):
            raise ObjectiveError(
                f"the model's text vocabulary {cfg.vocab_size} x {cfg.max_words} words differs from the tokenizer's "
                f"{spec.vocab_size} x {spec.max_words} (training/data/text.py)"
            )
        self.tau = float(self.options.tau)
        self.text_weight = float(self.options.text_weight)
        rate = self.options.drop_token_rate
        self.drop_token_rate = float(cfg.drop_token_rate if rate is None else rate)
        self.modality_agnostic = cfg.modality_agnostic
        self.spaces = CommonSpaces(cfg)
        self.text = VATTTextEncoder(cfg, own_backbone=not cfg.modality_agnostic)

    @classmethod
    def default_recipe(cls, finetune: bool) -> str:
        return "vatt"

    # ---- the one forward DDP sees ----------------------------------------------------------

    def forward(
        self,
        model: VATT,
        audio: Tensor | None = None,
        video: Tensor | None = None,
        has_audio: Tensor | None = None,
        has_video: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Embeddings scattered into full-batch tensors (zeros where a clip lacks the modality),
        so every DDP rank gathers tensors of one shape; BatchNorm only sees present clips."""
        batch = (audio if audio is not None else video).shape[0]
        tokens = model.tokenize(audio=audio, video=video)
        if self.training and self.drop_token_rate > 0:  # DropToken: a random subset per clip
            tokens = {
                m: x.gather(1, random_keep(batch, x.shape[1], self.drop_token_rate, x.device)[..., None].expand(-1, -1, x.shape[2]))
                for m, x in tokens.items()
            }
        features = model.encode_tokens(tokens).features
        present = {AUDIO: has_audio, VIDEO: has_video}
        out: dict[str, Tensor] = {}
        rows = {m: present[m].nonzero().squeeze(1) for m in features}
        enough = {m: len(r) >= (2 if self.training else 1) for m, r in rows.items()}  # BatchNorm needs 2 in training
        if VIDEO in features and enough[VIDEO]:
            video_va = self.spaces.video_to_va(features[VIDEO][rows[VIDEO]])
            out["video_va"] = _scatter_rows(F.normalize(video_va, dim=-1), rows[VIDEO], batch)
            out["video_vt"] = _scatter_rows(F.normalize(self.spaces.va_to_vt(video_va), dim=-1), rows[VIDEO], batch)
        if AUDIO in features and enough[AUDIO]:
            audio_va = self.spaces.audio_to_va(features[AUDIO][rows[AUDIO]])
            out["audio_va"] = _scatter_rows(F.normalize(audio_va, dim=-1), rows[AUDIO], batch)
        if text is not None and text_mask is not None and self.text_weight > 0:
            captions = text_mask.reshape(-1).nonzero().squeeze(1)  # the captions that exist
            if len(captions) >= (2 if self.training else 1):
                words = text.reshape(-1, text.shape[-1])[captions]
                shared = model.backbone(TEXT) if self.modality_agnostic else None
                text_vt = self.spaces.text_to_vt(self.text(words, backbone=shared))
                flat = _scatter_rows(F.normalize(text_vt, dim=-1), captions, text_mask.numel())
                out["text_vt"] = flat.reshape(*text_mask.shape, -1)
        return self._with_every_key(out, model.config, features, batch, text_mask if text is not None and self.text_weight > 0 else None)

    def _with_every_key(
        self, out: dict[str, Tensor], cfg: VATTConfig, features: dict[str, Tensor], batch: int, text_mask: Tensor | None
    ) -> dict[str, Tensor]:
        """Zeros for the embeddings this batch computed none of, so every DDP rank gathers the same
        keys and shapes and evaluation batches concatenate; in training they keep a gradient path
        to their module (DDP expects one). `losses` leaves zero rows out."""
        modules = {
            "video_va": (self.spaces.video_to_va, cfg.va_dim),
            "video_vt": (self.spaces.va_to_vt, cfg.vt_dim),
            "audio_va": (self.spaces.audio_to_va, cfg.va_dim),
        }
        if text_mask is not None:
            modules["text_vt"] = (self.spaces.text_to_vt, cfg.vt_dim)
        reference = next(iter(features.values()))
        for key, (module, width) in modules.items():
            if key not in out:
                shape = (*text_mask.shape, width) if key == "text_vt" else (batch, width)
                zero = sum(p.sum() for p in module.parameters()) * 0.0 if self.training else 0.0
                out[key] = reference.new_zeros(shape) + zero
        return out

    def _inputs(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Any]:
        audio, video = ctx.inputs(batch)
        inputs: dict[str, Any] = {
            "audio": audio,
            "video": video,
            "has_audio": batch["has_audio"].to(ctx.device),
            "has_video": batch["has_video"].to(ctx.device),
        }
        if "text" in batch:
            inputs["text"] = batch["text"].to(ctx.device)
            inputs["text_mask"] = batch["text_mask"].to(ctx.device) & batch["has_video"].to(ctx.device)[:, None]
        return inputs

    def losses(self, embeddings: dict[str, Tensor], inputs: dict[str, Any], gather: bool) -> dict[str, Tensor]:
        """{"nce": NCE(v, a), "mil_nce": MIL-NCE(v, t)} for the terms the batch has pairs for.

        A row takes part only if its clip has the modality *and* an embedding was computed for it
        (unit norm; the zeros `forward` returns where it computed none, e.g. a DDP rank with a
        single such clip, which BatchNorm cannot take in training, are left out)."""
        g = gather_with_grad if gather else (lambda x: x)
        embedded = {k: g((v.detach().norm(dim=-1) > 0.5).to(torch.uint8)).bool() for k, v in embeddings.items()}
        has_video = g(inputs["has_video"].to(torch.uint8)).bool()
        losses = {}
        if "video_va" in embeddings and "audio_va" in embeddings:
            pairs = has_video & g(inputs["has_audio"].to(torch.uint8)).bool() & embedded["video_va"] & embedded["audio_va"]
            if int(pairs.sum()) >= 2:
                video, audio = g(embeddings["video_va"])[pairs], g(embeddings["audio_va"])[pairs]
                losses["nce"] = multiple_instance_nce(video, audio[:, None], torch.ones_like(pairs[pairs])[:, None], self.tau)
        if "video_vt" in embeddings and "text_vt" in embeddings:
            valid = g(inputs["text_mask"].to(torch.uint8)).bool() & embedded["text_vt"]
            clips = valid.any(dim=1) & has_video & embedded["video_vt"]
            if int(clips.sum()) >= 2:
                video, texts = g(embeddings["video_vt"])[clips], g(embeddings["text_vt"])[clips]
                losses["mil_nce"] = self.text_weight * multiple_instance_nce(video, texts, valid[clips], self.tau)
        return losses

    def training_loss(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        inputs = self._inputs(batch, ctx)
        with ctx.autocast():
            embeddings = net(**inputs)
        embeddings = {k: v.float() for k, v in embeddings.items()}
        losses = self.losses(embeddings, inputs, gather=True)
        if not losses:  # no pair in this batch: a zero that still depends on the parameters
            total = sum(v.sum() * 0.0 for v in embeddings.values()) if embeddings else None
            if total is None:
                raise ObjectiveError("vatt_nce: a batch with neither audio nor video features")
            return total, {}
        return torch.stack(list(losses.values())).sum(), dict(detached(losses, "loss/"))

    # ---- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def eval_batch(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Any]:
        inputs = self._inputs(batch, ctx)
        with ctx.autocast():
            embeddings = net(**inputs)
        result: dict[str, Any] = {
            "has_audio": batch["has_audio"].numpy(),
            "has_video": batch["has_video"].numpy(),
            "target": batch["target"].numpy(),
            "embeddings": {k: v.float().cpu().numpy() for k, v in embeddings.items()},
        }
        if "text_mask" in inputs:
            result["text_mask"] = inputs["text_mask"].cpu().numpy()
        return result

    def score(self, outputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        embeddings = {k: torch.from_numpy(v) for k, v in outputs["embeddings"].items()}
        inputs = {
            "has_audio": torch.from_numpy(outputs["has_audio"]),
            "has_video": torch.from_numpy(outputs["has_video"]),
        }
        if "text_mask" in outputs:
            inputs["text_mask"] = torch.from_numpy(outputs["text_mask"])
        losses = self.losses(embeddings, inputs, gather=False)
        result: dict[str, Any] = {k: float(v) for k, v in losses.items()}
        if "text_vt" in embeddings and "video_vt" in embeddings:
            result.update(
                text_to_video_retrieval(
                    embeddings["text_vt"], inputs["text_mask"], embeddings["video_vt"], inputs["has_video"], outputs["target"]
                )
            )
        if "video_va" in embeddings and "audio_va" in embeddings:
            both = inputs["has_audio"] & inputs["has_video"]
            similarity = embeddings["video_va"][both] @ embeddings["audio_va"][both].T
            if len(similarity):
                result["retrieval_v2a_top1"] = float((similarity.argmax(1) == torch.arange(len(similarity))).float().mean())
                result["retrieval_v2a_chance"] = 1.0 / len(similarity)
        result["score"] = -sum(float(v) for v in losses.values()) if losses else float("nan")
        return result

    def describe(self, result: dict[str, Any]) -> str:
        nan = float("nan")
        return (
            f"nce {result.get('nce', nan):.4f}, mil-nce {result.get('mil_nce', nan):.4f}, "
            f"t->v R@1 {result.get('t2v_R@1', nan):.3f} R@5 {result.get('t2v_R@5', nan):.3f} "
            f"(chance {result.get('t2v_R@1_chance', nan):.3f}), class R@1 {result.get('t2v_class_R@1', nan):.3f} "
            f"(chance {result.get('t2v_class_R@1_chance', nan):.3f})"
        )


def text_to_video_retrieval(texts: Tensor, valid: Tensor, videos: Tensor, has_video: Tensor, target: np.ndarray) -> dict[str, float]:
    """Each caption queries every clip with video (cosine similarity in S_vt): R@1 and R@5 of its own
    clip, their chance (k / candidates), and for single-label data the class-level R@1 (the top
    clip has the caption's class) with its chance (the share of candidates of that class)."""
    candidates = has_video.nonzero().squeeze(1)
    query_clip, query_caption = (valid & has_video[:, None]).nonzero(as_tuple=True)
    if len(candidates) == 0 or len(query_clip) == 0:
        return {}
    similarity = texts[query_clip, query_caption] @ videos[candidates].T  # [queries, candidates]
    position = {int(c): i for i, c in enumerate(candidates)}
    own = torch.tensor([position[int(c)] for c in query_clip])
    rank = (similarity > similarity[torch.arange(len(own)), own][:, None]).sum(dim=1)  # 0 = retrieved first
    result = {"t2v_queries": float(len(own)), "t2v_candidates": float(len(candidates))}
    for k in (1, 5):
        result[f"t2v_R@{k}"] = float((rank < k).float().mean())
        result[f"t2v_R@{k}_chance"] = min(1.0, k / len(candidates))
    labels = np.asarray(target)
    if labels.ndim == 1:
        labels = torch.from_numpy(labels)
        top = candidates[similarity.argmax(dim=1)]
        result["t2v_class_R@1"] = float((labels[top] == labels[query_clip]).float().mean())
        same = (labels[candidates][None, :] == labels[query_clip][:, None]).float().mean(dim=1)
        result["t2v_class_R@1_chance"] = float(same.mean())
    return result
