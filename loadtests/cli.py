"""`avserve bench`: registered by avserve's CLI through the `avserve.commands` entry point."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command(
        "bench",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    )(bench)


def bench(ctx: typer.Context) -> None:
    """Benchmark the gateway against Triton direct, the Triton backend, micro-batching off and
    FastAPI + PyTorch eager, in one run (loadtests/bench.py; `avserve bench --help` for options).

    Needs the train extra (it exports the model with torch)."""
    from loadtests.bench import main

    main(list(ctx.args))
