"""The one command line: `avserve <command>`.

The serving commands live here (probe, serve, classify, triton, monitor). Other packages add
theirs through the `avserve.commands` entry point group (pyproject.toml): `training.cli`
(data, train, evaluate, export, models; the last four need the `[train]` extra) and
`loadtests.cli` (bench). `main()` registers them before running, so importing this module
imports neither `training` nor torch; every command imports what it needs inside its body.
"""

from __future__ import annotations

import importlib.util
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

PLUGIN_GROUP = "avserve.commands"

app = typer.Typer(
    name="avserve",
    help="Train audio-visual classifiers and serve them behind an HTTP API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` in red on stderr and exit with `code` (2: the user's input)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


_plugins_registered = False


def build_app() -> typer.Typer:
    """The CLI with every installed `avserve.commands` plugin registered (once).

    A plugin whose package is absent is skipped: the gateway image installs the distribution
    from `avserve/` alone, so its metadata names `training` and `loadtests` that are not there.
    """
    global _plugins_registered
    if not _plugins_registered:
        _plugins_registered = True
        for plugin in sorted(entry_points(group=PLUGIN_GROUP), key=lambda entry: entry.name):
            if importlib.util.find_spec(plugin.module.split(".")[0]) is None:
                continue
            plugin.load()(app)
    return app


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
        fail(f"[{error.code}] {error.message}")
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(path), show_header=False)
    for key, value in info.to_dict().items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)


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
    max_restarts: Annotated[
        int, typer.Option(min=0, help="Restarts in a row (without --restart-reset-after s up) before giving up; 0: never restart.")
    ] = 5,
    restart_delay: Annotated[float, typer.Option(min=0.0, help="Backoff before the first restart (s); doubles per failure in a row.")] = 1.0,
    restart_max_delay: Annotated[float, typer.Option(min=0.0, help="Longest backoff (s).")] = 30.0,
    restart_reset_after: Annotated[
        float, typer.Option(min=0.0, help="Seconds up after which a server's death starts a new backoff series.")
    ] = 60.0,
    supervisor_metrics_port: Annotated[
        Optional[int], typer.Option(min=0, max=65535, help="Serve the supervisor's metrics (avserve_triton_*) here (0: any free port; default: off).")
    ] = None,
) -> None:
    """Run a real local Triton (CPU, Python backend) on a model repository until Ctrl-C, restarting it when it dies.

    A server that exits without being asked to (a crash, a kill) is restarted on the same ports
    after a backoff: --restart-delay, doubled per failure in a row up to --restart-max-delay, minus
    up to 20% at random. A server up for --restart-reset-after seconds starts a new series; after
    --max-restarts failures in a row it exits with code 1. Each restart is logged on stderr with
    the exit code or signal and the delay. With --supervisor-metrics-port: avserve_triton_up,
    avserve_triton_restarts_total{outcome}, avserve_triton_unexpected_exits_total,
    avserve_triton_last_exit_code, avserve_triton_consecutive_failures,
    avserve_triton_restart_backoff_seconds, avserve_triton_server_start_time_seconds and
    avserve_triton_startup_seconds at http://ADDRESS:PORT/metrics. Ctrl-C or SIGTERM stops the
    server (and its Python-backend stubs) without a restart.
    """
    import logging

    from avserve.repository import RepositoryError
    from avserve.triton import LocalTritonError, RestartPolicy, SupervisedTriton, TritonNotInstalledError

    if restart_max_delay < restart_delay:
        fail("--restart-max-delay must be at least --restart-delay")
    policy = RestartPolicy(
        initial_delay=restart_delay, max_delay=restart_max_delay, reset_after=restart_reset_after,
        max_restarts=max_restarts,
    )  # fmt: skip
    supervisor_log = logging.getLogger("avserve.triton")
    if not supervisor_log.handlers:
        handler = logging.StreamHandler()  # stderr
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        supervisor_log.addHandler(handler)
        supervisor_log.setLevel(logging.INFO)
        supervisor_log.propagate = False
    server = SupervisedTriton(
        repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, address=address,
        log_verbose=log_verbose, log_file=log_file, startup_timeout=startup_timeout, policy=policy,
        supervisor_port=supervisor_metrics_port,
    )  # fmt: skip

    def announce() -> None:
        typer.echo(f"Triton ready in {server.startup_seconds:.1f} s, serving {', '.join(server.shadow.models)}")
        typer.echo(f"  HTTP     {server.http_url}")
        typer.echo(f"  gRPC     {server.grpc_url}")
        typer.echo(f"  metrics  {server.metrics_url}")
        if server.supervisor_url is not None:
            typer.echo(f"  supervisor  {server.supervisor_url}")
        for name, reason in server.shadow.skipped.items():
            typer.echo(f"  skipped  {name}: {reason}")
        if policy.max_restarts:
            typer.echo(
                f"Restarts it when it dies: up to {policy.max_restarts} in a row, backoff {policy.initial_delay:g} s "
                f"doubling to {policy.max_delay:g} s (pid {server.pid}, log {server.log_path})"
            )

    _run_until_interrupted(
        server, name="Triton", announce=announce,
        errors={RepositoryError: 2, TritonNotInstalledError: 2, LocalTritonError: 1},
    )  # fmt: skip


@app.command()
def serve(
    repository: Annotated[
        Optional[Path], typer.Option(help="Model repository (embedded backend); default: AVSERVE_REPOSITORY or ./model_repository.")
    ] = None,
    backend: Annotated[Optional[str], typer.Option(help="embedded (onnxruntime in-process) or triton.")] = None,
    triton_url: Annotated[Optional[str], typer.Option(help="Triton gRPC host:port (triton backend).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    metrics_port: Annotated[
        Optional[int],
        typer.Option(min=1, max=65535, help="Serve /metrics here only, without credentials; default: AVSERVE_METRICS_PORT, else on --port."),
    ] = None,
    log_level: Annotated[Optional[str], typer.Option(help="debug | info | warning | error.")] = None,
) -> None:
    """Serve the HTTP gateway (POST /classify, /v1/models, /healthz, /readyz, /metrics, /docs).

    Every other setting is an AVSERVE_* environment variable (avserve/gateway/settings.py). The
    server is uvicorn with the gateway's HTTP protocol (avserve/gateway/server.py): request heads
    must arrive within AVSERVE_HEADER_TIMEOUT_SECONDS (408) and fit AVSERVE_MAX_HEADER_BYTES
    (431), and malformed HTTP is answered in the JSON error shape.
    """
    from pydantic import ValidationError

    from avserve.gateway import GatewaySettings, create_app
    from avserve.gateway.observability import configure_logging
    from avserve.gateway.server import run_gateway
    from avserve.repository import RepositoryError

    if backend is not None and backend not in ("embedded", "triton"):
        fail(f"--backend must be embedded or triton, not {backend!r}")
    overrides = {
        "repository": repository, "backend": backend, "triton_url": triton_url, "log_level": log_level,
        "metrics_port": metrics_port,
    }  # fmt: skip
    try:
        settings = GatewaySettings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))
    if settings.backend == "embedded" and not settings.repository.is_dir():
        fail(f"model repository {settings.repository} is not a directory (use --repository)")
    if settings.metrics_port is not None and settings.metrics_port == port:
        fail(f"the metrics port must differ from --port ({port})")
    configure_logging(settings.log_level, settings.log_format)
    try:
        started = run_gateway(create_app(settings), settings, host=host, port=port)
    except RepositoryError as error:
        fail(str(error))
    if not started:
        raise typer.Exit(3)  # uvicorn's STARTUP_FAILURE: the lifespan failed (logged above)


@app.command()
def classify(
    file: Annotated[Path, typer.Argument(help="An audio or video clip.", exists=True, dir_okay=False, readable=True)],
    url: Annotated[str, typer.Option(help="Gateway base URL.", envvar="AVSERVE_URL")] = "http://127.0.0.1:8080",
    model: Annotated[Optional[str], typer.Option(help="Model family (default: the server's).")] = None,
    modality: Annotated[str, typer.Option(help="auto | av | audio | video.")] = "auto",
    top_k: Annotated[int, typer.Option(min=1, help="Labels to show.")] = 5,
    start: Annotated[Optional[float], typer.Option(min=0.0, help="Window start (s).")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Window length (s); several model windows are averaged.")] = None,
    sampling: Annotated[
        Optional[str], typer.Option(help="exact | fast: frames on screen at each sample time, or the nearest keyframes.")
    ] = None,
    api_key: Annotated[Optional[str], typer.Option(help="API key.", envvar="AVSERVE_API_KEY")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the answer.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gateway's JSON response.")] = False,
) -> None:
    """Send a clip to a running gateway and show its labels."""
    import httpx

    if modality not in ("auto", "av", "audio", "video"):
        fail(f"--modality must be auto, av, audio or video, not {modality!r}")
    if sampling not in (None, "exact", "fast"):
        fail(f"--sampling must be exact or fast, not {sampling!r}")
    params = {"modality": modality, "top_k": top_k, "model": model, "start": start, "duration": duration, "sampling": sampling}
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
        fail(f"cannot reach the gateway at {url}: {error}", code=2)
    try:
        body = response.json()
    except ValueError:
        fail(f"HTTP {response.status_code} from {url}: {response.text[:200]}", code=1)
    if response.status_code != 200:
        if as_json:
            typer.echo(json.dumps(body, indent=2))
            raise typer.Exit(1)
        error = body.get("error", {}) if isinstance(body, dict) else {}
        fail(f"HTTP {response.status_code} [{error.get('code', '?')}] {error.get('message', response.text[:200])}", code=1)
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
    video = (body.get("media") or {}).get("video") or {}
    if video.get("sampling"):
        console.print(f"frames: {video['sampling']} sampling, at most {video['max_frame_offset_ms']:.0f} ms from their sample times")
    timings = "  ".join(f"{stage} {ms:.1f}" for stage, ms in body["timings_ms"].items())
    console.print(f"timings (ms): {timings}   request {body['request_id']}")


@app.command()
def monitor(
    gateway: Annotated[str, typer.Option(help="Gateway host:port to scrape (/metrics); 'none' to skip.")] = "127.0.0.1:8080",
    triton: Annotated[str, typer.Option(help="Triton metrics host:port; 'none' to skip.")] = "127.0.0.1:8002",
    triton_supervisor: Annotated[
        str, typer.Option(help="`avserve triton --supervisor-metrics-port` host:port (avserve_triton_*); 'none' to skip.")
    ] = "none",
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
    deploy/grafana/dashboards/*.json. --triton-supervisor also scrapes the restart metrics of an
    `avserve triton` started with --supervisor-metrics-port (off by default, as that port is).
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
            triton_supervisor=target(triton_supervisor), scrape_interval=scrape_interval,
        )  # fmt: skip
    except MonitoringError as error:
        fail(str(error))
    with tempfile.TemporaryDirectory(prefix="avserve-monitor-") as workdir:
        config_file = write_prometheus_config(config, Path(workdir) / "prometheus.yml")
        server = LocalPrometheus(config_file, port=port, address=address, data_dir=data_dir, retention=retention)

        def announce() -> None:
            typer.echo(f"Prometheus ready at {server.url} (config {config_file})")
            for job in config["scrape_configs"]:
                for static in job.get("static_configs", []):
                    typer.echo(f"  scraping {job['job_name']:17} {', '.join(static['targets'])}")
            typer.echo(f"  rules    {', '.join(config['rule_files'])}")

        _run_until_interrupted(server, name="Prometheus", announce=announce, errors={MonitoringError: 1})


def main() -> None:  # the console script (pyproject.toml) and `python -m avserve.cli`
    build_app()()


if __name__ == "__main__":
    main()
