"""Benchmark: how to spend the cores on decoding — FFmpeg's frame threads, or requests side by side
in worker processes, or in threads of one process?

    .venv/bin/python -m loadtests.bench_decode_parallel [--clip PATH] [--seconds 2] [--jobs 8]

One job = decode the first `--seconds` of the clip's video to frames (what an exact sample of a
model window costs; default: the 1080p upload clip, written by `avserve data synth --preset
uploads`, else a 720p clip written here). Four ways, each running `--jobs` jobs:

  serial, 1 thread        one job after the other, the decoder single-threaded
  serial, frame threads   one job after the other, FFmpeg frame threading on every core
  processes x cores       one single-threaded job per core at once, in worker processes
                          (what the gateway's media workers do)
  threads x cores         the same in threads of one process (PyAV releases the GIL while
                          FFmpeg decodes, but not between calls)

Printed per way: wall seconds per job (latency when serial; 1/throughput when parallel) and
CPU seconds per job (user + system of this process and its children), both as ratios to the
serial single-threaded way, measured in one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import av

from loadtests.cpu import tree_cpu_seconds


def decode_prefix(path: str, seconds: float, thread_type: str, thread_count: int) -> int:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = thread_type
        stream.codec_context.thread_count = thread_count
        frames = 0
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= seconds:
                break
            frames += 1
        return frames


def cpu_seconds() -> float:
    """This process and its live worker processes (loadtests.cpu: the process tree's counters)."""
    return tree_cpu_seconds([os.getpid()])


def _ready(_: int) -> int:
    return os.getpid()


def measure(label: str, run: Callable[[], None], jobs: int) -> tuple[str, float, float]:
    began_cpu, began = cpu_seconds(), time.perf_counter()
    run()
    wall, cpu = time.perf_counter() - began, cpu_seconds() - began_cpu
    print(f"[decode-parallel] {label:<22} wall {wall / jobs * 1000:7.1f} ms/job  CPU {cpu / jobs * 1000:7.1f} ms/job", flush=True)
    return label, wall / jobs, cpu / jobs


def default_clip() -> Path:
    upload = Path.home() / ".cache" / "avserve-bench" / "uploads" / "upload_1080p_10s_gop2s.mp4"
    if upload.is_file():
        return upload
    from avserve.media.synthetic import VideoTrack, write_clip

    path = Path(tempfile.gettempdir()) / "avserve-decode-parallel-720p.mp4"
    if not path.is_file():
        print("[decode-parallel] writing a 720p clip ...", flush=True)
        write_clip(path, video=VideoTrack(width=1280, height=720, fps=30, num_frames=90, gop=60, content="footage",
                                          options={"preset": "veryfast"}))
    return path


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    clip = str(args.clip or default_clip())
    jobs, cores = args.jobs, args.cores
    print(f"[decode-parallel] {clip}: first {args.seconds:g} s, {jobs} jobs, {cores} cores", flush=True)
    decode_prefix(clip, args.seconds, "SLICE", 1)  # warm the page cache

    results = [
        measure("serial, 1 thread", lambda: [decode_prefix(clip, args.seconds, "SLICE", 1) for _ in range(jobs)], jobs),
        measure("serial, frame threads", lambda: [decode_prefix(clip, args.seconds, "FRAME", cores) for _ in range(jobs)], jobs),
    ]
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_ready, range(cores)))  # workers started before the clock
        results.append(measure(f"processes x {cores}", lambda: list(
            pool.map(decode_prefix, [clip] * jobs, [args.seconds] * jobs, ["SLICE"] * jobs, [1] * jobs)), jobs))
    with ThreadPoolExecutor(cores) as pool:
        results.append(measure(f"threads x {cores}", lambda: list(
            pool.map(decode_prefix, [clip] * jobs, [args.seconds] * jobs, ["SLICE"] * jobs, [1] * jobs)), jobs))

    _, base_wall, base_cpu = results[0]
    print("\n| way | wall ms/job | CPU ms/job | wall vs serial 1-thread | CPU vs serial 1-thread |\n|---|---:|---:|---:|---:|")
    for label, wall, cpu in results:
        print(f"| {label} | {wall * 1000:.1f} | {cpu * 1000:.1f} | {wall / base_wall:.2f}x | {cpu / base_cpu:.2f}x |")
    return results


if __name__ == "__main__":
    main()
