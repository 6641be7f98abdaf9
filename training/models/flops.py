"""Compute per serving route: the FLOPs of one clip through each servable input set.

Counted with torch's FlopCounterMode (2 per multiply-accumulate) on a meta-device copy of the
architecture: no memory for weights, and on the meta device attention is decomposed into the
matmuls the counter sees (on the CPU it runs as one fused SDPA kernel the counter skips).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from avserve.contract import AUDIO, ROUTE_SUFFIXES, VIDEO

from .base import AVClassifier


def route_flops(model: AVClassifier) -> dict[str, float]:
    """{route suffix ("av", "audio", "video"): FLOPs of one clip} for every servable input set."""
    cfg = model.config
    with torch.device("meta"):
        meta = type(model)(cfg).eval()
    inputs = {
        AUDIO: torch.empty(1, cfg.clip_samples, device="meta"),
        VIDEO: torch.empty(1, cfg.num_frames, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8, device="meta"),
    }
    flops = {}
    for modalities in model.servable_modalities:
        counter = FlopCounterMode(display=False)
        with counter:
            meta(**{m: inputs[m] for m in modalities})
        flops[ROUTE_SUFFIXES[frozenset(modalities)]] = float(counter.get_total_flops())
    return flops


ATTENTION_OPS = ("bmm", "baddbmm", "scaled_dot_product")


def dense_and_attention_flops(run) -> tuple[float, float]:
    """(FLOPs of dense layers and convolutions, FLOPs of attention's QK^T and AV) of `run()`,
    both at 2 per multiply-accumulate, counted on the meta device (where attention decomposes into
    batched matmuls; no linear layer here is a bmm, so the split is by op)."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    counts = counter.get_flop_counts().get("Global", {})
    attention = sum(float(v) for op, v in counts.items() if any(name in str(op) for name in ATTENTION_OPS))
    return float(counter.get_total_flops()) - attention, attention
