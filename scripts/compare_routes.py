"""Per-route accuracy of trained runs: what each serving route answers on held-out clips.

    .venv/bin/python scripts/compare_routes.py --data data/synth --split test runs/zorro_tiny runs/mbt_tiny

For every run and route (av, audio, video) it scores the served answer of the graph that route
runs, on every clip that has the route's inputs with the other modality removed (as
`avserve evaluate --route`). For the unimodal routes it also scores the naive alternative, the
audio+video graph with the missing input zero-filled, which is what a family without unimodal
graphs would have to serve. On the synthetic set a unimodal route is capped at 1/3 (audio) or
1/4 (video) top-1, so it also reports whether the route got its own factor right (the sound, or
the shape) and how much probability it put there (training.metrics.factor_scores).
Prints a markdown table; `--json` the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from training.data.synth import class_factors
from training.evaluate import run_outputs
from training.metrics import classification_metrics, factor_scores

PLAN = [("av", False), ("audio", False), ("audio", True), ("video", False), ("video", True)]


def score_route(run: Path, data: Path, split: str, route: str, zero_fill: bool) -> dict:
    _, info, outputs = run_outputs(run, data, split, route=route, zero_fill=zero_fill)
    logits = outputs.logits["logits"]
    metrics = classification_metrics(logits, outputs.target, info.multilabel)
    cell = {"clips": metrics["num_clips"], "top1": metrics["top1"], "mAP": metrics["mAP"]}
    synthetic = all(c.count("+") == 1 for c in info.classes) and not info.multilabel
    if synthetic and route != "av":
        cell["factor"] = factor_scores(logits, outputs.target, class_factors(info.classes, route))
    return cell


ROUTE_TABLE_HEADER = "audio+video top-1 | audio graph: top-1 / right sound | video graph: top-1 / right shape"


def print_route_table(title: str, table: dict[str, dict]) -> None:
    """A markdown table, one row per run: {row name: {route: score_route's cell}}."""
    print(f"\n| {title} | {ROUTE_TABLE_HEADER} |")
    print("|---|---|---|---|")
    for name, routes in table.items():
        cells = [f"{routes['av']['top1']:.3f}"]
        for route in ("audio", "video"):
            cell = routes[route]
            cells.append(f"{cell['top1']:.3f} / {cell.get('factor', {}).get('accuracy', float('nan')):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


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
        for route, zero_fill in PLAN:
            name = f"{route} via av + zeros" if zero_fill else route
            row[name] = score_route(run, args.data, args.split, route, zero_fill)
            print(f"{run}: {name} scored", file=sys.stderr, flush=True)
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
            cell, factor = row[column], row[column].get("factor")
            cells.append(f"{cell['top1']:.3f}" + (f" / {factor['accuracy']:.2f} / {factor['mass']:.2f}" if factor else ""))
        print(f"| {run} | " + " | ".join(cells) + " |")
    clips = {c: next(iter(results.values()))[c]["clips"] for c in columns}
    print(
        "\ncells: top-1 of the served answer; for unimodal routes on the synthetic set also the share of clips "
        f"whose top-1 has the right sound (audio) or shape (video), and the mean probability on those classes; clips: {clips}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
