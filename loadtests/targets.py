"""Load generators and the two ways of driving them.

Targets (each has `name`, `server_pids`, `async send(clip) -> Reply` and `async close()`):
  HttpTarget           POST /classify to a gateway (or the eager baseline) with httpx
  TritonDirectTarget   tritonclient gRPC straight to Triton with pre-decoded tensors (decode_tensors)

`server_pids` are the roots of the server's process trees (empty: a server not started here);
the drivers measure their CPU time over each run (loadtests/cpu.py).

Drivers (each returns a loadtests.stats.RunResult):
  closed_loop   `concurrency` workers, each sending the next request when the last one answers
  fixed_rate    open loop: Poisson arrivals at `rate`/s, latency counted from the scheduled arrival
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import numpy as np

from loadtests.clips import Clip
from loadtests.cpu import CpuMeter
from loadtests.stats import RunResult, Sample


@dataclass(frozen=True)
class Reply:
    ok: bool
    timings: dict | None = None  # the server's timings_ms
    status: int | None = None  # HTTP status; None when there was no response
    retry_after: str | None = None

    def sample(self, route: str, latency: float) -> Sample:
        return Sample(route, latency, self.ok, self.timings, self.status, self.retry_after)


class HttpTarget:
    """`params`: query parameters of every request, e.g. {"sampling": "fast"}."""

    def __init__(self, name: str, url: str, clips: list[Clip], server_pids: tuple[int, ...] = (),
                 params: dict[str, str] | None = None):
        import httpx

        self.name = name
        self.url = url
        self.server_pids = server_pids
        self.params = params or {}
        self.bodies = {c.name: c.path.read_bytes() for c in clips}
        self.client = httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=256))

    async def send(self, clip: Clip) -> Reply:
        try:
            response = await self.client.post("/classify", params=self.params,
                                              files={"file": (clip.path.name, self.bodies[clip.name])})
        except Exception:  # noqa: BLE001 - a transport error is an error sample
            return Reply(False)
        if response.status_code != 200:
            return Reply(False, status=response.status_code, retry_after=response.headers.get("retry-after"))
        return Reply(True, response.json().get("timings_ms"), 200)

    async def close(self) -> None:
        await self.client.aclose()


class TritonDirectTarget:
    """tritonclient gRPC (asyncio) with the clips decoded once, as the gateway would decode them."""

    def __init__(self, name: str, grpc_url: str, family: str, clips: list[Clip], tensors: dict[str, dict],
                 server_pids: tuple[int, ...] = ()):
        import tritonclient.grpc.aio as grpcclient

        self.name = name
        self.server_pids = server_pids
        self.grpc = grpcclient
        self.family = family
        self.client = grpcclient.InferenceServerClient(grpc_url, channel_args=[
            ("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)])
        self.tensors = tensors

    async def send(self, clip: Clip) -> Reply:
        inputs = []
        for name, array in self.tensors[clip.name].items():
            tensor = self.grpc.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "UINT8")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        began = time.perf_counter()
        try:
            await self.client.infer(f"{self.family}_{clip.route}", inputs,
                                    outputs=[self.grpc.InferRequestedOutput("logits")], client_timeout=30)
        except Exception:  # noqa: BLE001
            return Reply(False)
        ms = (time.perf_counter() - began) * 1000
        return Reply(True, {"upload": 0.0, "probe": 0.0, "decode": 0.0, "inference": ms, "total": ms}, 200)

    async def close(self) -> None:
        await self.client.close()


def decode_tensors(clips: list[Clip], model) -> dict[str, dict]:
    """Each clip decoded once, as the gateway decodes it, for the Triton-direct client."""
    from avserve.media import decode_audio, decode_video

    cfg = model.config
    tensors = {}
    for clip in clips:
        inputs = {}
        if clip.route in ("av", "audio"):
            pcm = decode_audio(clip.path, sample_rate=cfg.sample_rate, start=0.0, duration=cfg.clip_seconds).samples
            pcm = np.concatenate([pcm, np.zeros(max(0, cfg.clip_samples - len(pcm)), np.float32)])[: cfg.clip_samples]
            inputs["audio"] = pcm[None].astype(np.float32)
        if clip.route in ("av", "video"):
            frames = decode_video(clip.path, num_frames=cfg.num_frames, size=(cfg.image_size, cfg.image_size), start=0.0,
                                  duration=cfg.clip_seconds).frames
            inputs["video"] = np.ascontiguousarray(frames[None])
        tensors[clip.name] = inputs
    return tensors


def _chooser(clips: list[Clip], seed: int):
    rng = random.Random(seed)
    weights = [c.weight for c in clips]
    return lambda: rng.choices(clips, weights)[0]


async def closed_loop(target, clips: list[Clip], concurrency: int, seconds: float, seed: int = 0) -> RunResult:
    result = RunResult(target.name, "closed", concurrency, seconds)
    cpu = CpuMeter(target.server_pids)
    cpu.start()
    began = time.perf_counter()
    stop = began + seconds

    async def worker(index: int) -> None:
        choose = _chooser(clips, seed * 1000 + index)
        for _ in range(100_000):  # bounded; the clock ends it long before
            if time.perf_counter() >= stop:
                return
            clip = choose()
            start = time.perf_counter()
            reply = await target.send(clip)
            end = time.perf_counter()
            result.cpu_requests += reply.ok
            if end <= stop:  # count only what completed inside the window
                result.samples.append(reply.sample(clip.route, end - start))

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.cpu_seconds = cpu.stop()  # nothing is in flight now: the CPU of every answer counted
    result.seconds = time.perf_counter() - began
    return result


async def fixed_rate(target, clips: list[Clip], rate: float, seconds: float, seed: int = 0, max_in_flight: int = 128,
                     timeout: float = 10.0) -> RunResult:
    """Open loop: Poisson arrivals at `rate`/s; latency counts from the scheduled arrival."""
    result = RunResult(target.name, "rate", round(rate, 2), seconds)
    rng = np.random.default_rng(seed)
    choose = _chooser(clips, seed)
    in_flight: set[asyncio.Task] = set()
    cpu = CpuMeter(target.server_pids)
    cpu.start()
    began = time.perf_counter()

    async def one(clip: Clip, scheduled: float) -> None:
        try:
            reply = await asyncio.wait_for(target.send(clip), timeout)
        except asyncio.TimeoutError:
            reply = Reply(False)
        result.cpu_requests += reply.ok
        result.samples.append(reply.sample(clip.route, time.perf_counter() - scheduled))

    arrival = began
    for _ in range(int(rate * seconds * 3) + 10):
        arrival += rng.exponential(1.0 / rate)
        if arrival >= began + seconds:
            break
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        if len(in_flight) >= max_in_flight:
            result.dropped += 1
            continue
        task = asyncio.create_task(one(choose(), arrival))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=timeout + 1)
    result.cpu_seconds = cpu.stop()
    result.seconds = seconds
    return result
