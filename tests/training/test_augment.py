import pytest
import numpy as np
import torch

from training.augment import (
    adjust_hue,
    augment_video,
    color_jitter,
    eval_video,
    mixup,
    random_resized_crop_box,
    sample_mixup_lambda,
    VideoAugmentConfig,
    drop_modalities,
)


def test_mixup_one_lambda_for_audio_video_and_target():
    rng = np.random.default_rng(0)
    audio = torch.randn(6, 100)
    video = torch.randint(0, 256, (6, 2, 8, 8, 3), dtype=torch.uint8)
    target = torch.nn.functional.one_hot(torch.arange(6) % 4, 4).float()
    has_a = torch.tensor([True, True, True, True, False, True])
    r = mixup(audio, video, target, 0.3, rng=rng, has_audio=has_a, has_video=torch.ones(6, dtype=torch.bool))
    lam, p = r.lam, r.perm
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(r.audio, lam * audio + (1 - lam) * audio[p])
    assert torch.allclose(r.video, lam * video.float() + (1 - lam) * video.float()[p])
    assert torch.allclose(r.target, lam * target + (1 - lam) * target[p])
    assert r.video.dtype == torch.float32 and float(r.video.max()) <= 255.0
    assert torch.equal(r.has_audio, has_a & has_a[p])


def test_mixup_lambda_is_beta_0_3():
    rng = np.random.default_rng(1)
    lams = np.array([sample_mixup_lambda(0.3, rng) for _ in range(4000)])
    assert abs(lams.mean() - 0.5) < 0.03  # Beta(a, a) has mean 1/2 ...
    assert abs(lams.var() - 1 / (4 * (2 * 0.3 + 1))) < 0.01  # ... and variance 1/(4(2a+1)): U-shaped
    assert sample_mixup_lambda(0.0, rng) == 1.0


def test_random_resized_crop_box_ranges():
    rng = np.random.default_rng(2)
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(72, 96, rng)
        assert 0 <= top and top + h <= 72 and 0 <= left and left + w <= 96
        area = h * w / (72 * 96)
        assert 0.28 <= area <= 1.0
        assert 0.85 <= w / h <= 1.4


def test_color_jitter_ranges_and_probability():
    rng = np.random.default_rng(3)
    x = torch.rand(2, 8, 8, 3)
    changed = 0
    for _ in range(200):
        y = color_jitter(x, rng)
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        changed += not torch.equal(x, y)
    assert 0.7 < changed / 200 < 0.9  # p = 0.8
    # hue: delta 0 is the identity, a full turn too
    assert torch.allclose(adjust_hue(x, 0.0), x, atol=1e-5)
    assert torch.allclose(adjust_hue(x, 1.0), x, atol=1e-5)
    red = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    assert torch.allclose(adjust_hue(red, 1 / 3), torch.tensor([[[[0.0, 1.0, 0.0]]]]), atol=1e-5)


def test_augment_video_shapes():
    rng = np.random.default_rng(4)
    frames = np.random.default_rng(0).integers(0, 256, (4, 74, 74, 3), dtype=np.uint8)
    out = augment_video(frames, 64, rng, VideoAugmentConfig())
    assert out.shape == (4, 64, 64, 3) and out.dtype == torch.uint8
    ev = eval_video(frames, 64)
    assert ev.shape == (4, 64, 64, 3) and ev.dtype == torch.uint8


def test_modality_mixup_uses_one_lambda_per_modality_and_their_mean_for_the_target():
    rng = np.random.default_rng(3)
    audio, video = torch.randn(6, 50), torch.randint(0, 256, (6, 2, 4, 4, 3), dtype=torch.uint8)
    target = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    lambdas = set()
    for _ in range(5):
        r = mixup(audio, video, target, 0.3, rng=rng, per_modality=True)
        p = r.perm
        # recover each modality's lambda from one coordinate that differs between the pair
        i = int(torch.nonzero(p != torch.arange(6))[0])
        j = int(torch.nonzero((audio[i] - audio[p[i]]).abs() > 1e-3)[0])
        lam_a = float((r.audio[i, j] - audio[p[i], j]) / (audio[i, j] - audio[p[i], j]))
        flat_v, flat_vp = video[i].float().flatten(), video[p[i]].float().flatten()
        k = int(torch.nonzero((flat_v - flat_vp).abs() > 0)[0])
        lam_v = float((r.video[i].flatten()[k] - flat_vp[k]) / (flat_v[k] - flat_vp[k]))
        assert r.lam == pytest.approx((lam_a + lam_v) / 2, abs=1e-4)
        assert torch.allclose(r.target, r.lam * target + (1 - r.lam) * target[p], atol=1e-6)
        lambdas.add((round(lam_a, 3), round(lam_v, 3)))
    assert any(a != v for a, v in lambdas)  # independent draws, not one shared lambda


def test_drop_modalities_makes_audio_video_clips_unimodal_at_the_given_rate():
    rng = np.random.default_rng(0)
    n = 4000
    audio, video = torch.ones(n, 10), torch.full((n, 1, 2, 2, 3), 7, dtype=torch.uint8)
    has_a = torch.ones(n, dtype=torch.bool)
    has_v = torch.ones(n, dtype=torch.bool)
    has_v[:1000] = False  # audio-only clips are never dropped further
    out = drop_modalities(audio, video, has_a, has_v, 0.3, rng)
    lost_a, lost_v = ~out.has_audio, has_v & ~out.has_video
    assert not (lost_a & lost_v).any() and not lost_a[:1000].any()  # never both, never the only one
    assert out.dropped == int(lost_a.sum() + lost_v.sum())
    assert abs(out.dropped / 3000 - 0.3) < 0.04 and abs(int(lost_a.sum()) / out.dropped - 0.5) < 0.08
    assert torch.equal(out.audio[lost_a], torch.zeros_like(out.audio[lost_a])) and (out.audio[~lost_a] == 1).all()
    assert (out.video[lost_v] == 0).all() and (out.video[~lost_v] == 7).all() and out.video.dtype == torch.uint8


def test_drop_modalities_at_zero_is_the_identity_and_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    audio, flags = torch.randn(4, 3), torch.ones(4, dtype=torch.bool)
    out = drop_modalities(audio, None, flags, flags, 0.0, rng)
    assert out.audio is audio and out.dropped == 0 and rng.bit_generator.state == state


def test_horizontal_flip_only_when_configured():
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    frames[:, :, :4] = 255  # a bright left edge
    never = VideoAugmentConfig(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), color_prob=0.0)
    always = VideoAugmentConfig(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), color_prob=0.0, hflip_prob=1.0)
    plain = augment_video(frames, 16, np.random.default_rng(0), never)
    flipped = augment_video(frames, 16, np.random.default_rng(0), always)
    assert plain[:, :, 0].float().mean() > 200 and plain[:, :, -1].float().mean() < 50
    assert torch.equal(flipped, plain.flip(2))
