"""`CachedClipDataset`: AVClipDataset's items read from a data cache (training/data/cache.py)
instead of decoded.

It is an AVClipDataset over the cache's resolved records (start, end and modalities filled in at
cache time), so the window rule, the (seed, epoch, index) generator, targets, flags, captions and
`augment_video` are AVClipDataset's own; only the two decoding steps differ:

  train  audio: the span's samples from the window start; video: for each of the window's frame
         times, the nearest frame of the span's grid (decoded at the train decode size), then
         the same random-resized crop + colour jitter
  eval   the stored centred window (decoded exactly as AVClipDataset's eval mode decodes it)
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
import torch

from training.augment import augment_video
from training.data.cache import CacheError, DataCache
from training.data.dataset import AVClipDataset, Preprocessing, SampleError


class CachedClipDataset(AVClipDataset):
    def __init__(self, cache: DataCache, records: Sequence, classes: Sequence[str], multilabel: bool,
                 preprocessing: Preprocessing, *, train: bool, **options: Any):  # fmt: skip
        if options.get("frame_sampling", "exact") != "exact":
            raise CacheError(
                f"{cache.directory} holds exactly sampled eval frames; frame_sampling {options['frame_sampling']!r} needs the raw files"
            )
        super().__init__(records, classes, multilabel, preprocessing, train=train, **options)
        cache.check_preprocessing({**asdict(preprocessing), "train_decode_size": self.train_decode_size}, "the model")
        self.cache = cache
        self._positions = [cache.position_of(record) for record in self.records]
        self._position: int | None = None  # the cache position of the item being read

    def __getitem__(self, key) -> dict[str, Any]:
        # AVClipDataset's __getitem__ asks _audio/_video for a path; the item's cache entry is
        # looked up here, once, by its index (items are read one at a time per process).
        index = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        self._position = self._positions[index]
        try:
            return super().__getitem__(key)
        finally:
            self._position = None

    def _offset(self, start: float) -> float:
        """Seconds from the cached span's start to the window's."""
        return start - float(self.cache.records[self._position].start or 0.0)

    def _audio(self, path: str, start: float) -> torch.Tensor:
        if not self.train:
            return torch.from_numpy(self._read("eval_audio"))
        span = self._read("span_audio")
        first = int(round(self._offset(start) * self.pre.sample_rate))
        samples = span[first : first + self.pre.clip_samples]
        if samples.shape[0] < self.pre.clip_samples:
            samples = np.pad(samples, (0, self.pre.clip_samples - samples.shape[0]))
        return torch.from_numpy(np.ascontiguousarray(samples))

    def _video(self, path: str, start: float, rng: np.random.Generator) -> torch.Tensor:
        if not self.train:
            return torch.from_numpy(self._read("eval_video"))
        if self.video_augment is None:
            raise SampleError(f"{path}: a cache holds train frames for augmentation; training without it reads the raw files")
        step = self.pre.clip_seconds / self.pre.num_frames
        targets = start + (np.arange(self.pre.num_frames) + 0.5) * step  # the decoder's segment centres
        chosen = nearest(self.cache.grid(self._position), targets)
        return augment_video(self._read("span_video")[chosen], self.pre.image_size, rng, self.video_augment)

    def _read(self, field: str) -> np.ndarray:
        try:
            return self.cache.read(self._position, field)
        except CacheError as error:
            raise SampleError(str(error)) from None


def nearest(grid: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target time, the index of the nearest grid time (a tie: the earlier one)."""
    if len(grid) == 1:
        return np.zeros(len(targets), dtype=np.int64)
    right = np.clip(np.searchsorted(grid, targets), 1, len(grid) - 1)
    left = right - 1
    return np.where(targets - grid[left] <= grid[right] - targets, left, right)
