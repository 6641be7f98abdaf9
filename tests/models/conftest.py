"""Fixtures for the model tests: tiny models and deterministic inputs.

Tests share 2 CPU cores with the rest of the suite (pytest -n 2), so torch uses one
intra-op thread per worker; paper-size models are only ever built on the meta device.
"""

from __future__ import annotations

import math

import pytest
import torch

from training.models import create_model

torch.set_num_threads(1)


def _make_audio(config, batch: int, seed: int) -> torch.Tensor:
    """Mono PCM in [-1, 1]: a per-example tone plus noise, so examples differ."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(config.clip_samples, dtype=torch.float32) / config.sample_rate
    freqs = 200.0 + 1800.0 * torch.rand(batch, 1, generator=g)
    tone = 0.4 * torch.sin(2 * math.pi * freqs * t)
    return (tone + 0.1 * torch.randn(batch, config.clip_samples, generator=g)).clamp(-1, 1)


def _make_video(config, batch: int, seed: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, config.num_frames, config.image_size, config.image_size, 3)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(dtype)


@pytest.fixture
def tiny_model():
    """Factory: tiny preset in eval mode with fixed weights, e.g. tiny_model("zorro_tiny", fusion_mask=...)."""

    def build(name: str = "zorro_tiny", **overrides):
        torch.manual_seed(0)
        return create_model(name, **overrides).eval()

    return build


@pytest.fixture
def make_audio():
    """make_audio(config, batch, seed) -> float32 [batch, config.clip_samples] in [-1, 1]."""
    return _make_audio


@pytest.fixture
def make_video():
    """make_video(config, batch, seed, dtype=torch.uint8) -> [batch, T, H, W, 3] in 0..255."""
    return _make_video
