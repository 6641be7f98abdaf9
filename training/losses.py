"""Training objectives.

Supervised (Zorro A3.1, MBT B3): one loss per output head; softmax cross-entropy for single-label
data, sigmoid binary cross-entropy for multi-label data; optional label smoothing (scenic style:
t * (1 - eps) + eps / C, the same for both, which for CE equals torch's `label_smoothing`).
Targets are soft [B, C] so that mixup targets go through the same code.

  * Each head's loss is the mean over the clips for which that head exists ("do not compute the
    loss for the missing modalities", Zorro A3.1): e.g. the audio head on a video-only clip, or
    the fusion/global heads on any unimodal clip, contribute nothing.
  * The total is the **mean over heads** of the per-head losses (heads with no valid clip in the
    batch are left out). Averaging keeps the loss scale (and so the learning rate) the same for
    a 1-head model (MBT) and a 4-head model (Zorro). The paper does not say sum or mean.
  * BCE is summed over classes and averaged over clips (the usual multi-label convention, so the
    gradient does not shrink with the number of classes).

Contrastive (Zorro Sec. 3.3 / App. B, after MMV): per-modality MLP projectors (hidden 512) on
`forward_features` outputs, L2-normalised, similarity exp(z_a . z_b / tau) with tau = 0.08 and

    NCE(a, b) = - 1/B * sum_i log( sim(a_i, b_i) / sum_{j,k} sim(a_k, b_j) )

i.e. Eq. (2) with its denominator over ALL B*B pairs of the batch (not the row-wise InfoNCE),
divided by B (Eq. (2) is a sum; the 1/B makes the loss independent of batch size; pass
`reduction="sum"` for the literal sum). Total: NCE(a, v) + NCE(a, f) + NCE(v, f) (Eq. (3)).
Under DDP the embeddings are all-gathered (with gradient) so the negatives cover the global batch.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

CONTRASTIVE_TAU = 0.08
PROJECTOR_HIDDEN = 512
PROJECTOR_OUT = 256  # not stated in the paper
CONTRASTIVE_PAIRS: tuple[tuple[str, str], ...] = (("audio", "video"), ("audio", "fusion"), ("video", "fusion"))


# ---------------------------------------------------------------------------------------------
# supervised


def smooth_targets(target: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Indices [B] or soft/multi-hot [B, C] -> float [B, C], smoothed as t(1-eps) + eps/C."""
    if target.dim() == 1:
        target = F.one_hot(target.long(), num_classes).float()
    target = target.float()
    if label_smoothing > 0:
        target = target * (1.0 - label_smoothing) + label_smoothing / num_classes
    return target


def head_loss(logits: torch.Tensor, soft_target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-example loss [B] for one head."""
    logits = logits.float()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, soft_target, reduction="none").sum(dim=1)
    return -(soft_target * F.log_softmax(logits, dim=1)).sum(dim=1)


def label_balance_weights(target: torch.Tensor) -> torch.Tensor:
    """VATT's class balancing for AudioSet (App. A.3: "penalizing the loss value of a sample with
    the inverse of the per-batch number of repetitive labels it carries"): per clip [B], the mean
    over its labels c of 1 / (clips of the batch carrying c). As VATT's released code computes it
    (vatt/modeling/backbones/audio/factory.py, `inverse_label_occurance`): with n_c = sum_i y_ic
    and |y_i| = sum_c y_ic, w_i = sum_c y_ic / (n_c |y_i|), on the unsmoothed (possibly mixed-up,
    so soft) targets [B, C]. A clip whose labels no other clip shares weighs 1, a clip in a batch
    of 8 all labelled "speech" 1/8; the batch is the process's own (VATT's per-replica batch). A
    clip without labels weighs 0."""
    target = target.float()
    per_class = target.sum(dim=0, keepdim=True)  # [1, C]
    per_clip = target.sum(dim=1)  # [B]
    inverse = torch.where(per_class > 0, 1.0 / per_class.clamp_min(1e-12), torch.zeros_like(per_class))
    weighted = (target * inverse).sum(dim=1)
    return torch.where(per_clip > 0, weighted / per_clip.clamp_min(1e-12), torch.zeros_like(per_clip))


def supervised_loss(
    outputs: Mapping[str, torch.Tensor],
    soft_target: torch.Tensor,
    heads: Sequence[str],
    multilabel: bool,
    valid: Mapping[str, torch.Tensor] | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns (total, {head: loss}). `valid[head]` is a bool [B] mask (None = every clip);
    `weights` [B] scale each clip's loss (e.g. `label_balance_weights`), the mean still over
    the clips (VATT: weighted losses, then the batch mean)."""
    per_head: dict[str, torch.Tensor] = {}
    for head in heads:
        ex = head_loss(outputs[head], soft_target, multilabel)
        if weights is not None:
            ex = ex * weights.to(ex.dtype)
        if valid is not None and head in valid:
            mask = valid[head].to(ex.dtype)
            n = mask.sum()
            if n.item() == 0:
                continue
            per_head[head] = (ex * mask).sum() / n
        else:
            per_head[head] = ex.mean()
    if not per_head:
        # nothing valid in this batch: a zero that still depends on the parameters (keeps DDP happy)
        total = sum(outputs[h].float().sum() * 0.0 for h in heads)
        return total, {}
    total = torch.stack(list(per_head.values())).mean()
    return total, per_head


# ---------------------------------------------------------------------------------------------
# contrastive


class Projector(nn.Module):
    """MLP projector: Linear(d, 512) -> BatchNorm -> ReLU -> Linear(512, out) (MMV-style)."""

    def __init__(self, in_dim: int, hidden: int = PROJECTOR_HIDDEN, out_dim: int = PROJECTOR_OUT):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ContrastiveProjectors(nn.Module):
    """One projector per contrasted output (audio, video, fusion); different weights each.
    Wrapped with the model for pre-training only; dropped (not saved into the model's weights)
    for fine-tuning."""

    def __init__(self, feature_dim: int, outputs: Sequence[str] = ("audio", "video", "fusion"), hidden: int = PROJECTOR_HIDDEN, out_dim: int = PROJECTOR_OUT):
        super().__init__()
        self.outputs = tuple(outputs)
        self.proj = nn.ModuleDict({name: Projector(feature_dim, hidden, out_dim) for name in self.outputs})

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.proj[name](features[name].float()) for name in self.outputs if name in features}


def nce_loss(za: torch.Tensor, zb: torch.Tensor, tau: float = CONTRASTIVE_TAU, reduction: str = "mean") -> torch.Tensor:
    """Zorro Eq. (2): -sum_i log( exp(a_i.b_i/tau) / sum_{j,k} exp(a_k.b_j/tau) ) on L2-normalised
    embeddings. reduction="mean" divides by the batch size B."""
    za = F.normalize(za.float(), dim=-1)
    zb = F.normalize(zb.float(), dim=-1)
    logits = za @ zb.t() / tau  # [B, B]; entry (k, j) = a_k . b_j / tau
    log_denominator = torch.logsumexp(logits.reshape(-1), dim=0)
    losses = log_denominator - logits.diagonal()
    return losses.mean() if reduction == "mean" else losses.sum()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for the local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gathers along dim 0 across DDP ranks, keeping the gradient path (identity if not DDP).
    Every rank then computes the same global loss; DDP's gradient averaging over ranks combined
    with the summed backward here gives exactly the gradient of that global loss."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if not x.requires_grad:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)
    return _GatherWithGrad.apply(x)


def contrastive_loss(
    embeddings: Mapping[str, torch.Tensor],
    tau: float = CONTRASTIVE_TAU,
    pairs: Sequence[tuple[str, str]] = CONTRASTIVE_PAIRS,
    mask: torch.Tensor | None = None,
    gather: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of NCE over `pairs` (Eq. (3)). `mask` [B] bool selects clips having both modalities
    (contrastive pairs need both). Returns (total, {"a-v": ...})."""
    embs = dict(embeddings)
    if gather:  # gather first: every rank has the same batch shape, masks may differ
        embs = {k: gather_with_grad(v) for k, v in embs.items()}
        if mask is not None:
            mask = gather_with_grad(mask.to(torch.uint8)).bool()  # no grad: plain all_gather
    if mask is not None:
        embs = {k: v[mask] for k, v in embs.items()}
    parts: dict[str, torch.Tensor] = {}
    for a, b in pairs:
        if a in embs and b in embs and embs[a].shape[0] > 0:
            parts[f"{a[0]}{b[0]}"] = nce_loss(embs[a], embs[b], tau)
    if not parts:
        total = sum(v.sum() * 0.0 for v in embeddings.values())
        return total, {}
    return torch.stack(list(parts.values())).sum(), parts
