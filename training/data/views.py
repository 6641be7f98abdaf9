"""Multi-view evaluation items: each clip as `temporal x spatial` views (avserve/views.py).

`MultiViewDataset` wraps an evaluation `AVClipDataset` (train=False). Its item is the wrapped
dataset's, with `audio` [V, clip_samples] and `video` [V, num_frames, S, S, 3] holding every
view (view `t * spatial + s` is temporal window t, crop s) and `num_views` = V:

* temporal windows of `clip_seconds` spread uniformly over the record's [start, end] span
  (`avserve.views.temporal_starts`; one window is the centred one single-view evaluation takes);
* spatial crops: one is single-view evaluation's centre square, decoded exactly as
  `AVClipDataset` decodes it; three are SlowFast's crops along the longer side of the frames
  resized so the shorter side is the model's size (left/centre/right, or top/centre/bottom).
  Audio has no spatial extent: the crops of a window share its audio.

So a 1x1 grid reproduces `AVClipDataset`'s evaluation items exactly (tested), and
`training.evaluate.collect_outputs` averages the views' logits per clip.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from avserve.views import ViewGrid, spatial_offsets, temporal_starts
from training.data.dataset import AVClipDataset, SampleError


class MultiViewDataset(Dataset):
    def __init__(self, dataset: AVClipDataset, grid: ViewGrid):
        if dataset.train:
            raise ValueError("multi-view items are for evaluation: give a dataset with train=False")
        self.dataset = dataset
        self.grid = grid

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict[str, Any]:
        index = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        data = self.dataset
        record = data.records[index]
        path = str(record.path)
        present = data._presence(record)
        item: dict[str, Any] = {
            "index": torch.tensor(index, dtype=torch.int64),
            "target": data.target_of(record),
            "has_audio": torch.tensor("audio" in present and "audio" in data.modalities),
            "has_video": torch.tensor("video" in present and "video" in data.modalities),
        }
        try:
            starts = temporal_starts(*data.span(record), data.pre.clip_seconds, self.grid.temporal)
            if "audio" in data.modalities:
                audio = [self._audio(path, start, present) for start in starts]
                item["audio"] = torch.stack([clip for clip in audio for _ in range(self.grid.spatial)])
            if "video" in data.modalities:
                item["video"] = torch.stack([crop for start in starts for crop in self._crops(path, start, present)])
        except SampleError:
            raise
        except Exception as error:  # noqa: BLE001 - any decoder failure names the file
            raise SampleError(f"cannot decode {path}: {type(error).__name__}: {error}") from error
        item["num_views"] = torch.tensor(self.grid.count, dtype=torch.int64)
        return item

    def _audio(self, path: str, start: float, present: set[str]) -> torch.Tensor:
        if "audio" not in present:
            return torch.zeros(self.dataset.pre.clip_samples, dtype=torch.float32)
        return self.dataset._audio(path, start)

    def _crops(self, path: str, start: float, present: set[str]) -> list[torch.Tensor]:
        pre = self.dataset.pre
        size = pre.image_size
        if "video" not in present:
            return [torch.zeros(pre.num_frames, size, size, 3, dtype=torch.uint8)] * self.grid.spatial
        if self.grid.spatial == 1:
            return [self.dataset._video(path, start, rng=None)]
        from avserve.media import decode_video

        source = self.dataset._probe(path).video
        height, width = source.display_height, source.display_width
        # Shorter side to the model's size, the aspect ratio kept: the crops slide along the longer side.
        if height <= width:
            shape = (size, max(size, round(size * width / height)))
        else:
            shape = (max(size, round(size * height / width)), size)
        frames = decode_video(
            path, num_frames=pre.num_frames, size=shape, start=start, duration=pre.clip_seconds,
            sampling=self.dataset.frame_sampling,
        ).frames  # fmt: skip
        frames = torch.from_numpy(frames)
        crops = []
        for offset in spatial_offsets(max(shape), size, self.grid.spatial):
            if shape[0] == size:
                crops.append(frames[:, :, offset : offset + size].contiguous())
            else:
                crops.append(frames[:, offset : offset + size].contiguous())
        return crops
