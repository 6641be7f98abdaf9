"""A training data cache: every clip decoded once, at training resolution, into tar shards that
training reads by index without decoding (torch-free; `avserve data cache` writes it,
`training.data.cached_dataset.CachedClipDataset` reads it).

Layout of a cache directory:

    cache.json              the index: preprocessing, source hash, classes, one entry per clip
    shard-000000.tar ...    webdataset's layout: members <key>.<field>, uncompressed

Per clip (key = its position in the cache, zero-padded):

    <key>.span_audio.npy    float32 [n]            mono PCM at the model's rate over the clip's span
    <key>.span_video.npy    uint8   [M, D, D, 3]   frames on a time grid over the span, at the train
                                                   decode size D = round(image_size * 1.15)
    <key>.eval_audio.npy    float32 [clip_samples] the centred window, as eval items decode it
    <key>.eval_video.npy    uint8   [T, S, S, 3]   the centred window's frames at image_size
    <key>.json              the resolved record (start/end/modalities filled in) and the grid times

Why tar shards with an index of member offsets: the sampler (training.data.dataset.EpochSampler)
is map-style, (index, epoch) pairs sharded per rank and resumable with a skip, so a reader needs
random access by index. cache.json records each member's byte offset, size and CRC-32, so an item
is two `pread`s from one shard file, whichever rank or worker asks, with nothing to scan or
build at start-up; the same offsets are HTTP range requests on an object store, and the shards
remain plain tar files that `webdataset.WebDataset` (or `tar tf`) reads sequentially. (webdataset
1.0's own writer writes them; its random-access `wids` module is not part of 1.0, and memory-
mapped .npy files would need one file per array or a fixed shape per clip, and do not travel to
object stores as well.)

Augmentation stays random: train items pick their random clip_seconds window inside the span at
read time with the same (seed, epoch, index) generator as AVClipDataset, slice the span's audio
at that window and take, for each of the window's frame times, the grid frame nearest to it;
random-resized crop + colour jitter then run on those frames exactly as on decoded ones. The grid
is the model's frame rate (num_frames / clip_seconds) times `frame_oversample`, aligned so that
window offsets that are multiples of its step give exactly the raw decoder's frames; other offsets
take frames at most half a grid step (num_frames=8 over 2 s: 125 ms) from the raw decoder's target
times. A span whose window has no slack (end - start <= clip_seconds) gives items identical to
AVClipDataset's. Eval items are stored separately, decoded exactly as AVClipDataset's eval mode
does, so they are equal to raw eval items.

Long spans are capped at `max_span_seconds` (default 30 s; at most the decoder's 60 s
`MediaLimits.max_decode_seconds`), keeping the centred part, so the eval window (centred) is
unchanged and train windows range over the kept part only.

A clip that fails to decode is listed in cache.json's `failed` (with the decoder's message)
and reported by the command, which exits non-zero; it is never silently left out.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from avserve.views import temporal_starts
from training.data.records import ClipRecord, RecordSet

INDEX_FILE = "cache.json"
FORMAT = "avserve-data-cache"
VERSION = 1
SHARD_PATTERN = "shard-{:06d}.tar"
TRAIN_DECODE_SCALE = 1.15  # AVClipDataset's train_decode_scale: frames decoded 15 % larger before the random crop
DEFAULT_MAX_SPAN_SECONDS = 30.0
DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB: webdataset's advice is shards of 100 MB to a few GB


class CacheError(ValueError):
    """A cache that cannot be built or used; the message names the directory or file."""


@dataclass(frozen=True)
class CacheSpec:
    """What the cached arrays are decoded for. The first five must match the model's
    preprocessing (training.data.dataset.Preprocessing) for a trainer to use the cache."""

    sample_rate: int
    clip_seconds: float
    num_frames: int
    image_size: int
    train_decode_size: int
    frame_oversample: int = 1
    max_span_seconds: float = DEFAULT_MAX_SPAN_SECONDS

    MATCHED = ("sample_rate", "clip_seconds", "num_frames", "image_size", "train_decode_size")

    @classmethod
    def for_model(
        cls, sample_rate: int, clip_seconds: float, num_frames: int, image_size: int, *,
        frame_oversample: int = 1, max_span_seconds: float = DEFAULT_MAX_SPAN_SECONDS,
    ) -> "CacheSpec":  # fmt: skip
        return cls(
            int(sample_rate), float(clip_seconds), int(num_frames), int(image_size),
            int(round(image_size * TRAIN_DECODE_SCALE)), int(frame_oversample), float(max_span_seconds),
        )  # fmt: skip

    def __post_init__(self) -> None:
        from avserve.media import DEFAULT_LIMITS

        if self.sample_rate < 1 or self.num_frames < 1 or self.image_size < 1 or not self.clip_seconds > 0:
            raise CacheError(f"bad preprocessing: {self.describe()}")
        if self.frame_oversample < 1:
            raise CacheError(f"frame_oversample must be >= 1, not {self.frame_oversample}")
        if not self.clip_seconds <= self.max_span_seconds <= DEFAULT_LIMITS.max_decode_seconds:
            raise CacheError(
                f"max_span_seconds must be between clip_seconds ({self.clip_seconds:g}) and the decoder's limit "
                f"({DEFAULT_LIMITS.max_decode_seconds:g} s), not {self.max_span_seconds:g}"
            )

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def grid_step(self) -> float:
        """Seconds between the span's cached frames."""
        return self.clip_seconds / (self.num_frames * self.frame_oversample)

    def describe(self, names: Sequence[str] | None = None) -> str:
        return _describe(asdict(self), names or [f.name for f in fields(self)])


def _describe(values: Mapping[str, Any], names: Sequence[str]) -> str:
    return ", ".join(f"{name} {values[name]:g}" for name in names)


# ------------------------------------------------------------------------------------------------
# decoding one clip (runs in the worker processes)


@dataclass
class DecodedClip:
    record: ClipRecord  # start, end and modalities resolved
    arrays: dict[str, np.ndarray]
    # span_video's frame times, first + i * step (the decoder's segment centres are evenly spaced);
    # three numbers rather than a list keep cache.json small for datasets of 100k clips
    grid: dict[str, float]


def resolve_span(record: ClipRecord, duration: float | None, spec: CacheSpec) -> tuple[float, float]:
    """[start, end] of the clip's span as AVClipDataset's window rule sees it, capped at
    max_span_seconds around its centre."""
    start, end = record.span(duration, spec.clip_seconds)
    excess = end - start - spec.max_span_seconds
    if excess > 0:
        start, end = start + excess / 2.0, end - excess / 2.0
    return start, end


def _fit(samples: np.ndarray, n: int) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.shape[0] < n:
        samples = np.pad(samples, (0, n - samples.shape[0]))
    return np.ascontiguousarray(samples[:n])


def decode_clip(record: ClipRecord, spec: CacheSpec) -> DecodedClip:
    """Decode one clip's span and eval window; raises MediaError (or any decoder error)."""
    from dataclasses import replace

    from avserve.media import DEFAULT_LIMITS, decode_audio, decode_video, probe

    path = str(record.path)
    info = probe(path)
    present = [m for m, ok in (("audio", info.has_audio), ("video", info.has_video)) if ok]
    if record.modalities:  # AVClipDataset trusts the manifest, and would fail decoding a missing track
        declared = record.modalities.split("+")
        if not set(declared) <= set(present):
            raise ValueError(f"the manifest says {record.modalities}, but the file has {'+'.join(present) or 'no stream'}")
        present = [m for m in present if m in declared]
    start, end = resolve_span(record, info.duration, spec)
    eval_start = temporal_starts(start, end, spec.clip_seconds, 1)[0]  # AVClipDataset's eval window
    arrays: dict[str, np.ndarray] = {}
    grid: dict[str, float] = {}
    # the grid covers every window the train rule can draw (a short span's one window included)
    span_seconds = max(end - start, spec.clip_seconds)
    if "audio" in present:
        n = int(round(span_seconds * spec.sample_rate))
        span = decode_audio(path, sample_rate=spec.sample_rate, start=start, duration=span_seconds)
        arrays["span_audio"] = _fit(span.samples, n)
        window = decode_audio(path, sample_rate=spec.sample_rate, start=eval_start, duration=spec.clip_seconds)
        arrays["eval_audio"] = _fit(window.samples, spec.clip_samples)
    if "video" in present:
        count = max(1, int(round(span_seconds / spec.grid_step)))
        duration = min(count * spec.grid_step, DEFAULT_LIMITS.max_decode_seconds)  # rounding must not pass the limit
        span = decode_video(path, num_frames=count, size=spec.train_decode_size, start=start, duration=duration)
        arrays["span_video"] = np.ascontiguousarray(span.frames)
        times = span.targets
        grid = {"first": float(times[0]), "step": float((times[-1] - times[0]) / max(1, len(times) - 1)), "count": len(times)}
        window = decode_video(path, num_frames=spec.num_frames, size=spec.image_size, start=eval_start, duration=spec.clip_seconds)
        arrays["eval_video"] = np.ascontiguousarray(window.frames)
    resolved = replace(record, start=start, end=end, modalities="+".join(present))
    return DecodedClip(resolved, arrays, grid)


def _decode_job(job: tuple[int, ClipRecord, CacheSpec]) -> tuple[int, DecodedClip | None, str | None]:
    """Worker entry: (position, decoded clip or None, error message or None)."""
    position, record, spec = job
    try:
        return position, decode_clip(record, spec), None
    except Exception as error:  # noqa: BLE001 - any decoder failure is reported with its file
        return position, None, f"{type(error).__name__}: {error}"


# ------------------------------------------------------------------------------------------------
# writing


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def record_to_dict(record: ClipRecord, root: Path | None = None) -> dict[str, Any]:
    return {
        "path": str(record.path),
        "labels": list(record.labels),
        "split": record.split,
        "start": record.start,
        "end": record.end,
        "modalities": record.modalities,
        "captions": list(record.captions),
        "extra": dict(record.extra),
    }


def record_from_dict(d: dict[str, Any]) -> ClipRecord:
    return ClipRecord(
        path=Path(d["path"]), labels=tuple(d["labels"]), split=d.get("split"), start=d.get("start"), end=d.get("end"),
        modalities=d.get("modalities"), captions=tuple(d.get("captions") or ()), extra=dict(d.get("extra") or {}),
    )  # fmt: skip


def records_digest(records: Iterable[ClipRecord]) -> str:
    """sha256 of the source records (path, labels, split, window, modalities, captions), whatever
    the dataset's layout (a manifest CSV or class folders)."""
    canonical = json.dumps([record_to_dict(r) for r in records], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class BuildResult:
    directory: Path
    clips: int
    shards: int
    bytes: int
    failed: list[dict[str, str]]


def build_cache(
    dataset: RecordSet,
    out: Path | str,
    spec: CacheSpec,
    *,
    splits: Sequence[str] | None = ("train", "val", "test"),
    workers: int = 1,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
) -> BuildResult:
    """Decode the clips of `splits` (None: every clip) of `dataset` into a cache at `out`.

    Clips are written in the dataset's order (so, unless a clip failed, a split's clip i in the
    cache is its clip i in the dataset, and (seed, epoch, index) draws the same randomness from
    either); decoding runs
    in `workers` processes. cache.json is written last: a directory without it is no cache.
    """
    import webdataset

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CacheError(f"{out} exists and is not empty; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    if splits:
        wanted = {r.split for name in splits for r in dataset.split(name).records}
        records = [r for r in dataset.records if r.split in wanted]
    else:
        records = list(dataset.records)
    if not records:
        raise CacheError(f"{dataset.source}: no clips in the splits {', '.join(splits or [])} (--splits '' caches every clip)")

    jobs = [(position, record, spec) for position, record in enumerate(records)]
    entries: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    shards: list[dict[str, Any]] = []
    writer = None
    shard_path: Path | None = None

    def close_shard() -> None:
        nonlocal writer
        if writer is None:
            return
        writer.close()
        writer = None
        shards[-1].update(bytes=shard_path.stat().st_size, sha256=_file_sha256(shard_path))
        _index_members(shard_path, entries[-shards[-1]["clips"]:])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"cache {out.name}", unit="clip", dynamic_ncols=True)
    try:
        for position, clip, error in _run_jobs(jobs, workers):
            if bar is not None:
                bar.update(1)
            record = records[position]
            if clip is None:
                failed.append({"path": str(record.path), "split": record.split, "error": error})
                continue
            payload = {field: _npy(array) for field, array in clip.arrays.items()}
            size = sum(len(b) for b in payload.values())
            if writer is None or (shards[-1]["clips"] and writer.tarstream.offset + size > shard_bytes):
                close_shard()
                shard_path = out / SHARD_PATTERN.format(len(shards))
                # mtime fixed: the same clips give the same bytes
                writer = webdataset.TarWriter(str(shard_path), mtime=0, encoder=False)
                shards.append({"name": shard_path.name, "clips": 0})
            key = f"{len(entries):08d}"
            meta = {"record": record_to_dict(clip.record), "grid": clip.grid}
            writer.write({"__key__": key, **{f"{f}.npy": b for f, b in payload.items()}, "json": json.dumps(meta).encode()})
            shards[-1]["clips"] += 1
            entries.append({
                "key": key, "shard": len(shards) - 1, **meta,
                "members": {f: {"size": len(b), "crc32": zlib.crc32(b)} for f, b in payload.items()},
            })  # fmt: skip
        close_shard()
    finally:
        if bar is not None:
            bar.close()

    manifest = dataset.source if dataset.source.is_file() else dataset.source / "manifest.csv"
    index = {
        "format": FORMAT,
        "version": VERSION,
        "preprocessing": asdict(spec),
        "source": {
            "path": str(dataset.source),
            "records_sha256": records_digest(records),
            "manifest_sha256": _file_sha256(manifest) if manifest.is_file() else None,
        },
        "classes": list(dataset.classes),
        "multilabel": bool(dataset.multilabel),
        "splits": sorted({r.split for r in records if r.split}),
        "shards": shards,
        "clips": entries,
        "failed": failed,
    }
    temporary = out / (INDEX_FILE + ".tmp")
    temporary.write_text(json.dumps(index, indent=1))
    os.replace(temporary, out / INDEX_FILE)
    total = sum(s["bytes"] for s in shards)
    return BuildResult(out, len(entries), len(shards), total, failed)


def _index_members(shard: Path, entries: list[dict[str, Any]]) -> None:
    """Fill in each member's data offset from the finished tar's headers."""
    import tarfile

    by_key = {e["key"]: e for e in entries}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, suffix = member.name.partition(".")
            field = suffix.removesuffix(".npy")
            if key in by_key and field in by_key[key]["members"]:
                slot = by_key[key]["members"][field]
                if slot["size"] != member.size:
                    raise CacheError(f"{shard}: member {member.name} has {member.size} bytes, {slot['size']} were written")
                slot["offset"] = member.offset_data
    unindexed = [f"{e['key']}.{f}" for e in entries for f, slot in e["members"].items() if "offset" not in slot]
    if unindexed:
        raise CacheError(f"{shard}: members missing from the written shard: {', '.join(unindexed[:5])}")


def _run_jobs(jobs: list, workers: int):
    """Decode results in job order, from `workers` processes (1: in this process)."""
    if workers <= 1:
        yield from map(_decode_job, jobs)
        return
    import multiprocessing

    # the platform's default start method, as torch's DataLoader workers use
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(_decode_job, jobs, chunksize=1)


# ------------------------------------------------------------------------------------------------
# reading


def is_cache(path: Path | str) -> bool:
    return (Path(path) / INDEX_FILE).is_file()


class DataCache:
    """An opened cache: its index, and random access to any clip's arrays by cache position.

    Shard files are opened on first use, in each process (DataLoader workers open their own),
    so a reader only ever opens the shards of the clips it is asked for; `touched` is the set of
    cache positions read by this process."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        try:
            index = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise CacheError(f"{self.directory} is not a data cache (no {INDEX_FILE}; build one with `avserve data cache`)") from None
        except ValueError as error:
            raise CacheError(f"{index_path}: not valid JSON ({error})") from None
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise CacheError(f"{index_path}: not a version {VERSION} {FORMAT} index")
        self.index = index
        self.spec = CacheSpec(**index["preprocessing"])
        self.entries: list[dict[str, Any]] = index["clips"]
        self.failed: list[dict[str, str]] = index.get("failed") or []
        self.records = [record_from_dict(e["record"]) for e in self.entries]
        self._position = {r: i for i, r in enumerate(self.records)}
        self._files: dict[int, int] = {}
        self._pid = os.getpid()
        self.touched: set[int] = set()

    def record_set(self) -> RecordSet:
        return RecordSet(list(self.records), list(self.index["classes"]), bool(self.index["multilabel"]), self.directory)

    def position_of(self, record: ClipRecord) -> int:
        return self._position[record]

    def check_preprocessing(self, wanted: Mapping[str, Any], what: str) -> None:
        """CacheError unless the cache was built for `wanted`'s sample_rate, clip_seconds,
        num_frames, image_size and train_decode_size."""
        differing = [name for name in CacheSpec.MATCHED if getattr(self.spec, name) != wanted[name]]
        if differing:
            raise CacheError(
                f"{self.directory} was built for {self.spec.describe(differing)}, but {what} needs "
                f"{_describe(wanted, differing)}; build a cache for it (avserve data cache --model ...)"
            )

    @property
    def opened_shards(self) -> set[int]:
        """The shards this process has opened."""
        return set(self._files)

    def _fd(self, shard: int) -> int:
        if os.getpid() != self._pid:  # a forked DataLoader worker: descriptors are its own
            self._files, self._pid = {}, os.getpid()
        fd = self._files.get(shard)
        if fd is None:
            path = self.directory / self.index["shards"][shard]["name"]
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as error:
                raise CacheError(f"cannot open {path}: {error.strerror}") from None
            self._files[shard] = fd
        return fd

    def read(self, position: int, field: str) -> np.ndarray:
        """One stored array of the clip at cache `position`, checked against its size and CRC-32."""
        entry = self.entries[position]
        member = entry["members"][field]
        shard = entry["shard"]
        data = os.pread(self._fd(shard), member["size"], member["offset"])
        self.touched.add(position)
        if len(data) != member["size"] or zlib.crc32(data) != member["crc32"]:
            name = self.index["shards"][shard]["name"]
            raise CacheError(
                f"{self.directory / name}: {entry['key']}.{field}.npy is corrupt (checksum mismatch; "
                f"clip {entry['record']['path']}); rebuild the cache"
            )
        return np.load(io.BytesIO(data), allow_pickle=False)

    def grid(self, position: int) -> np.ndarray:
        """Clip times of the clip's span_video frames."""
        grid = self.entries[position]["grid"]
        return grid["first"] + grid["step"] * np.arange(grid["count"], dtype=np.float64)

    def verify(self, progress: Callable[[Iterable], Iterable] | None = None) -> list[str]:
        """Every member's checksum and every shard's sha256: the problems found (empty if none)."""
        problems = []
        for shard in self.index["shards"]:
            path = self.directory / shard["name"]
            if not path.is_file() or _file_sha256(path) != shard["sha256"]:
                problems.append(f"{path}: missing or changed (sha256 differs from {INDEX_FILE})")
        positions = range(len(self.entries))
        for position in progress(positions) if progress else positions:
            for field in self.entries[position]["members"]:
                try:
                    self.read(position, field)
                except CacheError as error:
                    problems.append(str(error))
        return problems

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers under spawn: no descriptors
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def close(self) -> None:
        if os.getpid() == self._pid:
            for fd in self._files.values():
                os.close(fd)
        self._files = {}


def parse_size(text: str) -> int:
    """'512MB', '1GB', '100MiB', '1000000' -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    value = text.strip().upper()
    number = value.rstrip("KMGIB")
    unit = value[len(number):].strip()
    try:
        size = float(number) * units[unit]
    except (ValueError, KeyError):
        raise CacheError(f"not a size: {text!r} (e.g. 512MB, 1GB)") from None
    if not math.isfinite(size) or size < 1:
        raise CacheError(f"not a size: {text!r}")
    return int(size)
