"""Multi-view evaluation on the synthetic set: what do MBT's 4 temporal views and VATT's 4 x 3
views buy over one centred view, and at what cost?

    .venv/bin/python scripts/views_study.py --out runs/views_study

1. Writes a synthetic set whose clips are longer than the model's window (`--clip-seconds`, 6 s
   against zorro_tiny's 2 s), so temporal views see different parts of each clip (frame sizes
   vary, most are not square, so the three crops differ too).
2. Trains `--model` on it (random windows and crops, as always).
3. Scores the test split with each view grid (`avserve evaluate --views`) and prints top-1 and
   mAP of the served answer per kind of clip, with each grid's evaluation time relative to one
   view (measured in this run, one after the other).

Prints a markdown table (docs/models.md, "Multi-view evaluation"); `--json` the raw numbers. The
dataset and the run are reused when they exist.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from avserve.views import ViewGrid
from training.data.synth import SynthConfig, generate_dataset
from training.evaluate import evaluate_run
from training.trainer import TrainConfig, Trainer

GRIDS = ("1,1", "4,1", "1,3", "4,3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/views_study"))
    parser.add_argument("--model", default="zorro_tiny")
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--clip-seconds", type=float, default=6.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--grids", nargs="*", default=list(GRIDS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    data = args.out / "data"
    if not (data / "manifest.csv").is_file():
        print(f"writing {args.clips} clips of {args.clip_seconds} s ...", file=sys.stderr, flush=True)
        generate_dataset(data, clips=args.clips, seed=args.seed, config=SynthConfig(clip_seconds=args.clip_seconds), workers=args.workers)
    run = args.out / args.model
    if not (run / "last.pt").is_file():
        print(f"training {args.model} for {args.steps} steps ...", file=sys.stderr, flush=True)
        Trainer(TrainConfig(
            model=args.model, data=data, out=run, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, workers=args.workers, progress=False, modality_dropout=0.3 if args.model.startswith("mbt") else 0.0,
        )).fit()  # fmt: skip

    results = {}
    for text in args.grids:
        grid = ViewGrid.parse(text)
        print(f"evaluating {grid.count} views ({grid}) ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        result = evaluate_run(run, data, split="test", views=grid, workers=args.workers)
        result["seconds"] = time.perf_counter() - began
        results[str(grid)] = result
    if args.json:
        print(json.dumps(results, indent=2))
        return
    single = results.get("1x1", next(iter(results.values())))["seconds"]
    groups = list(next(iter(results.values()))["by_modalities"])
    print(f"{args.model}, {args.steps} steps, test split ({next(iter(results.values()))['num_clips']} clips of {args.clip_seconds} s)\n")
    print("| views | top-1 all | mAP all | " + " | ".join(f"top-1 {g}" for g in groups) + " | evaluation time |")
    print("|---|---|---|" + "---|" * len(groups) + "---|")
    for name, result in results.items():
        by = result["by_modalities"]
        cells = [f"{by[g]['top1']:.3f}" if g in by else "-" for g in groups]
        print(f"| {name} | {result['average']['top1']:.3f} | {result['average']['mAP']:.3f} | " + " | ".join(cells)
              + f" | {result['seconds'] / single:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
