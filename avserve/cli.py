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


def _run_until_interrupted(server, *, name: str, announce, errors: dict) -> None:
    """Start a child server, announce it, and wait until it exits or Ctrl-C / SIGTERM; always stop it.

    `errors` maps exception types to exit codes: 2 (the user's input; printed on one line)
    or 1 (the server failed; the message may carry its log tail).
    """
    import signal

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (docker stop, systemd) stops as cleanly as Ctrl-C; SIGINT is set explicitly
    # because a shell starts background jobs with it ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code = 0
    try:
        server.start()
        announce()
        typer.echo("Press Ctrl-C to stop.")
        code = server.wait()
        typer.secho(f"error: {name} exited with code {code}\n{server.log_tail()}", fg=typer.colors.RED, err=True)
        exit_code = 1
    except tuple(errors) as error:
        exit_code = next(code for kind, code in errors.items() if isinstance(error, kind))
        message = "; ".join(str(error).splitlines()) if exit_code == 2 else str(error)
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    except KeyboardInterrupt:
        typer.echo(f"stopping {name} ...")
    finally:
        # A second Ctrl-C must not cut the shutdown short and orphan the server.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if exit_code:
        raise typer.Exit(exit_code)
    typer.echo("stopped")


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


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Model preset (training.models.list_models()), e.g. zorro_tiny.")],
    data: Annotated[Path, typer.Option(help="Dataset: a manifest CSV or a directory.")],
    out: Annotated[Path, typer.Option(help="Run directory (run.json, last.pt, best.pt, metrics.jsonl, eval.json).")],
    objective: Annotated[str, typer.Option(help="supervised | contrastive (Zorro audio-visual NCE pre-training).")] = "supervised",
    epochs: Annotated[Optional[float], typer.Option(help="Epochs (default 10 if --steps is not given).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Optimiser steps (instead of --epochs).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per step per process (global = x world size).")] = 8,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the recipe's).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay (default: the recipe's).")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(min=0, help="Linear warm-up steps (default: the recipe's).")] = None,
    recipe: Annotated[
        Optional[str], typer.Option(help="Optimiser recipe (training.optim.RECIPES); default supervised_scratch / finetune / contrastive.")
    ] = None,
    scale_lr: Annotated[bool, typer.Option(help="Multiply the LR by global batch / 256 (Zorro).")] = False,
    label_smoothing: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Label smoothing (default: recipe).")] = None,
    mixup: Annotated[Optional[float], typer.Option(min=0.0, help="Mixup Beta(alpha, alpha); 0 = off (default: recipe).")] = None,
    modality_mixup: Annotated[
        Optional[bool],
        typer.Option("--modality-mixup/--shared-mixup", help="One mixup lambda per modality (MBT) or one for both (default: recipe)."),
    ] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip the gradient norm to this value.")] = None,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 2,
    init_from: Annotated[Optional[Path], typer.Option(help="Fine-tune from a run directory (its best.pt) or a .pt file.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last.pt.")] = False,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Model config override key=value (JSON value), repeatable.")
    ] = None,
    missing: Annotated[
        Optional[str], typer.Option(help="Clips lacking a modality: zero (zero-fill, loss only on existing heads) | skip.")
    ] = None,
    modality_dropout: Annotated[
        float,
        typer.Option(help="Fraction of audio+video clips made audio- or video-only per batch (trains MBT's unimodal routes)."),
    ] = 0.0,
    eval_split: Annotated[str, typer.Option(help="Split to evaluate on ('' for none; falls back to 'test').")] = "val",
    eval_every: Annotated[Optional[int], typer.Option(min=1, help="Evaluate every N steps (default once per epoch).")] = None,
    log_every: Annotated[int, typer.Option(min=1, help="Write a metrics.jsonl line every N steps.")] = 10,
    amp: Annotated[str, typer.Option(help="Mixed precision: auto (CUDA only) | off | bf16 | fp16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for initialisation, sampling and augmentation.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a model (supervised or contrastive); runs under torchrun for DDP."""
    overrides: dict = {}
    for item in set_ or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set expects key=value, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(raw)
        except ValueError:
            overrides[key.strip()] = raw
    from training.checkpoint import CheckpointError
    from training.data.records import DatasetError
    from training.trainer import TrainConfig, TrainError, Trainer

    config = TrainConfig(
        model=model, data=data, out=out, objective=objective, epochs=epochs, steps=steps, batch_size=batch_size,
        workers=workers, overrides=overrides, recipe=recipe, lr=lr, weight_decay=weight_decay,
        warmup_steps=warmup_steps, scale_lr=scale_lr, label_smoothing=label_smoothing, mixup_alpha=mixup,
        modality_mixup=modality_mixup,
        grad_clip=grad_clip, init_from=init_from, resume=resume, eval_split=eval_split or None, missing=missing,
        modality_dropout=modality_dropout,
        amp=amp, device=device, seed=seed, eval_every=eval_every, log_every=log_every, progress=progress,
    )  # fmt: skip
    try:
        Trainer(config).fit()
    except (TrainError, DatasetError, CheckpointError) as error:
        _fail(str(error))
    finally:
        from training.distributed import cleanup

        cleanup()


@app.command()
def triton(
    repository: Annotated[Path, typer.Option("--repository", help="The model repository to serve (left untouched).")],
    http_port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP/REST port (0: any free port).")] = 8000,
    grpc_port: Annotated[int, typer.Option(min=0, max=65535, help="gRPC port (0: any free port).")] = 8001,
    metrics_port: Annotated[int, typer.Option(min=0, max=65535, help="Prometheus metrics port (0: any free port).")] = 8002,
    address: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    log_verbose: Annotated[int, typer.Option(min=0, help="Triton's --log-verbose level.")] = 0,
    log_file: Annotated[Optional[Path], typer.Option(help="Keep the server log here (default: a temp file).")] = None,
    startup_timeout: Annotated[float, typer.Option(min=1.0, help="Seconds to wait for readiness.")] = 120.0,
) -> None:
    """Run a real local Triton (CPU, Python backend) on a model repository until Ctrl-C."""
    from avserve.repository import RepositoryError
    from avserve.triton import LocalTriton, LocalTritonError, TritonNotInstalledError

    server = LocalTriton(
        repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, address=address,
        log_verbose=log_verbose, log_file=log_file, startup_timeout=startup_timeout,
    )  # fmt: skip

    def announce() -> None:
        typer.echo(f"Triton ready in {server.startup_seconds:.1f} s, serving {', '.join(server.shadow.models)}")
        typer.echo(f"  HTTP     {server.http_url}")
        typer.echo(f"  gRPC     {server.grpc_url}")
        typer.echo(f"  metrics  {server.metrics_url}")
        for name, reason in server.shadow.skipped.items():
            typer.echo(f"  skipped  {name}: {reason}")

    _run_until_interrupted(
        server, name="Triton", announce=announce,
        errors={RepositoryError: 2, TritonNotInstalledError: 2, LocalTritonError: 1},
    )  # fmt: skip


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A training run directory (run.json + best.pt).")],
    data: Annotated[Path, typer.Option(help="Dataset: a manifest CSV or a directory.")],
    split: Annotated[str, typer.Option(help="Which split to score.")] = "test",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 0,
    route: Annotated[
        Optional[str],
        typer.Option(help="Score one serving route on every clip that has its inputs: av | audio | video (others removed)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Score a trained run on a split: each head, the served (averaged) prediction, each kind of clip."""
    from training.checkpoint import CheckpointError
    from training.data.records import DatasetError
    from training.evaluate import evaluate_run

    try:
        result = evaluate_run(checkpoint, data, split=split, batch_size=batch_size, workers=workers, route=route)
    except (CheckpointError, DatasetError, ValueError) as error:
        _fail(str(error))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    route_note = f", route {route}" if route else ""
    table = Table(title=f"{checkpoint} on {split}{route_note} ({result['num_clips']} clips, step {result['step']})")
    for column in ("prediction", "clips", "top-1", "top-5", "mAP"):
        table.add_column(column, justify="left" if column == "prediction" else "right")
    rows = [(f"head {h}", m) for h, m in result["heads"].items()]
    rows += [("served (mean of heads)", result["average"])] if "average" in result else []
    rows += [(f"served, {group} clips", m) for group, m in result["by_modalities"].items()]
    for name, m in rows:
        table.add_row(name, str(m["num_clips"]), f"{m['top1']:.3f}", f"{m['top5']:.3f}", f"{m['mAP']:.3f}")
    Console().print(table)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="A training run directory (run.json + best.pt).")],
    repository: Annotated[Path, typer.Option(help="The Triton model repository to write into.")] = Path("model_repository"),
    name: Annotated[Optional[str], typer.Option(help="Family name: models are <name>_av, <name>_audio, <name>_video.")] = None,
    runtime: Annotated[
        str, typer.Option(help="onnxruntime (default), tensorrt (ORT backend's TensorRT accelerator, FP16) or tensorrt_plan.")
    ] = "onnxruntime",
    max_batch_size: Annotated[int, typer.Option(min=1, help="Largest batch Triton may form.")] = 16,
    instances: Annotated[int, typer.Option(min=1, help="Model instances per device.")] = 1,
) -> None:
    """Export a trained run as one Triton model per servable modality set (ONNX, parity-checked)."""
    from training.export import ExportError, ExportOptions, export_run

    try:
        options = ExportOptions(family=name, runtime=runtime, max_batch_size=max_batch_size, instance_count=instances)
        exported = export_run(checkpoint, repository, options)
    except ExportError as error:
        _fail(str(error))
    for model in exported:
        typer.echo(
            f"{model.directory}  inputs={'+'.join(sorted(model.modalities))}  heads={','.join(model.heads)}  "
            f"{model.file_bytes / 1e6:.1f} MB  max|torch-onnx|={model.max_abs_diff:.1e}"
        )


@app.command()
def serve(
    repository: Annotated[
        Optional[Path], typer.Option(help="Model repository (embedded backend); default: AVSERVE_REPOSITORY or ./model_repository.")
    ] = None,
    backend: Annotated[Optional[str], typer.Option(help="embedded (onnxruntime in-process) or triton.")] = None,
    triton_url: Annotated[Optional[str], typer.Option(help="Triton gRPC host:port (triton backend).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    log_level: Annotated[Optional[str], typer.Option(help="debug | info | warning | error.")] = None,
) -> None:
    """Serve the HTTP gateway (POST /classify, /v1/models, /healthz, /readyz, /metrics, /docs).

    Every other setting is an AVSERVE_* environment variable (avserve/gateway/settings.py).
    """
    import uvicorn
    from pydantic import ValidationError

    from avserve.gateway import GatewaySettings, create_app
    from avserve.gateway.observability import configure_logging
    from avserve.repository import RepositoryError

    if backend is not None and backend not in ("embedded", "triton"):
        _fail(f"--backend must be embedded or triton, not {backend!r}")
    overrides = {"repository": repository, "backend": backend, "triton_url": triton_url, "log_level": log_level}
    try:
        settings = GatewaySettings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))
    if settings.backend == "embedded" and not settings.repository.is_dir():
        _fail(f"model repository {settings.repository} is not a directory (use --repository)")
    configure_logging(settings.log_level, settings.log_format)
    try:
        uvicorn.run(
            create_app(settings), host=host, port=port, log_config=None, log_level=settings.log_level.lower(),
            access_log=False, timeout_graceful_shutdown=10,
        )  # fmt: skip
    except RepositoryError as error:
        _fail(str(error))


@app.command()
def classify(
    file: Annotated[Path, typer.Argument(help="An audio or video clip.", exists=True, dir_okay=False, readable=True)],
    url: Annotated[str, typer.Option(help="Gateway base URL.", envvar="AVSERVE_URL")] = "http://127.0.0.1:8080",
    model: Annotated[Optional[str], typer.Option(help="Model family (default: the server's).")] = None,
    modality: Annotated[str, typer.Option(help="auto | av | audio | video.")] = "auto",
    top_k: Annotated[int, typer.Option(min=1, help="Labels to show.")] = 5,
    start: Annotated[Optional[float], typer.Option(min=0.0, help="Window start (s).")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Window length (s); several model windows are averaged.")] = None,
    api_key: Annotated[Optional[str], typer.Option(help="API key.", envvar="AVSERVE_API_KEY")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the answer.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gateway's JSON response.")] = False,
) -> None:
    """Send a clip to a running gateway and show its labels."""
    import httpx

    if modality not in ("auto", "av", "audio", "video"):
        _fail(f"--modality must be auto, av, audio or video, not {modality!r}")
    params = {"modality": modality, "top_k": top_k, "model": model, "start": start, "duration": duration}
    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        with file.open("rb") as handle, httpx.Client(base_url=url, timeout=timeout) as client:
            response = client.post(
                "/classify",
                params={key: value for key, value in params.items() if value is not None},
                files={"file": (file.name, handle)},
                headers=headers,
            )
    except httpx.HTTPError as error:
        _fail(f"cannot reach the gateway at {url}: {error}", code=2)
    try:
        body = response.json()
    except ValueError:
        _fail(f"HTTP {response.status_code} from {url}: {response.text[:200]}", code=1)
    if response.status_code != 200:
        if as_json:
            typer.echo(json.dumps(body, indent=2))
            raise typer.Exit(1)
        error = body.get("error", {}) if isinstance(body, dict) else {}
        _fail(f"HTTP {response.status_code} [{error.get('code', '?')}] {error.get('message', response.text[:200])}", code=1)
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    used = "+".join(body["modalities"]["used"])
    present = "+".join(body["modalities"]["present"])
    title = f"{file.name}: {body['model']['name']} (v{body['model']['version']}, {body['model']['backend']}), {used} of {present}"
    if body["modalities"]["degraded"]:
        title += f", degraded: zero-filled {'+'.join(body['modalities']['zero_filled'])}"
    if body["model"].get("unimodal") == "stream":
        title += f", {used} stream alone"
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right")
    heads = body.get("heads") or {}
    if len(heads) == 1:  # a single head (MBT's cls) is the answer itself: no second column
        heads = {}
    for head in heads:
        table.add_column(f"{head} head")
    for rank, prediction in enumerate(body["predictions"], start=1):
        row = [str(rank), prediction["label"], f"{prediction['score']:.4f}"]
        row += [f"{heads[h][rank - 1]['label']} {heads[h][rank - 1]['score']:.3f}" for h in heads if rank <= len(heads[h])]
        table.add_row(*row)
    console = Console()
    console.print(table)
    timings = "  ".join(f"{stage} {ms:.1f}" for stage, ms in body["timings_ms"].items())
    console.print(f"timings (ms): {timings}   request {body['request_id']}")


@app.command()
def monitor(
    gateway: Annotated[str, typer.Option(help="Gateway host:port to scrape (/metrics); 'none' to skip.")] = "127.0.0.1:8080",
    triton: Annotated[str, typer.Option(help="Triton metrics host:port; 'none' to skip.")] = "127.0.0.1:8002",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Prometheus web/API port (0: any free port).")] = 9090,
    address: Annotated[str, typer.Option(help="Address Prometheus listens on.")] = "127.0.0.1",
    data_dir: Annotated[
        Optional[Path], typer.Option(help="Keep the time series here (default: a temp dir removed on exit).")
    ] = None,
    config_dir: Annotated[
        Optional[Path], typer.Option(help="Directory with prometheus.yml and rules/ (default: deploy/prometheus).")
    ] = None,
    scrape_interval: Annotated[Optional[str], typer.Option(help="Override the scrape interval, e.g. 5s.")] = None,
    retention: Annotated[str, typer.Option(help="How long to keep data (Prometheus duration).")] = "15d",
) -> None:
    """Run a real Prometheus (Debian's package) against a running gateway and Triton, until Ctrl-C.

    It uses docker compose's scrape config, recording rules and alerts (deploy/prometheus) with the
    targets set to local addresses. Query it at http://ADDRESS:PORT; point Grafana at it and import
    deploy/grafana/dashboards/*.json.
    """
    import tempfile

    from avserve.monitoring import LocalPrometheus, MonitoringError, default_config_dir, render_prometheus_config
    from avserve.monitoring import write_prometheus_config

    def target(value: str) -> Optional[str]:
        return None if value.strip().lower() in ("", "none") else value.strip()

    if port == 0:
        from avserve.processes import free_ports

        port = free_ports(1, address)[0]
    listen = f"{'127.0.0.1' if address in ('0.0.0.0', '') else address}:{port}"
    try:
        config = render_prometheus_config(
            config_dir or default_config_dir(), gateway=target(gateway), triton=target(triton), prometheus=listen,
            scrape_interval=scrape_interval,
        )  # fmt: skip
    except MonitoringError as error:
        _fail(str(error))
    with tempfile.TemporaryDirectory(prefix="avserve-monitor-") as workdir:
        config_file = write_prometheus_config(config, Path(workdir) / "prometheus.yml")
        server = LocalPrometheus(config_file, port=port, address=address, data_dir=data_dir, retention=retention)

        def announce() -> None:
            typer.echo(f"Prometheus ready at {server.url} (config {config_file})")
            for job in config["scrape_configs"]:
                for static in job.get("static_configs", []):
                    typer.echo(f"  scraping {job['job_name']:16} {', '.join(static['targets'])}")
            typer.echo(f"  rules    {', '.join(config['rule_files'])}")

        _run_until_interrupted(server, name="Prometheus", announce=announce, errors={MonitoringError: 1})


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def bench(ctx: typer.Context) -> None:
    """Benchmark the gateway against Triton direct, the Triton backend, micro-batching off and
    FastAPI + PyTorch eager, in one run (loadtests/bench.py; `avserve bench --help` for options).

    Needs a source checkout and the train extra (it exports the model with torch).
    """
    import sys
    from pathlib import Path as _Path

    root = _Path(__file__).resolve().parents[1]
    if not (root / "loadtests" / "bench.py").is_file():
        _fail(f"loadtests/bench.py not found under {root}: run from a source checkout")
    sys.path.insert(0, str(root / "loadtests"))
    from bench import main as bench_main  # loadtests/bench.py (imports torch lazily, never in avserve/)

    bench_main(list(ctx.args) if "--help" not in sys.argv[2:] else ["--help"])


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
