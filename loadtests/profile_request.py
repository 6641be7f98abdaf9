"""Where one /classify request spends the gateway's own time: cProfile of the gateway process.

    .venv/bin/python -m loadtests.profile_request                       # seeded zorro_tiny, audio-only clip
    .venv/bin/python -m loadtests.profile_request --clip av --requests 300 --top 30

The gateway (embedded backend, as `avserve serve` builds it) runs in this process's main
thread under cProfile; a client process sends `--requests` sequential requests of one small
clip. Printed: the client's latency split (total, and what the server's own timings_ms do not
cover: HTTP, multipart, spooling, JSON, the event loop), then the gateway's functions by
cumulative time. Media work runs in worker processes and inference in onnxruntime's threads,
so what the profile shows is the gateway's own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import json
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from avserve.processes import free_ports

CLIENT = r"""
import json, sys, time, httpx
url, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = open(path, "rb").read()
with httpx.Client(base_url=url, timeout=30) as client:
    for _ in range(20):  # warm-up
        client.post("/classify", files={"file": ("clip.mp4", body)})
    rows = []
    for _ in range(count):
        began = time.perf_counter()
        response = client.post("/classify", files={"file": ("clip.mp4", body)})
        latency = (time.perf_counter() - began) * 1000
        response.raise_for_status()
        rows.append([latency, response.json()["timings_ms"]])
print(json.dumps(rows))
"""


class _ProfileWhenArmed:
    """ASGI wrapper: cProfile the event loop's thread from the first request after `armed`.

    cProfile follows the thread that enables it, so enabling (and disabling) happens on the loop.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.state = app.state  # run_gateway reads the app's settings from here
        self.profile = cProfile.Profile()
        self.armed = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope, receive, send) -> None:
        if self.armed and self.loop is None and scope["type"] == "http":
            self.loop = asyncio.get_running_loop()
            self.profile.enable()
        await self.app(scope, receive, send)

    def stop(self) -> None:
        if self.loop is not None:
            done = threading.Event()
            self.loop.call_soon_threadsafe(lambda: (self.profile.disable(), done.set()))
            done.wait(10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="zorro_tiny")
    parser.add_argument("--clip", choices=("audio", "video", "av"), default="audio")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    import torch

    from avserve.gateway import GatewaySettings, create_app
    from avserve.gateway.observability import configure_logging
    from avserve.gateway.server import run_gateway
    from avserve.media.synthetic import AudioTrack, VideoTrack, write_clip
    from training.export import ExportOptions, export_model
    from training.models import create_model

    workdir = Path(tempfile.mkdtemp(prefix="avserve-profile-"))
    print(f"[profile] exporting {args.preset} (seeded weights) ...", flush=True)
    torch.manual_seed(0)
    model = create_model(args.preset, num_classes=12).eval()
    export_model(model, [f"class_{i}" for i in range(12)], workdir / "repository", ExportOptions(family=args.preset))
    clip = workdir / f"{args.clip}.mp4"
    video = VideoTrack(width=96, height=72, fps=12, num_frames=24) if args.clip != "audio" else None
    audio = AudioTrack(sample_rate=16000, seconds=2.0) if args.clip != "video" else None
    write_clip(clip, video=video, audio=audio)

    port = free_ports(1)[0]
    settings = GatewaySettings(repository=workdir / "repository", log_level="WARNING", media_queue_factor=1e6)
    configure_logging("WARNING", "text")
    profiled = _ProfileWhenArmed(create_app(settings))
    rows: list = []

    def client(count: int) -> list:
        out = subprocess.run([sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}", str(clip), str(count)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def drive() -> None:
        import httpx

        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            print("[profile] warm-up ...", flush=True)
            client(20)
            print(f"[profile] sending {args.requests} requests ...", flush=True)
            profiled.armed = True
            rows.extend(client(args.requests))
            profiled.stop()
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # run_gateway stops cleanly on SIGINT

    threading.Thread(target=drive, daemon=True).start()
    run_gateway(profiled, settings, host="127.0.0.1", port=port)

    latencies = [row[0] for row in rows]
    covered = [row[1]["probe"] + row[1]["decode"] + row[1]["inference"] for row in rows]
    uncovered = [latency - inside for latency, inside in zip(latencies, covered, strict=True)]
    print(f"\n[profile] {len(rows)} requests of the {args.clip} clip: client latency p50 {statistics.median(latencies):.2f} ms; "
          f"probe+decode {statistics.median(row[1]['probe'] + row[1]['decode'] for row in rows):.2f} ms, "
          f"inference {statistics.median(row[1]['inference'] for row in rows):.2f} ms, "
          f"the rest (HTTP, multipart, spool, JSON, loop) {statistics.median(uncovered):.2f} ms\n")
    stats = pstats.Stats(profiled.profile)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
