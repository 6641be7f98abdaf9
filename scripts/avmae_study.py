"""AV-MAE on the synthetic set: does masked-autoencoder pretraining help an MBT finetune, per route,
and how do two encoder fusions compare at equal steps (Tables 1 and 3, at toy size)?

    .venv/bin/python scripts/avmae_study.py --data data/synth --out runs/avmae_study

1. Pretrains each encoder fusion of `--model` (avmae_tiny: "mid", the paper's best; "separate")
   with the `masked` objective (joint reconstruction, 90 % video / 50 % audio masked, shared
   decoder), equal steps, batch and seed. Reports the first and last logged losses, the held-out
   reconstruction error (`avserve evaluate` on the run) and what predicting the mean patch scores
   on the same targets (the baseline a reconstruction must beat: per modality, the training
   clips' mean target patch, scored on the test clips).
2. Finetunes `--finetune-model` (mbt_avmae_tiny: MBT with the encoder's 2-frame tubelets) from
   each pretrained encoder and from random initialisation, at equal steps, recipe, batch and
   seed, with modality dropout so every route is trained (Sec. 4.1: audio-visual finetuning as
   an MBT initialised from the pretrained encoder(s)).
3. Scores each finetuned model's served answer per route on the test split (audio+video, the
   audio graph, the video graph; scripts/compare_routes.py's scoring).

Prints markdown tables (docs/models.md, "AV-MAE"); `--json` the raw numbers. Runs are reused when
their last.pt exists, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from compare_routes import print_route_table, score_route  # the scripts next to this one
from pemt_study import slug, train
from vatt_linear_probe import logged_losses

from training.evaluate import evaluate_objective, load_objective_run, objective_dataset
from training.trainer import TrainConfig

FUSIONS = ("mid", "separate")
ROUTES = ("av", "audio", "video")


@torch.no_grad()
def mean_patch_baseline(run: Path, data: Path, clips: int = 200) -> dict[str, float]:
    """{modality: MSE of predicting the training clips' mean target patch, on the test clips},
    with the run's own targets (standardised per patch when the objective standardises)."""
    model, info, objective = load_objective_run(run)
    normalise = objective.options.norm_targets

    def targets(split: str) -> dict[str, torch.Tensor]:
        dataset = objective_dataset(model, info, objective, run, data, split)
        rows: dict[str, list[torch.Tensor]] = {}
        for i in range(min(clips, len(dataset))):
            item = dataset[i]
            inputs = {m: item[m][None] for m in ("audio", "video") if m in item}
            for m, patches in model.patch_targets(**inputs).items():
                if normalise:
                    patches = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
                rows.setdefault(m, []).append(patches[0])
        return {m: torch.cat(v) for m, v in rows.items()}

    mean = {m: x.mean(0) for m, x in targets("train").items()}
    return {m: float((x - mean[m]).pow(2).mean()) for m, x in targets("test").items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--out", type=Path, default=Path("runs/avmae_study"))
    parser.add_argument("--model", default="avmae_tiny")
    parser.add_argument("--finetune-model", default="mbt_avmae_tiny")
    parser.add_argument("--fusions", nargs="*", default=list(FUSIONS))
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3, help="Table 14's 3e-4 is for batch 512")
    # Warm-up: Table 14's 40 epochs are 10 % of its 400-epoch ablations; the recipe's 40 epochs
    # would outlast a short run (the LR would still be rising at its end), so 10 % of the steps.
    parser.add_argument("--finetune-steps", type=int, nargs="+", default=[100, 300], help="one table per budget")
    parser.add_argument("--finetune-recipe", default="supervised_scratch", help="one recipe for every start")
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--modality-dropout", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    common = dict(data=args.data, batch_size=args.batch_size, workers=args.workers, seed=args.seed, progress=False)
    report: dict = {"pretraining": {}, "finetuning": {}}
    starts: dict[str, Path | None] = {"scratch": None}
    for fusion in args.fusions:
        run = train(
            TrainConfig(
                **common, model=args.model, out=args.out / f"pretrain_{fusion}", objective="masked",
                overrides={"fusion": fusion}, steps=args.pretrain_steps, lr=args.pretrain_lr,
                warmup_steps=args.pretrain_steps // 10, eval_every=args.pretrain_steps,
            )
        )  # fmt: skip
        first, last = logged_losses(run)
        report["pretraining"][fusion] = {
            "first": {k: v for k, v in first.items() if k.startswith("loss")},
            "last": {k: v for k, v in last.items() if k.startswith("loss")},
            "test": evaluate_objective(run, args.data, split="test"),
            "mean_patch": mean_patch_baseline(run, args.data),
        }
        starts[f"AV-MAE {fusion}"] = run
        print(f"pretrained {fusion}: {report['pretraining'][fusion]['test']['summary']}", file=sys.stderr, flush=True)
    for steps in args.finetune_steps:
        table = report["finetuning"][steps] = {}
        for name, init in starts.items():
            run = train(
                TrainConfig(
                    **common, model=args.finetune_model, out=args.out / f"finetune_{slug(name)}_{steps}",
                    objective="supervised", recipe=args.finetune_recipe, lr=args.finetune_lr, init_from=init, steps=steps,
                    eval_every=steps, modality_dropout=args.modality_dropout,
                )
            )  # fmt: skip
            table[name] = {route: score_route(run, args.data, "test", route, zero_fill=False) for route in ROUTES}
            print(f"finetuned {steps} steps from {name}", file=sys.stderr, flush=True)

    if args.json:
        print(json.dumps(report, indent=2, default=float))
        return
    print(f"pretraining {args.model} (masked, joint, shared decoder), {args.pretrain_steps} steps x {args.batch_size} clips\n")
    print("| encoder | train loss (first -> last) | test reconstruction audio / video | predict the mean patch audio / video |")
    print("|---|---|---|---|")
    for fusion, r in report["pretraining"].items():
        test, base = r["test"], r["mean_patch"]
        print(
            f"| {fusion} | {r['first'].get('loss', float('nan')):.3f} -> {r['last'].get('loss', float('nan')):.3f} "
            f"| {test['reconstruction/audio']:.3f} / {test['reconstruction/video']:.3f} | {base['audio']:.3f} / {base['video']:.3f} |"
        )
    for steps, table in report["finetuning"].items():
        print_route_table(f"{args.finetune_model} finetuned {steps} steps from (test)", table)


if __name__ == "__main__":
    main()
