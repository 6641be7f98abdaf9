"""The bench's report: ratios between targets, and bench.json, bench.md and bench.png.

    report["ratios"] = compute_ratios(report)   # report as loadtests.bench.run_all builds it
    write_report(report, out)                   # out/bench.json, out/bench.md, out/bench.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _find(runs, target, mode="closed", load=None):
    matches = [r for r in runs if r["target"] == target and r["mode"] == mode and (load is None or r["load"] == load)]
    return matches


def _peak(runs, target):
    candidates = _find(runs, target)
    return max(candidates, key=lambda r: r["all"]["throughput"]) if candidates else None


def _cpu_ms(run: dict | None) -> float | None:
    """Server CPU ms per request of a run (None: not measured, e.g. a gateway given by URL)."""
    return ((run or {}).get("cpu") or {}).get("ms_per_request")


def compute_ratios(report: dict) -> list[dict]:
    runs = report["runs"]
    low, top = min(report["settings"]["concurrency"]), max(report["settings"]["concurrency"])
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
        for load in sorted({low, top}):
            a, b = _find(runs, ours, load=load), _find(runs, theirs, load=load)
            if a and b:
                add(comparison, f"server CPU per request at concurrency {load} (ms)", _cpu_ms(a[0]), _cpu_ms(b[0]), False,
                    ours, theirs)

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
    uploads = report.get("uploads")
    for group in (uploads or {}).get("groups", ()):
        exact, fast, eager = (next(iter(_find(runs, f"{target}[uploads {group}]")), None)
                              for target in ("gateway-embedded", "gateway-embedded-fast", "torch-eager"))
        for ours, label in ((exact, "gateway-embedded"), (fast, "gateway-embedded-fast")):
            if ours and eager:
                comparison = f"avserve vs FastAPI + PyTorch eager, upload-size clips ({group})"
                add(comparison, f"server CPU per request at concurrency {ours['load']} (ms)", _cpu_ms(ours), _cpu_ms(eager),
                    False, label, "torch-eager")
                add(comparison, f"p50 latency at concurrency {ours['load']} (ms)", ours["all"]["p50_ms"],
                    eager["all"]["p50_ms"], False, label, "torch-eager")
        if exact and fast:
            comparison = f"`fast` vs `exact` frame sampling, upload-size clips ({group})"
            add(comparison, f"server CPU per request at concurrency {fast['load']} (ms)", _cpu_ms(fast), _cpu_ms(exact),
                False, "fast", "exact")
            add(comparison, "decode, median per request (ms, server timings)",
                fast["all"].get("stages_ms", {}).get("decode"), exact["all"].get("stages_ms", {}).get("decode"), False,
                "fast", "exact")
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
    lines += batch_curve_lines(report)
    lines += ["## Runs", "",
              "Server CPU: user + system time of the server's whole process tree (media workers, tritonserver and "
              "its stubs) over the run, per request answered; CPU cores: that time over the run's wall time.", "",
              "| target | mode | load | req/s | p50 ms | p95 ms | p99 ms | errors | CPU ms/req | CPU cores | decode ms | "
              "inference ms | overhead ms |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        a = r["all"]
        s = a.get("stages_ms", {})
        cpu = r.get("cpu") or {}
        lines.append(f"| {r['target']} | {r['mode']} | {r['load']} | {a['throughput']:.1f} | {_fmt(a['p50_ms'], 0)} | "
                     f"{_fmt(a['p95_ms'], 0)} | {_fmt(a['p99_ms'], 0)} | {a['error_ratio']:.1%} | "
                     f"{_fmt(cpu.get('ms_per_request'))} | {_fmt(cpu.get('cores'), 2)} | {_fmt(s.get('decode'))} | "
                     f"{_fmt(s.get('inference'))} | {_fmt(s.get('overhead'))} |")
    if report.get("upload_clips"):
        uploads = report.get("uploads") or {}
        lines += ["", "## Upload-size clips", "",
                  f"H.264 (x264 veryfast, High) + AAC stereo mp4, 30 fps; closed loop at concurrency "
                  f"{uploads.get('concurrency', '-')}, {uploads.get('seconds', '-')} s per group and target "
                  f"(runs `<target>[uploads <group>]` above). " + (
                      "`gateway-embedded-fast` sends `?sampling=fast`." if uploads.get("sampling_supported") else
                      "This checkout's decoder has no `sampling` yet: the gateway ignores `?sampling=fast`, so "
                      "`gateway-embedded-fast` measured exact sampling too (equal numbers are expected)."), "",
                  "| clip | group | size | seconds | GOP s | MB |", "|---|---|---|---:|---:|---:|"]
        for c in report["upload_clips"]:
            lines.append(f"| {c['name']} | {c['group']} | {c['width']}x{c['height']} | {c['seconds']:g} | "
                         f"{c['gop_seconds']:g} | {c['bytes'] / 1e6:.1f} |")
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


def batch_curve_lines(report: dict, pays_below: float = 0.9) -> list[str]:
    """The graphs' batch curves as a markdown table, with the batch the embedded backend's rule
    (largest batch costing under `pays_below` x batch 1 per clip) would choose from them."""
    curves = (report.get("graph_only") or {}).get("ms_per_clip")
    if not curves:
        return []
    # bench.json read back has string keys
    curves = {route: {int(rows): ms for rows, ms in curve.items()} for route, curve in curves.items()}
    batches = sorted({rows for curve in curves.values() for rows in curve})
    family = report.get("model", {}).get("family", "")
    lines = ["## Batch curve (each graph alone, onnxruntime, ms per clip; median of interleaved rounds)", "",
             "| graph | " + " | ".join(f"batch {rows}" for rows in batches)
             + f" | batch {batches[-1]} vs 1 | batches up to |",
             "|---|" + "---:|" * (len(batches) + 2)]
    for route, curve in curves.items():
        single = curve[1]
        paying = [rows for rows, ms in curve.items() if rows > 1 and ms < pays_below * single]
        lines.append(f"| {family}_{route} | " + " | ".join(_fmt(curve.get(rows), 2) for rows in batches)
                     + f" | {curve[batches[-1]] / single:.2f}x | {max(paying, default=1)} |")
    lines += ["", f"\"batches up to\": the largest batch costing under {pays_below:g}x batch 1 per clip (1: batching "
              "does not pay), the rule the embedded backend applies to the curve it measures at start-up.", ""]
    policies = report.get("batch_policies") or {}
    if policies:
        lines += ["What each gateway chose at its own start-up (GET /v1/models):", "",
                  "| gateway | model | rows at most | why |", "|---|---|---:|---|"]
        for gateway, models in policies.items():
            for model, policy in sorted(models.items()):
                if policy:
                    lines.append(f"| {gateway} | {model} | {policy['max_rows']} | {policy['reason']} |")
        lines.append("")
    return lines


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


def write_report(report: dict, out: Path) -> list[Path]:
    """bench.json (the whole report), bench.md (tables) and bench.png (the plot) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md", out / "bench.png"]
    paths[0].write_text(json.dumps(report, indent=2, default=str))
    write_markdown(report, paths[1])
    write_plot(report, paths[2])
    return paths
