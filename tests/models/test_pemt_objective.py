"""The pemt_mep_cpp objective (training/objectives/pemt_mep_cpp.py): InfoNCE as Eq. 4 writes it,
content-aware negative sampling, the derangement, masking the same units in both streams,
Sigma staying orthogonal under the paper's optimiser, the fusion variants, and what it refuses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.models import create_model
from training.objectives import ObjectiveError, ObjectiveSetup, StepContext, TrainingModule, get_objective
from training.objectives.pemt_mep_cpp import info_nce, random_derangement, sample_negatives
from training.optim import build_optimizer, parameter_groups, resolve_recipe


def test_info_nce_is_eq_4():
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    positives = torch.tensor([0, 3, 6])
    negatives = torch.tensor([[1, 2], [0, 5], [2, 4]])
    loss, hits = info_nce(queries, keys, positives, negatives)
    expected = 0.0
    for q in range(3):
        pos = math.exp(float(queries[q] @ keys[positives[q]]))
        neg = sum(math.exp(float(queries[q] @ keys[j])) for j in negatives[q])
        expected += -math.log(pos / (pos + neg)) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-9)
    scores = [[float(queries[q] @ keys[j]) for j in [positives[q], *negatives[q]]] for q in range(3)]
    assert hits.tolist() == [float(np.argmax(s) == 0) for s in scores]


def test_derangement_moves_every_clip():
    rng = np.random.default_rng(0)
    for n in (2, 3, 8, 33):
        permutation = random_derangement(n, rng)
        assert sorted(permutation) == list(range(n)) and not np.any(permutation == np.arange(n))
    with pytest.raises(ObjectiveError, match="at least 2"):
        random_derangement(1, rng)


def negatives_geometry():
    """One query at the origin; candidates at distances 1..40 along random directions, plus one
    far outlier (distance 400) the 95 % interval must discard."""
    g = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(41, 8, generator=g), dim=-1)
    distances = torch.cat([torch.arange(1, 41, dtype=torch.float32), torch.tensor([400.0])])
    embeddings = torch.cat([torch.zeros(1, 8), directions * distances[:, None]])
    return embeddings, distances


@pytest.mark.parametrize("sampling", ["cans_similar", "cans_dissimilar", "random"])
def test_negatives_never_the_positive_and_without_replacement(sampling):
    embeddings, _ = negatives_geometry()
    g = torch.Generator().manual_seed(1)
    drawn = sample_negatives(embeddings, torch.tensor([0, 5, 41]), count=10, sampling=sampling, generator=g)
    assert drawn.shape == (3, 10)
    for row, query in zip(drawn.tolist(), (0, 5, 41), strict=True):
        assert query not in row and len(set(row)) == 10


def test_cans_similar_favours_near_units_and_drops_outliers():
    """Sec. 2.1: negatives sampled in proportion to similarity (1 - normalised distance), after
    discarding what falls outside the 95 % interval; CANS-Dissimilar the other way round."""
    embeddings, distances = negatives_geometry()
    query = torch.zeros(400, dtype=torch.long)  # the same query 400 times: an empirical distribution
    mean_distance, outlier = {}, {}
    for sampling in ("cans_similar", "random", "cans_dissimilar"):
        g = torch.Generator().manual_seed(2)
        drawn = sample_negatives(embeddings, query, count=5, sampling=sampling, generator=g) - 1  # candidate index
        mean_distance[sampling] = float(distances[drawn].mean())
        outlier[sampling] = int((drawn == 40).sum())
    assert mean_distance["cans_similar"] < mean_distance["random"] - 3 and mean_distance["cans_dissimilar"] > 12
    assert outlier["cans_similar"] == 0 and outlier["cans_dissimilar"] == 0  # outside the interval
    assert outlier["random"] > 0  # Current-MiniBatch keeps it


# ---- the objective on a tiny PEMT ------------------------------------------------------------


def objective_for(model, **options):
    objective = get_objective("pemt_mep_cpp")
    setup = ObjectiveSetup(
        model=model, classes=[str(i) for i in range(12)], multilabel=False, recipe=resolve_recipe("pemt"),
        options=objective.parse_options(options),
    )  # fmt: skip
    return objective(setup)


def batch_for(model, make_audio, make_video, size=4, seed=0):
    cfg = model.config
    return {
        "index": torch.arange(size) + 100 * seed,
        "audio": make_audio(cfg, size, seed=seed),
        "video": make_video(cfg, size, seed=seed + 1),
        "has_audio": torch.ones(size, dtype=torch.bool),
        "has_video": torch.ones(size, dtype=torch.bool),
        "target": torch.zeros(size, dtype=torch.long),
    }


def context_for(model, seed=0):
    return StepContext(model=model, device=torch.device("cpu"), rng=np.random.default_rng(seed))


@pytest.mark.parametrize("fusion", ["mid", "early", "late"])
def test_training_step_reaches_what_each_fusion_trains(fusion, make_audio, make_video):
    torch.manual_seed(0)
    model = create_model("pemt_tiny", fusion=fusion).train()
    objective = objective_for(model).train()
    net = TrainingModule(model, objective)
    loss, logs = objective.training_loss(net, batch_for(model, make_audio, make_video, size=4), context_for(model))
    assert torch.isfinite(loss) and {"loss/mep", "loss/cpp", "mep_top1", "cpp_accuracy"} <= set(logs)
    # chance: ln(1 + K) per MEP term with K = 15 negatives (4 clips x 4 units - 1), ln 2 per CPP term
    terms = {"mid": (3, 4), "early": (1, 2), "late": (2, 2)}[fusion]
    assert logs["loss/mep"] == pytest.approx(terms[0] * math.log(16), rel=0.25)
    assert logs["loss/cpp"] == pytest.approx(terms[1] * math.log(2), rel=0.25)
    loss.backward()
    grads = {n for n, p in net.named_parameters() if p.grad is not None and torch.count_nonzero(p.grad) > 0}
    assert not [n for n in grads if n.startswith("model.heads.")]  # pretraining leaves the classifier alone
    assert any(n.startswith("model.video_cnn.") for n in grads) and any(n.startswith("model.audio_cnn.") for n in grads)
    assert {"objective.mask_token.video", "objective.mask_token.audio"} <= grads
    streams = {"mid": {"unimodal", "multimodal"}, "early": {"multimodal"}, "late": {"unimodal"}}[fusion]
    assert {n.split(".")[2] for n in grads if n.startswith("objective.compatibility.")} == streams
    assert {n.split(".")[2] for n in grads if n.startswith("objective.pair_classifiers.")} == streams


def test_masked_units_are_hidden_from_every_transformer(make_audio, make_video):
    """App. B.3: the same units are masked in both streams, so no transformer output (h_AV's
    included) depends on a masked unit's audio or frames."""
    torch.manual_seed(0)
    model = create_model("pemt_tiny").eval()
    objective = objective_for(model).eval()
    cfg = model.config
    audio, video = make_audio(cfg, 2, seed=3), make_video(cfg, 2, seed=4)
    mask = torch.zeros(2, cfg.num_units, dtype=torch.bool)
    mask[:, 1] = True
    inputs = {"mask": mask, "derangement": torch.tensor([1, 0]), "positions": torch.tensor([[1, 2], [3, 4]])}
    with torch.no_grad():
        before = objective(model, audio=audio, video=video, **inputs)
        changed_audio, changed_video = audio.clone(), video.clone()
        changed_audio[:, cfg.unit_samples : 2 * cfg.unit_samples] = torch.rand(2, cfg.unit_samples) * 2 - 1
        changed_video[:, cfg.frames_per_unit : 2 * cfg.frames_per_unit] = torch.randint_like(video[:, :4], 0, 256)
        after = objective(model, audio=changed_audio, video=changed_video, **inputs)
        for stream in ("unimodal", "multimodal"):
            for m in ("audio", "video"):
                torch.testing.assert_close(after[stream][m], before[stream][m], rtol=0, atol=1e-6)
        # ...while the masked unit's target (its CNN embedding) did change
        assert (after["units"]["video"][:, 1] - before["units"]["video"][:, 1]).abs().max() > 1e-3
        # unmasking the unit lets its content through
        unmasked = objective(model, audio=changed_audio, video=changed_video, **{**inputs, "mask": torch.roll(mask, 1, 1)})
        assert (unmasked["multimodal"]["video"] - before["multimodal"]["video"]).abs().max() > 1e-3


def test_sigma_stays_orthogonal_under_the_papers_optimiser(make_audio, make_video):
    """12 AMSGrad-AdamW steps of MEP + CPP at a large LR (so Sigma moves): every Sigma is still
    orthogonal to 1e-5, because it is expm of a skew-symmetric matrix whatever the step does."""
    torch.manual_seed(0)
    model = create_model("pemt_tiny").train()
    objective = objective_for(model).train()
    net = TrainingModule(model, objective)
    recipe = resolve_recipe("pemt", lr=5e-2)
    optimizer = build_optimizer(parameter_groups(model, dict(objective.named_children()), recipe, recipe.lr), recipe, recipe.lr)
    ctx = context_for(model)
    batch = batch_for(model, make_audio, make_video, size=2)
    for _ in range(12):
        optimizer.zero_grad()
        loss, _ = objective.training_loss(net, batch, ctx)
        loss.backward()
        optimizer.step()
    sigmas = model.orthogonal_matrices()
    assert len(sigmas) == 6 * 3  # six weights per layer, one layer per transformer (cross-layer), three transformers
    moved = 0.0
    with torch.no_grad():
        for sigma in sigmas:
            eye = torch.eye(sigma.shape[0])
            assert (sigma @ sigma.T - eye).abs().max() < 1e-5
            moved = max(moved, float((sigma - eye).abs().max()))
    assert moved > 1e-2


def test_evaluation_is_repeatable(make_audio, make_video):
    torch.manual_seed(0)
    model = create_model("pemt_tiny").eval()
    objective = objective_for(model).eval()
    net = TrainingModule(model, objective)
    batch = batch_for(model, make_audio, make_video, size=4, seed=5)
    first = objective.eval_batch(net, batch, context_for(model, seed=1))
    second = objective.eval_batch(net, batch, context_for(model, seed=2))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    result = objective.score(first, context_for(model))
    assert result["score"] == pytest.approx(-(result["mep"] + result["cpp"]))
    assert "mep" in objective.describe(result)


def test_refuses_other_models_and_bad_options():
    with pytest.raises(ObjectiveError, match="PEMT"):
        objective_for(create_model("vatt_tiny"))
    model = create_model("pemt_tiny")
    with pytest.raises(ObjectiveError, match="sampling"):
        objective_for(model, sampling="nearest")
    with pytest.raises(ObjectiveError, match="no option"):
        objective_for(model, negative_count=3)


def test_a_one_clip_evaluation_batch_is_left_out(make_audio, make_video):
    model = create_model("pemt_tiny").eval()
    objective = objective_for(model).eval()
    net = TrainingModule(model, objective)
    single = objective.eval_batch(net, batch_for(model, make_audio, make_video, size=1), context_for(model))
    pair = objective.eval_batch(net, batch_for(model, make_audio, make_video, size=2), context_for(model))
    assert np.isnan(single["mep"]).all()
    merged = {k: np.concatenate([pair[k], single[k]]) for k in pair}
    assert objective.score(merged, context_for(model))["mep"] == pytest.approx(float(pair["mep"][0]))
