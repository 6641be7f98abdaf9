"""Scoring a classifier's outputs: per head, the served prediction, and per kind of clip.

Shared by the trainer's periodic evaluation and `avserve evaluate` (a finished run on any
split), so the numbers in eval.json and in a report are computed the same way.

A head only counts on the clips it exists for (`model.heads_for(present modalities)`): an
audio-only clip is scored by the audio head, never by a fusion head fed zeros. The "served"
prediction is what the exported graph answers: the mean of the logits of the clip's heads
(`training.models.base.with_mean_logits`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avserve.views import ViewGrid, average_logits
from training.metrics import classification_metrics

PRESENCE_GROUPS = ("audio+video", "audio", "video")


def valid_head_masks(model: Any, has_audio: np.ndarray, has_video: np.ndarray) -> dict[str, np.ndarray]:
    """{head: bool [N]}: whether each head exists for each clip's present modalities."""
    servable = {frozenset(m) for m in model.servable_modalities}
    heads_by_presence: dict[frozenset[str], tuple[str, ...]] = {}
    masks = {head: np.zeros(len(has_audio), dtype=bool) for head in model.head_names}
    for i, (a, v) in enumerate(zip(np.asarray(has_audio).tolist(), np.asarray(has_video).tolist())):
        present = frozenset(m for m, ok in (("audio", a), ("video", v)) if ok)
        if present not in heads_by_presence:
            heads_by_presence[present] = tuple(model.heads_for(present)) if present in servable else ()
        for head in heads_by_presence[present]:
            masks[head][i] = True
    return masks


def served_logits(logits: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean logits over each clip's valid heads [M, C], which clips have any head [N])."""
    heads = list(logits)
    total = sum(np.asarray(logits[h], np.float64) * valid[h][:, None] for h in heads)
    count = sum(valid[h].astype(np.float64) for h in heads)
    has_any = count > 0
    return total[has_any] / count[has_any, None], has_any


def score_outputs(
    model: Any,
    logits: Mapping[str, np.ndarray],
    target: np.ndarray,
    has_audio: np.ndarray,
    has_video: np.ndarray,
    multilabel: bool,
) -> dict[str, Any]:
    """{"heads": {head: metrics}, "average": metrics, "by_modalities": {group: metrics}}."""
    target = np.asarray(target)
    heads = {h: np.asarray(logits[h]) for h in model.head_names if h in logits}
    valid = valid_head_masks(model, has_audio, has_video)
    result: dict[str, Any] = {"heads": {}}
    for head, values in heads.items():
        if valid[head].any():
            result["heads"][head] = classification_metrics(values[valid[head]], target[valid[head]], multilabel)
    served, has_any = served_logits(heads, valid)
    if has_any.any():
        result["average"] = classification_metrics(served, target[has_any], multilabel)
    groups = {}
    has_audio, has_video = np.asarray(has_audio, bool), np.asarray(has_video, bool)
    selections = {"audio+video": has_audio & has_video, "audio": has_audio & ~has_video, "video": ~has_audio & has_video}
    for group, selected in selections.items():
        chosen = selected & has_any
        if chosen.any():
            group_served, _ = served_logits({h: v[chosen] for h, v in heads.items()}, {h: m[chosen] for h, m in valid.items()})
            groups[group] = classification_metrics(group_served, target[chosen], multilabel)
    result["by_modalities"] = groups
    return result


@dataclass
class CollectedOutputs:
    index: np.ndarray
    target: np.ndarray
    has_audio: np.ndarray
    has_video: np.ndarray
    logits: dict[str, np.ndarray]


def presence(audio, video, has_audio: torch.Tensor, has_video: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor] | None:
    """The model's per-clip `present` masks for a batch (training/models/base.py, "Mixed
    batches"); None unless both inputs are given, since only then can a clip lack one."""
    if audio is None or video is None:
        return None
    return {"audio": has_audio.to(device), "video": has_video.to(device)}


@torch.no_grad()
def batch_logits(model: torch.nn.Module, batch: dict, device: torch.device, autocast=None, use_presence: bool = True) -> dict[str, np.ndarray]:
    """{output: float32 [B, C]} of `model` on one AVClipDataset batch (every head and "logits").

    `use_presence=False` does not tell the model which clips lack an input, so zeros are taken as
    real input: what an exported audio+video graph does with a zero-filled request."""
    audio = batch["audio"].to(device) if "audio" in batch else None
    video = batch["video"].to(device) if "video" in batch else None
    present = presence(audio, video, batch["has_audio"], batch["has_video"], device) if use_presence else None
    with autocast() if autocast else contextlib.nullcontext():
        out = model(audio=audio, video=video, present=present)
    return {key: value.float().cpu().numpy() for key, value in out.items()}


def collect_outputs(
    model: torch.nn.Module, loader, device: torch.device, autocast=None, use_presence: bool = True, fill=None
) -> CollectedOutputs:
    """Run `model` over an AVClipDataset loader (batch_logits), keeping every output and the clips' flags.

    A multi-view batch (training/data/views.py: inputs [B, V, ...] and `num_views`) runs as B x V
    clips and each clip's outputs are the mean of its views' logits (avserve.views.average_logits).
    `fill` completes the model's inputs before it runs (e.g. zero-fills a removed modality)."""
    index, target, has_audio, has_video = [], [], [], []
    logits: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        views = int(batch["num_views"][0]) if "num_views" in batch else 1
        inputs = flatten_views(batch, views) if "num_views" in batch else batch
        if fill is not None:
            inputs = fill(inputs)
        for key, value in batch_logits(model, inputs, device, autocast, use_presence).items():
            if "num_views" in batch:
                value = average_logits(value.reshape(-1, views, value.shape[-1]), axis=1).astype(np.float32)
            logits.setdefault(key, []).append(value)
        index.append(batch["index"].numpy())
        target.append(batch["target"].numpy())
        has_audio.append(batch["has_audio"].numpy())
        has_video.append(batch["has_video"].numpy())
    return CollectedOutputs(
        np.concatenate(index),
        np.concatenate(target),
        np.concatenate(has_audio),
        np.concatenate(has_video),
        {k: np.concatenate(v) for k, v in logits.items()},
    )


def flatten_views(batch: dict, views: int) -> dict:
    """A multi-view batch's model inputs as one batch of B x V clips, each view with its clip's flags."""
    flat = {name: batch[name].flatten(0, 1) for name in ("audio", "video") if name in batch}
    for flag in ("has_audio", "has_video"):
        flat[flag] = batch[flag].repeat_interleave(views)
    return flat


ROUTES = {"av": ("audio", "video"), "audio": ("audio",), "video": ("video",)}


def run_outputs(
    run_dir: str | Path,
    data: str | Path,
    split: str = "test",
    route: str | None = None,
    zero_fill: bool = False,
    batch_size: int = 32,
    workers: int = 0,
    frame_sampling: str = "exact",
    views: ViewGrid | None = None,
):
    """(model, run info, CollectedOutputs) of a finished run's best checkpoint on one split.

    `route` keeps every clip that has that route's modalities and removes the others: "audio" runs
    each clip with an audio track as an audio-only request (the <family>_audio graph's
    computation), "video" likewise, "av" only the clips with both. `zero_fill` instead feeds the
    removed modality as zeros to the audio+video model (what a family without unimodal graphs
    would serve). Default: every clip as it is (unimodal files as unimodal requests).
    `frame_sampling` "fast" picks video frames as a gateway with `sampling=fast` does. `views`
    scores each clip as temporal windows x spatial crops, their logits averaged
    (training/data/views.py); None is the single centred view.
    """
    from training.checkpoint import load_run
    from training.data.dataset import AVClipDataset, Preprocessing
    from training.data.records import DatasetError

    from avserve.media.video import SAMPLING_MODES

    if frame_sampling not in SAMPLING_MODES:
        raise ValueError(f"frame sampling must be one of {', '.join(SAMPLING_MODES)}, not {frame_sampling!r}")
    model, info = load_run(run_dir)
    selected = split_records(run_dir, info, data, split)
    servable = {frozenset(m) for m in model.servable_modalities}
    modalities = sorted(max(servable, key=len))
    missing = "zero"
    if route is not None:
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, not {route!r}")
        if frozenset(ROUTES[route]) not in servable and not zero_fill:
            raise DatasetError(f"{run_dir}: the model does not serve {route} requests")
        modalities, missing = list(ROUTES[route]), "skip"
    dataset = AVClipDataset(
        selected.records,
        info.classes,
        info.multilabel,
        Preprocessing.from_config(model.config),
        train=False,
        modalities=modalities,
        missing=missing,
        frame_sampling=frame_sampling,
    )
    if len(dataset) == 0:
        raise DatasetError(f"split {split!r} of {data} has no clip with the modalities {modalities}")
    if views is not None:
        from training.data.views import MultiViewDataset

        dataset = MultiViewDataset(dataset, views)
    loader = evaluation_loader(dataset, batch_size, workers)
    fill = (lambda inputs: _zero_filled(inputs, model.config)) if zero_fill else None
    return model, info, collect_outputs(model, loader, torch.device("cpu"), use_presence=not zero_fill, fill=fill)


def split_records(run_dir: str | Path, info: Any, data: str | Path, split: str):
    """The records of `split` of `data`, which must label its clips with the classes the run
    (`info`, its RunInfo) was trained on; DatasetError otherwise or when the split is empty."""
    from training.data.records import DatasetError, load_records

    records = load_records(data)
    if list(records.classes) != list(info.classes):
        raise DatasetError(f"{data}: its classes differ from the {len(info.classes)} classes {run_dir} was trained on")
    selected = records.split(split)
    if not selected.records:
        raise DatasetError(f"split {split!r} of {data} is empty")
    return selected


def evaluation_loader(dataset, batch_size: int, workers: int):
    """Every clip of `dataset` once, in order."""
    from training.data.dataset import EpochSampler, collate

    sampler = EpochSampler(len(dataset), shuffle=False, seed=0, num_replicas=1, rank=0, drop_last=False)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate)


def _zero_filled(batch: dict, config: Any) -> dict:
    """A batch with the absent input added as zeros; its flags stay False (scoring is unchanged)."""
    size = batch["has_audio"].shape[0]
    if "audio" not in batch:
        batch = {**batch, "audio": torch.zeros(size, config.clip_samples)}
    if "video" not in batch:
        shape = (size, config.num_frames, config.image_size, config.image_size, 3)
        batch = {**batch, "video": torch.zeros(shape, dtype=torch.uint8)}
    return batch


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    split: str = "test",
    batch_size: int = 32,
    workers: int = 0,
    route: str | None = None,
    frame_sampling: str = "exact",
    views: ViewGrid | None = None,
) -> dict[str, Any]:
    """Score a finished run's best checkpoint on one split (see `run_outputs` for `route`,
    `frame_sampling` and `views`)."""
    model, info, outputs = run_outputs(
        run_dir, data, split, route=route, batch_size=batch_size, workers=workers, frame_sampling=frame_sampling,
        views=views,
    )  # fmt: skip
    result = {
        "run": str(run_dir),
        "checkpoint": info.checkpoint,
        "step": info.step,
        "split": split,
        "route": route or "as-is",
        "frame_sampling": frame_sampling,
        "views": str(views or ViewGrid()),
        "num_clips": len(outputs.target),
        "multilabel": bool(info.multilabel),
    }
    result.update(score_outputs(model, outputs.logits, outputs.target, outputs.has_audio, outputs.has_video, info.multilabel))
    return result


def servable_routes(run_dir: str | Path) -> list[str]:
    """The ROUTES a run's model serves (its exported graphs), in ROUTES' order."""
    from training.checkpoint import load_run

    model, _ = load_run(run_dir)
    servable = {frozenset(m) for m in model.servable_modalities}
    return [name for name, modalities in ROUTES.items() if frozenset(modalities) in servable]


def evaluate_routes(run_dir: str | Path, data: str | Path, split: str = "test", route: str = "all", **options: Any) -> dict[str, Any]:
    """`evaluate_run` once per route the model serves (`avserve evaluate --route all`, hence
    `route`, which must be "all"): {"run", "checkpoint", "step", "split", "frame_sampling",
    "multilabel", "routes": {route: evaluate_run's result}, "skipped": {route: why}}; a route the
    split has no clip for is skipped, not an error. `options` are evaluate_run's (batch_size,
    workers, frame_sampling, ...)."""
    from training.data.records import DatasetError

    if route != "all":
        raise ValueError(f"evaluate_routes scores every route (route='all'), not {route!r}")

    routes: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in servable_routes(run_dir):
        try:
            routes[name] = evaluate_run(run_dir, data, split, route=name, **options)
        except DatasetError as error:
            skipped[name] = str(error)
    if not routes:
        raise DatasetError(f"split {split!r} of {data} has no clip any route of {run_dir} can score: " + "; ".join(skipped.values()))
    first = next(iter(routes.values()))
    summary = {key: first[key] for key in ("run", "checkpoint", "step", "split", "frame_sampling", "views", "multilabel")}
    return {**summary, "routes": routes, "skipped": skipped}


def load_objective_run(run_dir: str | Path, checkpoint: str = "best"):
    """(model, run info, objective) of a run, the objective's modules (projectors, text tower,
    decoder) restored from the checkpoint and the model configured as the objective trains it."""
    from training import checkpoint as ckpt
    from training.objectives import ObjectiveSetup, get_objective
    from training.optim import RECIPES, resolve_recipe

    model, info, state = ckpt.load_run_with_state(run_dir, checkpoint)
    objective_type = get_objective(info.objective)
    recipe = resolve_recipe(info.recipe.get("name") if info.recipe.get("name") in RECIPES else objective_type.default_recipe(False))
    setup = ObjectiveSetup(
        model=model, classes=list(info.classes), multilabel=info.multilabel, recipe=recipe,
        options=objective_type.parse_options(info.objective_options),
    )  # fmt: skip
    objective = objective_type(setup)
    ckpt.load_objective_modules(objective, state, info.checkpoint)
    objective.configure_model(model)
    return model, info, objective


def objective_dataset(model, info, objective, run_dir: str | Path, data: str | Path, split: str):
    """The evaluation dataset of `split` as the run's objective reads it (its modalities, its
    missing-modality rule, its text)."""
    from training.data.dataset import AVClipDataset, Preprocessing
    from training.data.records import DatasetError

    selected = split_records(run_dir, info, data, split)
    modalities = sorted(max((frozenset(m) for m in model.servable_modalities), key=len))
    dataset = AVClipDataset(
        selected.records, info.classes, info.multilabel, Preprocessing.from_config(model.config), train=False,
        modalities=modalities, missing=info.train.get("missing_modality") or type(objective).default_missing,
        text=type(objective).text_input,
    )  # fmt: skip
    if len(dataset) == 0:
        raise DatasetError(f"split {split!r} of {data} has no clip with the modalities {modalities}")
    return dataset


def evaluate_objective(
    run_dir: str | Path,
    data: str | Path,
    split: str = "test",
    batch_size: int | None = None,
    workers: int = 0,
    checkpoint: str = "best",
) -> dict[str, Any]:
    """Score a run with its own objective's evaluation on one split: what a pretraining run
    (contrastive, masked, vatt_nce) is judged by (its losses, retrieval, reconstruction), with
    the objective's modules (projectors, text tower, decoder) restored from the checkpoint. The
    same code the trainer's periodic evaluation runs (Objective.eval_batch / score), at the
    run's own batch size unless told otherwise: an objective whose negatives come from the batch
    (PEMT's MEP and CPP) scores differently at another size."""
    from training.objectives import StepContext, TrainingModule, concatenate

    model, info, objective = load_objective_run(run_dir, checkpoint)
    dataset = objective_dataset(model, info, objective, run_dir, data, split)
    if batch_size is None:
        batch_size = int(info.train.get("batch_size_per_process") or 32)
    loader = evaluation_loader(dataset, batch_size, workers)
    net = TrainingModule(model, objective).eval()
    context = StepContext(model, torch.device("cpu"), np.random.default_rng(0))
    with torch.no_grad():
        outputs = concatenate([objective.eval_batch(net, batch, context) for batch in loader])
    result = {
        "run": str(run_dir), "checkpoint": info.checkpoint, "step": info.step, "split": split,
        "objective": info.objective, "num_clips": len(dataset),
    }  # fmt: skip
    result.update(objective.score(outputs, context))
    result["summary"] = objective.describe(result)
    return result
