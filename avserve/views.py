"""Multi-view scoring: one clip seen as several views, each scored, their logits averaged.

The papers evaluate a clip on several views and average the per-view **logits** (MBT Sec. 4.2:
"uniformly sample multiple temporal crops from the clip and average per-view logits", 4 views;
VATT Sec. 4: "4 clips uniformly covering 10 s x 3 crops = 12 views, average the logits").
`avserve evaluate --views T,S` does that (training/data/views.py builds the views), and the
gateway scores a span longer than the model's window (`?duration=`) as its consecutive windows
with the same averaging (avserve/gateway/classifier.py), so a served answer and an evaluation
number are computed alike.

Torch-free: the gateway imports it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ViewGrid:
    """`temporal` windows spread over the clip x `spatial` crops of each: `temporal * spatial` views."""

    temporal: int = 1
    spatial: int = 1

    def __post_init__(self) -> None:
        if self.temporal < 1 or self.spatial < 1:
            raise ValueError(f"views need at least one temporal window and one crop, not {self.temporal},{self.spatial}")
        if self.spatial not in SPATIAL_CROPS:
            raise ValueError(f"spatial crops must be one of {', '.join(map(str, SPATIAL_CROPS))}, not {self.spatial}")

    @property
    def count(self) -> int:
        return self.temporal * self.spatial

    @classmethod
    def parse(cls, text: str) -> ViewGrid:
        """"T,S" (also "TxS"), or "T" for temporal windows with the centre crop: "4,3" is VATT's 12 views."""
        parts = [part for part in re.split(r"[,x]", text.strip().lower()) if part.strip()]
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2):
            raise ValueError(f"views must be 'T,S' (temporal windows, spatial crops), e.g. '4,3', not {text!r}")
        return cls(*numbers)

    def __str__(self) -> str:
        return f"{self.temporal}x{self.spatial}"


# Spatial crop counts with a defined layout: the centre square, or SlowFast's three crops along
# the longer side (Feichtenhofer et al. 2019, which VATT and Zorro's evaluation follow).
SPATIAL_CROPS = (1, 3)


def temporal_starts(start: float, end: float, window: float, count: int) -> list[float]:
    """Start times of `count` windows of `window` seconds spread uniformly over `[start, end]`.

    One window is the centred one (what single-view evaluation scores); several run from the
    span's start to its end, evenly spaced. A span no longer than the window gives its start
    every time (the clip is padded, as in training)."""
    slack = float(end) - float(start) - float(window)
    if slack <= 0:
        return [float(start)] * count
    if count == 1:
        return [float(start) + slack / 2.0]
    return [float(start) + slack * i / (count - 1) for i in range(count)]


def spatial_offsets(length: int, size: int, count: int) -> list[int]:
    """Offsets of `count` crops of `size` pixels along an axis of `length` pixels: one is centred,
    three are the first, the centred and the last."""
    if size > length:
        raise ValueError(f"a crop of {size} px does not fit in {length} px")
    if count not in SPATIAL_CROPS:
        raise ValueError(f"spatial crops must be one of {', '.join(map(str, SPATIAL_CROPS))}, not {count}")
    centre = (length - size) // 2
    return [centre] if count == 1 else [0, centre, length - size]


def average_logits(views: Sequence[np.ndarray] | np.ndarray, axis: int = 0) -> np.ndarray:
    """The mean of per-view logits along `axis` (float64)."""
    return np.mean(np.asarray(views, dtype=np.float64), axis=axis)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def view_probabilities(views: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Class probabilities of a clip from its views' logits [V, C]: softmax of their mean."""
    return softmax(average_logits(views))
