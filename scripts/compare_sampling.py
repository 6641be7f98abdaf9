"""Top-1 of trained runs with `exact` vs `fast` frame sampling, per serving route.

    .venv/bin/python scripts/compare_sampling.py --data data/synth --split test runs/zorro_tiny runs/mbt_tiny

`fast` takes the keyframe nearest each sample time (within a segment) instead of the frame on
screen at it (avserve.media.video), so it changes only what the video routes see. For each run
and route that takes video (av, video) this scores the served answer both ways on the split, as
`avserve evaluate --route R --frame-sampling S` does, and prints a markdown table with the
difference in points; also how many predictions changed. `--json` prints the raw numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.evaluate import run_outputs
from training.metrics import classification_metrics

ROUTES = ("av", "video")


def score(run: Path, data: Path, split: str, route: str, sampling: str) -> tuple[dict, list[int]]:
    _, info, outputs = run_outputs(run, data, split, route=route, frame_sampling=sampling)
    logits = outputs.logits["logits"]
    metrics = classification_metrics(logits, outputs.target, info.multilabel)
    return {"clips": metrics["num_clips"], "top1": metrics["top1"]}, logits.argmax(-1).tolist()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    table: dict = {}
    for run in args.runs:
        for route in ROUTES:
            print(f"[compare-sampling] {run} {route} ...", flush=True)
            exact, exact_top = score(run, args.data, args.split, route, "exact")
            fast, fast_top = score(run, args.data, args.split, route, "fast")
            changed = sum(a != b for a, b in zip(exact_top, fast_top, strict=True))
            table[f"{run}:{route}"] = {"exact": exact, "fast": fast, "changed_predictions": changed}
    if args.json:
        print(json.dumps(table, indent=2))
        return table
    print(f"\n| run | route | clips | top-1 exact | top-1 fast | fast - exact (points) | predictions changed |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for key, row in table.items():
        run, route = key.rsplit(":", 1)
        delta = 100 * (row["fast"]["top1"] - row["exact"]["top1"])
        print(f"| {Path(run).name} | {route} | {row['exact']['clips']} | {row['exact']['top1']:.3f} | "
              f"{row['fast']['top1']:.3f} | {delta:+.1f} | {row['changed_predictions']} |")
    return table


if __name__ == "__main__":
    main()
