"""Benchmark: the training loader reading a data cache vs decoding the raw files, next to the
tiny models' training steps (is the loader still the bottleneck?).

On the synthetic training set (`avserve data synth`: 240 clips, or --data), side by side in one
run, alternating raw and cache epochs (the machine is shared and noisy: read the ratios):

  loader   clips/s of a DataLoader (--loader-workers processes, batch --batch) over the train
           split, an EpochSampler epoch after a warm-up epoch, as the trainer iterates it:
           AVClipDataset (PyAV decoding) vs CachedClipDataset (training/data/cache.py)
  step     clips/s of one training step (forward, backward, optimiser) of zorro_tiny and
           mbt_tiny at batch --batch, on a batch from the cache (the trainer's own step)
  build    clips/s of `avserve data cache` itself (--cache-workers decoding processes)

Also reported: how many cached train items equal raw ones (video after augmentation) and the
largest pixel difference among the rest.

Run:  .venv/bin/python -m loadtests.bench_data_cache [--data DIR] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from training.data.cache import CacheSpec, DataCache, build_cache
from training.data.cached_dataset import CachedClipDataset
from training.data.dataset import AVClipDataset, EpochSampler, Preprocessing, collate
from training.data.records import load_records
from training.models import get_model_config

MODELS = ("zorro_tiny", "mbt_tiny")  # same preprocessing: one cache serves both


def loader_rate(dataset, batch: int, workers: int, repeats: int) -> list[float]:
    """clips/s of whole epochs (after one warm-up epoch that starts the workers)."""
    sampler = EpochSampler(len(dataset), shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate, drop_last=True,
        persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
    )  # fmt: skip
    rates = []
    for epoch in range(repeats + 1):
        sampler.set_epoch(epoch)
        start, clips = time.perf_counter(), 0
        for item in loader:
            clips += len(item["index"])
        if epoch:
            rates.append(clips / (time.perf_counter() - start))
    return rates


def step_rate(model: str, cache_dir: Path, batch: int, steps: int) -> float:
    """clips/s of the trainer's training step on cached batches (the first step not timed)."""
    from training.trainer import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(TrainConfig(model=model, data=cache_dir, out=out, batch_size=batch, steps=steps + 1, progress=False))
        loader, _ = trainer._loader(trainer.train_set, train=True)
        batches = iter(loader)
        trainer.net.train()
        trainer._train_step(next(batches))
        elapsed = 0.0
        for _ in range(steps):
            data = next(batches, None) or next(iter(loader))
            start = time.perf_counter()
            trainer._train_step(data)
            elapsed += time.perf_counter() - start
    return steps * batch / elapsed


def agreement(raw, cached, epochs: int = 2) -> tuple[float, int]:
    """(share of train items whose video equals the raw item's, largest pixel difference)."""
    equal, total, worst = 0, 0, 0
    for epoch in range(epochs):
        for index in range(len(raw)):
            a, b = raw[(index, epoch)]["video"], cached[(index, epoch)]["video"]
            total += 1
            if torch.equal(a, b):
                equal += 1
            else:
                worst = max(worst, int((a.int() - b.int()).abs().max()))
    return equal / total, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="A dataset (default: `avserve data synth`'s 240 clips, written to a temp dir).")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--cache-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="Timed epochs per source, alternating.")
    parser.add_argument("--steps", type=int, default=10, help="Timed training steps per model.")
    args = parser.parse_args()
    torch.set_num_threads(1)  # loader workers and the step share two cores; one thread each, as in CI

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from training.data.synth import generate_dataset

            data = Path(tmp) / "synth"
            generate_dataset(data, clips=240, seed=0, progress=False)
        records = load_records(data)
        config = get_model_config(MODELS[0])
        assert all(Preprocessing.from_config(get_model_config(m)) == Preprocessing.from_config(config) for m in MODELS)
        pre = Preprocessing.from_config(config)
        spec = CacheSpec.for_model(pre.sample_rate, pre.clip_seconds, pre.num_frames, pre.image_size)
        cache_dir = Path(tmp) / "cache"
        start = time.perf_counter()
        built = build_cache(records, cache_dir, spec, splits=["train"], workers=args.cache_workers, progress=False)
        build_rate = built.clips / (time.perf_counter() - start)

        cache = DataCache(cache_dir)
        cached_records = cache.record_set().split("train").records
        raw = AVClipDataset(records.split("train").records, records.classes, records.multilabel, pre, train=True)
        cached = CachedClipDataset(cache, cached_records, records.classes, records.multilabel, pre, train=True)
        rates: dict[str, list[float]] = {"raw": [], "cache": []}
        for _ in range(args.repeats):  # alternate, so both see the same background load
            rates["raw"] += loader_rate(raw, args.batch, args.loader_workers, 1)
            rates["cache"] += loader_rate(cached, args.batch, args.loader_workers, 1)
        loader = {name: statistics.median(r) for name, r in rates.items()}
        steps = {model: step_rate(model, cache_dir, args.batch, args.steps) for model in MODELS}
        same, worst = agreement(raw, cached)

    print(f"\n{len(raw)} train clips of {data}, batch {args.batch}, {args.loader_workers} loader workers, "
          f"{args.repeats} epochs per source (median)\n")  # fmt: skip
    print(f"{'what':<34}{'clips/s':>10}{'vs raw loader':>15}")
    print(f"{'loader, raw files (PyAV decoding)':<34}{loader['raw']:>10.1f}{1.0:>14.2f}x")
    print(f"{'loader, data cache':<34}{loader['cache']:>10.1f}{loader['cache'] / loader['raw']:>14.2f}x")
    for model, rate in steps.items():
        print(f"{'training step, ' + model:<34}{rate:>10.1f}{rate / loader['raw']:>14.2f}x")
    print(f"{'building the cache':<34}{build_rate:>10.1f}{build_rate / loader['raw']:>14.2f}x")
    print(f"\ncache: {built.bytes / 1e6:.1f} MB for {built.clips} clips ({built.bytes / built.clips / 1e3:.0f} kB/clip)")
    print(f"train items (2 epochs) equal to raw ones: {100 * same:.1f}%; largest pixel difference of the others: {worst}")


if __name__ == "__main__":
    main()
