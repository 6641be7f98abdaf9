"""The compute side of the bench: this CPU's matmul peak and the graphs alone (FLOPs per clip
come from training.models.flops.route_flops).

    matmul_peak(seconds)                      # fp32 FLOP/s of a 1024x1024 matmul here (torch, all cores)
    graph_only(repository, family, flops)     # onnxruntime alone: batch-1 ms per graph, _av clips/s, FLOP/s,
                                              # and each graph's batch curve (ms per clip at batch 1, 2, 4, 8)
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


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
    result["ms_per_clip"] = batch_curve(sessions, inputs, CURVE_BATCHES, seconds)
    return result


CURVE_BATCHES = (1, 2, 4, 8)


def batch_curve(sessions: dict, inputs, batches=CURVE_BATCHES, seconds: float = 2.0, min_rounds: int = 3) -> dict:
    """Per graph, ms per clip at each batch size: the median of interleaved rounds (one run of
    every graph at every size per round; at least `min_rounds`, then until `seconds` passed).
    Whether batching pays for a graph on this machine is read off this curve."""
    feeds = {(route, rows): inputs(session, rows) for route, session in sessions.items() for rows in batches}
    for (route, _), feed in feeds.items():
        sessions[route].run(None, feed)  # the first run at a new size allocates
    times: dict[tuple[str, int], list[float]] = {key: [] for key in feeds}
    began = time.perf_counter()
    while len(next(iter(times.values()))) < min_rounds or time.perf_counter() - began < seconds:
        for (route, rows), feed in feeds.items():
            start = time.perf_counter()
            sessions[route].run(None, feed)
            times[route, rows].append((time.perf_counter() - start) / rows)
    return {route: {rows: statistics.median(times[route, rows]) * 1000 for rows in batches} for route in sessions}
