import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import ContrastiveProjectors, contrastive_loss, nce_loss, smooth_targets, supervised_loss


def direct_nce(za, zb, tau):
    """Eq. (2) written out with explicit loops over the batch."""
    za = [v / v.norm() for v in za]
    zb = [v / v.norm() for v in zb]
    B = len(za)
    sim = lambda a, b: math.exp(float(a @ b) / tau)  # noqa: E731
    denominator = sum(sim(za[k], zb[j]) for j in range(B) for k in range(B))
    return -sum(math.log(sim(za[i], zb[i]) / denominator) for i in range(B))


def test_nce_matches_eq2():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    expected = direct_nce(za, zb, 0.08)
    assert nce_loss(za, zb, 0.08, reduction="sum").item() == pytest.approx(expected, rel=1e-5)
    assert nce_loss(za, zb, 0.08).item() == pytest.approx(expected / 5, rel=1e-5)
    # the denominator runs over all B*B pairs, so it is not the row-wise InfoNCE
    info_nce = F.cross_entropy(F.normalize(za, dim=1) @ F.normalize(zb, dim=1).T / 0.08, torch.arange(5))
    assert nce_loss(za, zb, 0.08).item() != pytest.approx(info_nce.item(), rel=1e-3)


def test_contrastive_is_sum_of_three_pairs_and_masks():
    g = torch.Generator().manual_seed(1)
    emb = {k: torch.randn(6, 4, generator=g) for k in ("audio", "video", "fusion")}
    total, parts = contrastive_loss(emb, tau=0.08, gather=False)
    assert set(parts) == {"av", "af", "vf"}
    expected = nce_loss(emb["audio"], emb["video"]) + nce_loss(emb["audio"], emb["fusion"]) + nce_loss(emb["video"], emb["fusion"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    mask = torch.tensor([True, True, False, True, False, True])
    masked, _ = contrastive_loss(emb, mask=mask, gather=False)
    sub = {k: v[mask] for k, v in emb.items()}
    assert masked.item() == pytest.approx(contrastive_loss(sub, gather=False)[0].item(), rel=1e-6)


def test_projectors_shapes_and_gradients():
    proj = ContrastiveProjectors(16)
    out = proj({"audio": torch.randn(4, 16), "video": torch.randn(4, 16), "fusion": torch.randn(4, 16), "global": torch.randn(4, 16)})
    assert set(out) == {"audio", "video", "fusion"} and out["audio"].shape == (4, 256)
    assert proj.proj["audio"].net[0].out_features == 512  # hidden 512 (Zorro App. B)
    contrastive_loss(out, gather=False)[0].backward()
    assert proj.proj["fusion"].net[0].weight.grad is not None


def test_label_smoothing_matches_torch_ce():
    logits = torch.randn(5, 4)
    target = torch.tensor([0, 3, 1, 1, 2])
    soft = smooth_targets(target, 4, 0.15)
    total, per_head = supervised_loss({"a": logits}, soft, ["a"], multilabel=False)
    assert total.item() == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.15).item(), rel=1e-5)


def test_multilabel_bce_and_head_masking():
    logits = {"audio": torch.randn(3, 5), "video": torch.randn(3, 5)}
    target = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.float32)
    valid = {"audio": torch.tensor([True, False, True]), "video": torch.tensor([False, False, False])}
    total, per_head = supervised_loss(logits, target, ["audio", "video"], True, valid)
    assert set(per_head) == {"audio"}  # no video clip: the video head has no loss at all
    bce = F.binary_cross_entropy_with_logits(logits["audio"][[0, 2]], target[[0, 2]], reduction="none").sum(1).mean()
    assert total.item() == pytest.approx(bce.item(), rel=1e-5)
    # total = mean over heads
    valid["video"] = torch.tensor([True, True, True])
    total, per_head = supervised_loss(logits, target, ["audio", "video"], True, valid)
    assert total.item() == pytest.approx((per_head["audio"] + per_head["video"]).item() / 2, rel=1e-6)
