"""JSON schemas of custom resources from their published CustomResourceDefinitions, as strict as
the API server's strict field validation (`kubectl apply --validate=strict`):

    schema = crd_json_schema(crd_path, "monitoring.coreos.com/v1", object_meta_ref)

A CRD's `openAPIV3Schema` is a *structural* schema (Kubernetes' "Specifying a structural
schema"): the API server treats every field its schema does not name as unknown (pruned, or
an error under strict validation) unless `x-kubernetes-preserve-unknown-fields: true` says
otherwise. JSON Schema leaves objects open, so the conversion closes them
(`additionalProperties: false`). The other `x-kubernetes-*` extensions either mean a type
(`x-kubernetes-int-or-string`) or constrain what JSON Schema cannot check here (list-map keys,
CEL rules comparing with the old object), and are dropped. The root's `metadata` is only
`type: object` in a CRD (the API server validates it as ObjectMeta), so it becomes the caller's
ObjectMeta schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# Schema keywords whose values are schemas, and those holding lists of schemas (OpenAPI v3.0's
# subset that structural schemas allow).
SCHEMA_VALUED = ("items", "additionalProperties", "not")
SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")


def load_crd(path: Path) -> dict:
    """The CustomResourceDefinition in a YAML file (the C loader: PyTorchJob's is 600 kB)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    documents = [doc for doc in yaml.load_all(path.read_text(), Loader=loader) if doc]
    crds = [doc for doc in documents if doc.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        raise ValueError(f"{path}: expected one CustomResourceDefinition, found {len(crds)}")
    return crds[0]


def served_schema(crd: dict, api_version: str, path: Path) -> dict:
    """The `openAPIV3Schema` of the served version `api_version` (group/version) names."""
    group, _, version = api_version.partition("/")
    if group != crd["spec"]["group"]:
        raise ValueError(f"{path}: group {crd['spec']['group']}, not {group}")
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version and entry["served"]:
            return entry["schema"]["openAPIV3Schema"]
    raise ValueError(f"{path}: no served version {version}")


def strict(schema: Any) -> Any:
    """A structural schema as a JSON schema with the API server's strict field validation."""
    if not isinstance(schema, dict):
        return schema
    converted = {key: value for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    for key in SCHEMA_VALUED:
        if isinstance(converted.get(key), dict):
            converted[key] = strict(converted[key])
    for key in SCHEMA_LISTS:
        if key in converted:
            converted[key] = [strict(variant) for variant in converted[key]]
    if "properties" in converted:
        converted["properties"] = {name: strict(value) for name, value in converted["properties"].items()}
    if schema.get("x-kubernetes-int-or-string"):
        converted["type"] = ["integer", "string"]
    if schema.get("nullable") and isinstance(converted.get("type"), str):
        converted["type"] = [converted["type"], "null"]
    preserves = schema.get("x-kubernetes-preserve-unknown-fields") is True
    # An object schema naming no properties closes too: structural pruning drops all its fields.
    if converted.get("type") == "object" and "additionalProperties" not in converted and not preserves:
        converted["additionalProperties"] = False
    return converted


def crd_json_schema(path: Path, api_version: str, object_meta: dict) -> tuple[str, dict]:
    """(kind, JSON schema) of the custom resource the CRD at `path` defines, at `api_version`;
    `object_meta` is the schema (or `$ref`) its `metadata` is checked against."""
    crd = load_crd(path)
    schema = strict(served_schema(crd, api_version, path))
    kind = crd["spec"]["names"]["kind"]
    schema["properties"] = {
        **schema["properties"],
        "apiVersion": {"const": api_version},
        "kind": {"const": kind},
        "metadata": object_meta,
    }
    schema["required"] = sorted({"apiVersion", "kind", "metadata", *schema.get("required", [])})
    return kind, schema
