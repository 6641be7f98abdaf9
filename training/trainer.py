"""One Trainer for every architecture in `training.models`.

    cfg = TrainConfig(model="zorro_tiny", data="data/synth", out="runs/z1", steps=200, lr=1e-3)
    summary = Trainer(cfg).fit()

Objectives
  supervised   one loss per head (training.losses.supervised_loss), mixup / label smoothing from
               the recipe; evaluation per head + head-averaged prediction (top-1, top-5, mAP).
  contrastive  Zorro's audio-visual NCE on forward_features through MLP projectors wrapped with
               the model (dropped afterwards); evaluation: NCE on the eval split and audio->video
               retrieval top-1.

Fine-tuning: `init_from=RUN_DIR` loads every matching tensor of that run's best.pt (last.pt if
there is no best.pt) and reports missing / unexpected / shape-mismatched keys (e.g. the
classifier of a different class count). The default recipe is then `finetune` (SGD, Table 5).

Missing modalities (`missing="zero"` default for supervised): a clip without audio (video) gets
zeros + a flag; the model gets the flags as `present` (training/models/base.py, "Mixed
batches") and the loss of each head is only computed on clips for which the head exists
(`model.heads_for(present)`; nothing if the present set is not servable by the model).
`missing="skip"` (default for contrastive) drops such clips. `modality_dropout=p` also turns
a fraction p of the audio+video clips of each batch into audio-only or video-only ones
(training.augment.drop_modalities), which is how MBT learns its unimodal routes.

Files (rank 0 only): RUN_DIR/run.json, last.pt, best.pt, metrics.jsonl, eval.json (see
training.checkpoint). `resume=True` restores model, projectors, optimiser, scheduler, grad
scaler, step, best metric and RNG states from last.pt and continues mid-epoch at the next unseen
batch (the sampler is a pure function of (seed, epoch), items of (seed, epoch, index)).

Distributed: under torchrun every rank builds the same model (seeded), wraps it in DDP (gloo on
CPU, NCCL on CUDA) and reads its shard of each epoch; contrastive negatives are all-gathered.
`batch_size` is per process; the global batch is batch_size * world_size.

Mixed precision (`amp`): "auto" = bf16 autocast on CUDA devices that support it, else fp16 with a
GradScaler; off on CPU. "bf16" / "fp16" force it (CPU: bf16 autocast only), "off" disables.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from training import checkpoint as ckpt
from training import distributed as D
from training.augment import VideoAugmentConfig, drop_modalities, mixup
from training.losses import ContrastiveProjectors, contrastive_loss, smooth_targets, supervised_loss
from training.evaluate import collect_outputs, presence, score_outputs, valid_head_masks
from training.optim import Schedule, build_optimizer, build_scheduler, default_recipe, effective_lr, resolve_recipe, warmup_steps_for

OBJECTIVES = ("supervised", "contrastive")


class TrainError(RuntimeError):
    """A user-facing problem (bad model name, dataset, options); the CLI prints it in one line."""


@dataclass
class TrainConfig:
    model: str
    data: str | Path
    out: str | Path
    objective: str = "supervised"
    epochs: float | None = None  # one of epochs / steps; neither -> 10 epochs
    steps: int | None = None
    batch_size: int = 8  # per process
    workers: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # model config fields
    recipe: str | None = None  # default: supervised_scratch / finetune / contrastive
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    scale_lr: bool = False  # multiply the recipe LR by global_batch / 256 (Zorro)
    label_smoothing: float | None = None
    mixup_alpha: float | None = None
    modality_mixup: bool | None = None  # one mixup lambda per modality (MBT); default: the recipe's
    grad_clip: float | None = None
    init_from: str | Path | None = None
    resume: bool = False
    train_split: str = "train"
    eval_split: str | None = "val"  # None: no evaluation; missing split falls back to "test"
    missing: str | None = None  # "zero" | "skip"; default zero (supervised) / skip (contrastive)
    modality_dropout: float = 0.0  # fraction of audio+video clips made unimodal (supervised only)
    amp: str = "auto"
    device: str = "auto"
    seed: int = 0
    eval_every: int | None = None  # steps; default once per epoch (and always at the end)
    log_every: int = 10
    progress: bool = True
    max_eval_clips: int | None = None
    stop_at: int | None = None  # stop (after a checkpoint) at this step, keeping the schedule of
    # `steps`; the run continues with resume=True (e.g. to split a long run into jobs)


# ---------------------------------------------------------------------------------------------


class _Net(nn.Module):
    """Model (+ projectors) as ONE module, so that DDP sees a single forward per step."""

    def __init__(self, model: nn.Module, projectors: nn.Module | None):
        super().__init__()
        self.model = model
        self.projectors = projectors

    def forward(self, audio=None, video=None, present=None):
        if self.projectors is not None:
            return self.projectors(self.model.forward_features(audio=audio, video=video, present=present))
        return self.model(audio=audio, video=video, present=present)


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
        if cfg.objective not in OBJECTIVES:
            raise TrainError(f"unknown objective {cfg.objective!r}; choose from {', '.join(OBJECTIVES)}")
        if cfg.batch_size < 1:
            raise TrainError("--batch-size must be >= 1")
        if cfg.epochs is not None and cfg.steps is not None:
            raise TrainError("give --epochs or --steps, not both")
        if not 0.0 <= cfg.modality_dropout < 1.0:
            raise TrainError(f"--modality-dropout must be in [0, 1), not {cfg.modality_dropout}")
        if cfg.modality_dropout and cfg.objective != "supervised":
            raise TrainError("--modality-dropout applies to the supervised objective only")
        self.out = Path(cfg.out)
        self.dist = D.init_distributed(cfg.device)
        self.device = self.dist.device
        self.contrastive = cfg.objective == "contrastive"
        self.missing = cfg.missing or ("skip" if self.contrastive else "zero")
        self._log_file = None
        self._prepare()

    # -----------------------------------------------------------------------------------
    # set-up

    def _log(self, message: str) -> None:
        if self.dist.is_main:
            print(message, file=sys.stderr, flush=True)

    def _prepare(self) -> None:
        cfg = self.cfg
        from training.data.dataset import AVClipDataset, Preprocessing
        from training.data.records import DatasetError, load_records

        # resume: the run.json of the directory is the source of truth for the model
        self.resume_path = self.out / ckpt.LAST
        overrides = dict(cfg.overrides)
        model_name = cfg.model
        if cfg.resume:
            if not self.resume_path.is_file():
                raise TrainError(f"--resume: no {ckpt.LAST} in {self.out}")
            info = ckpt.read_run_info(self.out)
            if info.model != cfg.model:
                raise TrainError(f"--resume: {self.out} trains {info.model!r}, not {cfg.model!r}")
            overrides = {**info.overrides, **overrides}
        elif self.resume_path.is_file():
            raise TrainError(f"{self.out} already holds a run ({ckpt.LAST}); pass --resume or choose another --out")

        # the model name and overrides first: cheap, and the likelier typo
        from training.models import create_model, get_model_config

        try:
            get_model_config(model_name, **{k: v for k, v in overrides.items() if k != "num_classes"})
        except KeyError as error:
            raise TrainError(error.args[0] if error.args else str(error)) from None
        except (TypeError, ValueError) as error:
            raise TrainError(f"bad model config for {model_name!r}: {error}") from None

        # data
        try:
            records = load_records(cfg.data)
        except DatasetError as error:
            raise TrainError(str(error)) from None
        except FileNotFoundError as error:
            raise TrainError(f"dataset not found: {error}") from None
        self.records = records
        self.classes = list(records.classes)
        self.multilabel = bool(records.multilabel)
        train_records = records.split(cfg.train_split)
        if len(train_records.records) == 0:
            raise TrainError(f"split {cfg.train_split!r} of {cfg.data} is empty")
        eval_records = None
        self.eval_split = None
        if cfg.eval_split:
            for name in dict.fromkeys([cfg.eval_split, "test"]):
                candidate = records.split(name)
                if len(candidate.records):
                    eval_records, self.eval_split = candidate, name
                    break
            if eval_records is None:
                self._log(f"note: no {cfg.eval_split!r} (or 'test') clips: no evaluation; best.pt = last.pt")

        # model (same init on every rank)
        torch.manual_seed(cfg.seed)

        self.model_name = model_name
        self.overrides = {k: v for k, v in overrides.items() if k != "num_classes"}
        try:
            get_model_config(model_name, **self.overrides, num_classes=len(self.classes))
            model = create_model(model_name, **self.overrides, num_classes=len(self.classes))
        except KeyError as error:
            raise TrainError(error.args[0] if error.args else str(error)) from None
        except (TypeError, ValueError) as error:
            raise TrainError(f"bad model config for {model_name!r}: {error}") from None
        self.model = model.to(self.device)
        self.init_report = None
        if cfg.init_from and not cfg.resume:
            try:
                self.init_report = ckpt.init_from(self.model, cfg.init_from)
            except ckpt.CheckpointError as error:
                raise TrainError(f"--init-from: {error}") from None
            self._log(self.init_report.summary())

        self.projectors = None
        if self.contrastive:
            torch.manual_seed(cfg.seed + 1)
            self.projectors = ContrastiveProjectors(int(model.feature_dim)).to(self.device)

        # which inputs the model takes: its largest servable input set
        servable = [frozenset(m) for m in model.servable_modalities]
        self.input_modalities = max(servable, key=len)
        self.head_names = tuple(model.head_names)

        pre = Preprocessing.from_config(model.config)
        mods = tuple(sorted(self.input_modalities))
        video_augment = VideoAugmentConfig(hflip_prob=float(model.config.video_hflip_prob))
        self.train_set = AVClipDataset(
            train_records.records,
            self.classes,
            self.multilabel,
            pre,
            train=True,
            modalities=mods,
            missing=self.missing,
            seed=cfg.seed,
            video_augment=video_augment,
        )
        if len(self.train_set) == 0:
            raise TrainError(f"split {cfg.train_split!r} has no clip with the modalities {sorted(mods)} the model needs")
        self.eval_set = None
        if eval_records is not None:
            ev = eval_records.records
            if cfg.max_eval_clips:
                ev = ev[: cfg.max_eval_clips]
            self.eval_set = AVClipDataset(ev, self.classes, self.multilabel, pre, train=False, modalities=mods, missing=self.missing, seed=cfg.seed)
            if len(self.eval_set) == 0:
                self.eval_set = None

        # steps
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

        # optimisation
        recipe_name = cfg.recipe or default_recipe(cfg.objective, finetune=bool(cfg.init_from))
        try:
            self.recipe = resolve_recipe(
                recipe_name,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                label_smoothing=cfg.label_smoothing,
                mixup_alpha=cfg.mixup_alpha,
                modality_mixup=cfg.modality_mixup,
            )
        except KeyError as error:
            raise TrainError(error.args[0]) from None
        if self.contrastive:  # no labels: mixup / smoothing do not apply
            self.recipe = replace(self.recipe, mixup_alpha=0.0, label_smoothing=0.0)
        self.peak_lr = effective_lr(self.recipe, self.global_batch, cfg.scale_lr)
        self.warmup = warmup_steps_for(self.recipe, self.total_steps, self.steps_per_epoch, cfg.warmup_steps)
        self.schedule = Schedule(self.peak_lr, self.total_steps, self.warmup, self.recipe.final_lr_fraction)
        self.net = _Net(self.model, self.projectors).to(self.device)
        self.optimizer = build_optimizer(self.net.parameters(), self.recipe, self.peak_lr)
        self.scheduler = build_scheduler(self.optimizer, self.schedule)
        self.amp_dtype, use_scaler = _parse_amp(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

        self.ddp = self.net
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # contrastive leaves the classifiers and the global query unused
            self.ddp = DDP(self.net, device_ids=ids, find_unused_parameters=self.contrastive)

        self.step = 0
        self.best_metric = -math.inf
        self.best_eval: dict | None = None
        self.last_eval: dict | None = None
        self.np_rng = np.random.default_rng([cfg.seed, self.dist.rank, 7])
        torch.manual_seed(cfg.seed * 1000 + 100 * self.dist.rank + 1)  # dropout etc. differ per rank
        random.seed(cfg.seed + self.dist.rank)
        np.random.seed(cfg.seed + self.dist.rank)
        if cfg.resume:
            self._load_resume()

        self.run_info = ckpt.RunInfo(
            model=self.model_name,
            overrides=self.overrides,
            classes=self.classes,
            multilabel=self.multilabel,
            objective=cfg.objective,
            config=ckpt.config_to_dict(model.config),
            data=str(cfg.data),
            recipe={**self.recipe.to_dict(), "peak_lr": self.peak_lr, "warmup_steps": self.warmup, "scale_lr": cfg.scale_lr},
            train={
                "batch_size_per_process": cfg.batch_size,
                "global_batch": self.global_batch,
                "world_size": world,
                "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch,
                "train_clips": len(self.train_set),
                "eval_split": self.eval_split,
                "eval_clips": len(self.eval_set) if self.eval_set else 0,
                "missing_modality": self.missing,
                "modality_dropout": cfg.modality_dropout,
                "dropped_train_clips": self.train_set.num_dropped,
                "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
                "device": str(self.device),
                "seed": cfg.seed,
                "grad_clip": cfg.grad_clip,
            },
            init_from=str(cfg.init_from) if cfg.init_from else None,
        )

    def _loader(self, dataset, train: bool, epoch: int = 0, skip: int = 0):
        from training.data.dataset import EpochSampler, collate

        cfg = self.cfg
        sampler = EpochSampler(
            len(dataset),
            shuffle=train,
            seed=cfg.seed,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            drop_last=train and self.drop_last,
        )
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
            "projectors": self.projectors.state_dict() if self.projectors is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "best_metric": self.best_metric,
            "best_eval": self.best_eval,
            "last_eval": self.last_eval,
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
        if self.projectors is not None and state.get("projectors") is not None:
            self.projectors.load_state_dict(state["projectors"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # a changed --steps/--epochs on resume stretches the schedule
        self.schedule.total_steps = self.total_steps
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_metric = float(state.get("best_metric", -math.inf))
        self.best_eval = state.get("best_eval")
        self.last_eval = state.get("last_eval")
        if self.dist.is_main:  # rank 0's generators are saved; other ranks reseed per step
            _set_rng_state(state["rng"])
        else:
            torch.manual_seed(self.cfg.seed * 1000 + 100 * self.dist.rank + self.step)
        self.np_rng.bit_generator.state = state["np_rng"]
        self._log(f"resumed {self.out} at step {self.step}/{self.total_steps}")

    def _save(self, best: bool) -> None:
        if not self.dist.is_main:
            return
        state = self._state()
        ckpt.save_checkpoint(self.out / ckpt.LAST, state)
        if best:
            ckpt.save_checkpoint(self.out / ckpt.BEST, state)

    def _write_metrics(self, row: dict[str, Any]) -> None:
        if self._log_file is not None:
            self._log_file.write(json.dumps(row) + "\n")
            self._log_file.flush()

    # -----------------------------------------------------------------------------------
    # one step

    def _valid_masks(self, has_audio: torch.Tensor, has_video: torch.Tensor) -> dict[str, torch.Tensor]:
        """{head: bool [B]}: the head exists for the clip's present modalities."""
        masks = valid_head_masks(self.model, has_audio.numpy(), has_video.numpy())
        return {h: torch.from_numpy(m).to(self.device) for h, m in masks.items()}

    def _inputs(self, batch: dict[str, torch.Tensor]):
        audio = batch["audio"].to(self.device, non_blocking=True) if "audio" in batch else None
        video = batch["video"].to(self.device, non_blocking=True) if "video" in batch else None
        return audio, video

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        audio, video = self._inputs(batch)
        has_a, has_v = batch["has_audio"], batch["has_video"]
        logs: dict[str, float] = {}
        if self.contrastive:
            with self._autocast():
                emb = self.ddp(audio=audio, video=video)
            both = (has_a & has_v).to(self.device)
            loss, parts = contrastive_loss(emb, mask=both)
            if not parts:
                raise TrainError(
                    f"contrastive objective: model {self.model_name!r} gives no audio/video/fusion features "
                    f"(got {sorted(emb)}), or no clip has both modalities"
                )
            logs.update({f"loss/{k}": float(v.detach()) for k, v in parts.items()})
        else:
            target = smooth_targets(batch["target"].to(self.device), len(self.classes), self.recipe.label_smoothing)
            if self.recipe.mixup_alpha > 0:
                mixed = mixup(
                    audio,
                    video,
                    target,
                    self.recipe.mixup_alpha,
                    rng=self.np_rng,
                    has_audio=has_a,
                    has_video=has_v,
                    per_modality=self.recipe.modality_mixup,
                )
                audio, video, target, has_a, has_v = mixed.audio, mixed.video, mixed.target, mixed.has_audio, mixed.has_video
                logs["mixup_lambda"] = mixed.lam
            if self.cfg.modality_dropout > 0:
                dropped = drop_modalities(audio, video, has_a, has_v, self.cfg.modality_dropout, self.np_rng)
                audio, video, has_a, has_v = dropped.audio, dropped.video, dropped.has_audio, dropped.has_video
                logs["modality_dropped"] = dropped.dropped
            valid = self._valid_masks(has_a, has_v)
            with self._autocast():
                out = self.ddp(audio=audio, video=video, present=presence(audio, video, has_a, has_v, self.device))
            loss, per_head = supervised_loss(out, target, self.head_names, self.multilabel, valid)
            logs.update({f"loss/{k}": float(v.detach()) for k, v in per_head.items()})
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip))
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
        if self.eval_set is None:
            return None
        was_training = self.net.training
        self.net.eval()
        loader, _ = self._loader(self.eval_set, train=False)
        collected = collect_outputs(self.net, loader, self.device, self._autocast)
        local = {
            "index": collected.index,
            "target": collected.target,
            "has_audio": collected.has_audio,
            "has_video": collected.has_video,
            "out": collected.logits,
        }
        gathered = D.all_gather_objects(local)
        self.net.train(was_training)
        if not self.dist.is_main:
            return None
        # merge shards, drop the sampler's padding duplicates
        index = np.concatenate([g["index"] for g in gathered])
        _, first = np.unique(index, return_index=True)

        def cat(key):
            return np.concatenate([g[key] for g in gathered])[first]

        target, ha, hv = cat("target"), cat("has_audio"), cat("has_video")
        outs = {k: np.concatenate([g["out"][k] for g in gathered])[first] for k in gathered[0]["out"]}
        result: dict[str, Any] = {"split": self.eval_split, "step": self.step, "num_clips": int(len(first))}
        if self.contrastive:
            both = ha & hv
            emb = {k: torch.from_numpy(v[both]) for k, v in outs.items()}
            total, parts = contrastive_loss(emb, gather=False)
            result["nce"] = float(total)
            result.update({f"nce/{k}": float(v) for k, v in parts.items()})
            if "audio" in emb and "video" in emb and len(emb["audio"]):
                sim = torch.nn.functional.normalize(emb["audio"], dim=-1) @ torch.nn.functional.normalize(emb["video"], dim=-1).T
                result["retrieval_a2v_top1"] = float((sim.argmax(1) == torch.arange(len(sim))).float().mean())
                result["retrieval_chance"] = 1.0 / len(sim)
            result["score"] = -result["nce"]
            return result
        result.update(score_outputs(self.model, outs, target, ha, hv, self.multilabel))
        avg = result.get("average", {})
        result["score"] = avg.get("mAP" if self.multilabel else "top1", float("nan"))
        return result

    # -----------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.write_json(self.out / ckpt.RUN_FILE, self.run_info.to_dict())
            self._log_file = open(self.out / ckpt.METRICS_FILE, "a")
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

        totals = {"time": 0.0, "data": 0.0, "clips": 0, "steps": 0}
        window = {"time": 0.0, "data": 0.0, "clips": 0, "steps": 0}
        loss_window: dict[str, list[float]] = {}
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
                    # the very first batch includes worker start-up: keep it out of throughput
                    if totals["steps"] or self.step == end_step:
                        for acc in (totals, window):
                            acc["time"] += elapsed
                            acc["data"] += wait
                            acc["clips"] += clips
                            acc["steps"] += 1
                    for k, v in logs.items():
                        loss_window.setdefault(k, []).append(v)
                    t_prev = t_end
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                    last = self.step >= end_step
                    if self.step % cfg.log_every == 0 or last:
                        row = {k: float(np.mean(v)) for k, v in loss_window.items()}
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
                        loss_window = {}
                    if self.step % eval_every == 0 or last:
                        self._eval_and_checkpoint()
                    if last or self.step % self.steps_per_epoch == 0:
                        break
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
                self._log(_eval_line(result))
        self._save(best=is_best)
        D.barrier()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _eval_line(r: dict[str, Any]) -> str:
    if "nce" in r:
        return f"eval@{r['step']} [{r['split']}]: nce {r['nce']:.4f}, a->v retrieval top-1 {r.get('retrieval_a2v_top1', float('nan')):.3f}"
    parts = [f"{h} {m['top1']:.3f}" for h, m in r.get("heads", {}).items()]
    avg = r.get("average", {})
    return f"eval@{r['step']} [{r['split']}] top-1: " + ", ".join(parts) + f" | average {avg.get('top1', float('nan')):.3f} (mAP {avg.get('mAP', float('nan')):.3f})"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Convenience: build a Trainer and run it."""
    return Trainer(cfg).fit()
