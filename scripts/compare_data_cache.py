"""Does a model learn the same from the data cache as from the raw files?

Trains one tiny model twice with the same seed, steps and recipe: once on the raw synthetic set
(AVClipDataset, PyAV decoding every item), once on a data cache of it (CachedClipDataset), then
scores every run on the raw test split with `avserve evaluate`'s code, for several seeds (one
pair of runs differs by the trajectory any change of input takes; the seeds show how much). The synthetic clips are
--clip-seconds long (default 4 s, twice the tiny models' 2 s window), so train windows really
move inside each clip and the cache's frame grid (training/data/cache.py) is exercised: a cached
train window takes the grid frames nearest the raw decoder's frame times.

Prints a table (test top-1 of the served prediction, per-run training throughput and the share
of step time spent waiting for data). Acceptance: mean top-1 within 2 points.

Run:  .venv/bin/python scripts/compare_data_cache.py [--model mbt_tiny] [--steps 160] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mbt_tiny")
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both runs.")
    parser.add_argument("--clips", type=int, default=480, help="Synthetic clips (480: 72 test clips, 1.4 points each).")
    parser.add_argument("--clip-seconds", type=float, default=4.0, help="Length of the synthetic clips.")
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds: one raw and one cached run each.")
    parser.add_argument("--out", type=Path, help="Keep the set, the cache and the runs here (default: a temp dir).")
    args = parser.parse_args()

    import torch

    from training.data.cache import CacheSpec, build_cache
    from training.data.dataset import Preprocessing
    from training.data.records import load_records
    from training.data.synth import SynthConfig, generate_dataset
    from training.evaluate import evaluate_run
    from training.models import get_model_config
    from training.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        data = root / "synth"
        if not (data / "manifest.csv").is_file():
            generate_dataset(data, clips=args.clips, seed=7, config=SynthConfig(clip_seconds=args.clip_seconds), progress=False)
        pre = Preprocessing.from_config(get_model_config(args.model))
        cache = root / "cache"
        if not (cache / "cache.json").is_file():
            spec = CacheSpec.for_model(pre.sample_rate, pre.clip_seconds, pre.num_frames, pre.image_size)
            build_cache(load_records(data), cache, spec, workers=2)
        rows = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            for source, path in (("raw files", data), ("data cache", cache)):
                run = root / f"run-{source.split()[1]}-seed{seed}"
                if not (run / "run.json").is_file() or "result" not in json.loads((run / "run.json").read_text()):
                    Trainer(TrainConfig(
                        model=args.model, data=path, out=run, steps=args.steps, batch_size=args.batch_size, lr=1e-3,
                        workers=args.workers, seed=seed, eval_split=None, progress=False,
                    )).fit()  # fmt: skip
                result = json.loads((run / "run.json").read_text())["result"]
                scored = evaluate_run(run, data, split="test")  # every run on the raw test clips
                rows.append((source, seed, scored["average"]["top1"], scored["num_clips"], result["clips_per_s"], result["data_share"]))

    print(f"\n{args.model}, {args.steps} steps x {args.batch_size} clips, {args.workers} loader workers, "
          f"synthetic set of {args.clips} clips of {args.clip_seconds:g} s\n")  # fmt: skip
    print(f"{'trained from':<12}{'seed':>5}{'test top-1':>11}{'clips':>7}{'train clips/s':>15}{'data wait':>11}")
    for source, seed, top1, clips, rate, share in rows:
        print(f"{source:<12}{seed:>5}{top1:>11.3f}{clips:>7}{rate:>15.1f}{100 * share:>10.0f}%")
    mean = {source: statistics.mean(r[2] for r in rows if r[0] == source) for source in ("raw files", "data cache")}
    spread = {source: max(r[2] for r in rows if r[0] == source) - min(r[2] for r in rows if r[0] == source) for source in mean}
    gap = abs(mean["raw files"] - mean["data cache"])
    print(f"\nmean test top-1: raw {mean['raw files']:.3f}, cache {mean['data cache']:.3f}: difference {100 * gap:.1f} points "
          f"({'within' if gap <= 0.02 else 'NOT within'} 2); spread across seeds: raw {100 * spread['raw files']:.1f}, "
          f"cache {100 * spread['data cache']:.1f} points")


if __name__ == "__main__":
    main()
