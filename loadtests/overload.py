"""Overload: what a gateway does when offered several times what it can serve.

    .venv/bin/python -m loadtests.overload                       # admission control on vs off, one run
    .venv/bin/python -m loadtests.overload --factors 2 4 1e6 --multiple 4

For each admission setting (`AVSERVE_MEDIA_QUEUE_FACTOR`; 1e6 never sheds) it starts the gateway
(`loadtests.serve_gateway`, its own process) on a phone-like clip (640x360, 10 s, where decoding
is the work), measures its capacity (closed loop, two requests per decode worker), then offers
`--multiple` times that rate (open loop, Poisson arrivals) while polling /healthz, and prints the
latency of accepted and refused requests, goodput and how many were shed. The model is a seeded
untrained zorro_tiny exported like the bench's (no checkpoint needed). tests/gateway/test_overload.py
asserts the issue's bounds with `measure`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from loadtests.clips import Clip
from loadtests.stats import RunResult
from loadtests.targets import HttpTarget, closed_loop, fixed_rate


def phone_clip(directory: Path) -> Clip:
    """640x360 25 fps, 10 s with stereo 48 kHz audio (about 0.15 s of decoding a request)."""
    from avserve.media.synthetic import AudioTrack, VideoTrack, write_clip

    path = directory / "street.mp4"
    if not path.is_file():
        write_clip(
            path,
            video=VideoTrack(width=640, height=360, fps=25, num_frames=250, gop=25, content="footage"),
            audio=AudioTrack(sample_rate=48000, layout="stereo", seconds=10.0),
        )
    return Clip("street", path, "av", 1.0)


@dataclass
class OverloadRun:
    rate: float  # capacity, req/s
    capacity: RunResult
    overload: RunResult
    health: list[tuple[int, float]]  # (status, seconds) of each /healthz poll during the overload
    elapsed: float  # from the first arrival until the last answer (a backlog drains after the offer stops)

    @property
    def accepted(self) -> list:
        return [s for s in self.overload.samples if s.ok]

    @property
    def shed(self) -> list:
        return [s for s in self.overload.samples if s.status == 429]

    @property
    def other(self) -> list:
        return [s for s in self.overload.samples if not s.ok and s.status != 429]

    @property
    def goodput(self) -> float:
        """Answers per second of the whole overload, its backlog's draining included."""
        return len(self.accepted) / max(self.overload.seconds, self.elapsed)

    def line(self, label: str) -> str:
        cap, acc, shed = p99(self.capacity.samples), p99(self.accepted), p99(self.shed)
        return (
            f"{label}: capacity {self.rate:.1f} req/s (p99 {1000 * cap:.0f} ms); offered {self.overload.load:.1f} req/s: "
            f"goodput {self.goodput:.1f} req/s ({self.goodput / self.rate:.2f}x), accepted p50 "
            f"{1000 * p50(self.accepted):.0f} / p99 {1000 * acc:.0f} ms ({acc / cap:.2f}x), {len(self.shed)} shed "
            f"(p50 {1000 * p50(self.shed):.0f} / p99 {1000 * shed:.0f} ms), {len(self.other)} other, "
            f"/healthz max {1000 * max((t for _, t in self.health), default=0):.0f} ms"
        )


def p50(samples) -> float:
    return float(np.percentile([s.latency for s in samples], 50)) if samples else 0.0


def p99(samples) -> float:
    return float(np.percentile([s.latency for s in samples], 99)) if samples else 0.0


async def _health_during(url: str, stop: asyncio.Event) -> list[tuple[int, float]]:
    answers = []
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while not stop.is_set():
            began = asyncio.get_running_loop().time()
            try:
                status = (await client.get("/healthz")).status_code
            except httpx.HTTPError:
                status = 0
            answers.append((status, asyncio.get_running_loop().time() - began))
            await asyncio.sleep(0.1)
    return answers


def measure(url: str, clip: Clip, multiple: float = 4.0, seconds: float = 8.0) -> OverloadRun:
    """Capacity (closed loop at concurrency 4 for 5 s, after a warm-up), then `multiple` x that
    rate for `seconds`, polling /healthz every 0.1 s meanwhile."""

    async def run() -> OverloadRun:
        target = HttpTarget("gateway", url, [clip])
        try:
            await closed_loop(target, [clip], concurrency=2, seconds=1.5)  # warm up; teaches the service time
            capacity = await closed_loop(target, [clip], concurrency=4, seconds=5)
            rate = len([s for s in capacity.samples if s.ok]) / capacity.seconds
            stop = asyncio.Event()
            health = asyncio.create_task(_health_during(url, stop))
            began = time.perf_counter()
            overload = await fixed_rate(target, [clip], rate=multiple * rate, seconds=seconds, max_in_flight=1024, timeout=30)
            elapsed = time.perf_counter() - began
            stop.set()
            return OverloadRun(rate, capacity, overload, await health, elapsed)
        finally:
            await target.close()

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=float, nargs="+", default=[2.0, 1e6], help="AVSERVE_MEDIA_QUEUE_FACTOR values")
    parser.add_argument("--multiple", type=float, default=4.0, help="offered load, in multiples of the capacity")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)

    import torch

    from loadtests.servers import Server
    from training.data.synth import CLASS_NAMES
    from training.export import ExportOptions, export_model
    from training.models import create_model

    with tempfile.TemporaryDirectory(prefix="avserve-overload-") as work:
        work = Path(work)
        print("exporting a seeded zorro_tiny ...", flush=True)
        torch.manual_seed(0)
        export_model(create_model("zorro_tiny", num_classes=len(CLASS_NAMES)).eval(), CLASS_NAMES, work / "repo",
                     ExportOptions(family="zorro_tiny"))  # fmt: skip
        clip = phone_clip(work)
        for factor in args.factors:
            server = Server.start_module("gateway", "loadtests.serve_gateway", work / f"gateway-{factor:g}.log",
                                         "--repository", str(work / "repo"), "--media-queue-factor", str(factor))  # fmt: skip
            try:
                run = measure(server.url, clip, args.multiple, args.seconds)
            finally:
                server.stop()
            label = "admission off" if factor >= 1e5 else f"queue factor {factor:g}"
            print(run.line(label), flush=True)


if __name__ == "__main__":
    main()
