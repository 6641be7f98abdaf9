"""Locust load test of an avserve gateway with a realistic request mix.

Clips with both tracks, audio-only and video-only files, at several frame sizes and lengths
(loadtests/clips.py), weighted as in the bench. Runs in its own environment (locust's
geventhttpclient pin conflicts with tritonclient's): scripts/setup.sh creates .venv-loadtest.
Run it from the repo root: locust puts its working directory on sys.path, which is how
`loadtests.clips` and `avserve.media` import there (that environment does not install avserve).

    .venv-loadtest/bin/locust -f loadtests/locustfile.py --headless -u 8 -r 4 -t 60s \
        --host http://127.0.0.1:8080 --csv /tmp/avserve --json

Environment:
  AVSERVE_CLIPS     directory for the clip mix (written on first use; default ~/.cache/avserve-bench/clips)
  AVSERVE_API_KEY   sent as X-API-Key when set
  AVSERVE_ROUTES    comma-separated subset of av,audio,video (default: all)
  AVSERVE_WAIT      seconds each user waits between requests, "min,max" (default 0.5,1.5)

Each request is named by its route ("classify [av]", "classify [audio]", ...), so locust's
stats are per route. A response only counts as a success if it is HTTP 200, names a model
and has predictions.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from locust import HttpUser, between, events, task

from loadtests.clips import ROUTES, make_clips

CLIPS_DIR = Path(os.environ.get("AVSERVE_CLIPS") or Path.home() / ".cache" / "avserve-bench" / "clips")
SELECTED = tuple(r.strip() for r in os.environ.get("AVSERVE_ROUTES", ",".join(ROUTES)).split(",") if r.strip())
_low, _high = (float(x) for x in os.environ.get("AVSERVE_WAIT", "0.5,1.5").split(","))

CLIPS = make_clips(CLIPS_DIR, SELECTED)  # written once, before any user starts
BODIES = {clip.name: clip.path.read_bytes() for clip in CLIPS}
WEIGHTS = [clip.weight for clip in CLIPS]


@events.init.add_listener
def _describe(environment, **_kwargs) -> None:
    mix = ", ".join(f"{c.name} ({c.route}, {c.weight:.0%})" for c in CLIPS)
    # stderr: stdout carries locust's own --json report
    print(f"avserve locustfile: {len(CLIPS)} clips from {CLIPS_DIR}: {mix}", file=sys.stderr, flush=True)


class GatewayUser(HttpUser):
    wait_time = between(_low, _high)

    def on_start(self) -> None:
        self.rng = random.Random()
        key = os.environ.get("AVSERVE_API_KEY")
        if key:
            self.client.headers["X-API-Key"] = key

    @task
    def classify(self) -> None:
        clip = self.rng.choices(CLIPS, WEIGHTS)[0]
        files = {"file": (clip.path.name, BODIES[clip.name])}
        with self.client.post("/classify", files=files, name=f"classify [{clip.route}]", catch_response=True,
                              timeout=60) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                body = response.json()
            except ValueError:
                response.failure("response is not JSON")
                return
            if not body.get("predictions") or not body.get("model", {}).get("name"):
                response.failure(f"no predictions/model in {str(body)[:200]}")
            else:
                response.success()
