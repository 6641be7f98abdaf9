"""One Trainer for every architecture in `training.models` and every objective in `training.objectives`.

    cfg = TrainConfig(model="zorro_tiny", data="data/synth", out="runs/z1", steps=200, lr=1e-3)
    summary = Trainer(cfg).fit()

The trainer runs the loop: data, steps, DDP, AMP, evaluation, checkpoints and resume. What is
optimised is the objective's business (training/objectives/: its extra modules, loss,
evaluation, default recipe, whether it needs labels); the trainer knows no objective by name.

Fine-tuning: `init_from=RUN_DIR` loads every matching tensor of that run's classifier
(best.pt, else last.pt), resizes position embeddings of another token grid, and reports
missing / unexpected / shape-mismatched keys (e.g. the classifier of a different class count);
an objective's extra modules are never loaded. The default recipe is then the objective's
fine-tuning one.

Linear probing (`linear_probe=True`, VATT App. A.3 "linear evaluation"): after --init-from,
`model.freeze_backbone()` (training/models/base.py) leaves only the classifier heads
(`head_prefixes`) trainable and keeps the backbone in eval mode under `train()`, so the
optimiser holds the heads (and an objective's own modules) only. Objectives that need labels
only (a label-free objective has nothing for a head to learn). Default recipe `linear_probe`
(Adam 5e-4, no weight decay); `--recipe` overrides it. run.json's train.linear_probe records
it, and a resumed run must be given the same flag (the backbone is frozen again before the
optimiser is built, so its saved state fits).

Missing modalities: `missing` ("zero" or "skip"; default: the objective's). With "zero" a clip
without audio (video) gets zeros + a flag, the model gets the flags as `present`
(training/models/base.py, "Mixed batches"), and an objective's loss only counts what exists
for each clip (e.g. a head's loss only on the clips that head serves). `modality_dropout=p`
(objectives that support it) turns a fraction p of the audio+video clips of each batch into
audio-only or video-only ones.

Unbalanced multi-label sets (docs/multilabel.md, training/data/balance.py): `class_cap=N` trains
on MBT's greedy subset with at most N clips per class; `sampling="balanced"` draws each epoch
with replacement, weighted by the inverse frequency of each clip's labels, under the same
(seed, epoch) contract as the shuffle, so resume and DDP sharding are unchanged.

Files (rank 0 only): RUN_DIR/run.json, last.pt, best.pt, metrics.jsonl, eval.json (see
training.checkpoint). `resume=True` restores model, the objective's modules, optimiser,
scheduler, grad scaler, step, best metric and RNG states from last.pt and continues mid-epoch at
the next unseen batch (the sampler is a pure function of (seed, epoch), items of
(seed, epoch, index)).

Killed at any instant (SIGKILL, OOM killer, preemption), a run resumes with `resume=True` and
finishes bit-identical to an uninterrupted one, with the same metrics.jsonl (each row once;
only the timing columns differ); tests/training/test_kill_resume.py. On start-up, under the
run's lock (training.checkpoint), rank 0 puts the run directory back to its last checkpoint:
stale NAME.tmp files removed, metrics.jsonl rows of later steps (and a torn last line) cut,
eval.json rewritten from the checkpoint, best.pt re-linked when the kill fell between writing
last.pt and best.pt. The loss window of a log line in progress and the throughput totals are
part of the checkpoint, so log lines and run.json's result do not depend on where the kills
fell. A run killed before its first checkpoint has nothing to resume: `resume=True` then
starts it again at step 0 (saying so), leftover metrics rows included, so "run it again with
--resume until it finishes" is always the right recovery; `resume=True` refuses only a
directory holding best.pt without last.pt (not a state a trainer leaves).

Distributed: under torchrun every rank builds the same model (seeded), wraps model + objective
modules in DDP (gloo on CPU, NCCL on CUDA) and reads its shard of each epoch; evaluation outputs
are gathered to rank 0. `batch_size` is per process; the global batch is batch_size * world_size.

Mixed precision (`amp`): "auto" = bf16 autocast on CUDA devices that support it, else fp16 with a
GradScaler; off on CPU. "bf16" / "fp16" force it (CPU: bf16 autocast only), "off" disables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import checkpoint as ckpt
from training import distributed as D
from training.augment import VideoAugmentConfig
from training.config import TrainConfig
from training.errors import TrainError
from training.objectives import ObjectiveSetup, StepContext, TrainingModule, concatenate, get_objective, select
from training.optim import Schedule, build_optimizer, build_scheduler, effective_lr, parameter_groups, resolve_recipe, warmup_steps_for

__all__ = ["TrainConfig", "TrainError", "Trainer", "train"]


# ---------------------------------------------------------------------------------------------


def _parse_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler)."""
    amp = (amp or "auto").lower()
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise TrainError(f"--amp must be auto, off, bf16 or fp16, not {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None, False
    if device.type == "cuda":
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16, False
        return torch.float16, True
    if amp == "fp16":
        raise TrainError("fp16 autocast needs CUDA; use --amp bf16 on the CPU")
    return torch.bfloat16, False


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.batch_size < 1:
            raise TrainError("--batch-size must be >= 1")
        if cfg.epochs is not None and cfg.steps is not None:
            raise TrainError("give --epochs or --steps, not both")
        if not 0.0 <= cfg.modality_dropout < 1.0:
            raise TrainError(f"--modality-dropout must be in [0, 1), not {cfg.modality_dropout}")
        self.objective_type = get_objective(cfg.objective)
        if cfg.modality_dropout and not self.objective_type.supports_modality_dropout:
            raise TrainError(f"--modality-dropout does not apply to the {cfg.objective} objective")
        if cfg.linear_probe and not self.objective_type.needs_labels:
            raise TrainError(
                f"--linear-probe trains the classifier heads on labels; the {cfg.objective} objective uses none "
                "(probe with an objective that trains on labels, --init-from the pretrained run)"
            )
        self.objective_options = self.objective_type.parse_options(cfg.objective_options)
        if cfg.missing not in (None, "zero", "skip"):
            raise TrainError(f"--missing must be zero or skip, not {cfg.missing!r}")
        self.missing = cfg.missing or self.objective_type.default_missing
        from training.data.balance import SAMPLING

        if cfg.sampling not in SAMPLING:
            raise TrainError(f"--sampling must be one of {', '.join(SAMPLING)}, not {cfg.sampling!r}")
        if cfg.class_cap is not None and cfg.class_cap < 1:
            raise TrainError(f"--class-cap must be >= 1, not {cfg.class_cap}")
        self.out = Path(cfg.out)
        self.dist = D.init_distributed(cfg.device)
        self.device = self.dist.device
        self._log_file = None
        self._setup_run()
        self._setup_model()
        self._setup_data()
        self._setup_optimisation()
        self._setup_state()

    def _log(self, message: str) -> None:
        if self.dist.is_main:
            print(message, file=sys.stderr, flush=True)

    # -----------------------------------------------------------------------------------
    # set-up, in order: run, model, data, optimisation, state

    def _setup_run(self) -> None:
        """What is trained (resume: the run directory's run.json says), on which labels, with
        which recipe. Cheap checks first: a typo in the model name should not wait for data."""
        from training.data.records import DatasetError, load_records
        from training.models import get_model_config

        cfg = self.cfg
        self.resume_path = self.out / ckpt.LAST
        overrides = dict(cfg.overrides)
        # Where the weights came from and the recipe: as given, or on resume as the run recorded
        # them (a resumed finetune keeps its finetuning recipe and its provenance).
        self.init_from = str(Path(cfg.init_from).resolve()) if cfg.init_from else None
        self.pretrained = None
        recorded_recipe = None
        # resume from last.pt; or, with --resume and no checkpoint yet, start over at step 0
        self.resuming = cfg.resume and self.resume_path.is_file()
        if cfg.resume:
            if not self.resuming and (self.out / ckpt.BEST).is_file():
                raise TrainError(f"--resume: {self.out} holds {ckpt.BEST} but no {ckpt.LAST} (the training state): cannot resume")
            if self.resuming or (self.out / ckpt.RUN_FILE).is_file():
                info = ckpt.read_run_info(self.out)
                if info.model != cfg.model:
                    raise TrainError(f"--resume: {self.out} trains {info.model!r}, not {cfg.model!r}")
                overrides = {**info.overrides, **overrides}
                if self.resuming:
                    self.init_from = self.init_from or info.init_from
                    self.pretrained = info.pretrained
                    recorded_recipe = info.recipe.get("name")
                probe = bool(info.train.get("linear_probe", False))
                if self.resuming and probe != bool(cfg.linear_probe):
                    raise TrainError(
                        f"--resume: {self.out} was started {'with' if probe else 'without'} --linear-probe; "
                        f"resume it {'with' if probe else 'without'} it"
                    )
        else:
            for name in (ckpt.LAST, ckpt.BEST):
                if (self.out / name).is_file():
                    raise TrainError(f"{self.out} already holds a run ({name}); pass --resume or choose another --out")
        self.model_name = cfg.model
        self.overrides = {k: v for k, v in overrides.items() if k != "num_classes"}
        try:
            get_model_config(self.model_name, **self.overrides)
        except KeyError as error:
            raise TrainError(error.args[0] if error.args else str(error)) from None
        except (TypeError, ValueError) as error:
            raise TrainError(f"bad model config for {self.model_name!r}: {error}") from None

        from training.data.cache import CacheError, DataCache, is_cache

        self.cache = None  # a data cache (training/data/cache.py) given as --data: items without decoding
        try:
            if is_cache(cfg.data):
                self.cache = DataCache(cfg.data)
                self.records = self.cache.record_set()
            else:
                self.records = load_records(cfg.data)
        except (DatasetError, CacheError) as error:
            raise TrainError(str(error)) from None
        except FileNotFoundError as error:
            raise TrainError(f"dataset not found: {error}") from None
        self.classes = list(self.records.classes)
        self.multilabel = bool(self.records.multilabel)

        if cfg.recipe:
            recipe_name = cfg.recipe
        elif recorded_recipe:
            recipe_name = recorded_recipe
        elif cfg.linear_probe:
            recipe_name = "linear_probe"
        else:
            recipe_name = self.objective_type.default_recipe(finetune=bool(self.init_from))
        try:
            self.recipe = resolve_recipe(
                recipe_name,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                layer_decay=cfg.layer_decay,
                grad_clip=cfg.grad_clip,
                label_smoothing=cfg.label_smoothing,
                mixup_alpha=cfg.mixup_alpha,
                modality_mixup=cfg.modality_mixup,
            )
        except KeyError as error:
            raise TrainError(error.args[0]) from None
        if not self.objective_type.needs_labels:  # mixup and label smoothing act on labels
            self.recipe = replace(self.recipe, mixup_alpha=0.0, label_smoothing=0.0)

    def _setup_model(self) -> None:
        """The classifier (same initialisation on every rank), --init-from, and the objective
        with its extra modules (initialised from seed + 1, whatever the model's size)."""
        from training.models import create_model

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        try:
            model = create_model(self.model_name, **self.overrides, num_classes=len(self.classes))
        except KeyError as error:
            raise TrainError(error.args[0] if error.args else str(error)) from None
        except (TypeError, ValueError) as error:
            raise TrainError(f"bad model config for {self.model_name!r}: {error}") from None
        self.model = model.to(self.device)
        self.init_report = None
        if cfg.init_from and not self.resuming:
            try:
                self.init_report = ckpt.init_from(self.model, cfg.init_from)
            except ckpt.CheckpointError as error:
                raise TrainError(f"--init-from: {error}") from None
            self.pretrained = ckpt.pretraining_of(cfg.init_from)
            self._log(self.init_report.summary())
        if cfg.linear_probe:
            # also on resume: frozen before the optimiser is built, so its groups match last.pt's
            try:
                self.model.freeze_backbone()
            except ValueError as error:
                raise TrainError(f"--linear-probe: {error}") from None
            if not cfg.init_from and not self.resuming:
                self._log("note: --linear-probe without --init-from: the heads are trained on a randomly initialised backbone")

        torch.manual_seed(cfg.seed + 1)
        setup = ObjectiveSetup(
            model=self.model,
            classes=self.classes,
            multilabel=self.multilabel,
            recipe=self.recipe,
            modality_dropout=cfg.modality_dropout,
            options=self.objective_options,
        )
        self.objective = self.objective_type(setup).to(self.device)
        self.objective.configure_model(self.model)
        self.net = TrainingModule(self.model, self.objective).to(self.device)
        # the model takes its largest servable input set
        self.input_modalities = max((frozenset(m) for m in model.servable_modalities), key=len)

    def _setup_data(self) -> None:
        """The train and evaluation datasets, and the step counts they imply."""
        from training.data.dataset import AVClipDataset, Preprocessing

        cfg = self.cfg
        train_records = self.records.split(cfg.train_split)
        if len(train_records.records) == 0:
            raise TrainError(f"split {cfg.train_split!r} of {cfg.data} is empty")
        if cfg.class_cap is not None:  # MBT's AS-500K (training/data/balance.py)
            from training.data.balance import cap_per_class

            capped = cap_per_class(train_records.records, cfg.class_cap, cfg.seed)
            self._log(f"--class-cap {cfg.class_cap}: training on {len(capped)} of {len(train_records.records)} clips")
            train_records = replace(train_records, records=capped)
        eval_records = None
        self.eval_split = None
        if cfg.eval_split:
            for name in dict.fromkeys([cfg.eval_split, "test"]):
                candidate = self.records.split(name)
                if len(candidate.records):
                    eval_records, self.eval_split = candidate, name
                    break
            if eval_records is None:
                self._log(f"note: no {cfg.eval_split!r} (or 'test') clips: no evaluation; best.pt = last.pt")

        config = self.model.config
        pre = Preprocessing.from_config(config)
        modalities = tuple(sorted(self.input_modalities))
        dataset_type = AVClipDataset
        if self.cache is not None:
            dataset_type = self._cached_dataset_type()
        self.train_set = dataset_type(
            train_records.records,
            self.classes,
            self.multilabel,
            pre,
            train=True,
            modalities=modalities,
            missing=self.missing,
            seed=cfg.seed,
            video_augment=VideoAugmentConfig(hflip_prob=float(config.video_hflip_prob)),
            text=self.objective_type.text_input,
        )
        if len(self.train_set) == 0:
            raise TrainError(f"split {cfg.train_split!r} has no clip with the modalities {sorted(modalities)} the model needs")
        self.eval_set = None
        if eval_records is not None:
            clips = eval_records.records[: cfg.max_eval_clips] if cfg.max_eval_clips else eval_records.records
            self.eval_set = dataset_type(
                clips, self.classes, self.multilabel, pre, train=False, modalities=modalities, missing=self.missing,
                seed=cfg.seed, text=self.objective_type.text_input,
            )
            if len(self.eval_set) == 0:
                self.eval_set = None

        world = self.dist.world_size
        per_rank = len(self.train_set) // world if len(self.train_set) >= world else 1
        self.drop_last = per_rank >= cfg.batch_size
        self.steps_per_epoch = per_rank // cfg.batch_size if self.drop_last else 1
        if cfg.steps is not None:
            self.total_steps = int(cfg.steps)
        else:
            self.total_steps = max(1, math.ceil((cfg.epochs if cfg.epochs is not None else 10) * self.steps_per_epoch))
        if self.total_steps < 1:
            raise TrainError("--steps must be >= 1")
        self.global_batch = cfg.batch_size * world

    def _cached_dataset_type(self):
        """CachedClipDataset reading self.cache, which must hold the model's preprocessing."""
        from training.data.cache import CacheError
        from training.data.cached_dataset import CachedClipDataset

        if self.cache.failed:
            self._log(f"note: {len(self.cache.failed)} clip(s) of the source failed to decode when {self.cache.directory} was built "
                      f"and are not in it (listed under 'failed' in its cache.json)")  # fmt: skip

        def build(*args, **kwargs):
            try:
                return CachedClipDataset(self.cache, *args, **kwargs)
            except CacheError as error:
                raise TrainError(f"{error} ({self.model_name})") from None

        return build

    def _setup_optimisation(self) -> None:
        """Schedule, optimiser (parameter groups: training/optim.py), AMP and the DDP wrapper."""
        cfg = self.cfg
        self.peak_lr = effective_lr(self.recipe, self.global_batch, cfg.scale_lr)
        self.warmup = warmup_steps_for(self.recipe, self.total_steps, self.steps_per_epoch, cfg.warmup_steps)
        self.schedule = Schedule(
            self.peak_lr, self.total_steps, self.warmup, self.recipe.final_lr_fraction, self.recipe.cosine_period, self.recipe.decay
        )
        groups = parameter_groups(self.model, dict(self.objective.named_children()), self.recipe, self.peak_lr)
        self.optimizer = build_optimizer(groups, self.recipe, self.peak_lr)
        self.scheduler = build_scheduler(self.optimizer, self.schedule)
        self.amp_dtype, use_scaler = _parse_amp(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

        self.ddp = self.net
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # A head's loss counts only the clips it serves: with zero-filled or dropped-out
            # modalities one rank's batch can leave a head without gradient while another's does
            # not, and DDP must be told to look (else the ranks' all-reduces fall out of step).
            partial_batches = self.missing == "zero" or cfg.modality_dropout > 0
            unused = partial_batches or not self.objective.uses_every_parameter
            self.ddp = DDP(self.net, device_ids=ids, find_unused_parameters=unused)

    def _setup_state(self) -> None:
        """Step, best metric, random generators (restored on resume) and run.json's record."""
        cfg = self.cfg
        self.step = 0
        self.best_metric = -math.inf
        self.best_step: int | None = None  # the step best.pt holds
        self.best_eval: dict | None = None
        self.last_eval: dict | None = None
        # saved with the checkpoint: the losses of the log line in progress, throughput totals
        self.loss_window: dict[str, list[float]] = {}
        self.totals = {"time": 0.0, "data": 0.0, "clips": 0, "steps": 0}
        self.np_rng = np.random.default_rng([cfg.seed, self.dist.rank, 7])
        torch.manual_seed(cfg.seed * 1000 + 100 * self.dist.rank + 1)  # dropout etc. differ per rank
        random.seed(cfg.seed + self.dist.rank)
        np.random.seed(cfg.seed + self.dist.rank)
        if self.resuming:
            self._load_resume()
        self.context = StepContext(self.model, self.device, self.np_rng, self._autocast)

        self.run_info = ckpt.RunInfo(
            model=self.model_name,
            overrides=self.overrides,
            classes=self.classes,
            multilabel=self.multilabel,
            objective=cfg.objective,
            objective_options=dataclasses.asdict(self.objective_options),
            config=ckpt.config_to_dict(self.model.config),
            data=str(cfg.data),
            recipe={**self.recipe.to_dict(), "peak_lr": self.peak_lr, "warmup_steps": self.warmup, "scale_lr": cfg.scale_lr},
            train={
                "batch_size_per_process": cfg.batch_size,
                "global_batch": self.global_batch,
                "world_size": self.dist.world_size,
                "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch,
                "train_clips": len(self.train_set),
                "eval_split": self.eval_split,
                "eval_clips": len(self.eval_set) if self.eval_set else 0,
                "missing_modality": self.missing,
                "modality_dropout": cfg.modality_dropout,
                "class_cap": cfg.class_cap,
                "sampling": cfg.sampling,
                "dropped_train_clips": self.train_set.num_dropped,
                "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
                "device": str(self.device),
                "seed": cfg.seed,
                "linear_probe": bool(cfg.linear_probe),
                "trainable_parameters": sum(p.numel() for p in self.net.parameters() if p.requires_grad),
                "optimizer_groups": [
                    {"name": g["name"], "parameters": len(g["params"]), "peak_lr": g["initial_lr"], "weight_decay": g["weight_decay"]}
                    for g in self.optimizer.param_groups
                ],
            },
            init_from=self.init_from,
            pretrained=self.pretrained,
        )

    def _loader(self, dataset, train: bool, epoch: int = 0, skip: int = 0):
        from training.data.dataset import EpochSampler, collate

        cfg = self.cfg
        shard = dict(seed=cfg.seed, num_replicas=self.dist.world_size, rank=self.dist.rank, drop_last=train and self.drop_last)
        if train and cfg.sampling == "balanced":
            from training.data.balance import BalancedSampler, inverse_frequency_weights

            sampler = BalancedSampler(inverse_frequency_weights(dataset.records), **shard)
        else:
            sampler = EpochSampler(len(dataset), shuffle=train, **shard)
        sampler.set_epoch(epoch, skip)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            collate_fn=collate,
            drop_last=train and self.drop_last,
            pin_memory=self.device.type == "cuda",
            persistent_workers=train and cfg.workers > 0,
            prefetch_factor=4 if cfg.workers > 0 else None,
            # its own generator: creating an iterator must not consume the global torch RNG
            # (which the model's SpecAugment uses), or evaluations would change training
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
        )
        return loader, sampler

    # -----------------------------------------------------------------------------------
    # checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            ckpt.MODULES: {slot: module.state_dict() for slot, module in self.objective.named_children()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "best_eval": self.best_eval,
            "last_eval": self.last_eval,
            "log_window": {k: list(v) for k, v in self.loss_window.items()},
            "totals": dict(self.totals),
            "rng": _rng_state(),
            "np_rng": self.np_rng.bit_generator.state,
            "run": self.run_info.to_dict(),
        }

    def _load_resume(self) -> None:
        try:
            state = ckpt.load_checkpoint(self.resume_path, map_location=self.device)
        except ckpt.CheckpointError as error:
            raise TrainError(f"--resume: {error}") from None
        self.model.load_state_dict(state["model"])
        try:
            ckpt.load_objective_modules(self.objective, state, self.resume_path)
        except ckpt.CheckpointError as error:
            raise TrainError(f"--resume: {error}") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:  # e.g. a checkpoint written before parameter groups existed
            raise TrainError(f"--resume: the optimiser state in {self.resume_path} does not fit this run: {error}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        # a changed --steps/--epochs on resume stretches the schedule
        self.schedule.total_steps = self.total_steps
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_metric = float(state.get("best_metric", -math.inf))
        self.best_eval = state.get("best_eval")
        self.last_eval = state.get("last_eval")
        # checkpoints before best_step existed: the best evaluation's step
        self.best_step = state.get("best_step", (self.best_eval or {}).get("step"))
        self.loss_window = {k: list(v) for k, v in (state.get("log_window") or {}).items()}
        self.totals.update(state.get("totals") or {})
        if self.dist.is_main:  # rank 0's generators are saved; other ranks reseed per step
            _set_rng_state(state["rng"])
        else:
            torch.manual_seed(self.cfg.seed * 1000 + 100 * self.dist.rank + self.step)
        self.np_rng.bit_generator.state = state["np_rng"]
        self._log(f"resumed {self.out} at step {self.step}/{self.total_steps}")

    def _save(self, best: bool) -> None:
        """last.pt, then best.pt (a link to it) if best: a kill in between leaves best.pt one
        checkpoint behind, which `_open_run_dir` repairs from last.pt's best_step."""
        if not self.dist.is_main:
            return
        if self._log_file is not None:  # the rows this checkpoint has seen are on disk first
            os.fsync(self._log_file.fileno())
        state = self._state()
        ckpt.save_checkpoint(self.out / ckpt.LAST, state)
        if best:
            ckpt.link_checkpoint(self.out / ckpt.LAST, self.out / ckpt.BEST)

    def _open_run_dir(self) -> None:
        """Rank 0, before anything is written: take the run's lock and put the directory back
        to the checkpoint this run starts from (step 0 for a new run), whatever a killed run
        left after it."""
        log = open(self.out / ckpt.METRICS_FILE, "a+b")
        try:
            ckpt.lock_metrics_file(log, self.out)
        except ckpt.RunLockedError as error:
            log.close()
            raise TrainError(str(error)) from None
        notes = []
        if self.cfg.resume and not self.resuming:
            notes.append(f"--resume: no {ckpt.LAST} in {self.out} yet (new, or killed before its first checkpoint): starting at step 0")
        removed = ckpt.remove_stale_temp_files(self.out)
        if removed:
            notes.append(f"removed {', '.join(removed)} (written when a run was killed)")
        kept, cut = ckpt.truncate_metrics(log, self.step)
        if cut:
            notes.append(f"cut {cut} {ckpt.METRICS_FILE} line(s) written after step {self.step}'s checkpoint; kept {kept}")
        self._log_file = log
        eval_file = self.out / ckpt.EVAL_FILE
        if self.last_eval is not None:
            ckpt.write_json(eval_file, {"best": self.best_eval, "last": self.last_eval})
        elif eval_file.exists():
            eval_file.unlink()
            notes.append(f"removed {ckpt.EVAL_FILE} of an evaluation no checkpoint kept")
        best, last = self.out / ckpt.BEST, self.out / ckpt.LAST
        if self.resuming and self.best_step == self.step and not ckpt.same_file(best, last) and _checkpoint_step(best) != self.step:
            ckpt.link_checkpoint(last, best)
            notes.append(f"{ckpt.BEST} set to step {self.step}'s checkpoint (killed between writing {ckpt.LAST} and {ckpt.BEST})")
        for note in notes:
            self._log(f"note: {note}")

    def _write_metrics(self, row: dict[str, Any]) -> None:
        if self._log_file is not None:
            self._log_file.write((json.dumps(row) + "\n").encode())
            self._log_file.flush()

    # -----------------------------------------------------------------------------------
    # one step

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        loss, logs = self.objective.training_loss(self.ddp, batch, self.context)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.grad_clip:
            self.scaler.unscale_(self.optimizer)
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.recipe.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        logs["loss"] = float(loss.detach())
        if not math.isfinite(logs["loss"]):
            raise TrainError(f"loss is {logs['loss']} at step {self.step}; lower --lr")
        return logs

    # -----------------------------------------------------------------------------------
    # evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        """The objective's metrics on the evaluation split (rank 0; None elsewhere or without one)."""
        if self.eval_set is None:
            return None
        was_training = self.net.training
        self.net.eval()
        loader, _ = self._loader(self.eval_set, train=False)
        parts = []
        for batch in loader:
            parts.append({"index": batch["index"].numpy(), **self.objective.eval_batch(self.net, batch, self.context)})
        gathered = D.all_gather_objects(concatenate(parts))
        self.net.train(was_training)
        if not self.dist.is_main:
            return None
        # merge the ranks' shards, dropping the sampler's padding duplicates
        outputs = concatenate(gathered)
        _, first = np.unique(outputs.pop("index"), return_index=True)
        result: dict[str, Any] = {"split": self.eval_split, "step": self.step, "num_clips": int(len(first))}
        result.update(self.objective.score(select(outputs, first), self.context))
        return result

    # -----------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._open_run_dir()
            ckpt.write_json(self.out / ckpt.RUN_FILE, self.run_info.to_dict())
            self._log(
                f"train {self.model_name} ({cfg.objective}) on {len(self.train_set)} clips "
                f"[{cfg.train_split}], eval {len(self.eval_set) if self.eval_set else 0} [{self.eval_split}], "
                f"{self.total_steps} steps x {self.global_batch} clips, recipe {self.recipe.name} "
                f"({self.recipe.optimizer}, lr {self.peak_lr:g}, warmup {self.warmup}), world {self.dist.world_size}, "
                f"device {self.device}, amp {self.run_info.train['amp']}"
            )
        eval_every = cfg.eval_every or self.steps_per_epoch
        self.net.train()
        bar = None
        if main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.model_name}", unit="step", dynamic_ncols=True, file=sys.stderr)

        totals = self.totals
        window = {"time": 0.0, "data": 0.0, "clips": 0, "steps": 0}
        first_batch = True
        loader = sampler = None
        epoch = -1
        try:
            end_step = min(self.total_steps, cfg.stop_at) if cfg.stop_at else self.total_steps
            while self.step < end_step:
                new_epoch = self.step // self.steps_per_epoch
                skip = (self.step % self.steps_per_epoch) * cfg.batch_size
                if loader is None:
                    loader, sampler = self._loader(self.train_set, train=True, epoch=new_epoch, skip=skip)
                else:
                    sampler.set_epoch(new_epoch, skip)
                epoch = new_epoch
                t_prev = time.perf_counter()
                for batch in loader:
                    t_data = time.perf_counter()
                    logs = self._train_step(batch)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    t_end = time.perf_counter()
                    self.step += 1
                    clips = cfg.batch_size * self.dist.world_size
                    wait, elapsed = t_data - t_prev, t_end - t_prev
                    # a process's first batch includes worker start-up: keep it out of throughput
                    if not first_batch or self.step == end_step:
                        for acc in (totals, window):
                            acc["time"] += elapsed
                            acc["data"] += wait
                            acc["clips"] += clips
                            acc["steps"] += 1
                    first_batch = False
                    for k, v in logs.items():
                        self.loss_window.setdefault(k, []).append(v)
                    t_prev = t_end
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                    last = self.step >= end_step
                    if self.step % cfg.log_every == 0 or last:
                        row = {k: float(np.mean(v)) for k, v in self.loss_window.items()}
                        row = D.all_reduce_mean(row, self.device)
                        row.update(
                            kind="train",
                            step=self.step,
                            epoch=epoch,
                            lr=self.scheduler.get_last_lr()[0],
                            clips_per_s=window["clips"] / window["time"] if window["time"] > 0 else None,
                            data_share=window["data"] / window["time"] if window["time"] > 0 else None,
                        )
                        self._write_metrics(row)
                        window = {"time": 0.0, "data": 0.0, "clips": 0, "steps": 0}
                        self.loss_window = {}
                    if self.step % eval_every == 0 or last:
                        self._eval_and_checkpoint()
                    if last or self.step % self.steps_per_epoch == 0:
                        break
        except BaseException:
            if self._log_file is not None:  # releases the run's lock
                self._log_file.close()
                self._log_file = None
            raise
        finally:
            if bar is not None:
                bar.close()
        summary = {
            "steps": self.step,
            "clips_per_s": totals["clips"] / totals["time"] if totals["time"] > 0 else None,
            "data_share": totals["data"] / totals["time"] if totals["time"] > 0 else None,
            "train_seconds": totals["time"],
            "best": self.best_eval,
            "last": self.last_eval,
        }
        if main:
            self.run_info.result = {k: summary[k] for k in ("steps", "clips_per_s", "data_share", "train_seconds")}
            self.run_info.result["best_score"] = self.best_metric if math.isfinite(self.best_metric) else None
            ckpt.write_json(self.out / ckpt.RUN_FILE, self.run_info.to_dict())
            self._write_pictures()
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            thr = summary["clips_per_s"]
            self._log(
                f"done: {self.step} steps, "
                + (f"{thr:.1f} clips/s, data wait {100 * summary['data_share']:.0f}% of step time, " if thr else "")
                + f"run in {self.out}"
            )
        D.barrier()
        return summary

    PICTURE_CLIPS = 4

    def _write_pictures(self) -> None:
        """The objective's pictures of the first evaluation (else training) clips, in <run>/pictures.
        A failure is reported, not raised: the run's checkpoints are already written."""
        from torch.utils.data import default_collate

        dataset = self.eval_set or self.train_set
        count = min(self.PICTURE_CLIPS, len(dataset))
        try:
            batch = default_collate([dataset[i] for i in range(count)])
            names = [dataset.records[i].path.stem for i in range(count)]
            written = self.objective.write_pictures(self.model, batch, self.out / "pictures", names)
        except Exception as error:  # noqa: BLE001 (a picture must not fail a finished run)
            self._log(f"warning: could not draw the objective's pictures: {type(error).__name__}: {error}")
            return
        if written:
            self._log(f"pictures: {len(written)} files in {self.out / 'pictures'}")

    def _eval_and_checkpoint(self) -> None:
        result = self.evaluate()
        is_best = False
        if self.dist.is_main:
            if result is None:
                is_best = True  # no eval split: best = last
            else:
                self.last_eval = result
                score = result.get("score", float("nan"))
                # ">=": on ties the later checkpoint wins
                if math.isfinite(score) and score >= self.best_metric or self.best_eval is None:
                    is_best = True
                    self.best_metric = score if math.isfinite(score) else self.best_metric
                    self.best_eval = result
                self._write_metrics({"kind": "eval", **_flatten(result)})
                ckpt.write_json(self.out / ckpt.EVAL_FILE, {"best": self.best_eval, "last": self.last_eval})
                self._log(f"eval@{result['step']} [{result['split']}] {self.objective.describe(result)}")
        if is_best:
            self.best_step = self.step
        self._save(best=is_best)
        D.barrier()


def _checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint file holds; None if it is missing or unreadable."""
    try:
        return int(ckpt.load_checkpoint(path).get("step"))
    except (ckpt.CheckpointError, TypeError, ValueError):
        return None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Convenience: build a Trainer and run it."""
    return Trainer(cfg).fit()
