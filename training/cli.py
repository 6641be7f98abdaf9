"""The training side of the command line: `avserve data`, `train`, `evaluate`, `pictures`, `export`, `models`.

avserve's CLI (avserve/cli.py) finds this module through the `avserve.commands` entry point
(pyproject.toml) and calls `register(app)`. The data commands are torch-free and always there;
the others need the `[train]` extra (torch): without it they are listed as needing it and exit
with that message. Nothing here imports torch at module level, so `avserve --help` stays fast.

`avserve train` has one option per `TrainConfig` field (training/trainer.py), derived from the
dataclass: a new field is a new option, with its help text from the field's metadata.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from avserve.cli import fail

TRAIN_EXTRA_HINT = "pip install 'avserve[train]' (torch)"

data_app = typer.Typer(help="Datasets: synthetic generation, import of official lists, inspection.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the training commands to avserve's CLI."""
    app.add_typer(data_app, name="data")
    has_torch = importlib.util.find_spec("torch") is not None
    commands = (("train", train_command()), ("evaluate", evaluate), ("pictures", pictures), ("export", export), ("models", models))
    for name, command in commands:
        if has_torch:
            app.command(name)(command)
        else:
            app.command(name, help=f"Needs the [train] extra: {TRAIN_EXTRA_HINT}.", add_help_option=False,
                        context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_needs_train_extra(name))  # fmt: skip


def _needs_train_extra(name: str):
    def command() -> None:
        fail(f"avserve {name} needs the [train] extra: {TRAIN_EXTRA_HINT}")

    command.__name__ = name
    return command


# ---- data ------------------------------------------------------------------------------------


class SynthPreset(str, enum.Enum):
    DATASET = "dataset"
    UPLOADS = "uploads"


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output directory (created).")],
    clips: Annotated[int, typer.Option(min=1, help="Number of audio+video clips.")] = 240,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    clip_seconds: Annotated[float, typer.Option(min=0.5, max=30.0, help="Length of every clip.")] = 2.0,
    unimodal_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Extra audio-only and video-only files, each as a fraction of --clips.")
    ] = 0.1,
    caption_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Files with captions (text for pretraining, 5 each); the rest have none.")
    ] = 0.85,
    scene_coupling: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Video files whose background tint shows their sound (a cross-modal "
                                                   "cue for contrastive pretraining; the unimodal ceilings then do not hold).")
    ] = 0.0,
    workers: Annotated[int, typer.Option(min=1, help="Encoding processes.")] = 1,
    preset: Annotated[
        SynthPreset, typer.Option(help="dataset: the labelled training set. uploads: clips the size of real uploads for "
                               "benchmarks (720p/1080p H.264 + AAC mp4, 10-30 s, short and long GOP) plus "
                               "uploads.json; files already in --out are kept.")
    ] = SynthPreset.DATASET,
    upload: Annotated[
        Optional[list[str]], typer.Option(help="With --preset uploads: write this clip instead of the default set, "
                                               "HEIGHTp:SECONDS:GOP_SECONDS, e.g. 1080p:30:2 (repeatable).")
    ] = None,
) -> None:
    """Write a synthetic audio-visual dataset: real encoded files plus manifest.csv (or, with
    --preset uploads, upload-size clips for `avserve bench`)."""
    if preset is SynthPreset.UPLOADS:
        _synth_uploads(out, upload)
        return
    if upload:
        fail("--upload needs --preset uploads")
    from training.data.synth import SynthConfig, generate_dataset

    config = SynthConfig(
        clip_seconds=clip_seconds, unimodal_fraction=unimodal_fraction, caption_fraction=caption_fraction,
        scene_coupling=scene_coupling,
    )  # fmt: skip
    manifest = generate_dataset(out, clips=clips, seed=seed, config=config, workers=workers)
    typer.echo(f"wrote {manifest}")


def _synth_uploads(out: Path, specs: list[str] | None) -> None:
    from avserve.media.synthetic import UPLOAD_MANIFEST, UPLOAD_SET, UploadClip, write_upload_clips

    try:
        clips = [UploadClip.parse(spec) for spec in specs] if specs else list(UPLOAD_SET)
    except ValueError as error:
        fail(str(error))
    for entry in write_upload_clips(out, clips):
        typer.echo(f"{entry['path']}: {entry['width']}x{entry['height']}, {entry['seconds']:g} s, "
                   f"GOP {entry['gop_seconds']:g} s, {entry['bytes'] / 1e6:.1f} MB")
    typer.echo(f"wrote {out / UPLOAD_MANIFEST}")


@data_app.command("info")
def data_info(
    source: Annotated[Path, typer.Argument(help="A manifest CSV, or a directory (manifest.csv inside, or class folders).")],
) -> None:
    """Summarise a dataset: clips per split and per class."""
    from training.data.records import DatasetError, load_records

    try:
        dataset = load_records(source)
    except DatasetError as error:
        fail(str(error))
    typer.echo(dataset.summary())


@data_app.command("import")
def data_import(
    format_name: Annotated[
        str, typer.Option("--format", help="audioset | vggsound | kinetics | epic (docs/datasets.md).")
    ],
    lists: Annotated[
        list[str], typer.Option("--list", help="An official list, FILE or SPLIT=FILE (train/val/test), repeatable. "
                                               "Without SPLIT= the split comes from the list's split column or its file name.")
    ],
    clips: Annotated[Path, typer.Option(help="Directory holding the downloaded clips (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Output directory: manifest.csv, classes.txt, import_report.csv.")],
    ontology: Annotated[
        Optional[Path], typer.Option(help="AudioSet: class_labels_indices.csv (class order and display names).")
    ] = None,
    labels: Annotated[
        Optional[str], typer.Option(help="AudioSet: name (default with --ontology) | mid. EPIC: verb | noun | action (default).")
    ] = None,
    verb_classes: Annotated[Optional[Path], typer.Option(help="EPIC: EPIC_100_verb_classes.csv (official keys and order).")] = None,
    noun_classes: Annotated[Optional[Path], typer.Option(help="EPIC: EPIC_100_noun_classes.csv (official keys and order).")] = None,
    full_videos: Annotated[
        bool, typer.Option(help="Files named by the video id alone are whole videos: give their clips start/end "
                                "(default: they are the downloaded segments; EPIC: always whole videos).")
    ] = False,
    probe: Annotated[bool, typer.Option(help="Probe every matched file (unreadable ones go to the report).")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Probing processes.")] = 4,
) -> None:
    """Turn an official dataset list (AudioSet, VGGSound, Kinetics, EPIC-Kitchens-100) and a folder
    of downloaded clips into a dataset: manifest.csv + classes.txt, and a report of the clips that
    are missing, unreadable or ambiguous."""
    from training.data.clip_import import import_dataset
    from training.data.importers import FORMATS, ImportOptions, ListFile
    from training.data.records import DatasetError

    if format_name not in FORMATS:
        fail(f"--format {format_name!r}: expected one of {', '.join(FORMATS)}")
    options = ImportOptions(
        ontology=ontology, labels=labels, verb_classes=verb_classes, noun_classes=noun_classes, full_videos=full_videos
    )
    try:
        result = import_dataset(
            format_name, [ListFile.parse(spec) for spec in lists], clips, out, options, probe=probe, workers=workers
        )
    except DatasetError as error:
        fail(str(error))
    typer.echo(result.summary())


@data_app.command("subset")
def data_subset(
    source: Annotated[Path, typer.Argument(help="A manifest CSV, or a directory (manifest.csv inside, or class folders).")],
    out: Annotated[Path, typer.Option(help="Directory to write manifest.csv and classes.txt into (created).")],
    class_cap: Annotated[int, typer.Option(min=1, help="At most this many clips per class (MBT's AS-500K: 200000).")],
    split: Annotated[str, typer.Option(help="The split to cap; the other splits are kept whole.")] = "train",
    seed: Annotated[int, typer.Option(help="Order of the greedy pass; `avserve train --class-cap --seed` uses its seed.")] = 0,
) -> None:
    """Write a class-capped subset of a dataset (MBT's AS-500K: clips visited in a seeded order,
    each kept only if none of its labels has reached the cap) as a new manifest."""
    from dataclasses import replace

    from training.data.balance import cap_per_class, label_counts, write_manifest
    from training.data.records import MANIFEST_FILE, DatasetError, load_records

    try:
        dataset = load_records(source)
    except DatasetError as error:
        fail(str(error))
    chosen = dataset.split(split).records
    if not chosen:
        fail(f"{source}: split {split!r} is empty")
    if (out / MANIFEST_FILE).resolve() == Path(dataset.source).resolve():
        fail(f"--out {out} holds the dataset's own {MANIFEST_FILE}; write the subset somewhere else")
    capped = cap_per_class(chosen, class_cap, seed)
    dropped = set(map(id, chosen)) - set(map(id, capped))  # by identity: a manifest may list a clip twice
    manifest = write_manifest(replace(dataset, records=[r for r in dataset.records if id(r) not in dropped]), out)
    before, after = max(label_counts(chosen).values()), max(label_counts(capped).values())
    typer.echo(f"{split}: kept {len(capped)} of {len(chosen)} clips; largest class {before} -> {after} clips")
    typer.echo(f"wrote {manifest}")


@data_app.command("cache")
def data_cache(
    data: Annotated[Path, typer.Option(help="Dataset: a manifest CSV or a directory.")],
    out: Annotated[Path, typer.Option(help="Cache directory to write (new or empty).")],
    model: Annotated[
        Optional[str], typer.Option(help="Decode for this model preset (avserve models) or training run directory.")
    ] = None,
    sample_rate: Annotated[Optional[int], typer.Option(min=1, help="Audio sample rate (instead of, or overriding, --model's).")] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Frames per clip_seconds window (overrides --model's).")] = None,
    size: Annotated[Optional[int], typer.Option(min=1, help="Frame size in pixels (overrides --model's).")] = None,
    clip_seconds: Annotated[Optional[float], typer.Option(min=0.01, help="Window length in seconds (overrides --model's).")] = None,
    splits: Annotated[str, typer.Option(help="Comma-separated splits to cache ('' for every clip).")] = "train,val,test",
    workers: Annotated[int, typer.Option(min=1, help="Decoding processes.")] = 2,
    shard_size: Annotated[str, typer.Option(help="Largest shard file, e.g. 512MB, 1GB.")] = "1GB",
    frame_oversample: Annotated[
        int, typer.Option(min=1, help="Cached frames per model frame period: train windows' frames land within half a "
                                      "grid step of the raw decoder's (costs this many times the frame storage).")
    ] = 1,
    max_span_seconds: Annotated[
        float, typer.Option(help="Longest span cached per clip (the centred part of longer ones).")
    ] = 30.0,
) -> None:
    """Decode a dataset once, at a model's training resolution, into shards that `avserve train
    --data CACHE` reads without decoding (augmentation stays random per epoch)."""
    if importlib.util.find_spec("webdataset") is None:  # the shards' writer comes with the [train] extra
        fail(f"avserve data cache needs the [train] extra: {TRAIN_EXTRA_HINT}")
    from training.data.cache import CacheError, CacheSpec, build_cache, parse_size
    from training.data.records import DatasetError, load_records

    given = {"sample_rate": sample_rate, "num_frames": frames, "image_size": size, "clip_seconds": clip_seconds}
    values = dict(_model_preprocessing(model)) if model else {}
    values.update({k: v for k, v in given.items() if v is not None})
    flags = {"sample_rate": "--sample-rate", "num_frames": "--frames", "image_size": "--size", "clip_seconds": "--clip-seconds"}
    lacking = [flag for key, flag in flags.items() if key not in values]
    if lacking:
        fail(f"give --model, or all of {', '.join(flags.values())} (missing: {', '.join(lacking)})")
    try:
        spec = CacheSpec.for_model(**values, frame_oversample=frame_oversample, max_span_seconds=max_span_seconds)
        dataset = load_records(data)
        wanted = [s.strip() for s in splits.split(",") if s.strip()] or None
        result = build_cache(dataset, out, spec, splits=wanted, workers=workers, shard_bytes=parse_size(shard_size))
    except (CacheError, DatasetError) as error:
        fail(str(error))
    typer.echo(f"wrote {result.clips} clips in {result.shards} shard(s), {result.bytes / 1e6:.1f} MB, to {out} ({spec.describe()})")
    if result.failed:
        for clip in result.failed:
            typer.echo(f"  failed: {clip['path']}: {clip['error']}", err=True)
        fail(f"{len(result.failed)} clip(s) could not be decoded and are not in the cache (listed under 'failed' in {out / 'cache.json'})", code=1)


def _model_preprocessing(model: str) -> dict[str, Any]:
    """sample_rate, num_frames, image_size, clip_seconds of a preset or a training run directory."""
    if Path(model, "run.json").is_file():
        try:  # read directly: a run's preprocessing needs no torch
            config = json.loads(Path(model, "run.json").read_text())["config"]
        except (ValueError, KeyError) as error:
            fail(f"{Path(model, 'run.json')}: not a run description ({error})")
    else:
        if importlib.util.find_spec("torch") is None:
            fail(f"--model {model}: a preset needs the [train] extra ({TRAIN_EXTRA_HINT}); give the sizes instead")
        from training.models import get_model_config

        try:
            config = dataclasses.asdict(get_model_config(model))
        except KeyError as error:
            fail(str(error.args[0] if error.args else error))
    size = config["image_size"]
    return {
        "sample_rate": int(config["sample_rate"]), "num_frames": int(config["num_frames"]),
        "image_size": int(size[0] if isinstance(size, (list, tuple)) else size), "clip_seconds": float(config["clip_seconds"]),
    }  # fmt: skip


# ---- train: options derived from TrainConfig ----------------------------------------------------

# Where a TrainConfig field's option differs from the derived one (name, help, default).
CLI_ONLY: dict[str, dict[str, Any]] = {
    "overrides": {"flags": ("--set",), "help": "Model config override key=value (JSON value), repeatable."},
    "objective_options": {"flags": ("--objective-set",), "help": "Objective option key=value (JSON value), repeatable."},
    "mixup_alpha": {"flags": ("--mixup",)},
    "modality_mixup": {"flags": ("--modality-mixup/--shared-mixup",)},
    "workers": {"default": 2},  # decode in parallel; the class default (0) suits tests
    "eval_split": {"help": "Split to evaluate on ('' for none; falls back to 'test')."},
}
# (min, max) of numeric options.
BOUNDS: dict[str, tuple[Any, Any]] = {
    "steps": (1, None), "batch_size": (1, None), "workers": (0, None), "warmup_steps": (0, None),
    "label_smoothing": (0.0, 1.0), "mixup_alpha": (0.0, None), "eval_every": (1, None), "log_every": (1, None),
    "max_eval_clips": (1, None), "stop_at": (1, None), "layer_decay": (0.0, 1.0),
    "class_cap": (1, None),
}  # fmt: skip


def _cli_type(hint: Any) -> tuple[Any, bool]:
    """(the option's type, whether it may be left unset) for a TrainConfig type hint."""
    if typing.get_origin(hint) is dict:
        return list[str], True  # key=value, repeatable
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    optional = type(None) in args
    members = [a for a in args if a is not type(None)] or [hint]
    return (Path if Path in members else members[0]), optional


def train_command():
    """`train`, with a signature typer reads: one option per TrainConfig field."""
    from training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    parameters, annotations = [], {}
    for f in dataclasses.fields(TrainConfig):
        extra = CLI_ONLY.get(f.name) or {}
        base, optional = _cli_type(hints[f.name])
        low, high = BOUNDS.get(f.name, (None, None))
        option = typer.Option(*extra.get("flags", ()), help=extra.get("help", f.metadata.get("help", "")), min=low, max=high)
        annotation = Annotated[Optional[base] if optional else base, option]
        if "default" in extra:
            default = extra["default"]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = None
        else:
            default = inspect.Parameter.empty  # required
        parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
        annotations[f.name] = annotation

    def train(**options: Any) -> None:
        """Train a model with an objective (supervised, contrastive, masked, ...); runs under torchrun for DDP."""
        from training.checkpoint import CheckpointError
        from training.data.records import DatasetError
        from training.distributed import cleanup
        from training.trainer import TrainError, Trainer

        from training.config import TrainConfig

        options["overrides"] = _assignments(options["overrides"], "--set")
        options["objective_options"] = _assignments(options["objective_options"], "--objective-set")
        options["eval_split"] = options["eval_split"] or None
        try:
            Trainer(TrainConfig(**options)).fit()
        except (TrainError, DatasetError, CheckpointError) as error:
            fail(str(error))
        finally:
            cleanup()

    train.__signature__ = inspect.Signature(parameters)
    train.__annotations__ = annotations
    return train


def _assignments(items: list[str] | None, flag: str) -> dict[str, Any]:
    """["depth=2", 'fusion="cross_attention"'] -> {"depth": 2, "fusion": "cross_attention"} (JSON
    values; anything that is not JSON is kept as a string)."""
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            fail(f"{flag} expects key=value, got {item!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except ValueError:
            values[key.strip()] = raw
    return values


# ---- evaluate, export, models -------------------------------------------------------------------


def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A training run directory (run.json + best.pt).")],
    data: Annotated[Path, typer.Option(help="Dataset: a manifest CSV or a directory.")],
    split: Annotated[str, typer.Option(help="Which split to score.")] = "test",
    batch_size: Annotated[
        Optional[int],
        typer.Option(min=1, help="Clips per batch (default: 32; a pretraining run: its own training batch size)."),
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 0,
    route: Annotated[
        Optional[str],
        typer.Option(help="Score one serving route on every clip that has its inputs: av | audio | video (others removed); "
                          "all: each route the model serves in turn."),
    ] = None,
    frame_sampling: Annotated[
        str, typer.Option(help="exact | fast: pick video frames as a gateway with this `sampling` does.")
    ] = "exact",
    views: Annotated[
        Optional[str],
        typer.Option(help="T,S: score each clip as T temporal windows spread over it x S spatial crops (1 or 3), "
                          "averaging their logits: MBT's 4 views are 4,1, VATT's 12 are 4,3. Default: one centred view."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Score a trained run on a split: each head, the served (averaged) prediction, each kind of
    clip; a pretraining run (an objective without labels) by its own objective's evaluation."""
    from training.checkpoint import CheckpointError, read_run_info
    from training.data.records import DatasetError
    from training.evaluate import evaluate_objective, evaluate_routes, evaluate_run
    from training.objectives import get_objective

    from avserve.views import ViewGrid

    try:
        grid = ViewGrid.parse(views) if views is not None else None
    except ValueError as error:
        fail(f"--views: {error}")
    try:
        objective = read_run_info(checkpoint).objective
        if not get_objective(objective).needs_labels:
            if route is not None or frame_sampling != "exact" or grid is not None:
                fail(f"--route, --frame-sampling and --views score classifiers; {checkpoint} is a {objective} pretraining run")
            result = evaluate_objective(checkpoint, data, split=split, batch_size=batch_size, workers=workers)
            typer.echo(json.dumps(result, indent=2) if as_json else f"{checkpoint} on {split} ({result['num_clips']} clips, step {result['step']}, {objective}): {result['summary']}")
            return
        result = (evaluate_routes if route == "all" else evaluate_run)(
            checkpoint, data, split=split, batch_size=batch_size or 32, workers=workers, route=route,
            frame_sampling=frame_sampling, views=grid,
        )  # fmt: skip
    except (CheckpointError, DatasetError, ValueError) as error:
        fail(str(error))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    route_note = f", route {route}" if route else ""
    route_note += f", {grid.count} views ({grid.temporal} windows x {grid.spatial} crops)" if grid else ""
    clips = f"{result['num_clips']} clips, " if "num_clips" in result else ""
    table = Table(title=f"{checkpoint} on {split}{route_note} ({clips}step {result['step']})")
    metrics = _metric_columns(result.get("multilabel", False))
    for column in ("route", "prediction", "clips", *metrics.values()):
        if column != "route" or route == "all":
            table.add_column(column, justify="left" if column in ("route", "prediction") else "right")
    routes = result["routes"] if route == "all" else {route: result}
    for route_name, route_result in routes.items():
        for row, (name, m) in enumerate(_prediction_rows(route_result, by_modalities=route != "all")):
            cells = [str(m["num_clips"]), *(f"{m[key]:.3f}" for key in metrics)]
            if route == "all":  # the route named once per section; "served" short enough for 80 columns
                cells = [route_name if row == 0 else "", name.replace(" (mean of heads)", ""), *cells]
            else:
                cells = [name, *cells]
            table.add_row(*cells)
        if route == "all":
            table.add_section()
    Console().print(table)
    for route_name, why in result.get("skipped", {}).items():
        typer.echo(f"route {route_name} skipped: {why}")


def _metric_columns(multilabel: bool) -> dict[str, str]:
    """{metric key: column}: AudioSet's AUC and d-prime only for multi-label sets."""
    columns = {"top1": "top-1", "top5": "top-5", "mAP": "mAP"}
    return {**columns, "AUC": "AUC", "d_prime": "d-prime"} if multilabel else columns


def _prediction_rows(result: dict[str, Any], by_modalities: bool) -> list[tuple[str, dict[str, Any]]]:
    """(name, metrics) of each head, the served prediction and (by_modalities) each kind of clip."""
    rows = [(f"head {h}", m) for h, m in result["heads"].items()]
    rows += [("served (mean of heads)", result["average"])] if "average" in result else []
    rows += [(f"served, {group} clips", m) for group, m in result["by_modalities"].items()] if by_modalities else []
    return rows


def pictures(
    checkpoint: Annotated[Path, typer.Option(help="A masked-reconstruction pretraining run directory (run.json + best.pt).")],
    data: Annotated[Path, typer.Option(help="Dataset: a manifest CSV or a directory.")],
    out: Annotated[Path, typer.Option(help="Directory to write the PNG files into.")],
    split: Annotated[str, typer.Option(help="Which split's clips to draw.")] = "test",
    clips: Annotated[int, typer.Option(min=1, max=64, help="How many clips (the split's first).")] = 4,
    which: Annotated[str, typer.Option("--checkpoint-file", help="best or last.")] = "best",
) -> None:
    """Draw a masked autoencoder's reconstructions: per clip, a spectrogram and a strip of frames,
    each as original / masked / reconstruction (training/pictures.py)."""
    from training.checkpoint import CheckpointError
    from training.data.records import DatasetError
    from training.pictures import pictures_for_run

    try:
        written = pictures_for_run(checkpoint, data, out, split=split, clips=clips, checkpoint=which)
    except (CheckpointError, DatasetError, ValueError) as error:
        fail(str(error))
    for path in written:
        typer.echo(str(path))


def export(
    checkpoint: Annotated[Path, typer.Option(help="A training run directory (run.json + best.pt).")],
    repository: Annotated[Path, typer.Option(help="The Triton model repository to write into.")] = Path("model_repository"),
    name: Annotated[Optional[str], typer.Option(help="Family name: models are <name>_av, <name>_audio, <name>_video.")] = None,
    runtime: Annotated[
        str, typer.Option(help="onnxruntime (default), tensorrt (ORT backend's TensorRT accelerator, FP16) or tensorrt_plan.")
    ] = "onnxruntime",
    max_batch_size: Annotated[int, typer.Option(min=1, help="Largest batch Triton may form.")] = 16,
    instances: Annotated[int, typer.Option(min=1, help="Model instances per device.")] = 1,
    quantize: Annotated[
        str,
        typer.Option(help="none (fp32, default) or int8: onnxruntime dynamic quantization of MatMul, for CPUs."),
    ] = "none",
    parity_data: Annotated[
        Optional[Path],
        typer.Option(help="With --quantize int8: a dataset whose --parity-split clips measure int8 vs fp32 (default: generated inputs)."),
    ] = None,
    parity_split: Annotated[str, typer.Option(help="Split of --parity-data to measure parity on.")] = "test",
) -> None:
    """Export a trained run as one Triton model per servable modality set (ONNX, parity-checked)."""
    from training.export import ExportError, ExportOptions, export_run

    try:
        options = ExportOptions(
            family=name,
            runtime=runtime,
            max_batch_size=max_batch_size,
            instance_count=instances,
            quantize=quantize,
            parity_data=parity_data,
            parity_split=parity_split,
        )
        exported = export_run(checkpoint, repository, options)
    except ExportError as error:
        fail(str(error))
    for model in exported:
        typer.echo(
            f"{model.directory}  inputs={'+'.join(sorted(model.modalities))}  heads={','.join(model.heads)}  "
            f"{model.file_bytes / 1e6:.1f} MB  {model.precision}  max|torch-onnx|={model.max_abs_diff:.1e}"
        )
        if model.int8_parity is not None:
            typer.echo(f"  {model.int8_parity.summary()}")


def models(
    pattern: Annotated[str, typer.Argument(help="fnmatch pattern over preset names, e.g. '*tiny*'.")] = "*",
) -> None:
    """List the registered model presets (architecture, parameters, servable routes) and objectives."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from avserve.contract import ROUTE_SUFFIXES
    from training.models import create_model, list_models
    from training.objectives import get_objective, list_objectives

    table = Table(title="model presets (avserve train --model NAME)")
    for column in ("preset", "architecture", "parameters", "routes", "heads"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for name in list_models(pattern):
        with torch.device("meta"):  # counts without allocating paper-size weights
            model = create_model(name)
        routes = ", ".join(ROUTE_SUFFIXES[frozenset(m)] for m in model.servable_modalities)
        count = sum(p.numel() for p in model.parameters())
        table.add_row(name, model.architecture, f"{count / 1e6:.1f}M", routes, ",".join(model.head_names))
    console = Console()
    console.print(table)
    objectives = Table(title="objectives (avserve train --objective NAME)")
    for column in ("objective", "labels", "default recipe", "options (--objective-set)"):
        objectives.add_column(column)
    for name in list_objectives():
        objective = get_objective(name)
        options = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(objective.Options)) or "-"
        objectives.add_row(name, "yes" if objective.needs_labels else "no", objective.default_recipe(False), options)
    console.print(objectives)
