"""Every dashboard query and every rule, evaluated by a real Prometheus that scraped the real
gateway (Triton backend), the real tritonserver and its supervisor while real clips were classified.

The stack: `SupervisedTriton` (what `avserve triton` runs, with its supervisor metrics) on the
exported zorro_tiny repository, the gateway in uvicorn (a thread of this process) with
`backend=triton` and the HTTP protocol `avserve serve` uses, and Debian's `prometheus` running
the shipped deploy/prometheus config (targets rewritten to the test ports, 1 s scrape and rule
intervals). Traffic covers audio+video, audio-only and video-only clips, corrupt uploads (422),
an unknown model (404), a too-short deadline (504), bursts past the in-flight limit (429), an
upload that crashes its media worker (the test-only crash switch), and requests the HTTP layer
refuses (400 malformed, 431 head too large, 408 head too slow), so every error series the
dashboards show exists.

Alerts whose condition is false return nothing, so an alert expression is evaluated with
every top-level comparison turned into a `bool` comparison (`x > 2.5` -> `x > bool 2.5`):
the same series, valued 0 or 1 instead of filtered (`as_bool_comparisons`).
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml

from avserve.gateway import GatewaySettings, create_app
from avserve.gateway.server import server_config
from avserve.media.synthetic import AudioTrack, VideoTrack, write_clip
from avserve.media.workers import CRASH_SUFFIX_VARIABLE
from avserve.monitoring import LocalPrometheus, render_prometheus_config, write_prometheus_config
from avserve.triton import SupervisedTriton
from avserve.triton.server import free_ports

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
FAMILY = "zorro_tiny"
MODELS = (f"{FAMILY}_av", f"{FAMILY}_audio", f"{FAMILY}_video")
RATE_INTERVAL = "10s"  # Grafana's $__rate_interval for a 1 s scrape is max(4 x scrape, step + scrape)
TRAFFIC_SECONDS = 12.0  # more than the default header timeout (10 s): one slow head gets its 408
CRASH_SUFFIX = ".crashme"  # an upload named so crashes its media worker (SIGSEGV), as a decoder bug would
COMPARISON = re.compile(r"(==|!=|>=|<=|>(?!=)|<(?!=))(?!\s*bool\b)")


def as_bool_comparisons(expr: str) -> str:
    """`a > 1 and b < 2` -> `a > bool 1 and b < bool 2`, leaving label matchers and strings alone."""
    out, depth, i = [], 0, 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            end = expr.index(char, i + 1)
            out.append(expr[i : end + 1])
            i = end + 1
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if depth == 0:
            match = COMPARISON.match(expr, i)
            if match:
                out.append(f"{match.group(1)} bool")
                i = match.end()
                continue
        out.append(char)
        i += 1
    return "".join(out)


def test_as_bool_comparisons() -> None:
    assert as_bool_comparisons('up{job=~"a|b", x!="y"} == 0') == 'up{job=~"a|b", x!="y"} == bool 0'
    assert as_bool_comparisons("a > 0.02\nand a > 2 * b") == "a > bool 0.02\nand a > bool 2 * b"
    assert as_bool_comparisons("a >= bool 1") == "a >= bool 1"


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's interpolation of the variables our dashboards use ($x, ${x}, ${x:regex})."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", "1s")
    for name, value in variables.items():
        expr = re.sub(r"\$\{" + name + r"(:[a-z]+)?\}|\$" + name + r"\b", lambda _: value, expr)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every query of every panel (rows included)."""
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = list(dashboard["panels"])
        while panels:
            panel = panels.pop(0)
            panels.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], target["expr"]))
    return found


def has_data(result: list[dict]) -> bool:
    """At least one series with a number (not NaN: a ratio or quantile over no observations)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def rule_entries() -> list[dict]:
    rules = []
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules


# ---- the stack ---------------------------------------------------------------------------------


class ThreadedGateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.port = free_ports(1)[0]
        # `avserve serve`'s HTTP protocol: it answers (and counts) malformed and slow request heads.
        config = server_config(
            create_app(settings), settings, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"gateway-{self.port}", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedGateway:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("observability-clips")
    video = VideoTrack(width=64, height=48, fps=10, num_frames=20)
    audio = AudioTrack(sample_rate=16000, layout="mono", seconds=2.0, tone_hz=300.0)
    return {
        "av": write_clip(directory / "av.mp4", video=video, audio=audio),
        "audio": write_clip(directory / "audio.m4a", audio=audio),
        "video": write_clip(directory / "video.mp4", video=video),
    }


@pytest.fixture(scope="module")
def stack(zorro_repository, tmp_path_factory, clips):
    repository, _ = zorro_repository
    workdir = tmp_path_factory.mktemp("observability")
    triton = gateway = prometheus = None
    try:
        triton = SupervisedTriton(
            repository, http_port=0, grpc_port=0, metrics_port=0, supervisor_port=0, startup_timeout=120
        ).start()
        settings = GatewaySettings(
            backend="triton", triton_url=triton.grpc_url, upload_dir=workdir, log_format="text",
            default_model=FAMILY, max_in_flight_requests=2, request_timeout_seconds=20,
        )  # fmt: skip
        with pytest.MonkeyPatch.context() as patch:  # read once, when the gateway's media workers start
            patch.setenv(CRASH_SUFFIX_VARIABLE, CRASH_SUFFIX)
            gateway = ThreadedGateway(settings).start()
        prometheus_port = free_ports(1)[0]
        config = render_prometheus_config(
            PROMETHEUS_DIR,
            gateway=f"127.0.0.1:{gateway.port}",
            triton=f"127.0.0.1:{triton.metrics_port}",
            triton_supervisor=f"127.0.0.1:{triton.supervisor_port}",
            prometheus=f"127.0.0.1:{prometheus_port}",
            scrape_interval="1s",
            evaluation_interval="1s",
        )
        config_file = write_prometheus_config(config, workdir / "prometheus.yml")
        prometheus = LocalPrometheus(config_file, port=prometheus_port).start()
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the gateway never saw Triton ready"
                time.sleep(0.2)
            # The counters' zeros are scraped before the traffic: increase() sees every event.
            while not prometheus.query('avserve_media_failures_total{reason="crashed"}'):
                assert time.monotonic() < deadline, "Prometheus never scraped the gateway"
                time.sleep(0.2)
            statuses, refused = send_traffic(client, gateway, clips)
        settle(prometheus)
        yield {"prometheus": prometheus, "statuses": statuses, "refused": refused, "triton": triton, "gateway": gateway}
    finally:
        for server in (prometheus, gateway, triton):
            if server is not None:
                server.stop()


def post(client: httpx.Client, path: Path, **params) -> int:
    with path.open("rb") as handle:
        return client.post("/classify", params=params, files={"file": (path.name, handle)}).status_code


def raw_status(port: int, data: bytes, timeout: float = 30.0) -> int:
    """Send raw bytes (a request no well-behaved client sends) and return the answer's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before all was sent: the answer is still there to read
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, f"closed without an answer: {answer!r}"
            answer += chunk
    return int(answer.split(b" ", 2)[1])


MALFORMED = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"  # 400 invalid_content_length
HUGE_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"  # 431 (over 64 KiB)
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "  # never finished: 408 after the header timeout


def send_traffic(client: httpx.Client, gateway: ThreadedGateway, clips: dict[str, Path]) -> tuple[dict[int, int], dict[int, int]]:
    """Bounded: TRAFFIC_SECONDS of sequential requests, with a 429 burst every few rounds. Returns
    the /classify statuses, and those of the requests the HTTP layer answered itself."""
    statuses: dict[int, int] = {}
    refused: dict[int, int] = {}

    def count(status: int, into: dict[int, int] = statuses) -> None:
        into[status] = into.get(status, 0) + 1

    corrupt = clips["av"].read_bytes()[:3000]
    began = time.monotonic()
    rounds = 0
    with ThreadPoolExecutor(max_workers=7) as pool:  # a burst of 6, and the slow head
        slow = pool.submit(raw_status, gateway.port, SLOW_HEAD)  # holds one worker until its 408
        with clips["av"].open("rb") as handle:  # crashes its media worker: 422 decoder_crashed
            count(client.post("/classify", files={"file": ("clip" + CRASH_SUFFIX, handle)}).status_code)
        while time.monotonic() - began < TRAFFIC_SECONDS and rounds < 200:
            rounds += 1
            for name in ("av", "audio", "video"):
                count(post(client, clips[name]))
            count(client.post("/classify", files={"file": ("cut.mp4", corrupt)}).status_code)
            if rounds % 3 == 1:
                count(raw_status(gateway.port, MALFORMED), refused)
                count(raw_status(gateway.port, HUGE_HEAD), refused)
                count(post(client, clips["av"], model="no_such_family"))
                count(post(client, clips["video"], timeout=0.0001))
                # More concurrent requests than AVSERVE_MAX_IN_FLIGHT_REQUESTS=2: some are shed.
                def burst(_: int) -> int:
                    with httpx.Client(base_url=gateway.url, timeout=30) as own:
                        return post(own, clips["av"])

                for status in pool.map(burst, range(6)):
                    count(status)
        count(slow.result(timeout=30), refused)
    return statuses, refused


def settle(prometheus: LocalPrometheus) -> None:
    """Wait until the last counts are scraped and every recording rule has been evaluated."""
    records = [rule["record"] for rule in rule_entries() if "record" in rule]
    deadline = time.monotonic() + 30
    time.sleep(2.5)
    while True:
        missing = [name for name in records if not prometheus.query(name)]
        if not missing:
            return
        assert time.monotonic() < deadline, f"recording rules never produced data: {missing}"
        time.sleep(0.5)


# ---- the checks ---------------------------------------------------------------------------------


def test_traffic_covered_successes_and_every_error_kind(stack):
    statuses, refused = stack["statuses"], stack["refused"]
    assert statuses.get(200, 0) >= 20, statuses
    for status in (404, 422, 429, 504):
        assert statuses.get(status, 0) >= 1, (status, statuses)
    assert set(refused) == {400, 408, 431} and refused[408] == 1, refused


def test_the_crash_and_the_http_layer_refusals_reached_prometheus(stack):
    """What only the gateway process knows (a media worker's crash; requests its HTTP protocol
    refused before the application saw them) is on the app's /metrics, scraped, and alerted on."""
    prometheus, refused = stack["prometheus"], stack["refused"]
    counted = {
        (series["metric"]["status"], series["metric"]["code"]): float(series["value"][1])
        for series in prometheus.query("avserve_http_rejections_total")
    }
    assert counted == {
        ("400", "invalid_content_length"): refused[400], ("400", "invalid_http_request"): 0,
        ("408", "request_header_timeout"): 1, ("431", "request_headers_too_large"): refused[431],
    }, counted  # fmt: skip
    (crashed,) = prometheus.query('avserve_media_failures_total{reason="crashed"}')
    assert float(crashed["value"][1]) == 1
    alerts = {alert["labels"]["alertname"]: alert["state"] for alert in prometheus.api("alerts")["alerts"]}
    assert alerts.get("AvserveDecoderCrashed") == "firing", alerts


def test_every_target_is_scraped(stack):
    targets = stack["prometheus"].targets()
    health = {target["labels"]["job"]: target["health"] for target in targets}
    assert health == {"avserve-gateway": "up", "triton": "up", "triton-supervisor": "up", "prometheus": "up"}, targets


def test_template_variables_find_every_model(stack):
    prometheus = stack["prometheus"]
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] != "query":
                continue
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, f"{path.name} ${variable['name']}: unsupported query {query}"
            values = prometheus.api(f"label/{match.group(2)}/values", **{"match[]": match.group(1)})
            assert set(MODELS) <= set(values), (variable["name"], values)
    # A family name the client made up is not a label value (unbounded cardinality): "unknown".
    requested = prometheus.api("label/model/values", **{"match[]": "avserve_requests_total"})
    assert "no_such_family" not in requested and "unknown" in requested, requested


@pytest.mark.parametrize("model", [".*", *MODELS], ids=["All", *MODELS])
def test_every_dashboard_query_returns_data(stack, model):
    prometheus = stack["prometheus"]
    targets = dashboard_targets()
    assert len(targets) >= 20
    empty = []
    for dashboard, title, expr in targets:
        query = substitute(expr, {"model": model, "datasource": "prometheus"})
        if not has_data(prometheus.query(query)):
            empty.append(f"{dashboard} / {title}: {query}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_every_rule_expression_returns_data(stack):
    prometheus = stack["prometheus"]
    empty = []
    rules = rule_entries()
    assert sum("alert" in rule for rule in rules) >= 4
    for rule in rules:
        expr = rule["expr"] if "record" in rule else as_bool_comparisons(rule["expr"])
        if not has_data(prometheus.query(expr)):
            empty.append(f"{rule.get('record') or rule.get('alert')}: {expr}")
    assert not empty, "rule expressions without data:\n" + "\n".join(empty)


def test_prometheus_loaded_and_evaluates_every_rule(stack):
    groups = stack["prometheus"].api("rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    expected = {rule.get("record") or rule["alert"] for rule in rule_entries()}
    assert set(loaded) == expected
    bad = {name: rule.get("lastError") for name, rule in loaded.items() if rule["health"] != "ok"}
    assert not bad, bad
    # Nothing is wrong with this healthy stack except what the test provoked on purpose.
    firing = {name for name, rule in loaded.items() if rule.get("state") == "firing"}
    assert not firing & {"AvserveTargetDown", "TritonInferenceFailures"}, firing
