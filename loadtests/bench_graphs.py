"""What one request costs on each of a family's graphs: `_av` vs `_audio` vs `_video`.

Exports a model preset (random weights: cost does not depend on them) with the real exporter,
then times each graph in onnxruntime at batch 1, 2, 4 and 8. Repetitions of the graphs are
interleaved, so the machine's noise hits all of them alike, and results are reported as
ratios to the `_av` graph measured in the same run, then as each graph's batch curve (ms per
clip by batch size, and the batch the embedded backend's rule would choose from it).

    .venv/bin/python -m loadtests.bench_graphs                       # zorro_tiny
    .venv/bin/python -m loadtests.bench_graphs --preset zorro_vit_b16 --batches 1 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="zorro_tiny", help="model preset to export (training.models)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per graph and batch size")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = parser.parse_args()

    import torch

    from training.export import ExportOptions, export_model
    from training.models import create_model

    torch.manual_seed(0)
    model = create_model(args.preset).eval()
    labels = [f"class_{i}" for i in range(model.config.num_classes)]
    with tempfile.TemporaryDirectory() as repository:
        print(f"exporting {args.preset} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) ...")
        exported = export_model(model, labels, repository, ExportOptions(family=args.preset))
        rows = benchmark(exported, model.config, args.batches, args.repeats, args.threads)
    print_table(rows, args)


def benchmark(exported, config, batches, repeats, threads) -> list[dict]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = {m.name: ort.InferenceSession(str(Path(m.directory) / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]) for m in exported}
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        feeds = {}
        for model in exported:
            inputs = {}
            if "audio" in model.modalities:
                inputs["audio"] = rng.uniform(-1, 1, (batch, config.clip_samples)).astype(np.float32)
            if "video" in model.modalities:
                inputs["video"] = rng.integers(0, 256, (batch, config.num_frames, config.image_size, config.image_size, 3), dtype=np.uint8)
            feeds[model.name] = inputs
            sessions[model.name].run(None, inputs)  # warm-up
        timings: dict[str, list[float]] = {m.name: [] for m in exported}
        for _ in tqdm(range(repeats), desc=f"batch {batch}", unit="round"):
            for model in exported:  # interleaved: one run of each graph per round
                start = time.perf_counter()
                sessions[model.name].run(None, feeds[model.name])
                timings[model.name].append(time.perf_counter() - start)
        for model in exported:
            rows.append(
                {
                    "model": model.name,
                    "batch": batch,
                    "mb": model.file_bytes / 1e6,
                    "median_ms": statistics.median(timings[model.name]) * 1e3,
                }
            )
    return rows


def print_table(rows: list[dict], args) -> None:
    print(f"\n{args.preset}: onnxruntime CPU, {args.threads} threads, median of {args.repeats} interleaved runs")
    print(f"{'graph':<26}{'batch':>6}{'size MB':>9}{'ms/batch':>10}{'ms/clip':>9}{'vs _av':>8}")
    for row in rows:
        reference = next(r for r in rows if r["batch"] == row["batch"] and r["model"].endswith("_av"))
        print(
            f"{row['model']:<26}{row['batch']:>6}{row['mb']:>9.1f}{row['median_ms']:>10.2f}"
            f"{row['median_ms'] / row['batch']:>9.2f}{row['median_ms'] / reference['median_ms']:>8.2f}"
        )
    if 1 not in args.batches or len(args.batches) < 2:
        return
    from loadtests.report import batch_curve_lines

    curves: dict[str, dict[int, float]] = {}
    for row in rows:
        curves.setdefault(row["model"].rsplit("_", 1)[1], {})[row["batch"]] = row["median_ms"] / row["batch"]
    print("\n".join(["", *batch_curve_lines({"graph_only": {"ms_per_clip": curves}, "model": {"family": args.preset}})]))


if __name__ == "__main__":
    main()
