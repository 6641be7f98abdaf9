"""Training-time augmentations that live outside the model.

* Video (Zorro App. B): random-resized crop covering 30-100 % of the frame with aspect ratio in
  (0.9, 1.33), resized back to the model's frame size; colour jitter with probability 0.8
  (brightness max delta 32/255, saturation and contrast in (0.6, 1.4), hue max delta 0.2).
  One set of parameters per clip, shared by all of its frames. Used by the dataset.
* Mixup (Zorro A3.3): one lambda ~ Beta(alpha, alpha) per batch, shared by both modalities and by
  every head's target. Applied in the trainer on float audio and float video (0..255).
  Modality mixup (MBT Sec. 4.2): one lambda per modality; the target is mixed with their mean
  (the paper does not say how the label is mixed; the mean is our choice).

SpecAugment and frequency jitter act on the spectrogram, which is computed inside the model, so
they are switched on through the model config (active in train mode only), not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class VideoAugmentConfig:
    crop_area: tuple[float, float] = (0.3, 1.0)
    crop_aspect: tuple[float, float] = (0.9, 1.33)
    color_prob: float = 0.8
    brightness: float = 32.0 / 255.0
    saturation: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.6, 1.4)
    hue: float = 0.2
    # MBT (after ViViT) flips; Zorro App. B does not. 0 draws no random number, so enabling it
    # for one model leaves every other model's augmentation stream unchanged.
    hflip_prob: float = 0.0


def random_resized_crop_box(
    height: int, width: int, rng: np.random.Generator, area=(0.3, 1.0), aspect=(0.9, 1.33), attempts: int = 10
) -> tuple[int, int, int, int]:
    """A crop box (top, left, h, w) covering a random `area` fraction with aspect w/h in `aspect`.

    Aspect is sampled log-uniformly (as torchvision / TF's sample_distorted_bounding_box do).
    Falls back to the largest centred box with a valid aspect ratio after `attempts` misses.
    """
    total = height * width
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(attempts):
        target = total * rng.uniform(area[0], area[1])
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    ratio = width / height
    if ratio < aspect[0]:
        w, h = width, int(round(width / aspect[0]))
    elif ratio > aspect[1]:
        h, w = height, int(round(height * aspect[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int, crop_fraction: float = 1.0) -> tuple[int, int, int, int]:
    """The centred square crop (largest square, scaled by crop_fraction)."""
    side = int(round(min(height, width) * crop_fraction))
    return (height - side) // 2, (width - side) // 2, side, side


def crop_and_resize(frames: torch.Tensor, box: tuple[int, int, int, int], size: int | tuple[int, int]) -> torch.Tensor:
    """frames float [T, H, W, 3] -> cropped and bilinearly resized float [T, size, size, 3]."""
    top, left, h, w = box
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    crop = frames[:, top : top + h, left : left + w, :]
    if crop.shape[1:3] == out_hw:
        return crop.contiguous()
    x = crop.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).contiguous()


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(-1)
    maxc, _ = rgb.max(-1)
    minc, _ = rgb.min(-1)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v], -1)


# Which of (v, q, p, t) each of r, g, b takes in the six hue sectors (the standard HSV -> RGB cases).
_HSV_SECTOR_CHANNELS = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(-1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # one gather instead of a torch.where per sector: the same values, a quarter of the time
    return torch.gather(torch.stack([v, q, p, t], -1), -1, _HSV_SECTOR_CHANNELS.to(hsv.device)[i])


def adjust_brightness(x: torch.Tensor, delta: float) -> torch.Tensor:
    """x in [0, 1]; adds delta (TF's adjust_brightness)."""
    return x + delta


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    gray = (x * x.new_tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    return gray + factor * (x - gray)


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """TF's adjust_contrast: per frame and channel, (x - mean) * factor + mean."""
    mean = x.mean(dim=(-3, -2), keepdim=True)
    return mean + factor * (x - mean)


def adjust_hue(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Rotates hue by delta (a fraction of the colour wheel, as TF's adjust_hue)."""
    hsv = _rgb_to_hsv(x.clamp(0.0, 1.0))
    hsv = torch.stack([(hsv[..., 0] + delta) % 1.0, hsv[..., 1], hsv[..., 2]], -1)
    return _hsv_to_rgb(hsv)


def color_jitter(frames01: torch.Tensor, rng: np.random.Generator, cfg: VideoAugmentConfig = VideoAugmentConfig()) -> torch.Tensor:
    """frames in [0, 1]; with probability cfg.color_prob: brightness, saturation, hue, contrast
    (DMVR's fixed order), then clip to [0, 1]. Returns the (possibly unchanged) frames."""
    if rng.uniform() >= cfg.color_prob:
        return frames01
    x = adjust_brightness(frames01, float(rng.uniform(-cfg.brightness, cfg.brightness)))
    x = adjust_saturation(x, float(rng.uniform(*cfg.saturation)))
    x = adjust_hue(x, float(rng.uniform(-cfg.hue, cfg.hue)))
    x = adjust_contrast(x, float(rng.uniform(*cfg.contrast)))
    return x.clamp(0.0, 1.0)


def augment_video(
    frames: np.ndarray | torch.Tensor, size: int, rng: np.random.Generator, cfg: VideoAugmentConfig = VideoAugmentConfig()
) -> torch.Tensor:
    """Train-time video augmentation: uint8 [T, H, W, 3] -> uint8 [T, size, size, 3]."""
    x = torch.as_tensor(np.asarray(frames)).float()
    box = random_resized_crop_box(x.shape[1], x.shape[2], rng, cfg.crop_area, cfg.crop_aspect)
    x = crop_and_resize(x, box, size) / 255.0
    if cfg.hflip_prob > 0 and rng.uniform() < cfg.hflip_prob:
        x = x.flip(2)  # [T, H, W, 3]: mirror the width axis
    x = color_jitter(x, rng, cfg)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def eval_video(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Eval-time video preprocessing: centre square crop, resize to size. uint8 in and out."""
    x = torch.as_tensor(np.asarray(frames))
    if x.shape[1] == size and x.shape[2] == size:
        return x.to(torch.uint8).contiguous()
    box = center_crop_box(x.shape[1], x.shape[2])
    y = crop_and_resize(x.float(), box, size)
    return y.round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------
# mixup


@dataclass
class MixupResult:
    audio: torch.Tensor | None
    video: torch.Tensor | None
    target: torch.Tensor  # soft targets [B, C]
    lam: float  # the target's lambda (= the mean of lam_audio and lam_video under modality mixup)
    perm: torch.Tensor
    has_audio: torch.Tensor | None = None
    has_video: torch.Tensor | None = None


def sample_mixup_lambda(alpha: float, rng: np.random.Generator | None = None) -> float:
    """lambda ~ Beta(alpha, alpha); alpha <= 0 disables mixup (lambda = 1)."""
    if alpha <= 0:
        return 1.0
    rng = rng if rng is not None else np.random.default_rng()
    return float(rng.beta(alpha, alpha))


def mixup(
    audio: torch.Tensor | None,
    video: torch.Tensor | None,
    target: torch.Tensor,
    alpha: float = 0.3,
    rng: np.random.Generator | None = None,
    lam: float | None = None,
    has_audio: torch.Tensor | None = None,
    has_video: torch.Tensor | None = None,
    per_modality: bool = False,
) -> MixupResult:
    """Mixes each example with another of the batch (a random permutation) using ONE lambda for
    audio, video and the target (Zorro: "a single mixup value from Beta(0.3, 0.3)"), or, with
    `per_modality` (MBT's modality mixup), one lambda for audio, another for video, and their
    mean for the target.

    `target` is soft [B, C] (one-hot / multi-hot / smoothed). Video may be uint8; it is returned as
    float 0..255. Presence flags of a mixed example are the AND of both sources (a zero-filled
    modality stays flagged missing if either source lacked it).
    """
    rng = rng if rng is not None else np.random.default_rng()
    batch = target.shape[0]
    if lam is None:
        lam = sample_mixup_lambda(alpha, rng)
    lam_audio = lam_video = lam
    if per_modality:
        lam_video = sample_mixup_lambda(alpha, rng)
        lam = 0.5 * (lam_audio + lam_video)
    perm = torch.as_tensor(rng.permutation(batch), device=target.device)

    def mix(x, weight):
        if x is None:
            return None
        x = x.float()
        return weight * x + (1.0 - weight) * x[perm]

    out_a = has_audio & has_audio[perm] if has_audio is not None else None
    out_v = has_video & has_video[perm] if has_video is not None else None
    return MixupResult(mix(audio, lam_audio), mix(video, lam_video), mix(target, lam), float(lam), perm, out_a, out_v)


# --------------------------------------------------------------------------------------------
# modality dropout


@dataclass
class ModalityDropout:
    audio: torch.Tensor | None
    video: torch.Tensor | None
    has_audio: torch.Tensor
    has_video: torch.Tensor
    dropped: int  # clips that lost a modality


def drop_modalities(
    audio: torch.Tensor | None,
    video: torch.Tensor | None,
    has_audio: torch.Tensor,
    has_video: torch.Tensor,
    p: float,
    rng: np.random.Generator,
) -> ModalityDropout:
    """With probability p, an audio+video clip loses its audio or its video (even odds): the
    input becomes zeros and its presence flag False, as for a clip that never had it.

    Not in the papers. It teaches a model without modality-pure outputs (MBT) to answer from one
    modality, so its unimodal graphs serve a function it was trained for (training/models/mbt.py).
    p = 0 draws no random numbers, so it leaves other runs' random streams unchanged.
    """
    if p <= 0:
        return ModalityDropout(audio, video, has_audio, has_video, 0)
    batch = has_audio.shape[0]
    drop = torch.from_numpy(rng.random(batch) < p) & has_audio.cpu() & has_video.cpu()
    drop_audio_side = torch.from_numpy(rng.random(batch) < 0.5)
    lose_audio, lose_video = drop & drop_audio_side, drop & ~drop_audio_side

    def zero(x: torch.Tensor | None, lose: torch.Tensor) -> torch.Tensor | None:
        if x is None or not lose.any():
            return x
        keep = ~lose.to(x.device).reshape(-1, *([1] * (x.dim() - 1)))
        return x * keep.to(x.dtype)

    return ModalityDropout(
        zero(audio, lose_audio),
        zero(video, lose_video),
        has_audio & ~lose_audio.to(has_audio.device),
        has_video & ~lose_video.to(has_video.device),
        int(drop.sum()),
    )
