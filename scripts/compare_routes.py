"""Per-route accuracy of trained runs: what each serving route answers on held-out clips.

    .venv/bin/python scripts/compare_routes.py --data data/synth --split test runs/zorro_tiny runs/mbt_tiny

For every run and route (av, audio, video) it scores the served answer (top-1, mAP) of the graph
that route runs (`training.evaluate.evaluate_run(route=...)`: every clip that has the route's
inputs, the other modality removed). For the unimodal routes it also scores the naive
alternative, the audio+video graph with the missing input zero-filled, which is what a family
without unimodal graphs would have to serve. Prints a markdown table; `--json` the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.checkpoint import load_run  # noqa: E402
from training.data.dataset import AVClipDataset, EpochSampler, Preprocessing, collate  # noqa: E402
from training.data.records import load_records  # noqa: E402
from training.evaluate import ROUTES, evaluate_run  # noqa: E402
from training.metrics import classification_metrics  # noqa: E402


@torch.no_grad()
def zero_filled_av(run: Path, data: Path, split: str, route: str) -> dict:
    """The audio+video graph on clips that have `route`'s modality, the other input all zeros."""
    model, info = load_run(run)
    records = [r for r in load_records(data).split(split).records]
    dataset = AVClipDataset(
        records, info.classes, info.multilabel, Preprocessing.from_config(model.config), train=False,
        modalities=ROUTES[route], missing="skip",
    )  # fmt: skip
    sampler = EpochSampler(len(dataset), shuffle=False, seed=0, num_replicas=1, rank=0, drop_last=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, sampler=sampler, collate_fn=collate)
    cfg = model.config
    logits, targets = [], []
    for batch in loader:
        size = batch["target"].shape[0]
        audio = batch["audio"] if "audio" in batch else torch.zeros(size, cfg.clip_samples)
        video = batch["video"] if "video" in batch else torch.zeros(size, cfg.num_frames, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8)
        logits.append(model(audio=audio, video=video)["logits"].numpy())
        targets.append(batch["target"].numpy())
    return classification_metrics(np.concatenate(logits), np.concatenate(targets), info.multilabel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    results = {}
    for run in args.runs:
        row = {}
        for route in ROUTES:
            scored = evaluate_run(run, args.data, split=args.split, route=route)
            row[route] = {"clips": scored["num_clips"], **{k: scored["average"][k] for k in ("top1", "mAP")}}
            if route != "av":
                zero = zero_filled_av(run, args.data, args.split, route)
                row[f"{route} via av + zeros"] = {"clips": zero["num_clips"], "top1": zero["top1"], "mAP": zero["mAP"]}
            print(f"{run}: {route} done", file=sys.stderr, flush=True)
        results[str(run)] = row

    if args.json:
        print(json.dumps(results, indent=2))
        return
    columns = list(next(iter(results.values())))
    print("| run | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for run, row in results.items():
        cells = [f"{row[c]['top1']:.3f} ({row[c]['clips']})" for c in columns]
        print(f"| {run} | " + " | ".join(cells) + " |")
    print("\ncells: top-1 of the served answer (clips scored)", file=sys.stderr)


if __name__ == "__main__":
    main()
