"""PEMT on the synthetic set: does MEP + CPP pretraining help finetuning, per route; how do the
sharing modes and the negative sampling compare at equal steps (Table 1b-c, at toy size)?

    .venv/bin/python scripts/pemt_study.py --data data/synth_scene --out runs/pemt_study

Use a scene-coupled set (`avserve data synth --scene-coupling 0.8`): on the default set audio and
video are independent given nothing (the label is audio factor x video factor), so correct-pair
prediction has nothing to learn there (docs/synthetic-data.md).

1. Pretrains `--model` (pemt_tiny) with `pemt_mep_cpp` for each variant (sharing part with
   CANS-Similar, the paper's; part with random negatives; cross-layer only; no sharing), equal
   steps, batch and seed; reports the first and last logged MEP / CPP losses and the held-out
   MEP top-1 and CPP accuracy (`avserve evaluate` on the pretraining run).
2. Finetunes each pretrained model and the paper's model (part) from random initialisation, at
   equal steps with the `pemt_finetune` recipe (AMSGrad AdamW, App. A.4).
3. Linear probes (`--linear-probe`: CNNs and transformers frozen, only the MLP heads trained)
   from each pretrained model and from random initialisation, at equal steps: a cheaper and
   less noisy read of what each pretraining put into the features than full finetuning.
4. Scores each finetuned or probed model's served answer per route on the test split
   (audio+video, the audio graph, the video graph; scripts/compare_routes.py's scoring).

Prints markdown tables (docs/models.md, "PEMT"); `--json` the raw numbers. Runs are reused when
their last.pt exists, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from compare_routes import print_route_table, score_route  # the scripts next to this one
from vatt_linear_probe import logged_losses

from training.evaluate import evaluate_objective
from training.trainer import TrainConfig, Trainer

PRETRAININGS = {  # name: (model config overrides, objective options)
    "part, CANS-Similar": ({"sharing": "part"}, {"sampling": "cans_similar"}),
    "part, random negatives": ({"sharing": "part"}, {"sampling": "random"}),
    "cross-layer, CANS-Similar": ({"sharing": "cross_layer"}, {"sampling": "cans_similar"}),
    "none, CANS-Similar": ({"sharing": "none"}, {"sampling": "cans_similar"}),
}
SCRATCH = {"part": {"sharing": "part"}}  # the sharing modes are compared after pretraining (Table 1c)
LOSS_KEYS = ("step", "loss/mep", "loss/cpp", "mep_top1", "cpp_accuracy")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def train(config: TrainConfig) -> Path:
    out = Path(config.out)
    if not (out / "last.pt").is_file():
        print(f"training {out.name} ...", file=sys.stderr, flush=True)
        Trainer(config).fit()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/synth_scene"))
    parser.add_argument("--out", type=Path, default=Path("runs/pemt_study"))
    parser.add_argument("--model", default="pemt_tiny")
    parser.add_argument("--pretrain-steps", type=int, default=250)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3, help="the pemt recipe's 1e-4 is for batch 256 and 220k steps")
    parser.add_argument("--finetune-lr", type=float, default=None, help="default: the pemt_finetune recipe's (1e-3)")
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--only", nargs="*", default=None, help="pretraining variants to run (default: all)")
    parser.add_argument("--finetune", nargs="*", default=None, help="finetuning starts to run (default: all; none: --finetune)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    common = dict(model=args.model, data=args.data, batch_size=args.batch_size, workers=args.workers, seed=args.seed, progress=False)
    variants = {k: v for k, v in PRETRAININGS.items() if args.only is None or k in args.only}
    report: dict = {"pretraining": {}, "finetuning": {}, "probes": {}}
    for name, (overrides, options) in variants.items():
        run = train(
            TrainConfig(
                **common, out=args.out / f"pretrain_{slug(name)}", objective="pemt_mep_cpp", overrides=overrides,
                objective_options=options, steps=args.pretrain_steps, lr=args.pretrain_lr, eval_every=args.pretrain_steps,
            )
        )  # fmt: skip
        first, last = logged_losses(run)
        report["pretraining"][name] = {
            "first": {k: first[k] for k in LOSS_KEYS if k in first},
            "last": {k: last[k] for k in LOSS_KEYS if k in last},
            "test": evaluate_objective(run, args.data, split="test"),
        }
    starts = {f"pretrained ({name})": (overrides, args.out / f"pretrain_{slug(name)}") for name, (overrides, _) in variants.items()}
    starts.update({f"scratch ({name})": (overrides, None) for name, overrides in SCRATCH.items()})
    for name, (overrides, init) in starts.items():
        if args.finetune is not None and name not in args.finetune:
            continue
        run = train(
            TrainConfig(
                **common, out=args.out / f"finetune_{slug(name)}", objective="supervised", recipe="pemt_finetune",
                overrides=overrides, init_from=init, steps=args.finetune_steps, lr=args.finetune_lr,
                eval_every=args.finetune_steps,
            )
        )  # fmt: skip
        report["finetuning"][name] = {route: score_route(run, args.data, "test", route, zero_fill=False) for route in ("av", "audio", "video")}

    probes = {f"pretrained ({name})": (overrides, args.out / f"pretrain_{slug(name)}") for name, (overrides, _) in variants.items()}
    probes["random init (part)"] = (SCRATCH["part"], None)
    for name, (overrides, init) in probes.items() if args.probe_steps > 0 else ():
        run = train(
            TrainConfig(
                **common, out=args.out / f"probe_{slug(name)}", objective="supervised", linear_probe=True,
                overrides=overrides, init_from=init, steps=args.probe_steps, eval_every=args.probe_steps,
            )
        )  # fmt: skip
        report["probes"][name] = {route: score_route(run, args.data, "test", route, zero_fill=False) for route in ("av", "audio", "video")}

    if args.json:
        print(json.dumps(report, indent=2, default=float))
        return
    nan = float("nan")
    print(f"pretraining {args.model}, {args.pretrain_steps} steps x {args.batch_size} clips (train losses: first -> last logged; test: held out)\n")
    print("| pretraining | MEP (train) | CPP (train) | MEP top-1 (test) | CPP accuracy (test) | MEP / CPP (test) |")
    print("|---|---|---|---|---|---|")
    for name, r in report["pretraining"].items():
        f, l, t = r["first"], r["last"], r["test"]
        print(
            f"| {name} | {f.get('loss/mep', nan):.3f} -> {l.get('loss/mep', nan):.3f} | {f.get('loss/cpp', nan):.3f} -> {l.get('loss/cpp', nan):.3f} "
            f"| {t.get('mep_top1', nan):.3f} | {t.get('cpp_accuracy', nan):.3f} | {t.get('mep', nan):.3f} / {t.get('cpp', nan):.3f} |"
        )
    for title, table in ((f"finetuned {args.finetune_steps} steps", report["finetuning"]), (f"linear probe {args.probe_steps} steps", report["probes"])):
        if table:
            print_route_table(f"{title} (test)", table)


if __name__ == "__main__":
    main()
