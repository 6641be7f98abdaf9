"""The bench's load generators, servers and report, on a real gateway, CI-sized."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_closed_and_fixed_rate_runs_against_a_real_gateway(gateway_url, clip_dir):
    from loadtests.clips import make_clips
    from loadtests.targets import HttpTarget, closed_loop, fixed_rate

    clips = make_clips(clip_dir)

    from loadtests.bench import batch_policies

    async def go():
        # the gateway runs in this process (its media workers are children): its tree's CPU
        target = HttpTarget("gateway", gateway_url, clips, server_pids=(os.getpid(),))
        try:
            closed = await closed_loop(target, clips, 2, 2.0)
            rate = await fixed_rate(target, clips, 4.0, 2.0)
            policies = await batch_policies(target)
        finally:
            await target.close()
        return closed.summary(), rate.summary(), policies

    closed, rate, policies = asyncio.run(go())
    # The report records what the gateway chose per model (embedded backend: a measured policy).
    assert policies and all(policy["max_rows"] >= 1 and policy["reason"] for policy in policies.values()), policies
    for summary in (closed, rate):
        stats = summary["all"]
        assert stats["ok"] > 0 and stats["error_ratio"] == 0.0, summary
        assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
        assert set(stats["stages_ms"]) == {"decode", "inference", "overhead"}
        cpu = summary["cpu"]
        assert cpu["requests"] >= stats["ok"] and cpu["seconds"] > 0, cpu
        assert cpu["ms_per_request"] == pytest.approx(cpu["seconds"] * 1000 / cpu["requests"], rel=1e-3)
    assert set(closed["routes"]) <= {"av", "audio", "video"} and closed["routes"]


def test_server_runs_a_loadtests_module_and_stops_its_process_group(zorro_repository, tmp_path):
    """The bench's gateway as it starts it: `python -m loadtests.serve_gateway`, ready on /readyz,
    stopped for good (avserve.processes); a server that exits early fails with its log."""
    import httpx

    from loadtests.servers import Server

    repository, _ = zorro_repository
    server = Server.start_module("gateway", "loadtests.serve_gateway", tmp_path / "gateway.log",
                                 "--repository", str(repository))
    try:
        assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
    finally:
        server.stop()
    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(server.process.pid, 0)  # nothing of its group is left

    with pytest.raises(RuntimeError, match="(?s)broken exited.*--no-such-flag"):
        Server.start_module("broken", "loadtests.serve_gateway", tmp_path / "broken.log", "--no-such-flag")


def _tables(markdown: str) -> dict[str, list[list[str]]]:
    """Each `## section`'s table body rows (header and separator dropped) as lists of cells."""
    tables: dict[str, list[list[str]]] = {}
    section = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            section = line[3:]
            tables[section] = []
        elif section and line.startswith("|"):
            tables[section].append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return {name: rows[2:] for name, rows in tables.items()}


def test_report_ratios_markdown_and_plot(tmp_path):
    """bench.json holds the whole report, bench.md one table row per ratio / run / route with the
    right numbers, bench.png is a real latency-vs-throughput plot."""
    import numpy as np
    from matplotlib import image

    from loadtests.report import compute_ratios, write_report

    def run(target, mode, load, throughput, p50, routes=None, decode=1.0):
        stats = {"requests": 10, "ok": 10, "error_ratio": 0.0, "throughput": throughput, "p50_ms": p50, "p95_ms": p50 * 2,
                 "p99_ms": p50 * 3, "stages_ms": {"decode": decode, "inference": 2.0, "overhead": 0.5}}
        cpu = {"seconds": 1.0, "requests": 10, "ms_per_request": p50 / 2, "cores": 1.0}  # CPU ms/req: half the p50
        return {"target": target, "mode": mode, "load": load, "seconds": 1, "all": stats, "cpu": cpu,
                "routes": routes or {"av": stats}}

    runs = []
    for target, speed in (("gateway-embedded", 20), ("torch-eager", 5), ("gateway-triton", 10), ("triton-direct", 40),
                          ("gateway-embedded-nomb", 12)):
        runs += [run(target, "closed", 1, speed / 2, 1000 / speed), run(target, "closed", 4, speed, 4000 / speed)]
        runs.append(run(target, "rate", 6.0, 6.0, 2000 / speed))
    for route, speed in (("av", 10), ("audio", 30), ("video", 20)):
        runs.append(run(f"gateway-embedded[{route}]", "closed", 4, speed, 100 / speed))
    for target, p50, decode in (("gateway-embedded", 400, 300.0), ("gateway-embedded-fast", 200, 100.0),
                                ("torch-eager", 800, 300.0)):
        runs.append(run(f"{target}[uploads 1080p long GOP]", "closed", 2, 1000 / p50, p50, decode=decode))
    runs[1]["all"]["error_ratio"] = 0.25  # gateway-embedded, closed, 4 (its route entry is the same dict)
    report = {"uploads": {"groups": {"1080p long GOP": ["upload_1080p_10s_gop2s"]}, "concurrency": 2, "seconds": 1,
                          "sampling_supported": False},
              "upload_clips": [{"name": "upload_1080p_10s_gop2s", "group": "1080p long GOP", "width": 1920,
                                "height": 1080, "seconds": 10.0, "gop_seconds": 2.0, "bytes": 5_200_000}],
              "runs": runs, "settings": {"concurrency": [1, 4], "seconds": 1}, "started": "now", "wall_seconds": 1,
              "machine": {"cpus": 2}, "flops_per_clip": {"av": 2e8, "audio": 1e8, "video": 7e7},
              "matmul_peak_flops": 5e10, "graph_only": {"flops_per_s": 2e10, "batch": 8, "batch1_ms": {"av": 4.0, "audio": 2.0, "video": 1.0}, "av_batch_clips_per_s": 400.0, "av_batch1_clips_per_s": 250.0},
              "model": {"family": "zorro_tiny", "parameters": 1e6, "checkpoint": None, "preset": "zorro_tiny"}}
    ratios = compute_ratios(report)
    comparisons = {r["comparison"] for r in ratios}
    assert comparisons == {
        "avserve vs FastAPI + PyTorch eager", "gateway (Triton backend) vs Triton direct",
        "embedded backend vs Triton backend", "micro-batching on vs off", "audio-only vs audio+video requests",
        "video-only vs audio+video requests", "achieved model FLOP/s vs matmul peak",
        "avserve vs FastAPI + PyTorch eager, upload-size clips (1080p long GOP)",
        "`fast` vs `exact` frame sampling, upload-size clips (1080p long GOP)",
    }
    eager = next(r for r in ratios if r["comparison"].startswith("avserve vs") and r["metric"].startswith("peak"))
    assert eager["ratio"] == 4.0 and eager["avserve_ahead"]
    direct = next(r for r in ratios if "Triton direct" in r["comparison"] and r["metric"].startswith("peak"))
    assert direct["ratio"] == 0.25 and not direct["avserve_ahead"]
    assert report["gateway_flops_per_s"] == 20 * 2e8  # the best gateway run's req/s per route x FLOPs per clip
    report["ratios"] = ratios

    paths = write_report(report, tmp_path / "out")
    assert paths == [tmp_path / "out" / name for name in ("bench.json", "bench.md", "bench.png")]

    # bench.json: the whole report, every run and ratio, as written
    written = json.loads(paths[0].read_text())
    assert written == report
    # 22 as before, server CPU at concurrency 1 and 4 for the 4 pairs, 4 + 2 on the upload-size clips
    assert len(written["runs"]) == 21 and len(written["ratios"]) == len(ratios) == 22 + 8 + 6

    # bench.md: the title, the model line, and one row per ratio, per run, per route at the top concurrency
    markdown = paths[1].read_text()
    assert markdown.startswith("# avserve bench — now\n\nModel: `zorro_tiny` (1.00 M parameters, seeded untrained "
                               "zorro_tiny); 2 CPUs; 1 s per point; total 1 s.\n")
    tables = _tables(markdown)
    assert list(tables) == ["Ratios (ours / theirs)", "Runs", "Upload-size clips",
                            "Per route (closed loop, highest concurrency)"]
    ratio_rows, run_rows, upload_rows, route_rows = tables.values()
    assert [row[:2] for row in ratio_rows] == [[r["comparison"], r["metric"]] for r in ratios]
    for row in (
        ["avserve vs FastAPI + PyTorch eager", "peak throughput (req/s)", "20.0 (gateway-embedded)", "5.0 (torch-eager)",
         "4", "yes"],
        ["avserve vs FastAPI + PyTorch eager", "p99 latency at 6.0 req/s offered (ms)", "300.0 (gateway-embedded)",
         "1200.0 (torch-eager)", "0.25", "yes"],
        ["gateway (Triton backend) vs Triton direct", "peak throughput (req/s)", "10.0 (gateway-triton)",
         "40.0 (triton-direct)", "0.25", "no"],
        ["gateway (Triton backend) vs Triton direct", "latency without decoding at concurrency 1 (ms)",
         "2.5 (gateway-triton)", "25.0 (triton-direct)", "0.1", "yes"],
        ["audio-only vs audio+video requests", "graph FLOPs per clip", "0.10 G (audio-only)", "0.20 G (audio+video)",
         "0.5", "yes"],
        ["achieved model FLOP/s vs matmul peak", "gateway end to end (FLOP/s)", "4.00 G (gateway-embedded)",
         "50.00 G (matmul peak)", "0.08", "no"],
        ["avserve vs FastAPI + PyTorch eager", "server CPU per request at concurrency 4 (ms)", "100.0 (gateway-embedded)",
         "400.0 (torch-eager)", "0.25", "yes"],
        ["micro-batching on vs off", "server CPU per request at concurrency 1 (ms)", "25.0 (gateway-embedded)",
         "41.7 (gateway-embedded-nomb)", "0.6", "yes"],
        ["avserve vs FastAPI + PyTorch eager, upload-size clips (1080p long GOP)",
         "server CPU per request at concurrency 2 (ms)", "100.0 (gateway-embedded-fast)", "400.0 (torch-eager)", "0.25",
         "yes"],
        ["avserve vs FastAPI + PyTorch eager, upload-size clips (1080p long GOP)",
         "server CPU per request at concurrency 2 (ms)", "200.0 (gateway-embedded)", "400.0 (torch-eager)", "0.5", "yes"],
        ["`fast` vs `exact` frame sampling, upload-size clips (1080p long GOP)",
         "server CPU per request at concurrency 2 (ms)", "100.0 (fast)", "200.0 (exact)", "0.5", "yes"],
        ["`fast` vs `exact` frame sampling, upload-size clips (1080p long GOP)",
         "decode, median per request (ms, server timings)", "100.0 (fast)", "300.0 (exact)", "0.333", "yes"],
    ):
        assert row in ratio_rows, (row, ratio_rows)
    assert [row[:3] for row in run_rows] == [[r["target"], r["mode"], str(r["load"])] for r in runs]
    assert ["gateway-embedded", "closed", "4", "20.0", "200", "400", "600", "25.0%", "100.0", "1.00", "1.0", "2.0",
            "0.5"] in run_rows
    assert ["torch-eager", "rate", "6.0", "6.0", "400", "800", "1200", "0.0%", "200.0", "1.00", "1.0", "2.0",
            "0.5"] in run_rows
    assert ["gateway-embedded-fast[uploads 1080p long GOP]", "closed", "2", "5.0", "200", "400", "600", "0.0%", "100.0",
            "1.00", "100.0", "2.0", "0.5"] in run_rows
    assert upload_rows == [["upload_1080p_10s_gop2s", "1080p long GOP", "1920x1080", "10", "2", "5.2"]]
    assert "`gateway-embedded-fast` measured exact sampling too" in markdown  # the decoder takes no `sampling` yet
    assert [row[:2] for row in route_rows] == [[r["target"], "av"] for r in runs if r["mode"] == "closed" and r["load"] == 4]
    assert ["triton-direct", "av", "40.0", "100", "200", "300", "0.0%", "1.0", "2.0", "0.5"] in route_rows

    # bench.png: a real PNG, 8 x 5 in at 110 dpi, with coloured curves on it
    png = paths[2].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", png[:16]
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (880, 550)
    assert len(png) > 10_000
    pixels = image.imread(paths[2])[..., :3]
    coloured = np.ptp(pixels, axis=-1) > 0.3  # not white, grey or black: the targets' lines and markers
    assert coloured.sum() > 1_000, coloured.sum()


def test_cli_bench_help_lists_the_options():
    result = subprocess.run([sys.executable, "-m", "avserve.cli", "bench", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--checkpoint" in result.stdout and "--quick" in result.stdout


def test_bench_runs_as_a_module_from_anywhere(tmp_path):
    """`python -m loadtests.bench` imports from the installed package, not the working directory."""
    result = subprocess.run([sys.executable, "-m", "loadtests.bench", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: avserve bench") and "--quick" in result.stdout


def test_report_tables_each_graphs_batch_curve():
    """bench.md's batch-curve table: ms per clip by batch, read back from bench.json (string keys)
    too, with the batch the embedded backend's rule would choose (1 when no batch pays)."""
    from loadtests.report import batch_curve_lines

    curves = {"av": {1: 5.8, 2: 4.6, 4: 3.9, 8: 3.4}, "audio": {1: 251.0, 2: 260.0, 4: 270.0, 8: 288.0}}
    report = {"model": {"family": "zorro"}, "graph_only": {"ms_per_clip": curves}}
    lines = batch_curve_lines(report)
    assert lines == batch_curve_lines(json.loads(json.dumps(report)))
    rows = [line for line in lines if line.startswith("| zorro_")]
    assert rows == ["| zorro_av | 5.80 | 4.60 | 3.90 | 3.40 | 0.59x | 8 |",
                    "| zorro_audio | 251.00 | 260.00 | 270.00 | 288.00 | 1.15x | 1 |"]
    assert batch_curve_lines({"graph_only": {"flops_per_s": 1.0}}) == []


def test_report_says_which_batch_policy_each_gateway_chose():
    from loadtests.report import batch_curve_lines

    report = {
        "model": {"family": "zorro"},
        "graph_only": {"ms_per_clip": {"av": {1: 5.8, 8: 3.4}}},
        "batch_policies": {
            "gateway-embedded": {"zorro_av": {"max_rows": 8, "reason": "batch 8 costs 0.59x"}},
            "gateway-embedded-nomb": {"zorro_av": {"max_rows": 1, "reason": "micro-batching off"}},
        },
    }
    lines = batch_curve_lines(report)
    assert "| gateway-embedded | zorro_av | 8 | batch 8 costs 0.59x |" in lines
    assert "| gateway-embedded-nomb | zorro_av | 1 | micro-batching off |" in lines
