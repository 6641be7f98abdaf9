"""Per-route accuracy of trained runs: what each serving route answers on held-out clips.

    .venv/bin/python scripts/compare_routes.py --data data/synth --split test runs/zorro_tiny runs/mbt_tiny

For every run and route (av, audio, video) it scores the served answer (top-1, mAP) of the graph
that route runs, on every clip that has the route's inputs with the other modality removed
(as `avserve evaluate --route`). For the unimodal routes it also scores the naive alternative,
the audio+video graph with the missing input zero-filled, which is what a family without
unimodal graphs would have to serve. On the synthetic set a unimodal route is capped at 1/3
(audio) or 1/4 (video) top-1, so it also reports whether the route got its own factor right
(the sound, or the shape): 1.0 is a perfect unimodal route. Prints a markdown table; `--json`
the raw numbers.
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
from training.evaluate import ROUTES  # noqa: E402
from training.metrics import classification_metrics  # noqa: E402


@torch.no_grad()
def route_outputs(run: Path, data: Path, split: str, route: str, zero_fill: bool = False) -> tuple[np.ndarray, np.ndarray, list[str], bool]:
    """Served logits of `route` on every clip that has its inputs: the route's own graph (the
    model called with only those inputs, as `evaluate_run(route=...)` does), or, with
    `zero_fill`, the audio+video graph with the missing input all zeros."""
    model, info = load_run(run)
    records = load_records(data).split(split).records
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
        audio, video = batch.get("audio"), batch.get("video")
        if zero_fill:
            audio = audio if audio is not None else torch.zeros(size, cfg.clip_samples)
            video = video if video is not None else torch.zeros(size, cfg.num_frames, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8)
        logits.append(model(audio=audio, video=video)["logits"].numpy())
        targets.append(batch["target"].numpy())
    return np.concatenate(logits), np.concatenate(targets), list(info.classes), info.multilabel


def factor_scores(logits: np.ndarray, target: np.ndarray, classes: list[str], factor: int) -> dict | None:
    """Synthetic classes are "<sound>+<shape>" (training/data/synth.py). For factor 0 (sound) or 1
    (shape): `accuracy`, the share of clips whose top-1 class has the right factor, and `mass`, the
    mean softmax probability on the classes with the right factor (1.0 for a route that is sure
    of what it can know). None for other datasets."""
    if not all(c.count("+") == 1 for c in classes):
        return None
    truth = target.argmax(1) if target.ndim == 2 else target  # one-hot or class indices
    names = np.array([c.split("+")[factor] for c in classes])
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    right = names[None, :] == names[truth][:, None]  # [N, C]: classes sharing the clip's factor
    return {
        "accuracy": float(np.mean(names[logits.argmax(1)] == names[truth])),
        "mass": float(np.mean((probabilities * right).sum(1))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    results = {}
    plan = [("av", False), ("audio", False), ("audio", True), ("video", False), ("video", True)]
    for run in args.runs:
        row = {}
        for route, zero_fill in plan:
            logits, target, classes, multilabel = route_outputs(run, args.data, args.split, route, zero_fill)
            metrics = classification_metrics(logits, target, multilabel)
            cell = {"clips": metrics["num_clips"], "top1": metrics["top1"], "mAP": metrics["mAP"]}
            for factor, name in ((0, "audio_factor"), (1, "video_factor")):
                cell[name] = factor_scores(logits, target, classes, factor)
            row[f"{route} via av + zeros" if zero_fill else route] = cell
            print(f"{run}: {route}{' (zero-filled av)' if zero_fill else ''} done", file=sys.stderr, flush=True)
        results[str(run)] = row

    if args.json:
        print(json.dumps(results, indent=2))
        return
    columns = list(next(iter(results.values())))
    print("| run | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for run, row in results.items():
        cells = []
        for column in columns:
            cell = row[column]
            factor = cell["video_factor"] if column.startswith("video") else cell["audio_factor"]
            note = f" / {factor['accuracy']:.2f} / {factor['mass']:.2f}" if factor and not column.startswith("av") else ""
            cells.append(f"{cell['top1']:.3f}{note}")
        print(f"| {run} | " + " | ".join(cells) + " |")
    clips = {c: next(iter(results.values()))[c]["clips"] for c in columns}
    print(f"\ncells: top-1 of the served answer; for unimodal routes also the share of clips whose top-1 has the "
          f"right sound (audio) or shape (video), and the mean probability on those classes; clips: {clips}", file=sys.stderr)

if __name__ == "__main__":
    main()
