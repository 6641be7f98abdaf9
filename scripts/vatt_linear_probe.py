"""VATT's evaluation on the synthetic set: does NCE + MIL-NCE pretraining give features a linear
head can read, and does the text space retrieve the right videos?

    .venv/bin/python scripts/vatt_linear_probe.py --data data/synth --out runs/vatt_study

1. Pretrains `--model` (vatt_tiny) with `vatt_nce` (NCE(video, audio) + MIL-NCE(video, text),
   DropToken 50 %) on the train split; reports the first and last logged training losses.
2. Text->video retrieval on the test split (each caption a query over every test clip with
   video): R@1, R@5 and class-level R@1 against chance, for the pretrained model and for the same
   architecture at random initialisation (its text tower and projections random too).
3. Linear probes (`avserve train --linear-probe`: the backbone frozen, only the per-modality
   linear heads trained) at equal steps, from the pretrained backbone and from a random one.
4. Each probe's served answer per route on the test split (audio+video, the audio graph, the
   video graph; scripts/compare_routes.py's scoring).

Prints markdown tables (docs/models.md, "VATT"); `--json` the raw numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from compare_routes import score_route  # the script next to this one

from training.evaluate import evaluate_objective
from training.trainer import TrainConfig, Trainer

RETRIEVAL_KEYS = ("t2v_R@1", "t2v_R@1_chance", "t2v_R@5", "t2v_R@5_chance", "t2v_class_R@1", "t2v_class_R@1_chance", "nce", "mil_nce")


def logged_losses(run: Path) -> tuple[dict, dict]:
    """The first and the last training rows of metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    return train[0], train[-1]


def retrieval(result: dict | None) -> dict:
    return {k: result[k] for k in RETRIEVAL_KEYS if k in (result or {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--out", type=Path, default=Path("runs/vatt_study"))
    parser.add_argument("--model", default="vatt_tiny")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pretrain-lr", type=float, default=5e-4)
    parser.add_argument("--probe-lr", type=float, default=None, help="default: the linear_probe recipe's (5e-4)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    common = dict(model=args.model, data=args.data, batch_size=args.batch_size, workers=args.workers, seed=args.seed)
    pretrained = args.out / "pretrain"
    pretraining = TrainConfig(
        **common, out=pretrained, objective="vatt_nce", steps=args.pretrain_steps, lr=args.pretrain_lr,
        eval_every=max(1, args.pretrain_steps // 4),
    )  # fmt: skip
    if not (pretrained / "last.pt").is_file():
        Trainer(pretraining).fit()
    first, last = logged_losses(pretrained)
    report: dict = {
        "pretraining": {
            "steps": args.pretrain_steps,
            "first": {k: first[k] for k in ("step", "loss/nce", "loss/mil_nce") if k in first},
            "last": {k: last[k] for k in ("step", "loss/nce", "loss/mil_nce") if k in last},
        },
        "retrieval": {
            "pretrained": retrieval(evaluate_objective(pretrained, args.data, split="test")),
            # the same architecture, text tower and projections freshly initialised (never trained)
            "random init": retrieval(
                Trainer(
                    TrainConfig(**common, out=args.out / "random_init", objective="vatt_nce", steps=1, eval_split="test", progress=False)
                ).evaluate()
            ),
        },
        "probes": {},
    }
    for name, init in (("pretrained", pretrained), ("random init", None)):
        run = args.out / f"probe_{name.replace(' ', '_')}"
        if not (run / "last.pt").is_file():
            Trainer(
                TrainConfig(
                    **common, out=run, objective="supervised", linear_probe=True, init_from=init, steps=args.probe_steps,
                    lr=args.probe_lr, eval_every=args.probe_steps,
                )
            ).fit()  # fmt: skip
        report["probes"][name] = {route: score_route(run, args.data, "test", route, zero_fill=False) for route in ("av", "audio", "video")}

    if args.json:
        print(json.dumps(report, indent=2))
        return
    p = report["pretraining"]
    print(f"pretraining {args.model}, {p['steps']} steps x {args.batch_size} clips: "
          f"NCE {p['first'].get('loss/nce', float('nan')):.3f} -> {p['last'].get('loss/nce', float('nan')):.3f}, "
          f"MIL-NCE {p['first'].get('loss/mil_nce', float('nan')):.3f} -> {p['last'].get('loss/mil_nce', float('nan')):.3f} "
          f"(steps {p['first']['step']} -> {p['last']['step']})\n")  # fmt: skip
    print("| text->video retrieval (test) | R@1 | R@5 | class R@1 | NCE | MIL-NCE |")
    print("|---|---|---|---|---|---|")
    for name, r in report["retrieval"].items():
        print(
            f"| {name} | {r.get('t2v_R@1', float('nan')):.3f} (chance {r.get('t2v_R@1_chance', float('nan')):.3f}) "
            f"| {r.get('t2v_R@5', float('nan')):.3f} (chance {r.get('t2v_R@5_chance', float('nan')):.3f}) "
            f"| {r.get('t2v_class_R@1', float('nan')):.3f} (chance {r.get('t2v_class_R@1_chance', float('nan')):.3f}) "
            f"| {r.get('nce', float('nan')):.3f} | {r.get('mil_nce', float('nan')):.3f} |"
        )
    print(
        f"\n| linear probe, {args.probe_steps} steps (test) | audio+video top-1 "
        "| audio graph: top-1 / right sound | video graph: top-1 / right shape |"
    )
    print("|---|---|---|---|")
    for name, routes in report["probes"].items():
        cells = [f"{routes['av']['top1']:.3f}"]
        for route in ("audio", "video"):
            cell = routes[route]
            factor = cell.get("factor", {})
            cells.append(f"{cell['top1']:.3f} / {factor.get('accuracy', float('nan')):.2f}")
        print(f"| from {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
