"""What a load run measured: samples, percentiles, and the summary every report reads.

    result = RunResult("gateway", "closed", 4, 8.0)        # filled by loadtests.targets' drivers
    result.samples.append(Sample("av", 0.031, True, timings))
    summary = result.summary()   # {"target", "mode", "load", "seconds", "all": {...}, "cpu": {...}, "routes": {...}}
    print(summary_line(summary))
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

STAGES = ("upload", "probe", "decode", "inference", "total")


@dataclass
class Sample:
    route: str
    latency: float  # seconds, client side (open loop: from the scheduled arrival)
    ok: bool
    timings: dict | None = None  # the server's timings_ms
    status: int | None = None  # HTTP status (None: no response, e.g. a transport error or timeout)
    retry_after: str | None = None  # the Retry-After header of a refusal


@dataclass
class RunResult:
    target: str
    mode: str  # "closed" or "rate"
    load: float  # concurrency, or offered requests/s
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    dropped: int = 0  # open loop: arrivals not sent because too many were in flight
    # CPU seconds the server's process tree spent over the whole run, from the first request
    # sent to the last answer (loadtests/cpu.py; None: not measured), and the successful answers
    # in that span: also those after the window that `samples` counts.
    cpu_seconds: float | None = None
    cpu_requests: int = 0

    def summary(self) -> dict:
        out = {"target": self.target, "mode": self.mode, "load": self.load, "seconds": round(self.seconds, 3)}
        out["all"] = summarize(self.samples, self.seconds, self.dropped)
        out["cpu"] = cpu_summary(self.cpu_seconds, self.cpu_requests, self.seconds)
        out["routes"] = {
            route: summarize([s for s in self.samples if s.route == route], self.seconds, 0)
            for route in sorted({s.route for s in self.samples})
        }
        return out


def cpu_summary(cpu_seconds: float | None, requests: int, seconds: float) -> dict | None:
    """Server CPU per successful request (ms) and the cores it kept busy on average."""
    if cpu_seconds is None:
        return None
    return {"seconds": round(cpu_seconds, 4), "requests": requests,
            "ms_per_request": cpu_seconds * 1000 / requests if requests else None,
            "cores": cpu_seconds / seconds if seconds else None}


def percentile_ms(values: list[float], q: float) -> float | None:
    """The q-th percentile of latencies in seconds, in milliseconds (None for no values)."""
    return float(np.percentile(values, q)) * 1000 if values else None


def summarize(samples: list[Sample], seconds: float, dropped: int) -> dict:
    """Requests, errors, throughput, p50/p95/p99 and (when the server sent timings) the median
    decode / inference / overhead split of `samples` taken over `seconds`."""
    ok = [s.latency for s in samples if s.ok]
    total = len(samples) + dropped
    stats = {
        "requests": total,
        "ok": len(ok),
        "error_ratio": (total - len(ok)) / total if total else 0.0,
        "throughput": len(ok) / seconds if seconds else 0.0,
        "p50_ms": percentile_ms(ok, 50),
        "p95_ms": percentile_ms(ok, 95),
        "p99_ms": percentile_ms(ok, 99),
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


def summary_line(summary: dict) -> str:
    """One progress line for a run's summary."""
    a = summary["all"]
    p = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    cpu = summary.get("cpu") or {}
    return (f"{summary['target']:<22} {summary['mode']:<6} load={summary['load']:<6} {a['throughput']:6.1f} req/s  "
            f"p50={p(a['p50_ms'])} p95={p(a['p95_ms'])} p99={p(a['p99_ms'])} ms  err={a['error_ratio']:.1%}  "
            f"cpu={p(cpu.get('ms_per_request'))} ms/req")
