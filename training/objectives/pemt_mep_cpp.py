"""PEMT's pretraining: masked embedding prediction (MEP) + correct pair prediction (CPP)
(Lee et al., ICLR 2021, Sec. 2.1, Eq. 4-7; digest part A.2.1).

MEP. In each clip a share of the T units is masked, at the same positions in both streams (App.
B.3: so h_AV cannot read a masked unit through the other modality). A masked unit's CNN
embedding x_t is replaced by a learned mask vector (one per modality; BERT's [MASK]: the paper
does not say what replaces it) before the transformers. Each transformer's output O_t at a
masked position must pick x_t out of a set of negatives (InfoNCE, Eq. 4) under the
compatibility I(x, O) = exp(FFN(O)^T W_I x) (Eq. 5: a two-layer GELU FFN to P = 256, W_I P x D):

    L_MEP = L_NCE(x^a, y^a) + L_NCE(x^v, y^v) + L_NCE([x^v; x^a], z)        (Eq. 6)

with one FFN and W_I per transformer (not stated), and the third term over h_AV's video and
audio positions together. The targets x are the CNN embeddings of the unmasked input, trained
jointly (not detached: the paper trains everything end to end and InfoNCE's negatives keep the
targets from collapsing). Early fusion has only the third term, late fusion the first two.

Negatives (Sec. 2.1, Table 1b): `negatives` candidates per masked unit, drawn without
replacement from every other unit of the same modality in the mini-batch (other clips and the
clip's own other units):
    cans_similar     (the paper's) l2 distances between x_t and the candidates, normalised to
                     [0, 1] per query, candidates outside the 95 % interval of those distances
                     (mean +- 1.96 std) discarded, the rest sampled with probability
                     proportional to 1 - distance: the paper says "using the normalized distance
                     as sampling probability" and, in the next sentence, that this makes similar
                     instances *more* likely, which only 1 - distance does (digest's flag);
    cans_dissimilar  the same with probability proportional to the distance;
    random           uniformly from every other unit ("Current-MiniBatch").
Distances are taken on the CNN embeddings without gradient; sampling is random by design.

CPP (Eq. 7). Two binary classifiers (an MLP on the concatenated pair, 2D -> D -> 1: not stated),
one on the unimodal transformers' outputs and one on h_AV's. Each sees s_g, the BOS pair
[y^v_0; y^a_0] (or [z^v_0; z^a_0]), and s_h, the pair at a random unit t (two positions per
clip, as the paper takes). Negative pairs put clip i's video with clip pi(i)'s audio for a
random derangement pi of the batch (every clip moves: as many negative pairs as positive
ones); for h_AV the deranged pairs go through h_AV again. Late fusion has only the unimodal
classifier, early fusion only the multimodal one.

    L = L_MEP + alpha * L_CPP,  alpha = 1 (Sec. 2.1)

Clips without both modalities are left out of the dataset (`default_missing = "skip"`): MEP's
third term and CPP need pairs. Evaluation reports each loss, MEP top-1 (the positive scored
above all its sampled negatives) and CPP accuracy; negatives there are drawn from a generator
seeded per batch, so a checkpoint scores the same every time; a batch of a single clip (a split's
last) is left out. The score is -(MEP + CPP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models import AUDIO, VIDEO, AVClassifier
from training.models.pemt import PEMT

from .base import Objective, ObjectiveError, ObjectiveSetup, StepContext, detached, register_objective

MEP_DIM = 256  # P (Eq. 5)
CPP_WEIGHT = 1.0  # alpha (Sec. 2.1)
CONFIDENCE_Z = 1.959964  # the 95 % interval (Sec. 2.1)
SAMPLING = ("cans_similar", "cans_dissimilar", "random")
UNIMODAL, MULTIMODAL = "unimodal", "multimodal"
CPP_POSITIONS = 2  # "we take two random positions t in [1, T]"


@dataclass(frozen=True)
class PEMTOptions:
    mask_ratio: float = 0.15  # not stated: BERT's; at least one unit per clip is masked
    negatives: int = 32  # not stated; fewer when the batch has fewer candidates
    sampling: str = "cans_similar"
    cpp_weight: float = CPP_WEIGHT
    mep_dim: int = MEP_DIM

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio {self.mask_ratio} outside (0, 1)")
        if self.negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {self.negatives}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling {self.sampling!r} not in {SAMPLING}")
        if self.cpp_weight < 0:
            raise ValueError(f"cpp_weight must be >= 0, got {self.cpp_weight}")


class CompatibilityHead(nn.Module):
    """I(x, O) = exp(FFN(O)^T W_I x): `query(O)` = FFN(O) and `key(x)` = W_I x, both P-dim."""

    def __init__(self, dim: int, projection: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, projection))
        self.target = nn.Linear(dim, projection, bias=False)  # W_I

    def query(self, outputs: Tensor) -> Tensor:
        return self.ffn(outputs)

    def key(self, embeddings: Tensor) -> Tensor:
        return self.target(embeddings)


class PairClassifier(nn.Sequential):
    """p(c | [video; audio]) as a logit."""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 1))


def sample_negatives(
    embeddings: Tensor, queries: Tensor, count: int, sampling: str, generator: torch.Generator | None = None
) -> Tensor:
    """Indices [Q, K] into `embeddings` [N, D] of K negatives for each query (an index into
    `embeddings`: the positive, never drawn), as the module docstring describes. K = `count`, or
    fewer if some query has fewer admissible candidates."""
    with torch.no_grad():
        x = embeddings.detach().float()
        n, q = x.shape[0], queries.shape[0]
        others = torch.ones(q, n, dtype=torch.bool, device=x.device)
        others[torch.arange(q, device=x.device), queries] = False
        if sampling == "random":
            weights = others.float()
        else:
            distance = torch.cdist(x[queries], x)  # [Q, N]
            masked = distance.masked_fill(~others, float("nan"))
            low = torch.nan_to_num(masked, nan=float("inf")).amin(dim=1, keepdim=True)
            high = torch.nan_to_num(masked, nan=float("-inf")).amax(dim=1, keepdim=True)
            normalised = (distance - low) / (high - low).clamp_min(1e-12)
            mean = torch.nanmean(normalised.masked_fill(~others, float("nan")), dim=1, keepdim=True)
            centred = (normalised - mean).masked_fill(~others, 0.0)
            std = (centred.square().sum(dim=1, keepdim=True) / others.sum(dim=1, keepdim=True).clamp_min(1)).sqrt()
            inside = others & ((normalised - mean).abs() <= CONFIDENCE_Z * std + 1e-6)
            probability = 1.0 - normalised if sampling == "cans_similar" else normalised
            weights = probability.clamp_min(0.0) * inside
            # a query whose interval admits too few candidates with weight falls back to them all
            short = (weights > 0).sum(dim=1) < min(count, int(others.sum(dim=1).min()))
            weights[short] = others[short].float()
        available = int((weights > 0).sum(dim=1).min())
        k = min(count, available)
        if k < 1:
            raise ObjectiveError("pemt_mep_cpp: a batch with a single unit has no negatives")
        return torch.multinomial(weights, k, replacement=False, generator=generator)


def info_nce(queries: Tensor, keys: Tensor, positives: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 4 for each query: -log(e^{q.k_pos} / (e^{q.k_pos} + sum_neg e^{q.k_neg})).
    queries [Q, P], keys [N, P], positives [Q], negatives [Q, K] -> (mean loss, per-query top-1)."""
    candidates = torch.cat([positives[:, None], negatives], dim=1)  # [Q, 1 + K]
    logits = torch.einsum("qp,qkp->qk", queries, keys[candidates])
    loss = F.cross_entropy(logits, torch.zeros(len(queries), dtype=torch.long, device=queries.device))
    return loss, (logits.argmax(dim=1) == 0).float()


def random_derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation with no fixed point (every clip paired with another clip's audio)."""
    if n < 2:
        raise ObjectiveError("pemt_mep_cpp needs at least 2 clips per batch (CPP's derangement)")
    while True:
        permutation = rng.permutation(n)
        if not np.any(permutation == np.arange(n)):
            return permutation


@register_objective
class PEMTPretraining(Objective):
    name = "pemt_mep_cpp"
    Options = PEMTOptions
    needs_labels = False
    default_missing = "skip"  # MEP's multimodal term and CPP need audio-visual pairs
    uses_every_parameter = False  # the classification heads get no gradient

    def __init__(self, setup: ObjectiveSetup):
        super().__init__(setup)
        model = setup.model
        if not isinstance(model, PEMT):
            raise ObjectiveError(f"the pemt_mep_cpp objective trains PEMT models (pemt_*), not {type(model).__name__}")
        cfg = model.config
        self.fusion = cfg.fusion
        self.mask_ratio = float(self.options.mask_ratio)
        self.num_negatives = int(self.options.negatives)
        self.sampling = self.options.sampling
        self.cpp_weight = float(self.options.cpp_weight)
        self.mask_token = nn.ParameterDict({m: nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02) for m in (VIDEO, AUDIO)})
        streams = self.streams
        self.compatibility = nn.ModuleDict({s: CompatibilityHead(cfg.dim, int(self.options.mep_dim)) for s in streams})
        self.pair_classifiers = nn.ModuleDict({s: PairClassifier(cfg.dim) for s in streams})

    @property
    def streams(self) -> tuple[str, ...]:
        """Which transformers the losses read: g_V and g_A ("unimodal") and/or h_AV."""
        return {"mid": (UNIMODAL, MULTIMODAL), "early": (MULTIMODAL,), "late": (UNIMODAL,)}[self.fusion]

    @classmethod
    def default_recipe(cls, finetune: bool) -> str:
        return "pemt"

    def configure_model(self, model: AVClassifier) -> None:
        if model.config.num_units < 2:
            raise ObjectiveError(f"pemt_mep_cpp needs at least 2 units per clip, {type(model).__name__} has {model.config.num_units}")

    # ---- the one forward DDP sees ----------------------------------------------------------

    def forward(self, model: PEMT, audio: Tensor, video: Tensor, mask: Tensor, derangement: Tensor, positions: Tensor) -> dict[str, Any]:
        """mask [B, T] bool (the units replaced), derangement [B] (CPP's audio partner of each
        clip's video), positions [B, CPP_POSITIONS] (s_h's units, 1..T)."""
        units = model.embed_units(audio=audio, video=video)
        masked = {m: torch.where(mask[..., None], self.mask_token[m].to(x.dtype), x) for m, x in units.items()}
        context = model.contextualise(masked)
        t = model.config.num_units
        outputs: dict[str, Any] = {"units": units}
        pairs: dict[str, Tensor] = {}
        if UNIMODAL in self.streams:
            y_v, y_a = context.unimodal[VIDEO], context.unimodal[AUDIO]
            outputs["unimodal"] = {VIDEO: y_v[:, 1:], AUDIO: y_a[:, 1:]}
            pairs[UNIMODAL] = self._pair_logits(UNIMODAL, y_v, y_a, y_a[derangement], positions)
        if MULTIMODAL in self.streams:
            z = context.multimodal
            outputs["multimodal"] = {VIDEO: z[:, 1 : t + 1], AUDIO: z[:, t + 2 :]}
            source = context.unimodal if self.fusion == "mid" else masked
            z_negative = model.fuse({VIDEO: source[VIDEO], AUDIO: source[AUDIO][derangement]})
            split = lambda seq: (seq[:, : t + 1], seq[:, t + 1 :])  # noqa: E731  (video part, audio part)
            (z_v, z_a), (n_v, n_a) = split(z), split(z_negative)
            pairs[MULTIMODAL] = self._pair_logits(MULTIMODAL, z_v, z_a, n_a, positions, negative_video=n_v)
        outputs["pairs"] = pairs
        return outputs

    def _pair_logits(
        self, stream: str, video: Tensor, audio: Tensor, other_audio: Tensor, positions: Tensor, negative_video: Tensor | None = None
    ) -> dict[str, Tensor]:
        """{"summary": [B, 2], "position": [B, 2 * CPP_POSITIONS]} logits: column 0 (and the first
        half) the true pairs, the rest the deranged ones; sequences are BOS-first [B, T+1, D]."""
        classifier = self.pair_classifiers[stream]
        negative_video = video if negative_video is None else negative_video
        rows = torch.arange(video.shape[0], device=video.device)[:, None]

        def logit(v: Tensor, a: Tensor) -> Tensor:
            return classifier(torch.cat([v, a], dim=-1)).squeeze(-1)

        summary = torch.stack([logit(video[:, 0], audio[:, 0]), logit(negative_video[:, 0], other_audio[:, 0])], dim=1)
        position = torch.cat(
            [
                logit(video[rows, positions], audio[rows, positions]),
                logit(negative_video[rows, positions], other_audio[rows, positions]),
            ],
            dim=1,
        )
        return {"summary": summary, "position": position}

    # ---- losses ------------------------------------------------------------------------------

    def losses(self, outputs: dict[str, Any], mask: Tensor, generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], dict[str, float]]:
        """{"mep": ..., "cpp": ...} and accuracies (MEP top-1 against the sampled negatives, CPP)."""
        units = {m: x.float() for m, x in outputs["units"].items()}
        flat_units = {m: x.reshape(-1, x.shape[-1]) for m, x in units.items()}
        masked_rows = mask.reshape(-1).nonzero().squeeze(1)  # indices into [B * T]
        negatives = {
            m: sample_negatives(flat_units[m], masked_rows, self.num_negatives, self.sampling, generator) for m in flat_units
        }
        mep_terms, hits = [], []
        for stream in self.streams:
            head = self.compatibility[stream]
            stream_losses = []
            for m in (VIDEO, AUDIO):
                predicted = outputs[stream][m].float().reshape(-1, units[m].shape[-1])[masked_rows]
                loss, hit = info_nce(head.query(predicted), head.key(flat_units[m]), masked_rows, negatives[m])
                stream_losses.append(loss)
                hits.append(hit)
            mep_terms.extend(stream_losses if stream == UNIMODAL else [torch.stack(stream_losses).mean()])
        mep = torch.stack(mep_terms).sum()
        cpp_terms, correct = [], []
        for pair in outputs["pairs"].values():
            for logits in pair.values():
                logits = logits.float()
                half = logits.shape[1] // 2
                labels = torch.cat([torch.ones_like(logits[:, :half]), torch.zeros_like(logits[:, half:])], dim=1)
                cpp_terms.append(F.binary_cross_entropy_with_logits(logits, labels))
                correct.append(((logits > 0).float() == labels).float().reshape(-1))
        cpp = torch.stack(cpp_terms).sum()
        accuracy = {"mep_top1": float(torch.cat(hits).mean()), "cpp_accuracy": float(torch.cat(correct).mean())}
        return {"mep": mep, "cpp": self.cpp_weight * cpp}, accuracy

    def _inputs(self, batch: dict[str, Tensor], ctx: StepContext, rng: np.random.Generator) -> dict[str, Tensor]:
        audio, video = ctx.inputs(batch)
        if audio is None or video is None:
            raise ObjectiveError("pemt_mep_cpp needs audio and video in every batch")
        if not bool(batch["has_audio"].all() and batch["has_video"].all()):
            raise ObjectiveError("pemt_mep_cpp got a clip without audio or video (the dataset should skip them)")
        b, t = audio.shape[0], ctx.model.config.num_units
        masked = max(1, int(round(self.mask_ratio * t)))
        order = np.argsort(rng.random((b, t)), axis=1)[:, :masked]
        mask = np.zeros((b, t), dtype=bool)
        np.put_along_axis(mask, order, True, axis=1)
        positions = rng.integers(1, t + 1, size=(b, CPP_POSITIONS))
        return {
            "audio": audio,
            "video": video,
            "mask": torch.from_numpy(mask).to(ctx.device),
            "derangement": torch.from_numpy(random_derangement(b, rng)).to(ctx.device),
            "positions": torch.from_numpy(positions).to(ctx.device),
        }

    def training_loss(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        inputs = self._inputs(batch, ctx, ctx.rng)
        with ctx.autocast():
            outputs = net(**inputs)
        generator = torch.Generator(device=inputs["mask"].device).manual_seed(int(ctx.rng.integers(2**62)))
        losses, accuracy = self.losses(outputs, inputs["mask"], generator)
        logs = dict(detached(losses, "loss/"))
        logs.update(accuracy)
        return losses["mep"] + losses["cpp"], logs

    # ---- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def eval_batch(self, net: nn.Module, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Any]:
        # the same masks, pairs and negatives for a batch every time it is scored
        seed = int(batch["index"][0]) if "index" in batch else 0
        b = len(batch["has_audio"])
        if b < 2:  # a split's last batch of one clip: no other clip to pair or contrast with
            return {key: np.full(b, np.nan) for key in ("mep", "cpp", "mep_top1", "cpp_accuracy", "negatives")}
        rng = np.random.default_rng(seed)
        inputs = self._inputs(batch, ctx, rng)
        with ctx.autocast():
            outputs = net(**inputs)
        generator = torch.Generator(device=inputs["mask"].device).manual_seed(seed)
        losses, accuracy = self.losses(outputs, inputs["mask"], generator)
        # per-batch numbers repeated per clip (weights: a batch's clips), so the trainer can gather them
        return {
            "mep": np.full(b, float(losses["mep"])),
            "cpp": np.full(b, float(losses["cpp"])),
            "mep_top1": np.full(b, accuracy["mep_top1"]),
            "cpp_accuracy": np.full(b, accuracy["cpp_accuracy"]),
            "negatives": np.full(b, float(min(self.num_negatives, b * ctx.model.config.num_units - 1))),
        }

    def score(self, outputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        result = {key: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan") for key, values in outputs.items()}
        result["score"] = -(result["mep"] + result["cpp"])
        return result

    def describe(self, result: dict[str, Any]) -> str:
        nan = float("nan")
        return (
            f"mep {result.get('mep', nan):.4f} (top-1 {result.get('mep_top1', nan):.3f}), "
            f"cpp {result.get('cpp', nan):.4f} (accuracy {result.get('cpp_accuracy', nan):.3f})"
        )
