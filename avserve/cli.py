"""The one command line: `avserve <command>`.

Every command imports what it needs inside its body, so `avserve --help` and the serving
commands never pay for (or require) torch. Commands that train or export import `training`,
which is only installed with the `[train]` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="avserve",
    help="Train audio-visual classifiers and serve them behind an HTTP API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: synthetic generation and inspection.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def probe(
    path: Annotated[Path, typer.Argument(help="A media file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the streams PyAV finds in a media file (what the gateway would route on)."""
    from avserve.media import MediaError, probe as probe_media

    try:
        info = probe_media(path)
    except MediaError as error:
        _fail(f"[{error.code}] {error.message}")
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(path), show_header=False)
    for key, value in info.to_dict().items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output directory (created).")],
    clips: Annotated[int, typer.Option(min=1, help="Number of audio+video clips.")] = 240,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    clip_seconds: Annotated[float, typer.Option(min=0.5, max=30.0, help="Length of every clip.")] = 2.0,
    unimodal_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Extra audio-only and video-only files, each as a fraction of --clips.")
    ] = 0.1,
    workers: Annotated[int, typer.Option(min=1, help="Encoding processes.")] = 1,
) -> None:
    """Write a synthetic audio-visual dataset: real encoded files plus manifest.csv."""
    from training.data.synth import SynthConfig, generate_dataset

    config = SynthConfig(clip_seconds=clip_seconds, unimodal_fraction=unimodal_fraction)
    manifest = generate_dataset(out, clips=clips, seed=seed, config=config, workers=workers)
    typer.echo(f"wrote {manifest}")


@data_app.command("info")
def data_info(
    source: Annotated[Path, typer.Argument(help="A manifest CSV, or a directory (manifest.csv inside, or class folders).")],
) -> None:
    """Summarise a dataset: clips per split and per class."""
    from training.data.records import DatasetError, load_records

    try:
        dataset = load_records(source)
    except DatasetError as error:
        _fail(str(error))
    typer.echo(dataset.summary())


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
