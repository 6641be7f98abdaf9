"""The deployment files, checked by real tools without Docker or Grafana:

- Prometheus config and rules: `promtool check config|rules` and the rule unit tests
  (`promtool test rules`), on the shipped files and on the copy `avserve monitor` renders;
- docker-compose.yml (+ the GPU override): the compose specification's JSON schema as shipped
  by the check-jsonschema package, then what the schema cannot see (mounted files exist,
  health checks, restart policies, named volumes, ports documented, scrape targets = services);
- the gateway image: its build context (per its .dockerignore) builds a wheel offline, without
  training code, and the serving modules import with torch and `training` unavailable;
- the Grafana dashboards and provisioning: structure, datasource and variables, the paths
  compose mounts them at;
- `avserve monitor`: a real Prometheus started and stopped by the command.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml
from prometheus_client import start_wsgi_server

from avserve.monitoring import render_prometheus_config, write_prometheus_config
from avserve.triton.supervisor import SupervisorMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = DEPLOY / "compose.gpu.yml"
DOCKERFILE = DEPLOY / "gateway.Dockerfile"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (scripts/setup.sh installs it)")


def run(*command: str | Path, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# ---- Prometheus ---------------------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_the_shipped_config_and_rules():
    config = run(PROMTOOL, "check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr
    rules = run(PROMTOOL, "check", "rules", *sorted((PROMETHEUS_DIR / "rules").glob("*.yml")))
    assert rules.returncode == 0, rules.stdout + rules.stderr


@needs_promtool
def test_promtool_rule_unit_tests_fire_the_alerts():
    result = run(PROMTOOL, "test", "rules", *sorted((PROMETHEUS_DIR / "tests").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_locally_rendered_config_is_valid_and_keeps_rules_and_jobs(tmp_path):
    config = render_prometheus_config(
        PROMETHEUS_DIR, gateway="127.0.0.1:18080", triton="127.0.0.1:18002", prometheus="127.0.0.1:19090",
        scrape_interval="5s",
    )  # fmt: skip
    path = write_prometheus_config(config, tmp_path / "elsewhere" / "prometheus.yml")
    result = run(PROMTOOL, "check", "config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert jobs["avserve-gateway"] == [{"targets": ["127.0.0.1:18080"], "labels": {"service": "gateway"}}]
    assert jobs["triton"][0]["targets"] == ["127.0.0.1:18002"]
    assert config["global"]["scrape_interval"] == config["global"]["scrape_timeout"] == "5s"
    assert all(Path(pattern).is_absolute() for pattern in config["rule_files"])
    no_triton = render_prometheus_config(PROMETHEUS_DIR, gateway="127.0.0.1:1", triton=None)
    assert "triton" not in {job["job_name"] for job in no_triton["scrape_configs"]}
    # The supervisor's job is declared without a target: dropped unless one is given.
    assert "triton-supervisor" not in jobs
    supervised = render_prometheus_config(
        PROMETHEUS_DIR, gateway="127.0.0.1:1", triton="127.0.0.1:2", triton_supervisor="127.0.0.1:18003"
    )
    jobs = {job["job_name"]: job["static_configs"] for job in supervised["scrape_configs"]}
    assert jobs["triton-supervisor"] == [{"targets": ["127.0.0.1:18003"], "labels": {"service": "triton-supervisor"}}]
    result = run(PROMTOOL, "check", "config", write_prometheus_config(supervised, tmp_path / "supervised.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # A config dir whose prometheus.yml lacks a job still gets the target it was given.
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "prometheus.yml").write_text("scrape_configs: []\n")
    bare = render_prometheus_config(tmp_path / "bare", gateway="127.0.0.1:1", triton=None, triton_supervisor="127.0.0.1:3")
    assert bare["scrape_configs"] == [
        {"job_name": "avserve-gateway", "static_configs": [{"targets": ["127.0.0.1:1"]}]},
        {"job_name": "triton-supervisor", "static_configs": [{"targets": ["127.0.0.1:3"]}]},
    ]


def test_scrape_targets_are_the_compose_services_and_their_ports():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["avserve-gateway"] == ["gateway:8081"] and targets["triton"] == ["triton:8002"]
    assert targets["triton-supervisor"] == []  # compose's Triton is NVIDIA's image: no supervisor to scrape
    services = compose()["services"]
    assert "8080" in " ".join(services["gateway"]["command"])
    assert any(port.endswith(":8002:8002") for port in services["triton"]["ports"])
    # The gateway's metrics listener: where Prometheus scrapes (credential-free, so API keys on
    # the gateway do not stop the scrape), on the compose network only.
    gateway = services["gateway"]
    assert gateway["environment"]["AVSERVE_METRICS_PORT"] == "8081"
    assert not [port for port in gateway["ports"] if port.split(":")[-1] == "8081"]
    assert re.search(r"^EXPOSE 8080 8081$", DOCKERFILE.read_text(), flags=re.MULTILINE)


# ---- docker compose -----------------------------------------------------------------------------


def test_compose_files_match_the_compose_specification_schema():
    """check-jsonschema ships the compose-spec schema (vendor.compose-spec); nothing is downloaded."""
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = run(checker, "--builtin-schema", "vendor.compose-spec", COMPOSE, GPU_OVERRIDE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_rejects_a_broken_file(tmp_path):
    """The schema check is not vacuous: a misspelt key and a wrong type fail it."""
    broken = compose()
    broken["services"]["gateway"]["healthcheck"]["intervall"] = "10s"
    broken["services"]["triton"]["restart"] = ["always"]
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = run(Path(sys.executable).parent / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", path)
    assert result.returncode != 0


def test_compose_services_are_complete():
    spec = compose()
    services = spec["services"]
    assert set(services) == {"triton", "gateway", "prometheus", "grafana"}
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in spec["volumes"], f"{name}: undeclared named volume {source}"
        for dependency in service.get("depends_on", {}):
            assert dependency in services
    assert set(spec["volumes"]) == {"prometheus-data", "grafana-data"}
    triton = services["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:") and triton["image"].endswith("-py3")
    assert {"--model-repository=/models", "--metrics-config=summary_latencies=true"} <= set(triton["command"])
    assert "./model_repository:/models:ro" in triton["volumes"]
    assert "deploy" not in triton  # GPUs are optional: deploy/compose.gpu.yml adds the reservation
    gpu = yaml.safe_load(GPU_OVERRIDE.read_text())["services"]["triton"]["deploy"]["resources"]["reservations"]
    assert gpu["devices"][0]["capabilities"] == ["gpu"]
    gateway = services["gateway"]
    assert gateway["build"] == {"context": ".", "dockerfile": "deploy/gateway.Dockerfile"}
    assert gateway["command"][:4] == ["avserve", "serve", "--backend", "triton"]
    assert gateway["environment"]["AVSERVE_TRITON_URL"] == "triton:8001"
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]


def test_every_published_port_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Monitoring and deployment", 1)[1].split("\n## ", 1)[0]
    for service in compose()["services"].values():
        for port in service.get("ports", []):
            published = port.split(":")[-2]
            assert re.search(rf"\b{published}\b", section), f"port {published} is not in the README section"


def test_grafana_provisioning_matches_the_compose_mounts():
    grafana = compose()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/avserve.yml").read_text())["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (DEPLOY / "grafana/dashboards" / Path(home).name).is_file()


# ---- the gateway image ---------------------------------------------------------------------------


def dockerignore_allows(relative: str) -> bool:
    """BuildKit semantics for our ignore file: the last matching pattern wins, `!` re-includes."""
    allowed = True
    for line in (DEPLOY / "gateway.Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        pattern = pattern.replace("**/", "*")
        if fnmatch.fnmatch(relative, pattern) or relative.startswith(pattern + "/"):
            allowed = negate
    return allowed


def build_context(tmp_path: Path) -> Path:
    """What `docker build -f deploy/gateway.Dockerfile .` sends, laid out as the COPY lines do."""
    context = tmp_path / "context"
    copies = re.findall(r"^COPY\s+(.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert copies
    for line in copies:
        *sources, destination = line.split()
        for source in sources:
            assert dockerignore_allows(source), f"{source} is excluded by the .dockerignore"
            target = context / (source if destination.endswith("/") or destination == "./" else destination)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    return context


def test_gateway_dockerfile_installs_only_the_serving_package():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, flags=re.MULTILINE)
    install = re.search(r"pip install (.+?)(\\|$)", text, flags=re.MULTILINE).group(1).split()
    assert install == ["-c", "requirements/constraints.txt", "."], install  # no extras: no torch
    assert re.search(r"^USER (?!root)", text, flags=re.MULTILINE)
    assert "HEALTHCHECK" in text and "EXPOSE 8080" in text
    for excluded in ("training/models/zorro.py", "tests/conftest.py", "data", ".venv", "model_repository", "runs"):
        assert not dockerignore_allows(excluded), excluded
    pyproject = (ROOT / "pyproject.toml").read_text()
    base = pyproject.split("dependencies = [", 1)[1].split("]\n", 1)[0]
    assert "torch" not in base and "tritonclient[grpc]" in base


def test_gateway_build_context_builds_a_wheel_without_training_code(tmp_path):
    context = build_context(tmp_path)
    result = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
        "-w", tmp_path / "wheels", context, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("avserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "avserve/gateway/app.py" in names and "avserve/backends/triton.py" in names
    assert not [name for name in names if name.startswith("training/")]


def test_serving_modules_import_without_torch_or_training():
    """The image has neither: the gateway, the Triton backend and the CLI must not need them."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchaudio', 'training'):\n"
        "            raise ImportError(f'{name} is not in the gateway image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import avserve.cli, avserve.gateway.app, avserve.backends.triton, avserve.monitoring\n"
        "avserve.gateway.app.create_app()\n"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr


def test_cli_runs_where_only_the_serving_package_is_installed():
    """The image's package metadata still names the training and loadtests command plugins
    (pyproject.toml entry points), but their packages are absent: the CLI must skip them."""
    code = (
        "import sys\n"
        "sys.modules['training'] = sys.modules['loadtests'] = None  # not installed\n"
        "from avserve.cli import main\n"
        "sys.argv = ['avserve', '--help']\n"
        "main()\n"
    )
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 2}
    assert {"serve", "classify", "probe", "triton", "monitor"} <= listed
    assert not listed & {"train", "data", "bench"}, listed


# ---- Grafana dashboards ---------------------------------------------------------------------------


def all_panels(dashboard: dict) -> list[dict]:
    panels, found = list(dashboard["panels"]), []
    while panels:
        panel = panels.pop(0)
        found.append(panel)
        panels.extend(panel.get("panels", []))
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_structure(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["includeAll"] and model["multi"] and model["allValue"] == ".*"
    panels = all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for metric in (
        "avserve_requests_total", "avserve_stage_seconds_bucket", "avserve_requests_in_flight",
        "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us", "nv_inference_exec_count",
        "nv_inference_count", "process_cpu_seconds_total", "process_resident_memory_bytes",
        "avserve_media_pending_requests", "avserve_media_predicted_wait_seconds", "avserve_media_service_seconds",
        "avserve_media_failures_total", "avserve_skipped_packets_total", "avserve_http_rejections_total",
        "avserve_triton_restarts_total",
    ):  # fmt: skip
        assert metric in exprs, metric
    assert 'model=~"$model"' in exprs


# ---- avserve monitor ------------------------------------------------------------------------------


def api(url: str, path: str) -> dict:
    query = urllib.parse.quote(path, safe="/?=&")
    with urllib.request.urlopen(f"{url}/api/v1/{query}", timeout=5) as response:
        return json.loads(response.read())["data"]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (scripts/setup.sh)")
def test_monitor_command_runs_prometheus_with_the_shipped_rules_until_interrupted():
    """`avserve monitor` against a gateway address where nothing listens, no Triton, and a real
    Triton supervisor metrics endpoint (`SupervisedTriton`'s registry, served as `avserve triton
    --supervisor-metrics-port` serves it, without a tritonserver behind it)."""
    supervisor, _ = start_wsgi_server(0, addr="127.0.0.1", registry=SupervisorMetrics().registry)
    supervisor_address = f"127.0.0.1:{supervisor.server_port}"
    avserve = Path(sys.executable).parent / "avserve"
    process = subprocess.Popen(
        [
            str(avserve), "monitor", "--port", "0", "--gateway", "127.0.0.1:9", "--triton", "none",
            "--triton-supervisor", supervisor_address, "--scrape-interval", "1s",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        url, output, deadline = None, [], time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            match = re.search(r"Prometheus ready at (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url, "".join(output)
        while not output[-1].startswith("Press Ctrl-C") and time.monotonic() < deadline:
            output.append(process.stdout.readline())  # the rest of the announcement: SIGINT after it
        health: dict = {}
        while health.get("triton-supervisor") != "up" and time.monotonic() < deadline:
            time.sleep(0.2)  # the scrape manager starts just after /-/ready; then a first scrape
            health = {t["labels"]["job"]: t["health"] for t in api(url, "targets")["activeTargets"]}
        assert set(health) == {"avserve-gateway", "triton-supervisor", "prometheus"}, health
        assert health["triton-supervisor"] == "up", health
        restarts = api(url, "query?query=avserve_triton_restarts_total")["result"]
        assert {(r["metric"]["outcome"], r["metric"]["instance"]) for r in restarts} == {
            ("ready", supervisor_address), ("failed", supervisor_address),
        }  # fmt: skip
        rules = [r["name"] for g in api(url, "rules")["groups"] for r in g["rules"]]
        assert "AvserveHighP99Latency" in rules and "avserve:request_latency_seconds:p99_5m" in rules
        assert "TritonServerRestarted" in rules
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == 0, "".join(output) + rest
        assert "stopped" in rest
        assert re.search(rf"scraping triton-supervisor +{supervisor_address}\n", "".join(output) + rest), rest
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        supervisor.shutdown()
        supervisor.server_close()
