"""Reconstruction pictures: what a masked autoencoder saw, hid and drew, as PNG images.

People would rather look at a reconstruction than read a loss. For each clip and modality, three
panels from the objective's own forward pass (training/objectives/masked.py):

    original        the clean target (log-mel spectrogram; normalised frames mapped back to RGB)
    masked          the same with every masked patch greyed out: what the encoder was given
    reconstruction  the visible patches as they were, each masked patch the decoder's prediction

A spectrogram is drawn with time across and frequency up (colour: log-mel, on the original's
scale); a video as a strip of frames (one column per frame, the three panels as rows). When the
objective standardises each target patch (`norm_targets`), a prediction is in those units: it is
mapped back with the original patch's own mean and standard deviation, as MAE's pictures are
(the prediction of a patch's shape, at the true patch's brightness and contrast).

    avserve pictures --checkpoint runs/mae --data data/synth --split test --clips 4 --out pictures/

A pretraining run writes the same pictures for its first evaluation clips into <run>/pictures/
when it finishes (Objective.write_pictures; the trainer names no objective).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from training.models import AUDIO, VIDEO

MASKED_GREY = 0.5  # RGB grey of a hidden patch


def reconstructed_patches(outputs: dict[str, Any], norm_targets: bool) -> dict[str, dict[str, Tensor]]:
    """{modality: {"original", "masked", "reconstruction": [B, N, patch_dim] (NaN = hidden),
    "hidden": bool [B, N]}} from a masked objective's forward outputs."""
    panels = {}
    for m, prediction in outputs["predictions"].items():
        target = outputs["targets"][m].float()
        prediction = prediction.float()
        if norm_targets:  # back from per-patch standardised units
            mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6).sqrt()
            prediction = prediction * std + mean
        hidden = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device).scatter(1, outputs["keep"][m], False)
        panels[m] = {
            "original": target,
            "masked": target.masked_fill(hidden[..., None], float("nan")),
            "reconstruction": torch.where(hidden[..., None], prediction, target),
            "hidden": hidden,
        }
    return panels


def write_pictures(model, objective, batch: dict[str, Tensor], directory: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Runs `objective` (a masked objective) on `batch` in eval mode with each clip's evaluation
    mask and writes <directory>/<name>_<modality>.png per clip; returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    was_training = model.training, objective.training
    model.eval()
    objective.eval()
    try:
        with torch.no_grad():
            seeds = [int(i) for i in batch["index"]]
            device = next(model.parameters()).device
            inputs = {m: batch[m].to(device) for m in (AUDIO, VIDEO) if m in batch}
            outputs = objective(model, **inputs, seeds=seeds)
    finally:
        model.train(was_training[0])
        objective.train(was_training[1])
    panels = reconstructed_patches(outputs, objective.options.norm_targets)
    count = len(batch["index"])
    names = list(names) if names is not None else [f"clip{int(i)}" for i in batch["index"]]
    written = []
    for m, panel in panels.items():
        images = {k: model.unpatchify(m, v) for k, v in panel.items() if k != "hidden"}
        for row in range(count):
            if not bool(batch.get(f"has_{m}", torch.ones(count, dtype=torch.bool))[row]):
                continue
            path = directory / f"{names[row]}_{m}.png"
            title = f"{names[row]} {m}: {int(panel['hidden'][row].sum())} of {panel['hidden'].shape[1]} patches masked"
            if m == AUDIO:
                _spectrogram_figure({k: v[row] for k, v in images.items()}, title, path)
            else:
                _frames_figure({k: v[row] for k, v in images.items()}, model.config, title, path)
            written.append(path)
    return written


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, thread-safe

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _spectrogram_figure(images: dict[str, Tensor], title: str, path: Path) -> None:
    """Three log-mel panels [frames, n_mels] stacked, time across, frequency up."""
    import matplotlib

    original = images["original"].cpu().numpy()
    low, high = np.nanpercentile(original, 1), np.nanpercentile(original, 99.5)
    frames, bins = original.shape
    figure = _figure(max(6.0, frames / 40), 1.2 + 3 * max(1.2, bins / 50))
    axes = figure.subplots(3, 1, sharex=True)
    colours = matplotlib.colormaps["magma"].with_extremes(bad=(MASKED_GREY,) * 3)  # NaN = a hidden patch
    for axis, (label, image) in zip(axes, images.items(), strict=True):
        axis.imshow(image.cpu().numpy().T, origin="lower", aspect="auto", cmap=colours, vmin=low, vmax=high, interpolation="nearest")
        axis.set_ylabel(f"{label}\nmel bin")
    axes[-1].set_xlabel("spectrogram frame")
    figure.suptitle(title, fontsize=9)
    figure.savefig(path)


def _frames_figure(images: dict[str, Tensor], config, title: str, path: Path) -> None:
    """Rows original / masked / reconstruction, one column per frame, in RGB."""
    mean = np.asarray(config.pixel_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.pixel_std, dtype=np.float32)[:, None, None]
    frames = images["original"].shape[0]
    figure = _figure(1.3 * frames + 1.2, 4.4)
    axes = np.asarray(figure.subplots(3, frames, squeeze=False))
    for r, (label, video) in enumerate(images.items()):
        for f in range(frames):
            rgb = video[f].cpu().numpy() * std + mean  # [3, H, W] in 0..1
            rgb = np.where(np.isnan(rgb), MASKED_GREY, rgb).clip(0.0, 1.0).transpose(1, 2, 0)
            axis = axes[r, f]
            axis.imshow(rgb, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if f == 0:
                axis.set_ylabel(label)
            if r == 0:
                axis.set_title(f"frame {f}", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path)


def pictures_for_run(run_dir: str | Path, data: str | Path, out: str | Path, split: str = "test", clips: int = 4,
                     checkpoint: str = "best") -> list[Path]:  # fmt: skip
    """`avserve pictures`: the first `clips` clips of `split` through a pretraining run's checkpoint."""
    from torch.utils.data import default_collate

    from training.evaluate import load_objective_run, objective_dataset

    model, info, objective = load_objective_run(run_dir, checkpoint)
    if not hasattr(objective, "options") or not hasattr(objective.options, "norm_targets") or not hasattr(model, "unpatchify"):
        raise ValueError(f"{run_dir} was trained with {info.objective!r} on {info.model}: no reconstructions to draw "
                         "(pictures need a masked-reconstruction run of a patch-token model)")  # fmt: skip
    dataset = objective_dataset(model, info, objective, run_dir, data, split)
    count = min(clips, len(dataset))
    batch = default_collate([dataset[i] for i in range(count)])
    return write_pictures(model, objective, batch, out, [dataset.records[i].path.stem for i in range(count)])
