"""avserve bench: how fast, against what — every comparison in one run, same weights, same clips.

    .venv/bin/python loadtests/bench.py                               # seeded untrained zorro_tiny
    .venv/bin/python loadtests/bench.py --checkpoint runs/zorro_tiny_sup
    .venv/bin/python loadtests/bench.py --quick                       # CI-sized (about 1-2 min)
    .venv/bin/python loadtests/bench.py --url http://127.0.0.1:8080   # only a running gateway
    avserve bench --checkpoint runs/zorro_tiny_sup                    # the same, via the CLI

Targets, started here back to back on 127.0.0.1 (each warmed up first):
  gateway-embedded     the avserve gateway, embedded onnxruntime, micro-batching on (default)
  gateway-embedded-nomb   the same with micro-batching off (every request alone)
  gateway-triton       the gateway with the Triton backend (a real local tritonserver)
  triton-direct        tritonclient gRPC straight to that Triton, pre-decoded tensors
  torch-eager          FastAPI + PyTorch eager, one request at a time (loadtests/baseline_server.py)

Per target: a closed-loop concurrency sweep over the request mix (loadtests/clips.py), then a
fixed-arrival-rate (open-loop, Poisson) run at one common rate; for the default gateway also
one closed-loop run per modality (av / audio / video clips only). Measures this CPU's matmul
peak and each graph's FLOPs for the FLOP/s-vs-peak ratio. Writes bench.json, bench.md
(tables + ratios) and bench.png (latency vs throughput) into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from clips import Clip, make_clips  # noqa: E402

STAGES = ("upload", "probe", "decode", "inference", "total")


# ---- results ---------------------------------------------------------------------------------


@dataclass
class Sample:
    route: str
    latency: float  # seconds, client side (open loop: from the scheduled arrival)
    ok: bool
    timings: dict | None = None  # the server's timings_ms


@dataclass
class RunResult:
    target: str
    mode: str  # "closed" or "rate"
    load: float  # concurrency, or offered requests/s
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    dropped: int = 0  # open loop: arrivals not sent because too many were in flight

    def summary(self) -> dict:
        out = {"target": self.target, "mode": self.mode, "load": self.load, "seconds": round(self.seconds, 3)}
        out["all"] = _stats(self.samples, self.seconds, self.dropped)
        out["routes"] = {
            route: _stats([s for s in self.samples if s.route == route], self.seconds, 0)
            for route in sorted({s.route for s in self.samples})
        }
        return out


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None


def _stats(samples: list[Sample], seconds: float, dropped: int) -> dict:
    ok = [s.latency for s in samples if s.ok]
    total = len(samples) + dropped
    stats = {
        "requests": total,
        "ok": len(ok),
        "error_ratio": (total - len(ok)) / total if total else 0.0,
        "throughput": len(ok) / seconds if seconds else 0.0,
        "p50_ms": _pct(ok, 50),
        "p95_ms": _pct(ok, 95),
        "p99_ms": _pct(ok, 99),
    }
    timed = [s for s in samples if s.ok and s.timings]
    if timed:
        stages = {}
        for stage in STAGES:
            values = [s.timings.get(stage, 0.0) for s in timed]
            stages[stage] = statistics.median(values)
        # decode = probe + decode; overhead = what the client waited beyond decode and inference
        overhead = [s.latency * 1000 - s.timings.get("probe", 0) - s.timings.get("decode", 0) - s.timings.get("inference", 0)
                    for s in timed]
        stats["stages_ms"] = {
            "decode": stages["probe"] + stages["decode"],
            "inference": stages["inference"],
            "overhead": statistics.median(overhead),
        }
    return stats


# ---- load generators -------------------------------------------------------------------------


class HttpTarget:
    def __init__(self, name: str, url: str, clips: list[Clip]):
        import httpx

        self.name = name
        self.url = url
        self.bodies = {c.name: c.path.read_bytes() for c in clips}
        self.client = httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=256))

    async def send(self, clip: Clip) -> tuple[bool, dict | None]:
        try:
            response = await self.client.post("/classify", files={"file": (clip.path.name, self.bodies[clip.name])})
        except Exception:  # noqa: BLE001 - a transport error is an error sample
            return False, None
        if response.status_code != 200:
            return False, None
        return True, response.json().get("timings_ms")

    async def close(self) -> None:
        await self.client.aclose()


class TritonDirectTarget:
    """tritonclient gRPC (asyncio) with the clips decoded once, as the gateway would decode them."""

    def __init__(self, name: str, grpc_url: str, family: str, clips: list[Clip], tensors: dict[str, dict]):
        import tritonclient.grpc.aio as grpcclient

        self.name = name
        self.grpc = grpcclient
        self.family = family
        self.client = grpcclient.InferenceServerClient(grpc_url, channel_args=[
            ("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)])
        self.tensors = tensors

    async def send(self, clip: Clip) -> tuple[bool, dict | None]:
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
            return False, None
        ms = (time.perf_counter() - began) * 1000
        return True, {"upload": 0.0, "probe": 0.0, "decode": 0.0, "inference": ms, "total": ms}

    async def close(self) -> None:
        await self.client.close()


def _chooser(clips: list[Clip], seed: int):
    rng = random.Random(seed)
    weights = [c.weight for c in clips]
    return lambda: rng.choices(clips, weights)[0]


async def closed_loop(target, clips: list[Clip], concurrency: int, seconds: float, seed: int = 0) -> RunResult:
    result = RunResult(target.name, "closed", concurrency, seconds)
    began = time.perf_counter()
    stop = began + seconds

    async def worker(index: int) -> None:
        choose = _chooser(clips, seed * 1000 + index)
        for _ in range(100_000):  # bounded; the clock ends it long before
            if time.perf_counter() >= stop:
                return
            clip = choose()
            start = time.perf_counter()
            ok, timings = await target.send(clip)
            end = time.perf_counter()
            if end <= stop:  # count only what completed inside the window
                result.samples.append(Sample(clip.route, end - start, ok, timings))

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result


async def fixed_rate(target, clips: list[Clip], rate: float, seconds: float, seed: int = 0, max_in_flight: int = 128,
                     timeout: float = 10.0) -> RunResult:
    """Open loop: Poisson arrivals at `rate`/s; latency counts from the scheduled arrival."""
    result = RunResult(target.name, "rate", round(rate, 2), seconds)
    rng = np.random.default_rng(seed)
    choose = _chooser(clips, seed)
    in_flight: set[asyncio.Task] = set()
    began = time.perf_counter()

    async def one(clip: Clip, scheduled: float) -> None:
        try:
            ok, timings = await asyncio.wait_for(target.send(clip), timeout)
        except asyncio.TimeoutError:
            ok, timings = False, None
        result.samples.append(Sample(clip.route, time.perf_counter() - scheduled, ok, timings))

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
    result.seconds = seconds
    return result


# ---- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server subprocess in its own session; stopped with SIGINT, then SIGKILL, by its own pid."""

    def __init__(self, name: str, command: list[str], log: Path, ready_timeout: float = 120.0):
        self.name = name
        self.port = int(command[command.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# ---- model, FLOPs, peak ------------------------------------------------------------------------


def prepare_model(args, workdir: Path):
    """Export the weights into a temp repository; return (family, model, eager-server args)."""
    import torch

    from training.export import ExportOptions, export_model

    repository = workdir / "repository"
    if args.checkpoint:
        from training.checkpoint import load_run

        model, info = load_run(args.checkpoint)
        family, labels = info.model, list(info.classes)
        eager_args = ["--checkpoint", str(Path(args.checkpoint).resolve())]
    else:
        from training.models import create_model

        torch.manual_seed(args.seed)
        model = create_model(args.preset, num_classes=12).eval()
        family, labels = args.preset, [f"class_{i}" for i in range(12)]
        state = workdir / "state_dict.pt"
        torch.save(model.state_dict(), state)
        eager_args = ["--preset", args.preset, "--num-classes", "12", "--state-dict", str(state)]
    export_model(model, labels, repository, ExportOptions(family=family, max_batch_size=16))
    return family, model, repository, eager_args


def graph_flops(model) -> dict[str, float]:
    """FLOPs of one clip through each modality graph (torch's FlopCounterMode: 2 per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.config
    audio = torch.zeros(1, cfg.clip_samples)
    video = torch.zeros(1, cfg.num_frames, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8)
    flops = {}
    for route, kwargs in (("av", {"audio": audio, "video": video}), ("audio", {"audio": audio}), ("video", {"video": video})):
        counter = FlopCounterMode(display=False)
        with counter:
            model(**kwargs)
        flops[route] = float(counter.get_total_flops())
    return flops


def matmul_peak(seconds: float = 2.0, n: int = 1024) -> float:
    """This CPU's measured fp32 matmul FLOP/s (torch, all cores): the physical ceiling here."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    for _ in range(1000):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
        if time.perf_counter() > deadline:
            break
    return best


def graph_only(repository: Path, family: str, flops: dict, seconds: float = 2.0, batch: int = 8) -> dict:
    """onnxruntime alone (no HTTP, no decoding), default threads: per-graph batch-1 latency
    (interleaved rounds) and the _av graph's clips/s at batch 1 and at `batch` (the ceiling)."""
    import onnxruntime as ort

    options = ort.SessionOptions()  # as the embedded backend builds them: default threads, no spinning
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sessions, feeds = {}, {}
    for route in ("av", "audio", "video"):
        path = repository / f"{family}_{route}" / "1" / "model.onnx"
        if path.is_file():
            sessions[route] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def inputs(session, rows):
        out = {}
        for node in session.get_inputs():
            shape = [rows if not isinstance(d, int) else d for d in node.shape]
            out[node.name] = np.zeros(shape, np.float32) if "float" in node.type else np.zeros(shape, np.uint8)
        return out

    for route, session in sessions.items():
        feeds[route] = inputs(session, 1)
        session.run(None, feeds[route])
    times: dict[str, list[float]] = {route: [] for route in sessions}
    began = time.perf_counter()
    for _ in range(2000):
        for route, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[route])
            times[route].append(time.perf_counter() - start)
        if time.perf_counter() - began > seconds:
            break
    result = {"batch1_ms": {route: statistics.median(values) * 1000 for route, values in times.items()}}
    av = sessions["av"]
    big = inputs(av, batch)
    av.run(None, big)
    runs, began = 0, time.perf_counter()
    for _ in range(10_000):
        av.run(None, big)
        runs += 1
        if time.perf_counter() - began > seconds:
            break
    result["batch"] = batch
    result["av_batch_clips_per_s"] = runs * batch / (time.perf_counter() - began)
    result["av_batch1_clips_per_s"] = 1000 / result["batch1_ms"]["av"]
    result["flops_per_s"] = result["av_batch_clips_per_s"] * flops["av"]
    return result


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


# ---- the run ------------------------------------------------------------------------------------


class Progress:
    def __init__(self) -> None:
        self.began = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[bench {time.perf_counter() - self.began:6.1f}s] {message}", flush=True)


def _line(summary: dict) -> str:
    a = summary["all"]
    p = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    return (f"{summary['target']:<22} {summary['mode']:<6} load={summary['load']:<6} {a['throughput']:6.1f} req/s  "
            f"p50={p(a['p50_ms'])} p95={p(a['p95_ms'])} p99={p(a['p99_ms'])} ms  err={a['error_ratio']:.1%}")


async def measure(target, clips, args, progress, runs: list[dict], sweep: list[int], rate: float | None = None) -> None:
    progress(f"{target.name}: warm-up {args.warmup:.0f} s")
    await closed_loop(target, clips, max(sweep), args.warmup, seed=99)
    for concurrency in sweep:
        summary = (await closed_loop(target, clips, concurrency, args.seconds, seed=concurrency)).summary()
        runs.append(summary)
        progress(_line(summary))
    if rate:
        summary = (await fixed_rate(target, clips, rate, args.seconds, seed=7)).summary()
        runs.append(summary)
        progress(_line(summary))


async def run_all(args, progress) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="avserve-bench-"))
    clips_dir = Path(args.clips) if args.clips else Path.home() / ".cache" / "avserve-bench" / "clips"
    progress(f"clips -> {clips_dir}")
    clips = make_clips(clips_dir)
    runs: list[dict] = []
    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
                    "settings": {k: v for k, v in vars(args).items() if k != "func"},
                    "clips": [{"name": c.name, "route": c.route, "weight": c.weight, "bytes": c.path.stat().st_size}
                              for c in clips],
                    "runs": runs}
    sweep = args.concurrency
    python = sys.executable
    servers: list[Server] = []
    triton = None
    try:
        if args.url:  # only the given gateway
            target = HttpTarget("gateway", args.url, clips)
            await measure(target, clips, args, progress, runs, sweep)
            await target.close()
            return report

        progress("exporting the model (real exporter) ...")
        family, model, repository, eager_args = prepare_model(args, workdir)
        report["model"] = {"family": family, "checkpoint": args.checkpoint, "preset": None if args.checkpoint else args.preset,
                           "parameters": sum(p.numel() for p in model.parameters())}
        progress("measuring the matmul peak and the graphs' FLOPs ...")
        report["flops_per_clip"] = flops = graph_flops(model)
        report["matmul_peak_flops"] = matmul_peak(args.peak_seconds)
        report["graph_only"] = graph_only(repository, family, flops, args.peak_seconds)
        progress(f"peak {report['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; graph-only "
                 f"{report['graph_only']['flops_per_s'] / 1e9:.1f} GFLOP/s, batch-1 ms "
                 + ", ".join(f"{k} {v:.1f}" for k, v in report["graph_only"]["batch1_ms"].items()) + "; per clip "
                 + ", ".join(f"{k} {v / 1e6:.0f} MFLOP" for k, v in flops.items()))

        def start(name: str, script: str, *extra: str) -> Server:
            command = [python, str(HERE / script), "--port", str(free_port()), *extra]
            progress(f"starting {name} ...")
            server = Server(name, command, workdir / f"{name}.log")
            servers.append(server)
            return server

        # Every target runs at once (idle ones cost nothing) and each load point is measured on
        # all of them in turn, order rotating: the shared machine's noise hits all alike.
        targets = {}
        for name, script, extra in (
            ("gateway-embedded", "serve_gateway.py", ["--repository", str(repository)]),
            ("gateway-embedded-nomb", "serve_gateway.py", ["--repository", str(repository), "--no-micro-batching"]),
            ("torch-eager", "baseline_server.py", eager_args),
        ):
            targets[name] = HttpTarget(name, start(name, script, *extra).url, clips)
        if not args.skip_triton:
            from avserve.triton import LocalTriton

            progress("starting tritonserver ...")
            triton = LocalTriton(repository, http_port=0, grpc_port=0, metrics_port=0, log_file=workdir / "triton.log")
            triton.start()
            server = start("gateway-triton", "serve_gateway.py", "--backend", "triton", "--triton-url", triton.grpc_url)
            targets["gateway-triton"] = HttpTarget("gateway-triton", server.url, clips)
            targets["triton-direct"] = TritonDirectTarget("triton-direct", triton.grpc_url, family, clips,
                                                          decode_tensors(clips, model))
        order = list(targets)
        for target in targets.values():
            progress(f"{target.name}: warm-up {args.warmup:.0f} s")
            await closed_loop(target, clips, 4, args.warmup, seed=99)
        for index, concurrency in enumerate(sweep):
            for name in order[index % len(order):] + order[: index % len(order)]:
                summary = (await closed_loop(targets[name], clips, concurrency, args.seconds, seed=concurrency)).summary()
                runs.append(summary)
                progress(_line(summary))
        peak = max(r["all"]["throughput"] for r in runs if r["target"] == "gateway-embedded")
        rate = report["rate"] = round(max(1.0, args.rate_fraction * peak), 1)
        for name in order:
            if name == "triton-direct":
                continue
            summary = (await fixed_rate(targets[name], clips, rate, args.seconds, seed=7)).summary()
            runs.append(summary)
            progress(_line(summary))
        for route in ("av", "audio", "video"):
            subset = [c for c in clips if c.route == route]
            for name in ("gateway-embedded", "torch-eager"):
                result = await closed_loop(targets[name], subset, args.modality_concurrency, args.seconds, seed=5)
                result.target = f"{name}[{route}]"
                runs.append(result.summary())
                progress(_line(runs[-1]))
        for target in targets.values():
            await target.close()
    finally:
        for server in servers:
            server.stop()
        if triton is not None:
            triton.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if "matmul_peak_flops" in report:  # the machine is shared: the best of a measurement before and after
        again = matmul_peak(args.peak_seconds)
        report["matmul_peak_samples"] = [report["matmul_peak_flops"], again]
        report["matmul_peak_flops"] = max(report["matmul_peak_flops"], again)
        progress(f"matmul peak again: {again / 1e9:.1f} GFLOP/s")
    return report


# ---- ratios and output ---------------------------------------------------------------------------


def _find(runs, target, mode="closed", load=None):
    matches = [r for r in runs if r["target"] == target and r["mode"] == mode and (load is None or r["load"] == load)]
    return matches


def _peak(runs, target):
    candidates = _find(runs, target)
    return max(candidates, key=lambda r: r["all"]["throughput"]) if candidates else None


def compute_ratios(report: dict) -> list[dict]:
    runs = report["runs"]
    low = min(report["settings"]["concurrency"])
    ratios: list[dict] = []

    def add(comparison, metric, ours, theirs, higher_is_better, ours_label, theirs_label):
        if ours is None or theirs is None or theirs == 0:
            return
        ratio = ours / theirs
        ratios.append({"comparison": comparison, "metric": metric, "ours": ours, "theirs": theirs,
                       "ours_label": ours_label, "theirs_label": theirs_label, "ratio": ratio,
                       "avserve_ahead": ratio > 1 if higher_is_better else ratio < 1})

    def both(comparison, ours, theirs):
        a, b = _peak(runs, ours), _peak(runs, theirs)
        if a and b:
            add(comparison, "peak throughput (req/s)", a["all"]["throughput"], b["all"]["throughput"], True, ours, theirs)
        a, b = _find(runs, ours, load=low), _find(runs, theirs, load=low)
        if a and b:
            add(comparison, f"p50 latency at concurrency {low} (ms)", a[0]["all"]["p50_ms"], b[0]["all"]["p50_ms"], False,
                ours, theirs)
        a, b = _find(runs, ours, "rate"), _find(runs, theirs, "rate")
        if a and b:
            add(comparison, f"p99 latency at {a[0]['load']} req/s offered (ms)", a[0]["all"]["p99_ms"], b[0]["all"]["p99_ms"],
                False, ours, theirs)

    both("avserve vs FastAPI + PyTorch eager", "gateway-embedded", "torch-eager")
    both("gateway (Triton backend) vs Triton direct", "gateway-triton", "triton-direct")
    a, b = _find(runs, "gateway-triton", load=low), _find(runs, "triton-direct", load=low)
    if a and b and a[0]["all"].get("stages_ms"):
        stages = a[0]["all"]["stages_ms"]
        add("gateway (Triton backend) vs Triton direct", f"latency without decoding at concurrency {low} (ms)",
            stages["inference"] + stages["overhead"], b[0]["all"]["p50_ms"], False, "gateway-triton", "triton-direct")
    both("embedded backend vs Triton backend", "gateway-embedded", "gateway-triton")
    both("micro-batching on vs off", "gateway-embedded", "gateway-embedded-nomb")
    for route in ("audio", "video"):
        a, b = _find(runs, f"gateway-embedded[{route}]"), _find(runs, "gateway-embedded[av]")
        if a and b:
            add(f"{route}-only vs audio+video requests", "throughput (req/s)", a[0]["all"]["throughput"],
                b[0]["all"]["throughput"], True, f"{route}-only", "audio+video")
    graphs = report.get("graph_only")
    if graphs:
        for route in ("audio", "video"):
            if route in graphs["batch1_ms"]:
                add(f"{route}-only vs audio+video requests", "graph alone, batch 1 (ms/clip, onnxruntime)",
                    graphs["batch1_ms"][route], graphs["batch1_ms"]["av"], False, f"{route}-only", "audio+video")
        add("micro-batching on vs off", f"graph alone: _av clips/s at batch {graphs['batch']} vs batch 1 (the ceiling)",
            graphs["av_batch_clips_per_s"], graphs["av_batch1_clips_per_s"], True, f"batch {graphs['batch']}", "batch 1")
    flops = report.get("flops_per_clip")
    if flops:
        for ratio_route in ("audio", "video"):
            add(f"{ratio_route}-only vs audio+video requests", "graph FLOPs per clip", flops[ratio_route], flops["av"], False,
                f"{ratio_route}-only", "audio+video")
        peak = report["matmul_peak_flops"]
        best = _peak(runs, "gateway-embedded")
        if best:
            achieved = sum(stats["throughput"] * flops[route] for route, stats in best["routes"].items() if route in flops)
            report["gateway_flops_per_s"] = achieved
            add("achieved model FLOP/s vs matmul peak", "gateway end to end (FLOP/s)", achieved, peak, True,
                "gateway-embedded", "matmul peak")
        add("achieved model FLOP/s vs matmul peak", f"onnxruntime alone, _av batch {report['graph_only']['batch']} (FLOP/s)",
            report["graph_only"]["flops_per_s"], peak, True, "graph only", "matmul peak")
    return ratios


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e6:
        return f"{value / 1e9:.2f} G"
    return f"{value:.{digits}f}"


def write_markdown(report: dict, path: Path) -> None:
    lines = [f"# avserve bench — {report['started']}", ""]
    if "model" in report:
        m = report["model"]
        lines.append(f"Model: `{m['family']}` ({m['parameters'] / 1e6:.2f} M parameters, "
                     f"{'checkpoint ' + str(m['checkpoint']) if m['checkpoint'] else 'seeded untrained ' + str(m['preset'])}); "
                     f"{report['machine']['cpus']} CPUs; {report['settings']['seconds']} s per point; "
                     f"total {report['wall_seconds']:.0f} s.")
        lines.append("")
    if report.get("ratios"):
        lines += ["## Ratios (ours / theirs)", "", "| comparison | metric | ours | theirs | ratio | avserve ahead? |",
                  "|---|---|---:|---:|---:|:---:|"]
        for r in report["ratios"]:
            lines.append(f"| {r['comparison']} | {r['metric']} | {_fmt(r['ours'])} ({r['ours_label']}) | "
                         f"{_fmt(r['theirs'])} ({r['theirs_label']}) | {r['ratio']:.3g} | {'yes' if r['avserve_ahead'] else 'no'} |")
        lines.append("")
    lines += ["## Runs", "", "| target | mode | load | req/s | p50 ms | p95 ms | p99 ms | errors | decode ms | inference ms | overhead ms |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        a = r["all"]
        s = a.get("stages_ms", {})
        lines.append(f"| {r['target']} | {r['mode']} | {r['load']} | {a['throughput']:.1f} | {_fmt(a['p50_ms'], 0)} | "
                     f"{_fmt(a['p95_ms'], 0)} | {_fmt(a['p99_ms'], 0)} | {a['error_ratio']:.1%} | {_fmt(s.get('decode'))} | "
                     f"{_fmt(s.get('inference'))} | {_fmt(s.get('overhead'))} |")
    lines += ["", "## Per route (closed loop, highest concurrency)", "",
              "| target | route | req/s | p50 ms | p95 ms | p99 ms | errors | decode ms | inference ms | overhead ms |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    top = max(report["settings"]["concurrency"])
    for r in report["runs"]:
        if r["mode"] != "closed" or r["load"] != top:
            continue
        for route, a in r["routes"].items():
            s = a.get("stages_ms", {})
            lines.append(f"| {r['target']} | {route} | {a['throughput']:.1f} | {_fmt(a['p50_ms'], 0)} | {_fmt(a['p95_ms'], 0)} | "
                         f"{_fmt(a['p99_ms'], 0)} | {a['error_ratio']:.1%} | {_fmt(s.get('decode'))} | "
                         f"{_fmt(s.get('inference'))} | {_fmt(s.get('overhead'))} |")
    path.write_text("\n".join(lines) + "\n")


def write_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    targets = sorted({r["target"] for r in report["runs"] if r["mode"] == "closed" and "[" not in r["target"]})
    for target in targets:
        points = sorted((r for r in report["runs"] if r["target"] == target and r["mode"] == "closed"),
                        key=lambda r: r["load"])
        xs = [r["all"]["throughput"] for r in points]
        line = ax.plot(xs, [r["all"]["p50_ms"] or np.nan for r in points], "o-", label=f"{target} p50")[0]
        ax.plot(xs, [r["all"]["p99_ms"] or np.nan for r in points], "x--", color=line.get_color(), alpha=0.6,
                label=f"{target} p99")
        for r, x in zip(points, xs):
            ax.annotate(f"c={r['load']}", (x, r["all"]["p50_ms"] or 0), fontsize=7, alpha=0.7)
    ax.set_xlabel("throughput (req/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("avserve bench: latency vs throughput (closed-loop concurrency sweep)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avserve bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a training run (runs/...); default: a seeded untrained --preset")
    parser.add_argument("--preset", default="zorro_tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="benchmark only this running gateway (closed-loop sweep)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up per target")
    parser.add_argument("--modality-concurrency", type=int, default=8)
    parser.add_argument("--rate-fraction", type=float, default=0.6,
                        help="the fixed arrival rate, as a fraction of the default gateway's peak")
    parser.add_argument("--peak-seconds", type=float, default=2.0)
    parser.add_argument("--skip-triton", action="store_true")
    parser.add_argument("--clips", help="directory for the request mix (default ~/.cache/avserve-bench/clips)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default loadtests/results/<time>)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (exported repository, server logs)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: concurrency 1 4, 2 s per point")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.seconds, args.warmup, args.peak_seconds = [1, 4], 2.0, 1.0, 0.5
        args.modality_concurrency = 4
    if args.out is None:
        args.out = HERE / "results" / time.strftime("%Y%m%d-%H%M%S")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    progress = Progress()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report = asyncio.run(run_all(args, progress))
    report["started"] = started
    report["wall_seconds"] = time.perf_counter() - progress.began
    report["ratios"] = compute_ratios(report)
    args.out.mkdir(parents=True, exist_ok=True)
    report["settings"]["out"] = str(args.out)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    write_markdown(report, args.out / "bench.md")
    write_plot(report, args.out / "bench.png")
    progress(f"wrote {args.out}/bench.json, bench.md, bench.png")
    print((args.out / "bench.md").read_text())
    return report


if __name__ == "__main__":
    main()
