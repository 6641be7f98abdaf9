"""The bench's load generators and report, on a real gateway, CI-sized."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_closed_and_fixed_rate_runs_against_a_real_gateway(gateway_url, clip_dir):
    import bench
    from clips import make_clips

    clips = make_clips(clip_dir)

    async def go():
        target = bench.HttpTarget("gateway", gateway_url, clips)
        try:
            closed = await bench.closed_loop(target, clips, 2, 2.0)
            rate = await bench.fixed_rate(target, clips, 4.0, 2.0)
        finally:
            await target.close()
        return closed.summary(), rate.summary()

    closed, rate = asyncio.run(go())
    for summary in (closed, rate):
        stats = summary["all"]
        assert stats["ok"] > 0 and stats["error_ratio"] == 0.0, summary
        assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
        assert set(stats["stages_ms"]) == {"decode", "inference", "overhead"}
    assert set(closed["routes"]) <= {"av", "audio", "video"} and closed["routes"]


def test_report_ratios_markdown_and_plot(tmp_path):
    import bench

    def run(target, mode, load, throughput, p50, routes=None):
        stats = {"requests": 10, "ok": 10, "error_ratio": 0.0, "throughput": throughput, "p50_ms": p50, "p95_ms": p50 * 2,
                 "p99_ms": p50 * 3, "stages_ms": {"decode": 1.0, "inference": 2.0, "overhead": 0.5}}
        return {"target": target, "mode": mode, "load": load, "seconds": 1, "all": stats,
                "routes": routes or {"av": stats}}

    runs = []
    for target, speed in (("gateway-embedded", 20), ("torch-eager", 5), ("gateway-triton", 10), ("triton-direct", 40),
                          ("gateway-embedded-nomb", 12)):
        runs += [run(target, "closed", 1, speed / 2, 1000 / speed), run(target, "closed", 4, speed, 4000 / speed)]
        runs.append(run(target, "rate", 6.0, 6.0, 2000 / speed))
    for route, speed in (("av", 10), ("audio", 30), ("video", 20)):
        runs.append(run(f"gateway-embedded[{route}]", "closed", 4, speed, 100 / speed))
    report = {"runs": runs, "settings": {"concurrency": [1, 4], "seconds": 1}, "started": "now", "wall_seconds": 1,
              "machine": {"cpus": 2}, "flops_per_clip": {"av": 2e8, "audio": 1e8, "video": 7e7},
              "matmul_peak_flops": 5e10, "graph_only": {"flops_per_s": 2e10, "batch": 8, "batch1_ms": {"av": 4.0, "audio": 2.0, "video": 1.0}, "av_batch_clips_per_s": 400.0, "av_batch1_clips_per_s": 250.0},
              "model": {"family": "zorro_tiny", "parameters": 1e6, "checkpoint": None, "preset": "zorro_tiny"}}
    ratios = bench.compute_ratios(report)
    comparisons = {r["comparison"] for r in ratios}
    assert comparisons == {
        "avserve vs FastAPI + PyTorch eager", "gateway (Triton backend) vs Triton direct",
        "embedded backend vs Triton backend", "micro-batching on vs off", "audio-only vs audio+video requests",
        "video-only vs audio+video requests", "achieved model FLOP/s vs matmul peak",
    }
    eager = next(r for r in ratios if r["comparison"].startswith("avserve vs") and r["metric"].startswith("peak"))
    assert eager["ratio"] == 4.0 and eager["avserve_ahead"]
    direct = next(r for r in ratios if "Triton direct" in r["comparison"] and r["metric"].startswith("peak"))
    assert direct["ratio"] == 0.25 and not direct["avserve_ahead"]
    report["ratios"] = ratios
    bench.write_markdown(report, tmp_path / "bench.md")
    bench.write_plot(report, tmp_path / "bench.png")
    assert "| micro-batching on vs off |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    json.dumps(report)


def test_cli_bench_help_lists_the_options():
    result = subprocess.run([sys.executable, "-m", "avserve.cli", "bench", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--checkpoint" in result.stdout and "--quick" in result.stdout
