"""INT8 vs fp32 graphs on this CPU: speed on the paper-size presets, agreement on a trained run.

Speed (default): builds each preset with seeded random weights (cost does not depend on the
weights), exports it with the real exporter (fp32), quantizes each graph exactly as
`avserve export --quantize int8` does (training.quantize.quantize_graph), then times fp32 and
int8 side by side in onnxruntime (CPU, session options as the embedded backend builds them):
per graph and batch size, runs alternate fp32 / int8 so the machine's noise hits both alike;
the median per clip, the int8/fp32 throughput ratio, and the achieved GFLOP/s (route_flops per
clip x clips / s) against this CPU's measured fp32 matmul peak (loadtests.flops.matmul_peak).
The int8 GFLOP/s counts the same (fp32 model) FLOPs: what the graph achieves, not int8 ops.

    .venv/bin/python -m loadtests.bench_int8                        # zorro_vit_b16 + mbt_vit_b16, ~15 min
    .venv/bin/python -m loadtests.bench_int8 --presets zorro_vit_b16 --graphs audio --batch-sizes 1

Agreement (`--checkpoint RUN --data DIR`): exports a trained run with `--quantize int8
--parity-data DIR` into a temporary repository and prints, per graph, int8 vs fp32 top-1
agreement and max |probability difference| on the split (default test), and both accuracies.

    .venv/bin/python -m loadtests.bench_int8 --checkpoint runs/zorro_tiny --data data/synth
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROUTES = ("av", "audio", "video")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["zorro_vit_b16", "mbt_vit_b16"], help="model presets to time")
    parser.add_argument("--graphs", nargs="+", default=list(ROUTES), choices=ROUTES, help="which graphs of each family")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed fp32/int8 pairs at batch 1")
    parser.add_argument("--repeats-large", type=int, default=2, help="timed pairs at batch sizes above 1 (the slow ones)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--checkpoint", type=Path, help="agreement mode: a trained run directory")
    parser.add_argument("--data", type=Path, help="agreement mode: the dataset the run was trained on")
    parser.add_argument("--split", default="test")
    parser.add_argument("--clips", type=int, default=1000, help="agreement mode: at most this many clips of the split")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) != (args.data is None):
        parser.error("--checkpoint and --data go together")
    if args.checkpoint is not None:
        rows = agreement(args.checkpoint, args.data, args.split, args.clips)
    else:
        rows = speed(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")


# ---- speed ------------------------------------------------------------------------------------


def speed(args) -> list[dict]:
    from loadtests.flops import matmul_peak

    began = time.perf_counter()
    print("measuring this CPU's fp32 matmul peak ...", flush=True)
    peak = matmul_peak()
    print(f"matmul peak: {peak / 1e9:.0f} GFLOP/s (fp32, torch, all cores)", flush=True)
    rows = []
    for preset in args.presets:
        rows += time_preset(preset, args, began)
    peak_after = matmul_peak()
    print_speed_table(rows, peak, peak_after, time.perf_counter() - began)
    return rows


def time_preset(preset: str, args, began: float) -> list[dict]:
    import torch

    from training.export import ExportOptions, export_model
    from training.models import create_model
    from training.models.flops import route_flops
    from training.quantize import quantize_graph

    def note(text: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {preset}: {text}", flush=True)

    torch.manual_seed(0)
    model = create_model(preset).eval()
    flops = route_flops(model)
    labels = [f"class_{i}" for i in range(model.config.num_classes)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        note(f"exporting fp32 ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters; ~70 s for a paper-size model) ...")
        exported = {m.name.rsplit("_", 1)[-1]: m for m in export_model(model, labels, Path(tmp) / "repository", ExportOptions(family=preset))}
        del model
        for route in [r for r in args.graphs if r in exported]:
            fp32_path = exported[route].directory / "1" / "model.onnx"
            int8_path = Path(tmp) / f"{preset}_{route}.int8.onnx"
            note(f"quantizing the {route} graph ...")
            quantize_graph(fp32_path, int8_path)
            sessions = {"fp32": new_session(fp32_path), "int8": new_session(int8_path)}
            sizes = {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size}
            for batch in args.batch_sizes:
                repeats = args.repeats if batch == 1 else args.repeats_large
                note(f"{route} graph, batch {batch}: {repeats} fp32/int8 pairs ...")
                medians = time_pair(sessions, feeds_for(sessions["fp32"], batch), repeats)
                for precision, seconds in medians.items():
                    rows.append(
                        {
                            "preset": preset,
                            "graph": route,
                            "batch": batch,
                            "precision": precision,
                            "file_mb": sizes[precision] / 1e6,
                            "ms_per_clip": seconds * 1e3 / batch,
                            "gflops_per_s": flops[route] * batch / seconds / 1e9,
                            "gflop_per_clip": flops[route] / 1e9,
                            "repeats": repeats,
                        }
                    )
                ratio = medians["fp32"] / medians["int8"]
                note(f"{route} batch {batch}: fp32 {medians['fp32'] * 1e3 / batch:.0f} ms/clip, int8 {medians['int8'] * 1e3 / batch:.0f} ms/clip ({ratio:.2f}x)")
            del sessions
    return rows


def new_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()  # as the embedded backend builds them: default threads, no spinning
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(session, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    feeds = {}
    for node in session.get_inputs():
        shape = [batch, *node.shape[1:]]
        if "float" in node.type:
            feeds[node.name] = rng.uniform(-1, 1, shape).astype(np.float32)
        else:
            feeds[node.name] = rng.integers(0, 256, shape, dtype=np.uint8)
    return feeds


def time_pair(sessions: dict, feeds: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    """Median seconds per run of each session; runs alternate so noise hits both alike."""
    for session in sessions.values():
        session.run(None, feeds)  # warm-up: the arena grows to this batch size
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def print_speed_table(rows: list[dict], peak: float, peak_after: float, elapsed: float) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\nINT8 vs fp32, onnxruntime CPU ({stamp}; {elapsed / 60:.1f} min): matmul peak {peak / 1e9:.0f} GFLOP/s "
        f"before, {peak_after / 1e9:.0f} after"
    )
    print(
        "| preset | graph | batch | GFLOP/clip | fp32 ms/clip | int8 ms/clip | int8/fp32 throughput "
        "| fp32 GFLOP/s (% peak) | int8 GFLOP/s (% peak) | MB fp32 → int8 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for fp32 in (r for r in rows if r["precision"] == "fp32"):
        int8 = next(r for r in rows if r["precision"] == "int8" and (r["preset"], r["graph"], r["batch"]) == (fp32["preset"], fp32["graph"], fp32["batch"]))
        print(
            f"| {fp32['preset']} | {fp32['graph']} | {fp32['batch']} | {fp32['gflop_per_clip']:.3g} | "
            f"{fp32['ms_per_clip']:.0f} | {int8['ms_per_clip']:.0f} | {fp32['ms_per_clip'] / int8['ms_per_clip']:.2f}x | "
            f"{fp32['gflops_per_s']:.0f} ({100 * fp32['gflops_per_s'] * 1e9 / peak:.0f}%) | "
            f"{int8['gflops_per_s']:.0f} ({100 * int8['gflops_per_s'] * 1e9 / peak:.0f}%) | "
            f"{fp32['file_mb']:.0f} → {int8['file_mb']:.0f} |"
        )


# ---- agreement --------------------------------------------------------------------------------


def agreement(run_dir: Path, data: Path, split: str, clips: int) -> list[dict]:
    from training.export import ExportError, ExportOptions, export_run

    print(f"exporting {run_dir} as int8, measuring parity on {data} split {split} ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as repository:
        try:
            options = ExportOptions(quantize="int8", parity_data=data, parity_split=split, parity_clips=clips)
            exported = export_run(run_dir, repository, options)
        except ExportError as error:
            sys.exit(f"error: {error}")
    rows = []
    print(f"\nint8 vs fp32 on {data} split {split} ({run_dir})")
    print("| graph | clips | top-1 agreement | max abs prob diff | top-1 fp32 | top-1 int8 |")
    print("|---|---:|---:|---:|---:|---:|")
    for model in exported:
        parity = model.int8_parity
        rows.append({"graph": model.name, **parity.to_dict()})
        accuracy = [f"{a:.3f}" if a is not None else "-" for a in (parity.top1_fp32, parity.top1_int8)]
        print(f"| {model.name} | {parity.clips} | {parity.top1_agreement:.3f} | {parity.max_prob_diff:.3g} | {accuracy[0]} | {accuracy[1]} |")
    return rows


if __name__ == "__main__":
    main()
