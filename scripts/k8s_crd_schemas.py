"""Writes deploy/k8s/schemas/*.json: strict JSON schemas of the custom resources deploy/k8s/
uses, from the models their projects' SDKs publish on PyPI (no network beyond the registry):

- ServiceMonitor, PodMonitor, PrometheusRule: `cloudcoil-models-prometheus-operator`, pydantic
  models generated from the prometheus-operator release's CRD OpenAPI schemas (monitoring.coreos.com/v1);
- PyTorchJob: `kubeflow-training`, the Kubeflow Training Operator's Python SDK, whose OpenAPI
  models are generated from the operator's Go API types (kubeflow.org/v1).

Made strict the way the API server is with strict field validation: every object closes
(`additionalProperties: false`), nothing is nullable, and the Kubernetes types they embed
(ObjectMeta, PodTemplateSpec, ...) refer to kubernetes-validate's strict definitions, which the
tests register under their `$id`. Run once per upgrade, in a throwaway environment:

    python -m venv /tmp/crd && /tmp/crd/bin/pip install kubernetes-validate==1.37.0 \
        cloudcoil-models-prometheus-operator==0.80.1.0 kubeflow-training==1.9.4
    /tmp/crd/bin/python scripts/k8s_crd_schemas.py
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "deploy" / "k8s" / "schemas"
KUBERNETES_VERSION = "1.30.0"  # the API version tests/deploy/test_k8s.py validates against
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"  # kubernetes-validate's $id


def kubernetes_definitions() -> dict[str, Any]:
    from importlib.resources import files

    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
    return json.loads((folder / "_definitions.json").read_text())["$defs"]


def k8s_ref(key: str) -> dict[str, str]:
    return {"$ref": f"{DEFINITIONS_ID}#/$defs/{key}"}


def close(schema: Any) -> Any:
    """additionalProperties: false on every object with properties; `X or null` becomes X."""
    if isinstance(schema, list):
        return [close(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: close(v) for k, v in schema.items() if k not in ("title", "default")}
    variants = schema.get("anyOf")
    if variants and {"type": "null"} in variants:
        rest = [v for v in variants if v != {"type": "null"}]
        schema.pop("anyOf")
        schema.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


def resource_envelope(group_version: str, kind: str, spec: dict, defs: dict, source: str) -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": source,
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": group_version},
            "kind": {"const": kind},
            "metadata": k8s_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": spec,
        },
        "$defs": defs,
    }


def prometheus_operator(kind: str) -> dict:
    from cloudcoil.models.prometheus_operator import v1

    schema = close(getattr(v1, kind).model_json_schema(by_alias=True, mode="validation"))
    source = (
        f"prometheus-operator monitoring.coreos.com/v1 {kind}, from cloudcoil-models-prometheus-operator "
        f"{version('cloudcoil-models-prometheus-operator')} (Apache-2.0), by scripts/k8s_crd_schemas.py"
    )
    return resource_envelope("monitoring.coreos.com/v1", kind, schema["properties"]["spec"], schema.get("$defs", {}), source)


def kubeflow_pytorchjob(definitions: dict[str, Any]) -> dict:
    from kubeflow.training import models

    defs: dict[str, Any] = {}

    def kubernetes_type(name: str) -> dict:
        if name == "Quantity":
            return k8s_ref("io.k8s.apimachinery.pkg.api.resource.Quantity")
        if name.startswith("V1"):
            for key in (f"io.k8s.api.core.v1.{name[2:]}", f"io.k8s.apimachinery.pkg.apis.meta.v1.{name[2:]}"):
                if key in definitions:
                    return k8s_ref(key)
        for key in definitions:  # K8sIoApiAutoscalingV2MetricSpec -> io.k8s.api.autoscaling.v2.MetricSpec
            if key.startswith("io.k8s.api.") and ("K8sIoApi" + key[len("io.k8s.api."):].replace(".", "")).lower() == name.lower():
                return k8s_ref(key)
        raise KeyError(f"no Kubernetes definition for {name}")

    def of(type_name: str) -> dict:
        scalars = {"str": {"type": "string"}, "int": {"type": "integer"}, "bool": {"type": "boolean"},
                   "float": {"type": "number"}, "datetime": {"type": "string"}, "object": {}}  # fmt: skip
        if type_name in scalars:
            return scalars[type_name]
        if match := re.fullmatch(r"list\[(.+)\]", type_name):
            return {"type": "array", "items": of(match.group(1))}
        if match := re.fullmatch(r"dict\(str, (.+)\)", type_name):
            return {"type": "object", "additionalProperties": of(match.group(1))}
        if not type_name.startswith("KubeflowOrg"):
            return kubernetes_type(type_name)
        if type_name not in defs:
            model = getattr(models, type_name)
            defs[type_name] = {}  # recursion guard
            # The SDK's setters refuse None for the fields the API requires.
            required = re.findall(r"client_side_validation and (\w+) is None", inspect.getsource(model))
            defs[type_name] = {
                "type": "object",
                "additionalProperties": False,
                "properties": {model.attribute_map[attr]: of(kind) for attr, kind in model.openapi_types.items()},
                **({"required": [model.attribute_map[attr] for attr in required]} if required else {}),
            }
        return {"$ref": f"#/$defs/{type_name}"}

    spec = of("KubeflowOrgV1PyTorchJobSpec")
    source = (
        f"Kubeflow Training Operator kubeflow.org/v1 PyTorchJob, from kubeflow-training {version('kubeflow-training')} "
        "(Apache-2.0), by scripts/k8s_crd_schemas.py"
    )
    return resource_envelope("kubeflow.org/v1", "PyTorchJob", spec, defs, source)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    definitions = kubernetes_definitions()
    schemas = {f"{kind.lower()}-monitoring-v1.json": prometheus_operator(kind) for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")}
    schemas["pytorchjob-kubeflow-v1.json"] = kubeflow_pytorchjob(definitions)
    for name, schema in schemas.items():
        (OUT / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {(OUT / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
