"""A torch Dataset of audio-visual clips, decoded with `avserve.media` (the gateway's decoder, so
training and serving see identical inputs).

Each item is a dict:
  audio      float32 [clip_samples]             mono PCM at the model's sample rate (zeros if absent)
  video      uint8   [num_frames, S, S, 3]      RGB frames at the model's image size (zeros if absent)
  target     int64 class index (single-label) or float32 multi-hot [C] (multi-label)
  has_audio  bool    the clip has an audio track
  has_video  bool    the clip has a video track
  index      int64   position in the dataset
  text       int64   [max_captions, max_words]  the clip's captions as word ids, 0 = padding
  text_mask  bool    [max_captions]             which rows of `text` hold a caption
  has_text   bool    the clip has at least one caption
(`audio` / `video` are only present if the model consumes that modality; `text`, `text_mask`
and `has_text` only when the dataset is given a `text=TextSpec(...)`, i.e. when the objective
reads captions (`Objective.text_input`). Captions come from the manifest's `captions` column
and are encoded by `training.data.text.encode_captions`; a clip without captions gets zeros,
an all-False mask and has_text False, as VATT feeds zeros to its text tower and leaves such
clips out of MIL-NCE.)

Train mode: a random `clip_seconds` window inside the clip's [start, end] span, video
random-resized-crop + colour jitter (`training.augment`, Zorro App. B). Eval mode: the centred
window, centre square crop. Randomness is derived from (seed, epoch, index), so an item is the
same whatever the worker count and after a resume; the sampler passes (index, epoch) pairs.

Clips lacking a modality the model consumes: `missing="zero"` keeps them (zero-filled, flagged,
so the trainer only computes the losses of heads that exist for them; Zorro A3.1), `"skip"`
drops them. Clips with none of the model's modalities are always dropped. A decoding failure
raises `SampleError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from avserve.views import temporal_starts
from training.augment import VideoAugmentConfig, augment_video, eval_video
from training.data.text import TextSpec, encode_captions

MODALITIES = ("audio", "video")


class SampleError(RuntimeError):
    """A clip could not be decoded; the message names the file."""


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects (from `model.config`)."""

    sample_rate: int
    clip_seconds: float
    num_frames: int
    image_size: int

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @classmethod
    def from_config(cls, config: Any) -> "Preprocessing":
        size = config.image_size
        if isinstance(size, (tuple, list)):
            size = int(size[0])
        return cls(int(config.sample_rate), float(config.clip_seconds), int(config.num_frames), int(size))


def _record_modalities(record) -> set[str] | None:
    mods = getattr(record, "modalities", None)
    if mods is None or mods == "":
        return None
    return set(str(mods).split("+"))


class AVClipDataset(Dataset):
    def __init__(
        self,
        records,
        classes: Sequence[str],
        multilabel: bool,
        preprocessing: Preprocessing,
        *,
        train: bool,
        modalities: Sequence[str] = MODALITIES,
        missing: str = "zero",
        seed: int = 0,
        video_augment: VideoAugmentConfig | None = VideoAugmentConfig(),
        train_decode_scale: float = 1.15,
        frame_sampling: str = "exact",
        text: TextSpec | None = None,
    ):
        if missing not in ("zero", "skip"):
            raise ValueError(f"missing must be 'zero' or 'skip', not {missing!r}")
        self.classes = list(classes)
        self.class_to_index = {c: i for i, c in enumerate(self.classes)}
        self.multilabel = bool(multilabel)
        self.pre = preprocessing
        self.train = bool(train)
        # How evaluation picks frames, as the gateway's `sampling` parameter (avserve.media.video):
        # "fast" scores what a server with fast sampling answers. Training always decodes exactly.
        self.frame_sampling = frame_sampling
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        self.missing = missing
        self.seed = int(seed)
        self.text = text  # None: items carry no text
        self.video_augment = video_augment
        # frames are decoded a little larger than the model's size before the random crop
        self.train_decode_size = int(round(preprocessing.image_size * train_decode_scale))
        self._probe_cache: dict[str, Any] = {}

        kept, dropped = [], 0
        for record in list(records):
            present = self._presence(record)
            needed = set(self.modalities)
            if not (present & needed) or (missing == "skip" and not needed <= present):
                dropped += 1
                continue
            kept.append(record)
        self.records = kept
        self.num_dropped = dropped

    # -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def _probe(self, path: str):
        info = self._probe_cache.get(path)
        if info is None:
            from avserve.media import MediaError, probe

            try:
                info = probe(path)
            except MediaError as error:
                raise SampleError(f"cannot read {path}: {error}") from error
            except Exception as error:  # noqa: BLE001 - any decoder failure names the file
                raise SampleError(f"cannot read {path}: {type(error).__name__}: {error}") from error
            self._probe_cache[path] = info
        return info

    def _presence(self, record) -> set[str]:
        mods = _record_modalities(record)
        if mods is not None:
            return mods
        info = self._probe(str(record.path))
        return {m for m, ok in (("audio", info.has_audio), ("video", info.has_video)) if ok}

    def target_of(self, record) -> torch.Tensor:
        try:
            idx = [self.class_to_index[label] for label in record.labels]
        except KeyError as error:
            raise SampleError(f"{record.path}: label {error.args[0]!r} is not one of the dataset's classes") from None
        if self.multilabel:
            hot = torch.zeros(len(self.classes), dtype=torch.float32)
            hot[idx] = 1.0
            return hot
        if len(idx) != 1:
            raise SampleError(f"{record.path}: single-label dataset but the clip has {len(idx)} labels")
        return torch.tensor(idx[0], dtype=torch.int64)

    def span(self, record) -> tuple[float, float]:
        """[start, end] of the record (`ClipRecord.span`), probing the file only for a blank end."""
        duration = self._probe(str(record.path)).duration if record.end is None else None
        return record.span(duration, self.pre.clip_seconds)

    def _window(self, record, rng: np.random.Generator) -> float:
        """Start time of the clip_seconds window: random in the span when training, else centred."""
        start, end = self.span(record)
        slack = end - start - self.pre.clip_seconds
        if self.train and slack > 0:
            return start + float(rng.uniform(0.0, slack))
        return temporal_starts(start, end, self.pre.clip_seconds, 1)[0]

    def __getitem__(self, key) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):
            index, epoch = int(key[0]), int(key[1])
        else:
            index, epoch = int(key), 0
        record = self.records[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        path = str(record.path)
        present = self._presence(record)
        item: dict[str, Any] = {"index": torch.tensor(index, dtype=torch.int64)}
        try:
            t0 = self._window(record, rng)
            if "audio" in self.modalities:
                if "audio" in present:
                    item["audio"] = self._audio(path, t0)
                else:
                    item["audio"] = torch.zeros(self.pre.clip_samples, dtype=torch.float32)
            if "video" in self.modalities:
                if "video" in present:
                    item["video"] = self._video(path, t0, rng)
                else:
                    s = self.pre.image_size
                    item["video"] = torch.zeros(self.pre.num_frames, s, s, 3, dtype=torch.uint8)
        except SampleError:
            raise
        except Exception as error:  # noqa: BLE001
            raise SampleError(f"cannot decode {path}: {type(error).__name__}: {error}") from error
        item["target"] = self.target_of(record)
        item["has_audio"] = torch.tensor("audio" in present and "audio" in self.modalities)
        item["has_video"] = torch.tensor("video" in present and "video" in self.modalities)
        if self.text is not None:
            ids, mask = encode_captions(getattr(record, "captions", ()), self.text)
            item["text"] = torch.from_numpy(ids)
            item["text_mask"] = torch.from_numpy(mask)
            item["has_text"] = torch.tensor(bool(mask.any()))
        return item

    # -------------------------------------------------------------------------------------
    def _audio(self, path: str, start: float) -> torch.Tensor:
        from avserve.media import decode_audio

        decoded = decode_audio(path, sample_rate=self.pre.sample_rate, start=start, duration=self.pre.clip_seconds)
        samples = np.asarray(decoded.samples, dtype=np.float32)
        n = self.pre.clip_samples
        if samples.shape[0] < n:
            samples = np.pad(samples, (0, n - samples.shape[0]))
        return torch.from_numpy(np.ascontiguousarray(samples[:n]))

    def _video(self, path: str, start: float, rng: np.random.Generator) -> torch.Tensor:
        from avserve.media import decode_video

        if self.train and self.video_augment is not None:
            decoded = decode_video(
                path, num_frames=self.pre.num_frames, size=self.train_decode_size, start=start, duration=self.pre.clip_seconds
            )
            return augment_video(decoded.frames, self.pre.image_size, rng, self.video_augment)
        decoded = decode_video(
            path, num_frames=self.pre.num_frames, size=self.pre.image_size, start=start, duration=self.pre.clip_seconds,
            sampling=self.frame_sampling,
        )  # fmt: skip
        return eval_video(decoded.frames, self.pre.image_size)


# -----------------------------------------------------------------------------------------------
# sampling


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, epoch) pairs: a seeded shuffle per epoch, sharded across `num_replicas`
    ranks like DistributedSampler (padded to a multiple of the world size, or truncated with
    drop_last), and able to start part-way through an epoch (`set_epoch(epoch, skip=n)` skips the
    first n items of this rank's shard; used on resume so no clip is seen twice)."""

    def __init__(self, length: int, *, shuffle: bool, seed: int = 0, num_replicas: int = 1, rank: int = 0, drop_last: bool = False):
        self.length = int(length)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.epoch = 0
        self.skip = 0
        if drop_last and self.length >= self.num_replicas:
            self.per_rank = self.length // self.num_replicas
        else:
            self.per_rank = -(-self.length // self.num_replicas)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip = int(skip)

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.num_replicas
        if total > len(order):  # pad by repeating
            order = (order * (total // max(1, len(order)) + 1))[:total]
        order = order[:total]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self):
        for index in self.indices()[self.skip :]:
            yield (index, self.epoch)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return torch.utils.data.default_collate(items)
