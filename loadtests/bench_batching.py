"""Micro-batching on vs off, in the embedded backend alone (no HTTP, no decoding).

Starts two `EmbeddedBackend`s on the same exported repository in one process: the default
(adaptive micro-batching, rows from each model's measured batch curve) and
`micro_batching=False` (every request alone). Each load point is measured on both in turn,
order alternating, over several short rounds, so the shared machine's noise hits both alike:
closed-loop concurrency 1, 4, 16 (each client sends its next request when answered), then a
fixed Poisson arrival rate (a fraction of the "off" side's best throughput). Requests are
single clips over the `_av`, `_audio` and `_video` graphs (half, a quarter, a quarter), as
the gateway sends them. Prints throughput and latency per side and the on/off ratios, each
model's batch policy, and the batch sizes the "on" side ran.

    .venv/bin/python -m loadtests.bench_batching                          # exports zorro_tiny
    .venv/bin/python -m loadtests.bench_batching --repository REPO --family zorro_tiny --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from avserve.backends import BatchEvent, EmbeddedSettings
from avserve.backends.embedded import EmbeddedBackend

ROUTE_WEIGHTS = {"av": 0.5, "audio": 0.25, "video": 0.25}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="an exported repository (default: export --preset)")
    parser.add_argument("--family", default="zorro_tiny")
    parser.add_argument("--preset", default="zorro_tiny")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rate-fraction", type=float, default=0.6, help="fixed rate, x the off side's best req/s")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one measured slice")
    parser.add_argument("--rounds", type=int, default=3, help="slices per side and load point, interleaved")
    args = parser.parse_args()
    if args.repository is None:
        with tempfile.TemporaryDirectory() as directory:
            args.repository = export(args.preset, Path(directory))
            args.family = args.preset
            asyncio.run(run(args))
    else:
        asyncio.run(run(args))


def export(preset: str, directory: Path) -> Path:
    import torch

    from training.export import ExportOptions, export_model
    from training.models import create_model

    print(f"exporting {preset} ...", flush=True)
    torch.manual_seed(0)
    model = create_model(preset, num_classes=12).eval()
    export_model(model, [f"class_{i}" for i in range(12)], directory, ExportOptions(family=preset, max_batch_size=16))
    return directory


async def run(args) -> None:
    sides = {"on": EmbeddedSettings(), "off": EmbeddedSettings(micro_batching=False)}
    # The on side's runs as served (other models running alongside): ms per clip by batch size.
    served: dict[tuple[str, int], list[float]] = defaultdict(list)

    def on_batch(event: BatchEvent) -> None:
        if event.ok:
            served[event.model, event.rows].append(event.seconds * 1000 / event.rows)

    backends = {
        name: EmbeddedBackend(args.repository, settings, on_batch=on_batch if name == "on" else None)
        for name, settings in sides.items()
    }
    for name, backend in backends.items():
        began = time.perf_counter()
        await backend.start()
        print(f"{name}: started in {time.perf_counter() - began:.1f} s", flush=True)
    models = {route: f"{args.family}_{route}" for route in ROUTE_WEIGHTS}
    specs = backends["on"].repository.models
    inputs = {route: specs[model].zero_inputs(1) for route, model in models.items()}
    for route, model in models.items():
        policy = backends["on"].batch_policies()[model]
        curve = ", ".join(f"{rows}: {ms:.2f}" for rows, ms in policy.ms_per_clip.items())
        print(f"  {model}: ms/clip {{{curve}}} -> up to {policy.max_rows} rows, "
              f"partner wait {policy.partner_wait_ms:.2f} ms ({policy.reason})")

    async def one(backend: EmbeddedBackend, rng: random.Random, latencies: list[float]) -> None:
        route = rng.choices(list(ROUTE_WEIGHTS), weights=list(ROUTE_WEIGHTS.values()))[0]
        began = time.perf_counter()
        await backend.infer(models[route], inputs[route])
        latencies.append(time.perf_counter() - began)

    async def closed(backend: EmbeddedBackend, concurrency: int, seed: int) -> tuple[list[float], float]:
        latencies: list[float] = []
        stop = time.perf_counter() + args.seconds

        async def client(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            while time.perf_counter() < stop:
                await one(backend, rng, latencies)

        began = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        return latencies, time.perf_counter() - began

    async def fixed_rate(backend: EmbeddedBackend, rate: float, seed: int) -> tuple[list[float], float]:
        latencies: list[float] = []
        rng = random.Random(seed)
        tasks = []
        began = time.perf_counter()
        next_at = began
        while next_at < began + args.seconds:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(backend, rng, latencies)))
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        return latencies, time.perf_counter() - began

    results: dict[tuple[str, str], list[float]] = defaultdict(list)
    elapsed: dict[tuple[str, str], float] = defaultdict(float)
    order = list(backends)

    async def point(label: str, measure) -> None:
        for round_index in range(args.rounds):
            for name in order[round_index % 2 :] + order[: round_index % 2]:
                latencies, seconds = await measure(backends[name], round_index)
                results[label, name] += latencies
                elapsed[label, name] += seconds
        print(f"  {label}: " + "  ".join(describe(results[label, name], elapsed[label, name], name) for name in order),
              flush=True)

    before = backends["on"].stats()
    for concurrency in args.concurrency:
        await point(f"concurrency {concurrency}", lambda backend, r, c=concurrency: closed(backend, c, r))
    best_off = max(len(results[f"concurrency {c}", "off"]) / elapsed[f"concurrency {c}", "off"] for c in args.concurrency)
    rate = round(args.rate_fraction * best_off, 1)
    await point(f"rate {rate}/s", lambda backend, r: fixed_rate(backend, rate, r))
    after = backends["on"].stats()
    for backend in backends.values():
        await backend.close()

    print("\nmicro-batching on vs off (ratios on/off; throughput higher is better, latency lower)")
    print(f"{'load':<18}{'req/s on/off':>14}{'p50 on/off':>12}{'p99 on/off':>12}")
    labels = list(dict.fromkeys(label for label, _ in results))
    for label in labels:
        on, off = (summary(results[label, name], elapsed[label, name]) for name in ("on", "off"))
        print(f"{label:<18}{on[0] / off[0]:>14.3f}{on[1] / off[1]:>12.3f}{on[2] / off[2]:>12.3f}")
    print("\nbatch sizes the on side ran (rows: batches), and batches held for a partner:")
    for model in models.values():
        sizes = {rows: count - before[model].batch_sizes.get(rows, 0) for rows, count in after[model].batch_sizes.items()}
        print(f"  {model}: {dict(sorted((r, c) for r, c in sizes.items() if c))}  held {after[model].held - before[model].held}")
        as_served = {rows: float(np.mean(ms)) for (name, rows), ms in sorted(served.items()) if name == model}
        print(f"    ms/clip as served: " + ", ".join(f"{rows}: {ms:.2f}" for rows, ms in as_served.items()))


def summary(latencies: list[float], seconds: float) -> tuple[float, float, float]:
    values = np.array(latencies) * 1000
    return len(values) / seconds, float(np.percentile(values, 50)), float(np.percentile(values, 99))


def describe(latencies: list[float], seconds: float, name: str) -> str:
    throughput, p50, p99 = summary(latencies, seconds)
    return f"{name}: {throughput:6.1f} req/s p50 {p50:6.1f} p99 {p99:6.1f} ms"


if __name__ == "__main__":
    main()
