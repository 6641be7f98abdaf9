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
