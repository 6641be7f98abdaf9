"""The training data cache (training/data/cache.py, cached_dataset.py): built from real decoded
clips of the shared synthetic set, read back against AVClipDataset's raw decoding."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avserve.cli import build_app
from training.data.cache import INDEX_FILE, CacheSpec, DataCache, build_cache
from training.data.cached_dataset import CachedClipDataset, nearest
from training.data.dataset import AVClipDataset, EpochSampler, Preprocessing, SampleError
from training.data.records import load_records
from training.trainer import TrainError, Trainer

PRE = Preprocessing(sample_rate=16000, clip_seconds=2.0, num_frames=4, image_size=64)  # zorro_tiny's
SPEC = CacheSpec.for_model(PRE.sample_rate, PRE.clip_seconds, PRE.num_frames, PRE.image_size)
ROWS = 20  # of the shared set: enough for train and val, quick to decode


def _subset_manifest(synth_dir: Path, out: Path, rows: int, broken: bool) -> Path:
    """A manifest of the shared set's first `rows` clips (absolute paths; every other one with an
    explicit [0, clip_seconds] window, i.e. no slack) plus, if `broken`, a file that is no media."""
    out.mkdir(parents=True, exist_ok=True)
    with open(synth_dir / "manifest.csv", newline="") as f:
        source = list(csv.DictReader(f))
    kept = source[:rows]
    for i, row in enumerate(kept):
        row["path"] = str(synth_dir / row["path"])
        if i % 2 == 0:
            row["start"], row["end"] = "0", str(PRE.clip_seconds)
    if broken:
        (out / "broken.mp4").write_bytes(b"not a video at all" * 100)
        kept.insert(3, {**kept[1], "path": str(out / "broken.mp4"), "split": "train"})
    shutil.copy(synth_dir / "classes.txt", out / "classes.txt")  # the set's class order
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(source[0]))
        writer.writeheader()
        writer.writerows(kept)
    return manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory, synth_dir):
    """(source records without the broken clip, the cache directory, the build result)."""
    root = tmp_path_factory.mktemp("data_cache")
    manifest = _subset_manifest(synth_dir, root / "source", ROWS, broken=True)
    records = load_records(manifest)
    # small shards, so that a rank's reads can be seen to stay in its shards; two decoding processes
    result = build_cache(records, root / "cache", SPEC, workers=2, shard_bytes=1_500_000, progress=False)
    good = records.filter(lambda r: r.path.name != "broken.mp4")
    return good, root / "cache", result


def _pair(built, split: str, train: bool, cache: DataCache | None = None):
    source, directory, _ = built
    cache = cache or DataCache(directory)
    cached = cache.record_set()
    raw = AVClipDataset(source.split(split).records, source.classes, source.multilabel, PRE, train=train, seed=5)
    mine = CachedClipDataset(cache, cached.split(split).records, cached.classes, cached.multilabel, PRE, train=train, seed=5)
    return raw, mine


def test_unreadable_clip_is_listed_not_dropped(built):
    _, directory, result = built
    assert [Path(f["path"]).name for f in result.failed] == ["broken.mp4"]
    assert result.failed[0]["error"]  # the decoder's reason
    index = json.loads((directory / INDEX_FILE).read_text())
    assert [Path(f["path"]).name for f in index["failed"]] == ["broken.mp4"]
    assert len(index["clips"]) == result.clips == ROWS
    assert result.shards > 2
    assert index["source"]["records_sha256"] and index["source"]["manifest_sha256"]


def test_train_items_are_avclipdataset_items(built):
    raw, mine = _pair(built, "train", train=True)
    assert len(raw) == len(mine) > 4
    for epoch in (0, 1):
        for index in range(len(raw)):
            a, b = raw[(index, epoch)], mine[(index, epoch)]
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            # audio too: these clips overrun the window by under 10 ms, where the raw decoder's
            # seek lands on the span's start (longer slack: within its seek accuracy, docs/data-cache.md)
            for key in ("index", "target", "has_audio", "has_video", "audio"):
                assert torch.equal(a[key], b[key]), (key, index)
            record = mine.records[index]
            if record.end - record.start <= PRE.clip_seconds:
                # no slack: the one window's frames are the raw decoder's, then the same augmentation
                assert torch.equal(a["video"], b["video"]), index


def test_train_items_are_deterministic_and_change_per_epoch(built):
    _, mine = _pair(built, "train", train=True)
    changed = 0
    for index in range(len(mine)):
        first, again, later = mine[(index, 0)], mine[(index, 0)], mine[(index, 1)]
        assert torch.equal(first["video"], again["video"]) and torch.equal(first["audio"], again["audio"])
        changed += not torch.equal(first["video"], later["video"])
    assert changed == len(mine)


def test_eval_items_equal_raw_eval_items(built):
    raw, mine = _pair(built, "val", train=False)
    assert len(raw) == len(mine) > 0
    for index in range(len(raw)):
        a, b = raw[index], mine[index]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (key, index)  # stored as decoded: exactly equal


def test_a_rank_reads_only_its_own_clips_and_shards(built):
    _, directory, _ = built
    cache = DataCache(directory)
    _, mine = _pair(built, "train", train=True, cache=cache)
    sampler = EpochSampler(len(mine), shuffle=True, seed=5, num_replicas=2, rank=1)
    sampler.set_epoch(3, skip=1)  # a resumed rank: part-way through its shard
    indices = [index for index, _ in sampler]
    for key in sampler:
        mine[key]
    positions = {mine._positions[i] for i in indices}
    assert cache.touched == positions
    shards = {cache.entries[p]["shard"] for p in positions}
    assert cache.opened_shards == shards
    assert len(shards) < len(cache.index["shards"])


def test_nearest_grid_frame():
    grid = torch.arange(8).double().numpy() * 0.25 + 0.125
    targets = grid[[0, 3, 7]] + [0.1, -0.12, 0.5]
    assert nearest(grid, targets).tolist() == [0, 3, 7]
    assert nearest(grid, grid[2:3] + 0.125).tolist() == [2]  # halfway: the earlier frame (on screen)


def test_corrupt_member_is_a_clear_error(built, tmp_path):
    _, directory, _ = built
    copy = tmp_path / "cache"
    shutil.copytree(directory, copy)
    cache = DataCache(copy)
    member = cache.entries[0]["members"]["eval_video"]
    shard = copy / cache.index["shards"][cache.entries[0]["shard"]]["name"]
    data = bytearray(shard.read_bytes())
    data[member["offset"] + member["size"] - 1] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = cache.verify()
    assert any(shard.name in p for p in problems) and any("00000000.eval_video.npy is corrupt" in p for p in problems)
    records = cache.record_set()
    dataset = CachedClipDataset(cache, records.records[:1], records.classes, records.multilabel, PRE, train=False)
    with pytest.raises(SampleError, match="00000000.eval_video.npy is corrupt"):
        dataset[0]


def test_trainer_refuses_other_preprocessing(built, tiny_train):
    _, directory, _ = built
    with pytest.raises(TrainError, match=r"built for num_frames 4, but the model needs num_frames 2"):
        Trainer(tiny_train(data=directory, overrides={"num_frames": 2}))


def test_train_and_resume_from_a_cache(built, tmp_path):
    _, directory, _ = built
    run = tmp_path / "run"
    common = ["train", "--model", "zorro_tiny", "--data", str(directory), "--out", str(run), "--steps", "3",
              "--batch-size", "4", "--max-eval-clips", "4", "--no-progress", "--lr", "1e-3"]  # fmt: skip
    # DataLoader worker processes read the cache through their own descriptors
    first = CliRunner().invoke(build_app(), [*common, "--workers", "2", "--stop-at", "2"])
    assert first.exit_code == 0, first.output
    resumed = CliRunner().invoke(build_app(), [*common, "--workers", "0", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    info = json.loads((run / "run.json").read_text())
    assert info["data"] == str(directory) and info["result"]["steps"] == 3
    assert json.loads((run / "eval.json").read_text())["last"]["split"] == "val"


def test_cache_command(synth_dir, tmp_path):
    manifest = _subset_manifest(synth_dir, tmp_path / "source", 2, broken=True)
    out = tmp_path / "cache"
    runner = CliRunner()
    result = runner.invoke(build_app(), ["data", "cache", "--data", str(manifest), "--out", str(out), "--model", "zorro_tiny", "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "broken.mp4" in result.output and "1 clip(s) could not be decoded" in result.output
    assert "wrote 2 clips in 1 shard(s)" in result.output and DataCache(out).spec == SPEC
    again = runner.invoke(build_app(), ["data", "cache", "--data", str(manifest), "--out", str(out), "--frames", "4"])
    assert again.exit_code == 2 and "missing: --sample-rate, --size, --clip-seconds" in again.output


def test_long_spans_keep_their_centre():
    from training.data.cache import resolve_span
    from training.data.records import ClipRecord

    record = ClipRecord(path=Path("x.mp4"), labels=("a",), start=10.0, end=110.0)
    assert resolve_span(record, None, SPEC) == (45.0, 75.0)  # 30 s around the centre: the eval window is unchanged
    assert resolve_span(ClipRecord(path=Path("x.mp4"), labels=("a",)), 8.5, SPEC) == (0.0, 8.5)  # the file's duration
    assert resolve_span(ClipRecord(path=Path("x.mp4"), labels=("a",), start=3.0), None, SPEC) == (3.0, 5.0)  # unknown: one window
