"""The sizing table of docs/deploy.md: gateway replicas from the CPU one request costs.

A gateway pod requests GATEWAY_CORES cores and the HorizontalPodAutoscaler keeps them at
HPA_TARGET utilisation, so a pod serves HPA_TARGET x GATEWAY_CORES / (CPU seconds per request)
requests per second. The CPU per request is measured (docs/benchmarks.md, one `avserve bench` run
on this project's 2-core development machine, 2026-11-29): it depends on the clips far more than
on the model, since decoding is most of it. `python scripts/k8s_sizing.py` prints the table;
tests/deploy/test_k8s.py checks docs/deploy.md holds exactly this output.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_YAML = ROOT / "deploy" / "k8s" / "base" / "gateway.yaml"
RATES = (100, 1000)  # target requests per second the table sizes for

# (clip class, gateway CPU ms per request, where the number comes from). docs/benchmarks.md, *Runs*
# and *Upload-size clips* tables. The Triton-backend gateway's own share is its whole tree's CPU
# (gateway-triton) minus what Triton alone takes for the same requests (triton-direct), at
# concurrency 16; the upload-size rows are the embedded gateway's tree, whose inference (a tiny
# model, ~9 ms) is small next to decoding.
MEASURED = (
    ("synthetic mix (`avserve data synth` clips), exact", 89.1 - 12.4, "gateway-triton 89.1 - triton-direct 12.4, concurrency 16"),
    ("720p H.264, short GOP (0.5 s), exact", 416.6, "gateway-embedded, upload-size clips, concurrency 2"),
    ("720p H.264, short GOP (0.5 s), fast", 175.9, "gateway-embedded-fast, upload-size clips, concurrency 2"),
    ("720p H.264, long GOP (5 s), exact", 361.8, "gateway-embedded, upload-size clips, concurrency 2"),
    ("1080p H.264, 2 s GOP, exact", 796.9, "gateway-embedded, upload-size clips, concurrency 2"),
    ("1080p H.264, 2 s GOP, fast", 714.8, "gateway-embedded-fast, upload-size clips, concurrency 2"),
)


def gateway_pod() -> tuple[float, float]:
    """(cores one gateway pod requests, the HPA's CPU utilisation target), from the manifests."""
    documents = list(yaml.safe_load_all(GATEWAY_YAML.read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    hpa = next(d for d in documents if d["kind"] == "HorizontalPodAutoscaler")
    cores = float(deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"])
    target = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Resource")["resource"]["target"]["averageUtilization"]
    return cores, target / 100


def table() -> str:
    cores, target = gateway_pod()
    rate_columns = " | ".join(f"pods for {rate} req/s" for rate in RATES)
    lines = [
        f"| clips | gateway CPU ms / request | req/s per pod ({cores:g} cores at {target:.0%}) | {rate_columns} | source |",
        "|---|---:|---:|" + "---:|" * len(RATES) + "---|",
    ]
    for clips, cpu_ms, source in MEASURED:
        per_pod = target * cores / (cpu_ms / 1000)
        pods = " | ".join(str(math.ceil(rate / per_pod)) for rate in RATES)
        lines.append(f"| {clips} | {cpu_ms:.1f} | {per_pod:.1f} | {pods} | {source} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
