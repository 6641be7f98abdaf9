"""The locust file, headless, against a real gateway: zero failures at a sustainable rate."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCUST = ROOT / ".venv-loadtest" / "bin" / "locust"


@pytest.mark.skipif(not LOCUST.exists(), reason=".venv-loadtest missing: run scripts/setup.sh")
def test_locust_headless_smoke_has_no_failures(gateway_url, clip_dir, tmp_path):
    prefix = tmp_path / "stats"
    env = {**os.environ, "AVSERVE_CLIPS": str(clip_dir), "AVSERVE_WAIT": "0.2,0.6"}
    result = subprocess.run(
        [str(LOCUST), "--headless", "-u", "4", "-r", "4", "-t", "15s", "--host", gateway_url,
         "-f", str(ROOT / "loadtests" / "locustfile.py"), "--csv", str(prefix), "--json", "--only-summary",
         "--stop-timeout", "10"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout)  # --json: per-name stats on stdout
    by_name = {entry["name"]: entry for entry in stats}
    assert {"classify [av]", "classify [audio]", "classify [video]"} <= set(by_name), sorted(by_name)
    assert sum(e["num_requests"] for e in stats) >= 20
    assert sum(e["num_failures"] for e in stats) == 0, stats
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert int(rows["Aggregated"]["Request Count"]) >= 20
