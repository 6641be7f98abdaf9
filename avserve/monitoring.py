"""Local monitoring without Docker: a real Prometheus scraping a running gateway and Triton.

    avserve monitor --gateway 127.0.0.1:8080 --triton 127.0.0.1:8002     # Prometheus on :9090
    avserve monitor ... --triton-supervisor 127.0.0.1:8003  # + `avserve triton --supervisor-metrics-port 8003`

The scrape configuration and the rules are the ones docker compose uses
(`deploy/prometheus/`): `render_prometheus_config` copies them with the targets replaced by
local addresses and the rule files made absolute, so what is monitored locally is exactly what
is deployed. The shipped config declares the `triton-supervisor` job (the metrics of
`avserve triton`'s supervisor) without a target, since docker compose runs NVIDIA's tritonserver
image, which only compose's restart policy supervises: it is scraped when a target is given.
`LocalPrometheus` runs Debian's `prometheus` binary (installed by scripts/setup.sh) in its own
process group and stops it with the rest of the command (tests use it too).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from avserve.processes import die_with_parent, free_ports, stop_process_group

GATEWAY_JOB = "avserve-gateway"
TRITON_JOB = "triton"
TRITON_SUPERVISOR_JOB = "triton-supervisor"  # `avserve triton --supervisor-metrics-port`
PROMETHEUS_JOB = "prometheus"
DEFAULT_BINARY = "prometheus"
LOG_TAIL_LINES = 30


class MonitoringError(RuntimeError):
    """Prometheus could not be configured or started."""


def default_config_dir() -> Path:
    """`deploy/prometheus` of the source tree, else of the current directory."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = root / "deploy" / "prometheus"
        if (candidate / "prometheus.yml").is_file():
            return candidate
    raise MonitoringError("no deploy/prometheus/prometheus.yml here: run from the avserve checkout or pass --config-dir")


def render_prometheus_config(
    config_dir: Path | str,
    *,
    gateway: str | None,
    triton: str | None,
    prometheus: str | None = None,
    triton_supervisor: str | None = None,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
) -> dict[str, Any]:
    """The shipped configuration with local targets (host:port); a job whose target is None is
    dropped, one with a target that the configuration lacks is added."""
    config_dir = Path(config_dir)
    source = config_dir / "prometheus.yml"
    try:
        config = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise MonitoringError(f"cannot read {source}: {error}") from error
    targets = {
        GATEWAY_JOB: gateway, TRITON_JOB: triton, TRITON_SUPERVISOR_JOB: triton_supervisor, PROMETHEUS_JOB: prometheus,
    }  # fmt: skip
    jobs = []
    for job in config.get("scrape_configs", []):
        name = job.get("job_name")
        if name in targets:
            if targets[name] is None:
                continue
            labels = {}
            for static in job.get("static_configs", []):
                labels.update(static.get("labels", {}))
            job["static_configs"] = [{"targets": [targets[name]], **({"labels": labels} if labels else {})}]
        jobs.append(job)
    present = {job.get("job_name") for job in jobs}
    for name, target in targets.items():
        if target is not None and name not in present:
            jobs.append({"job_name": name, "static_configs": [{"targets": [target]}]})
    config["scrape_configs"] = jobs
    # Rule files are relative to the shipped config's directory: make them absolute for a copy elsewhere.
    config["rule_files"] = [str((config_dir / pattern).resolve()) for pattern in config.get("rule_files", [])]
    settings = config.setdefault("global", {})
    if scrape_interval:
        settings["scrape_interval"] = scrape_interval
        # scrape_timeout must not exceed the interval.
        settings["scrape_timeout"] = scrape_interval
    if evaluation_interval:
        settings["evaluation_interval"] = evaluation_interval
    return config


def write_prometheus_config(config: dict[str, Any], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def find_prometheus(binary: str | None = None) -> str:
    found = shutil.which(binary or os.environ.get("AVSERVE_PROMETHEUS", DEFAULT_BINARY))
    if found is None:
        raise MonitoringError(
            "the prometheus binary is not installed: `apt-get install prometheus` (scripts/setup.sh does it), "
            "or set AVSERVE_PROMETHEUS to its path"
        )
    return found


class LocalPrometheus:
    """A real Prometheus on `address:port` with the given config file; port 0 picks a free one."""

    def __init__(
        self,
        config_file: Path | str,
        *,
        port: int = 9090,
        address: str = "127.0.0.1",
        data_dir: Path | str | None = None,
        retention: str = "15d",
        binary: str | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.config_file = Path(config_file)
        self.address = address
        self.port = port
        self.retention = retention
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.command: list[str] = []

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> LocalPrometheus:
        if self._process is not None:
            raise MonitoringError("this LocalPrometheus is already started")
        binary = find_prometheus(self.binary)
        self._workdir = Path(tempfile.mkdtemp(prefix="avserve-prometheus-"))
        data_dir = self._data_dir or self._workdir / "data"
        if self.port == 0:
            self.port = free_ports(1, self.address)[0]
        self.log_path = self._workdir / "prometheus.log"
        self.command = [
            binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={data_dir}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.address}:{self.port}",
            "--web.enable-lifecycle",
        ]
        try:
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self._workdir, start_new_session=True, preexec_fn=die_with_parent,
                )  # fmt: skip
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise MonitoringError(f"prometheus exited with code {code}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise MonitoringError(f"prometheus was not ready within {self.startup_timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, graceful=signal.SIGTERM, timeout=self.stop_timeout)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def wait(self) -> int:
        if self._process is None:
            raise MonitoringError("prometheus is not running")
        return self._process.wait()

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    # ---- HTTP API ----------------------------------------------------------------------------

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; returns `data`, raises MonitoringError on an error answer."""
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise MonitoringError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (a scalar answer becomes one unlabelled sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]
