"""deploy/k8s/, checked without a cluster (issue 19):

- every kustomization renders with the `kubectl` on PATH (scripts/setup.sh installs Debian's
  kubernetes-client; the manifests keep to what its kustomize v2.0.3 reads);
- every rendered object validates, strictly, against the Kubernetes API schemas of a pinned
  version (kubernetes-validate) or, for the custom resources, the published CRDs vendored in
  deploy/k8s/schemas/crds/ (their openAPIV3Schema closed as strict field validation does,
  tests/helpers/crd_schemas.py);
- the references a cluster would only find broken at run time: selectors and labels, named
  ports, probe paths and ports against the real gateway (started with the manifest's
  environment) and a real tritonserver of the same release (started with the manifest's flags), the HPA's metric in the gateway's /metrics, images against
  docker-compose.yml, the PrometheusRule and dashboard against the files promtool and the
  compose Grafana use, the training launchers' torchrun settings against each other;
- the training job's command line, run locally under torchrun with 2 processes, SIGKILLed after
  a checkpoint and started again: it resumes and finishes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import cache
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from crd_schemas import crd_json_schema
from referencing import Registry, Resource

from avserve.gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SERVING = ("base", "overlays/cpu", "overlays/gpu")
TRAINING = ("training/pytorchjob", "training/indexed-job")
KUSTOMIZATIONS = SERVING + TRAINING
KUBERNETES_VERSION = "1.30.0"  # the API the manifests are written for (autoscaling/v2, policy/v1, Indexed Jobs)
# (apiVersion, kind) of each custom resource: the published CRD it is checked against
# (deploy/k8s/schemas/README.md says which release each comes from)
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
    ("kubeflow.org/v1", "PyTorchJob"): "kubeflow.org_pytorchjobs.yaml",
}


def script(name: str):
    """A module of scripts/ (tools run by path, not an installed package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


k8s_monitoring, k8s_sizing = script("k8s_monitoring"), script("k8s_sizing")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not on PATH: run scripts/setup.sh (it installs Debian's kubernetes-client)")
    return path


@cache
def render(kustomization: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization}: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(objects, kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} objects"
    return found[0]


def pod_templates(objects) -> list[tuple[str, dict]]:
    """(owner, pod template) of every workload."""
    templates = []
    for o in objects:
        owner = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in ("Deployment", "Job"):
            templates.append((owner, o["spec"]["template"]))
        elif o["kind"] == "PyTorchJob":
            templates.extend((f"{owner}/{role}", spec["template"]) for role, spec in o["spec"]["pytorchReplicaSpecs"].items())
    return templates


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def container(template: dict, name: str | None = None) -> dict:
    containers = template["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def env(container_spec: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container_spec.get("env", [])}


def flag(command: list[str], name: str) -> str:
    """The value of `--name=value` or `--name value` in a command line."""
    for index, arg in enumerate(command):
        if arg == name:
            return command[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {command}")


# ---- rendering and schemas ------------------------------------------------------------------------


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Validator:
    """The published CRD's schema of `kind` at `api_version`, its metadata checked against
    kubernetes-validate's strict ObjectMeta of the pinned Kubernetes version."""
    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    object_meta = {"$ref": f"{definitions['$id']}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    defined, schema = crd_json_schema(K8S / "schemas" / "crds" / CRDS[api_version, kind], api_version, object_meta)
    assert defined == kind, f"{CRDS[api_version, kind]} defines {defined}"
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validation_errors(obj: dict) -> list[str]:
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    if (obj["apiVersion"], obj["kind"]) in CRDS:
        validator = crd_validator(obj["apiVersion"], obj["kind"])
        return [f"{where} {list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where} {list(error.absolute_path)}: {error.message}"]
    return []


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_every_object_validates_strictly(kustomization):
    objects = render(kustomization)
    assert objects
    errors = [message for obj in objects for message in validation_errors(obj)]
    assert errors == [], "\n".join(errors)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "avserve", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "avserve"


def changed(obj: dict, path: tuple, value) -> dict:
    """A copy of `obj` with the field at `path` (keys and list indices) set to `value`."""
    copy = json.loads(json.dumps(obj))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return copy


POD_TEMPLATE = ("spec", "pytorchReplicaSpecs", "Master", "template")
# A misspelt field deep inside each kind: every nested object is closed, not only the top ones.
MISSPELT = [
    ("Deployment/gateway", ("spec", "template", "spec", "containers", 0, "readinessProbe", "httpGet", "paht"), "/readyz"),
    ("ServiceMonitor", ("spec", "endpoints", 0, "inteval"), "15s"),
    ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "relabelings", 0, "target_label"), "job"),
    ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "expresion"), "1"),
    ("PyTorchJob", ("spec", "pytorchReplicaSpecs", "Master", "restart_policy"), "OnFailure"),
    ("PyTorchJob", ("metadata", "lables"), {}),  # the resource's own metadata: ObjectMeta
    ("PyTorchJob", (*POD_TEMPLATE, "metadata", "labesl"), {}),  # the pod template's, as the CRD declares it
    ("PyTorchJob", (*POD_TEMPLATE, "spec", "containers", 0, "volumeMounts", 0, "readonly"), True),  # the expanded PodSpec
]
# Values the published CRDs constrain beyond their types (enum, pattern, int-or-string)
OUT_OF_RANGE = [
    ("ServiceMonitor", ("spec", "endpoints", 0, "scheme"), "htp"),  # enum http, https, HTTP, HTTPS
    ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "15 seconds"),  # Prometheus duration pattern
    ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "targetPort"), 80.5),  # int-or-string
    ("PrometheusRule", ("spec", "groups", 1, "rules", 0, "for"), "2 minutes"),  # duration pattern
    ("PyTorchJob", (*POD_TEMPLATE, "spec", "containers", 0, "resources", "limits", "memory"), "64 GB"),  # Quantity pattern
    ("PyTorchJob", (*POD_TEMPLATE, "spec", "containers", 0, "imagePullPolicy"), 3),  # a string
]
# ... and the same fields with values they accept, so those failures come from the constraint
IN_RANGE = [
    ("ServiceMonitor", ("spec", "endpoints", 0, "scheme"), "https"),
    ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "targetPort"), 8002),
    ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "targetPort"), "metrics"),
    ("PrometheusRule", ("spec", "groups", 1, "rules", 0, "for"), "1h30m"),
    ("PyTorchJob", (*POD_TEMPLATE, "spec", "containers", 0, "resources", "limits", "memory"), "64G"),
]


def test_strict_validation_is_not_vacuous():
    """A misspelt field fails, in a built-in kind and at any depth of each custom resource; the
    enums and patterns the published CRDs carry are enforced. (`kind` or `kind/name`.)"""
    objects = render("overlays/gpu") + render("training/pytorchjob")
    for kind, path, value in MISSPELT:
        errors = validation_errors(changed(find(objects, *kind.split("/")), path, value))
        assert f"'{path[-1]}'" in "\n".join(errors), (kind, path, errors)
    for kind, path, value in OUT_OF_RANGE:
        assert validation_errors(changed(find(objects, *kind.split("/")), path, value)), (kind, path, value)
    for kind, path, value in IN_RANGE:
        assert validation_errors(changed(find(objects, *kind.split("/")), path, value)) == [], (kind, path, value)


def test_overlays_keep_every_base_object():
    base = {(o["kind"], o["metadata"]["name"]) for o in render("base")}
    for overlay in ("overlays/cpu", "overlays/gpu"):
        kinds = {(o["kind"], o["metadata"]["name"]) for o in render(overlay)}
        assert kinds == base, overlay


# ---- serving: cross-references -------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", SERVING + TRAINING)
def test_selectors_ports_and_volumes_line_up(kustomization):
    objects = render(kustomization)
    templates = pod_templates(objects)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for obj in objects:
        if obj["kind"] == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            assert matches(selector, obj["spec"]["template"]["metadata"]["labels"]), obj["metadata"]["name"]
            for spread in obj["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
                assert matches(spread["labelSelector"]["matchLabels"], obj["spec"]["template"]["metadata"]["labels"])
        if obj["kind"] == "Service":
            selected = [t for _, t in templates if matches(obj["spec"]["selector"], t["metadata"]["labels"])]
            assert selected, f"Service {obj['metadata']['name']} selects no pods"
            for port in obj["spec"]["ports"]:
                for template in selected:
                    container_ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
                    assert port["targetPort"] in container_ports, (obj["metadata"]["name"], port)
                    assert container_ports[port["targetPort"]] == port["port"], port  # one number per port everywhere
        if obj["kind"] == "PodDisruptionBudget":
            assert [o for o, t in templates if matches(obj["spec"]["selector"]["matchLabels"], t["metadata"]["labels"])]
        if obj["kind"] == "HorizontalPodAutoscaler":
            assert (obj["spec"]["scaleTargetRef"]["kind"], obj["spec"]["scaleTargetRef"]["name"]) in names
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    for owner, template in templates:
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for c in template["spec"]["containers"]:
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, (owner, mount)
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, (owner, source)
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["port"] in {p["name"] for p in c["ports"]}, (owner, probe)
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (owner, volume)


@pytest.mark.parametrize("kustomization", SERVING + TRAINING)
def test_pods_run_unprivileged_on_a_read_only_root(kustomization):
    for owner, template in pod_templates(render(kustomization)):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["securityContext"]["runAsUser"] != 0, owner
        assert spec["automountServiceAccountToken"] is False, owner
        for c in spec["containers"]:
            security = c["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, owner
            assert security["allowPrivilegeEscalation"] is False, owner
            assert security["capabilities"]["drop"] == ["ALL"], owner
            # a writable /tmp on a volume: the root is read-only
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, owner


def test_gateway_matches_its_settings_image_and_compose():
    objects = render("base")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    template = find(objects, "Deployment", "gateway")["spec"]["template"]
    gateway = container(template, "gateway")
    # The same command and image as compose (the image compose builds from deploy/gateway.Dockerfile)
    assert gateway["command"] == compose["gateway"]["command"]
    assert gateway["image"].split(":")[0] == compose["gateway"]["image"].split(":")[0]
    # Every AVSERVE_ variable is a setting (a misspelt one would be silently ignored)
    fields = {f"AVSERVE_{name.upper()}" for name in GatewaySettings.model_fields}
    variables = env(gateway)
    assert set(variables) <= fields, set(variables) - fields
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports["http"] == int(flag(gateway["command"], "--port"))
    assert ports["metrics"] == int(variables["AVSERVE_METRICS_PORT"]["value"]) == int(compose["gateway"]["environment"]["AVSERVE_METRICS_PORT"])
    assert variables["AVSERVE_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "avserve-api-keys"
    # The Triton address is the Triton Service's gRPC port
    host, port = variables["AVSERVE_TRITON_URL"]["value"].split(":")
    triton_service = find(objects, "Service", host)
    assert {p["name"]: p["port"] for p in triton_service["spec"]["ports"]}["grpc"] == int(port)
    assert flag(gateway["command"], "--triton-url") == variables["AVSERVE_TRITON_URL"]["value"]
    # uploads spool to an emptyDir whose size holds the in-flight limit's worth of largest uploads
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    upload_mount = next(m for m in gateway["volumeMounts"] if m["mountPath"] == variables["AVSERVE_UPLOAD_DIR"]["value"])
    upload_volume = volumes[upload_mount["name"]]["emptyDir"]
    settings = GatewaySettings(max_in_flight_requests=int(variables["AVSERVE_MAX_IN_FLIGHT_REQUESTS"]["value"]))
    assert parse_quantity(upload_volume["sizeLimit"]) >= settings.max_in_flight_requests * settings.max_upload_bytes
    # one decoding worker per requested core (docs/deploy.md, *Sizing*)
    assert int(variables["AVSERVE_DECODE_WORKERS"]["value"]) == float(gateway["resources"]["requests"]["cpu"])
    # a stopping pod leaves the endpoints, then finishes what it has, within its grace period
    pre_stop = int(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    assert template["spec"]["terminationGracePeriodSeconds"] > pre_stop + GatewaySettings().request_timeout_seconds
    # the readiness probe waits longer than the gateway's own wait for Triton
    assert gateway["readinessProbe"]["timeoutSeconds"] > GatewaySettings().backend_ready_timeout_seconds
    assert template["spec"]["securityContext"]["runAsUser"] == dockerfile_uid(ROOT / "deploy" / "gateway.Dockerfile")


def parse_quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


def dockerfile_uid(path: Path) -> int:
    return int(re.search(r"useradd .*--uid (\d+)", path.read_text()).group(1))


def test_gateway_probes_ports_and_hpa_metric_on_the_real_gateway(tmp_path):
    """`avserve serve` started with the manifest's command and environment (ports moved to free
    ones, the Secret's key given), with no Triton behind it: the liveness path answers 200, the
    readiness path 503 (not ready without its backend), and the metrics port serves every Pods
    metric the gpu overlay's HPA scales on."""
    objects = render("overlays/gpu")
    gateway = container(find(objects, "Deployment", "gateway")["spec"]["template"], "gateway")
    http_port, metrics_port = free_port(), free_port()
    environment = {name: item["value"] for name, item in env(gateway).items() if "value" in item}
    environment |= {
        "AVSERVE_API_KEYS": "test-key",
        "AVSERVE_METRICS_PORT": str(metrics_port),
        "AVSERVE_UPLOAD_DIR": str(tmp_path),
        "AVSERVE_TRITON_URL": f"127.0.0.1:{free_port()}",  # nothing listens there
        "AVSERVE_TRITON_STARTUP_TIMEOUT_SECONDS": "1",
    }
    command = list(gateway["command"])
    command[command.index("--port") + 1] = str(http_port)
    command[command.index("--triton-url") + 1] = environment["AVSERVE_TRITON_URL"]
    command[command.index("--host") + 1] = "127.0.0.1"
    executable = Path(sys.executable).parent / command[0]
    process = subprocess.Popen(
        [str(executable), *command[1:]], env={**os.environ, **environment}, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "gateway.log").open("w"), start_new_session=True,
    )  # fmt: skip
    try:
        liveness, readiness = gateway["livenessProbe"]["httpGet"], gateway["readinessProbe"]["httpGet"]
        ports = {p["name"]: http_port if p["name"] == "http" else metrics_port for p in gateway["ports"]}
        deadline = time.monotonic() + 60
        while status(f"http://127.0.0.1:{ports[liveness['port']]}{liveness['path']}") != 200:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()[-3000:]
            time.sleep(0.2)
        assert status(f"http://127.0.0.1:{ports[readiness['port']]}{readiness['path']}") == 503
        while status(f"http://127.0.0.1:{metrics_port}/metrics") != 200:  # a listener of its own: may come a moment later
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()[-3000:]
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            exposition = response.read().decode()
        hpa = find(objects, "HorizontalPodAutoscaler", "gateway")
        pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert pods_metrics
        for name in pods_metrics:
            assert re.search(rf"^{name} ", exposition, flags=re.MULTILINE), f"{name} is not in the gateway's /metrics"
        assert status(f"http://127.0.0.1:{http_port}/metrics") == 404  # on the metrics port only, as in compose
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_triton_matches_compose_flags_ports_and_health_endpoints():
    objects = render("base")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    template = find(objects, "Deployment", "triton")["spec"]["template"]
    triton = container(template, "triton")
    image = re.sub(r"\$\{TRITON_TAG:-([^}]+)\}", r"\1", compose["image"].split()[0])
    assert triton["image"] == image
    # every flag compose gives, except where the repository lives
    compose_flags = [f for f in compose["command"][1:] if not f.startswith("--model-repository=")]
    assert triton["command"][0] == compose["command"][0] == "tritonserver"
    assert set(compose_flags) <= set(triton["command"]), set(compose_flags) - set(triton["command"])
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": int(flag(triton["command"], "--http-port")), "grpc": int(flag(triton["command"], "--grpc-port")),
                     "metrics": int(flag(triton["command"], "--metrics-port"))}  # fmt: skip
    assert {p.split(":")[-1] for p in compose["ports"]} == {str(p) for p in ports.values()}
    # Triton's own health endpoints on its HTTP port; compose's health check reads the same one
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert "/v2/health/ready" in " ".join(compose["healthcheck"]["test"])
    # the model repository: $(MODEL_REPOSITORY) from the ConfigMap, by default the mounted volume
    assert flag(triton["command"], "--model-repository") == "$(MODEL_REPOSITORY)"
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("triton-config"))
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert mounts[config["data"]["MODEL_REPOSITORY"]]["readOnly"] is True
    assert flag(triton["command"], "--model-control-mode") == "poll"
    assert template["spec"]["securityContext"]["runAsUser"] != 0


def test_triton_starts_with_the_manifest_command(tmp_path):
    """The manifest's command line run by a real tritonserver of the same release (the one the
    [triton] extra bundles: Triton 2.51, as the NGC 24.10 image), ports moved to free ones and
    $(MODEL_REPOSITORY) an empty directory: it accepts every flag, and the probes' endpoints and
    the metrics port answer."""
    from avserve.triton.install import find_triton

    install = find_triton()
    repository = tmp_path / "models"
    repository.mkdir()
    objects = render("base")
    triton = container(find(objects, "Deployment", "triton")["spec"]["template"], "triton")
    ports = {p["name"]: free_port() for p in triton["ports"]}
    moved = {"--http-port": ports["http"], "--grpc-port": ports["grpc"], "--metrics-port": ports["metrics"]}
    command = [str(install.binary)]
    for arg in triton["command"][1:]:
        name = arg.split("=")[0]
        command.append(f"{name}={moved[name]}" if name in moved else arg.replace("$(MODEL_REPOSITORY)", str(repository)))
    environment = {**os.environ, "LD_LIBRARY_PATH": str(install.libs)}
    log = tmp_path / "triton.log"
    process = subprocess.Popen(command, env=environment, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        probes = {kind: triton[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
        deadline = time.monotonic() + 60
        while status(f"http://127.0.0.1:{ports['http']}{probes['livenessProbe']['path']}") != 200:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        for probe in probes.values():
            assert status(f"http://127.0.0.1:{ports[probe['port']]}{probe['path']}") == 200, probe
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/v2", timeout=5) as response:
            assert json.loads(response.read())["version"] == "2.51.0"  # what the NGC image's tag (24.10) holds
        while status(f"http://127.0.0.1:{ports['metrics']}/metrics") != 200:  # its listener may start a moment later
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=60)
    # not vacuous: a misspelt flag stops it
    broken = subprocess.run([*command, "--model-controll-mode=poll"], env=environment, capture_output=True, text=True, timeout=60)
    assert broken.returncode != 0 and "unrecognized option" in broken.stdout + broken.stderr


def test_gpu_overlay_gives_triton_a_gpu_and_the_cpu_overlay_none():
    gpu = container(find(render("overlays/gpu"), "Deployment", "triton")["spec"]["template"], "triton")
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["command"] == container(find(render("base"), "Deployment", "triton")["spec"]["template"])["command"]
    cpu = container(find(render("overlays/cpu"), "Deployment", "triton")["spec"]["template"], "triton")
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    cpu_hpa = find(render("overlays/cpu"), "HorizontalPodAutoscaler")
    assert [m["type"] for m in cpu_hpa["spec"]["metrics"]] == ["Resource"]  # needs metrics-server only


def test_network_policy_lets_only_the_gateway_reach_triton():
    objects = render("base")
    policy = find(objects, "NetworkPolicy")
    triton = find(objects, "Deployment", "triton")["spec"]["template"]
    gateway = find(objects, "Deployment", "gateway")["spec"]["template"]
    assert matches(policy["spec"]["podSelector"]["matchLabels"], triton["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {p["name"]: p["containerPort"] for p in container(triton)["ports"]}
    for rule in policy["spec"]["ingress"]:
        allowed = {p["port"] for p in rule["ports"]}
        (source,) = rule["from"]
        if matches(source["podSelector"]["matchLabels"], gateway["metadata"]["labels"]):
            assert allowed == {ports["http"], ports["grpc"]}
            assert "namespaceSelector" not in source  # the gateway pods of this namespace only
        else:
            assert allowed == {ports["metrics"]}, rule  # anyone else: metrics only


def test_monitoring_objects_scrape_what_compose_scrapes():
    objects = render("base")
    jobs = {job["job_name"] for job in yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"]}
    service_monitor, pod_monitor = find(objects, "ServiceMonitor"), find(objects, "PodMonitor")
    gateway_service = find(objects, "Service", "gateway")
    assert matches(service_monitor["spec"]["selector"]["matchLabels"], gateway_service["metadata"]["labels"])
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in gateway_service["spec"]["ports"]}
    gateway = container(find(objects, "Deployment", "gateway")["spec"]["template"])
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]}[endpoint["port"]] == int(env(gateway)["AVSERVE_METRICS_PORT"]["value"])
    triton = find(objects, "Deployment", "triton")["spec"]["template"]
    assert matches(pod_monitor["spec"]["selector"]["matchLabels"], triton["metadata"]["labels"])
    (pod_endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert pod_endpoint["port"] in {p["name"] for p in container(triton)["ports"]}
    # the job labels the rules and the dashboard select on
    relabelled = {
        next(r["replacement"] for r in e["relabelings"] if r["targetLabel"] == "job") for e in (endpoint, pod_endpoint)
    }
    assert relabelled == {"avserve-gateway", "triton"} and relabelled <= jobs


def test_prometheus_rule_and_dashboard_are_the_promtool_tested_and_compose_files():
    for path, text in k8s_monitoring.outputs().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run python scripts/k8s_monitoring.py"
    objects = render("base")
    rules = [group for path in sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
             for group in yaml.safe_load(path.read_text())["groups"]]  # fmt: skip
    assert find(objects, "PrometheusRule")["spec"]["groups"] == rules
    alerts = {rule["alert"] for group in rules for rule in group["rules"] if "alert" in rule}
    tested = (ROOT / "deploy/prometheus/tests/avserve_test.yml").read_text()
    assert {alert for alert in alerts if f"alertname: {alert}" in tested}  # the same file promtool tests
    dashboards = find(objects, "ConfigMap", "avserve-grafana-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    for path in (ROOT / "deploy/grafana/dashboards").glob("*.json"):
        assert json.loads(dashboards["data"][path.name]) == json.loads(path.read_text())


def test_sizing_table_in_the_docs_is_the_computed_one():
    assert k8s_sizing.table() in (ROOT / "docs/deploy.md").read_text(), "run python scripts/k8s_sizing.py and paste its table"


# ---- training -------------------------------------------------------------------------------------------


def train_command(command: list[str]) -> tuple[list[str], list[str]]:
    """(torchrun's options, `avserve train`'s arguments) of a training container's command."""
    assert command[0] == "torchrun"
    split = command.index("-m")
    assert command[split + 1 : split + 3] == ["avserve.cli", "train"]
    return command[1:split], command[split + 3 :]


def test_training_launchers_run_the_same_train_command_with_consistent_ddp_settings():
    pytorchjob = find(render("training/pytorchjob"), "PyTorchJob")
    indexed = render("training/indexed-job")
    job, service = find(indexed, "Job"), find(indexed, "Service")
    replicas = pytorchjob["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    commands = [container(spec["template"])["command"] for spec in replicas.values()]
    assert commands[0] == commands[1]
    operator_torchrun, operator_train = train_command(commands[0])
    indexed_container = container(job["spec"]["template"])
    torchrun, train = train_command(indexed_container["command"])
    assert train == operator_train  # one training run, whichever launcher
    # the README's DDP launcher and the options a restartable run needs
    assert "--resume" in train and "--no-progress" in train
    for name, spec in replicas.items():
        main = container(spec["template"])
        assert main["name"] == "pytorch", name  # the Training Operator finds the container by this name
        assert main["resources"]["limits"]["nvidia.com/gpu"] == int(pytorchjob["spec"]["nprocPerNode"])
        assert spec["restartPolicy"] == "OnFailure"
    # the operator supplies nnodes, node rank and the master's address (PET_*): none given here
    assert not [arg for arg in operator_torchrun if arg.split("=")[0] in ("--nnodes", "--rdzv_endpoint", "--nproc_per_node")]
    # Indexed Job: N pods at once, one per node, rendezvous at pod 0 through the headless Service
    nodes = int(flag(torchrun, "--nnodes"))
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == job["spec"]["parallelism"] == nodes
    assert nodes == 1 + replicas["Worker"]["replicas"]  # both launchers train on the same N nodes x M GPUs
    assert int(flag(torchrun, "--nproc_per_node")) == indexed_container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(flag(torchrun, "--nproc_per_node")) == int(pytorchjob["spec"]["nprocPerNode"])
    assert flag(torchrun, "--rdzv_backend") == "c10d"
    host, port = flag(torchrun, "--rdzv_endpoint").split(":")
    pod_spec = job["spec"]["template"]["spec"]
    assert host == f"{job['metadata']['name']}-0.{pod_spec['subdomain']}"  # pod 0's DNS name (Indexed Job hostnames)
    assert service["metadata"]["name"] == pod_spec["subdomain"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert matches(service["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"])
    assert {p["port"] for p in service["spec"]["ports"]} == {int(port)}
    assert pod_spec["restartPolicy"] == "OnFailure"
    # data read-only from its volume, the run directory on the checkpoint volume
    mounts = {m["mountPath"]: m for m in indexed_container["volumeMounts"]}
    data_mount = next(path for path in mounts if flag(train, "--data").startswith(path + "/"))
    out_mount = next(path for path in mounts if flag(train, "--out").startswith(path + "/"))
    assert mounts[data_mount]["readOnly"] is True and not mounts[out_mount].get("readOnly")
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes[mounts[out_mount]["name"]]["persistentVolumeClaim"]["claimName"] == "checkpoints"


def test_training_image_holds_the_training_code():
    dockerfile = (ROOT / "deploy" / "train.Dockerfile").read_text()
    assert re.search(r'pip install -c requirements/constraints.txt "\.\[train\]"', dockerfile)
    ignore = (ROOT / "deploy" / "train.Dockerfile.dockerignore").read_text().split()
    for source in re.findall(r"^COPY\s+(.+)\s+\S+$", dockerfile, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
            assert f"!{path}/" in ignore or f"!{path}" in ignore, f"{path} is excluded from the build context"
    image = container(find(render("training/indexed-job"), "Job")["spec"]["template"])["image"]
    assert image.split(":")[0] == "avserve-train"
    uid = dockerfile_uid(ROOT / "deploy" / "train.Dockerfile")
    assert find(render("training/indexed-job"), "Job")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


# Run locally: the manifest's train arguments with the model, data, size and output swapped for
# a seconds-long run; everything else (--resume, --no-progress, ...) as the manifest has it. The
# kill lands after step 2's checkpoint: 4 steps more give the test's polling ample time to see it.
LOCAL_TRAIN = {"--model": "zorro_tiny", "--steps": "6", "--batch-size": "2", "--workers": "0", "--eval-every": "2", "--log-every": "1"}
TINY = ["--set", "dim=32", "--set", "depth=2", "--set", "num_heads=2", "--set", "n_fusion=2", "--set", "decoder_qk_dim=16",
        "--set", "decoder_v_dim=16", "--max-eval-clips", "2"]  # fmt: skip


def local_command(train: list[str], data: Path, out: Path) -> list[str]:
    values = {**LOCAL_TRAIN, "--data": str(data), "--out": str(out)}
    args = list(train)
    for name, value in values.items():
        args[args.index(name) + 1] = value  # each is in the manifest: flag() raised otherwise
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "avserve.cli", "train", *args, *TINY]


def test_the_training_command_resumes_after_its_pods_are_killed(tmp_path, shared_dataset):
    """What a pod restart does to the Indexed Job's (and PyTorchJob's) command: torchrun and both
    ranks SIGKILLed together once a checkpoint is on disk, then the same command again, which
    resumes from last.pt and finishes the run with each metrics row once."""
    import torch

    from training import checkpoint as ckpt

    _, train = train_command(container(find(render("training/indexed-job"), "Job")["spec"]["template"])["command"])
    for name in LOCAL_TRAIN:
        flag(train, name)
    data = shared_dataset("k8s-train", clips=12, seed=0)  # audio+video clips and a few unimodal ones
    out = tmp_path / "checkpoints" / "run"
    command = local_command(train, data, out)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def launch(log: Path) -> subprocess.Popen:
        return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    first = launch(tmp_path / "first.log")
    checkpointed_at = None
    deadline = time.monotonic() + 120
    try:
        while checkpointed_at is None:
            assert first.poll() is None, f"finished before a kill ({shlex.join(command)}):\n" + (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            if (out / ckpt.LAST).is_file():
                checkpointed_at = torch.load(out / ckpt.LAST, weights_only=False, map_location="cpu")["step"]
            else:
                time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the container's every process, as a pod restart
        first.wait()
    assert 0 < checkpointed_at < int(LOCAL_TRAIN["--steps"])

    second = launch(tmp_path / "second.log")
    try:
        second.wait(timeout=150)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log[-3000:]
    resumed = re.search(r"resumed .* at step (\d+)/", log)
    assert resumed and int(resumed.group(1)) >= checkpointed_at, log[-3000:]
    assert torch.load(out / ckpt.LAST, weights_only=False, map_location="cpu")["step"] == int(LOCAL_TRAIN["--steps"])
    rows = [json.loads(line) for line in (out / ckpt.METRICS_FILE).read_text().splitlines()]
    steps = [row["step"] for row in rows if row["kind"] == "train"]
    assert steps == list(range(1, int(LOCAL_TRAIN["--steps"]) + 1)), steps  # each row once, none lost
    assert json.loads((out / ckpt.RUN_FILE).read_text())["train"]["world_size"] == 2
