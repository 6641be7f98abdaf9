"""avserve bench: how fast, against what — every comparison in one run, same weights, same clips.

    .venv/bin/python -m loadtests.bench                               # seeded untrained zorro_tiny
    .venv/bin/python -m loadtests.bench --checkpoint runs/zorro_tiny_sup
    .venv/bin/python -m loadtests.bench --quick                       # CI-sized (about 1-2 min)
    .venv/bin/python -m loadtests.bench --url http://127.0.0.1:8080   # only a running gateway
    avserve bench --checkpoint runs/zorro_tiny_sup                    # the same, via the CLI

Targets, started here back to back on 127.0.0.1 (each warmed up first):
  gateway-embedded     the avserve gateway, embedded onnxruntime, micro-batching on (default)
  gateway-embedded-nomb   the same with micro-batching off (every request alone)
  gateway-triton       the gateway with the Triton backend (a real local tritonserver)
  triton-direct        tritonclient gRPC straight to that Triton, pre-decoded tensors
  torch-eager          FastAPI + PyTorch eager, one request at a time (loadtests/baseline_server.py)

Per target: a closed-loop concurrency sweep over the request mix (loadtests/clips.py), then a
fixed-arrival-rate (open-loop, Poisson) run at one common rate; for the default gateway also
one closed-loop run per modality (av / audio / video clips only). Every run also measures the
server CPU time per request: user + system seconds of the server's whole process tree (media
workers, tritonserver and its stubs included; loadtests/cpu.py) over the run, divided by the
requests answered. Measures this CPU's matmul peak and each graph's FLOPs for the
FLOP/s-vs-peak ratio.

Then (--uploads, on by default) the upload-size clips: 720p and 1080p H.264/AAC, 10-30 s, short
and long GOP (avserve.media.synthetic.UPLOAD_SET, encoded once into --upload-clips, the same
files `avserve data synth --preset uploads` writes), per group (e.g. "1080p long GOP") a
closed-loop run at --upload-concurrency on the default gateway with exact frame sampling, on
it with `?sampling=fast` (gateway-embedded-fast), and on FastAPI + eager. --quick uses one
10 s 1080p clip with a 2 s GOP.

Writes bench.json, bench.md (tables + ratios) and bench.png (latency vs throughput) into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from avserve.media.synthetic import UPLOAD_SET, UploadClip
from loadtests.clips import make_clips, make_upload_clips, upload_group
from loadtests.flops import graph_only, matmul_peak
from loadtests.report import compute_ratios, write_report
from loadtests.servers import Server
from loadtests.stats import RunResult, summary_line
from loadtests.targets import HttpTarget, TritonDirectTarget, closed_loop, decode_tensors, fixed_rate

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path.home() / ".cache" / "avserve-bench"
QUICK_UPLOADS = (UploadClip(1080, 10, 2),)


def prepare_model(args, workdir: Path):
    """Export the weights into a temp repository; return (family, model, repository, eager-server args)."""
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


class Progress:
    def __init__(self) -> None:
        self.began = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[bench {time.perf_counter() - self.began:6.1f}s] {message}", flush=True)


async def batch_policies(target: HttpTarget) -> dict:
    """Each model's micro-batching policy as the gateway chose it (GET /v1/models: rows, reason,
    measured curve), so the report says what the on/off comparison compared."""
    response = await target.client.get("/v1/models")
    response.raise_for_status()
    return {model["name"]: model.get("batching") for model in response.json()["models"]}


def record(result: RunResult, runs: list[dict], progress: Progress) -> None:
    """Append the run's summary to the report's runs and print its line."""
    runs.append(result.summary())
    progress(summary_line(runs[-1]))


async def measure(target, clips, args, progress, runs: list[dict], sweep: list[int], rate: float | None = None) -> None:
    progress(f"{target.name}: warm-up {args.warmup:.0f} s")
    await closed_loop(target, clips, max(sweep), args.warmup, seed=99)
    for concurrency in sweep:
        record(await closed_loop(target, clips, concurrency, args.seconds, seed=concurrency), runs, progress)
    if rate:
        record(await fixed_rate(target, clips, rate, args.seconds, seed=7), runs, progress)


async def run_all(args, progress) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="avserve-bench-"))
    clips_dir = Path(args.clips) if args.clips else CACHE / "clips"
    progress(f"clips -> {clips_dir}")
    clips = make_clips(clips_dir)
    runs: list[dict] = []
    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
                    "settings": {k: v for k, v in vars(args).items() if k != "func"},
                    "clips": [{"name": c.name, "route": c.route, "weight": c.weight, "bytes": c.path.stat().st_size}
                              for c in clips],
                    "runs": runs}
    sweep = args.concurrency
    servers: list[Server] = []
    triton = None
    try:
        if args.url:  # only the given gateway
            target = HttpTarget("gateway", args.url, clips)
            from loadtests.bench_cache import refuse_cached_gateway  # hits must not count as throughput

            await refuse_cached_gateway(target.client, clips[0])
            await measure(target, clips, args, progress, runs, sweep)
            await target.close()
            return report

        progress("exporting the model (real exporter) ...")
        family, model, repository, eager_args = prepare_model(args, workdir)
        report["model"] = {"family": family, "checkpoint": args.checkpoint, "preset": None if args.checkpoint else args.preset,
                           "parameters": sum(p.numel() for p in model.parameters())}
        progress("measuring the matmul peak and the graphs' FLOPs ...")
        from training.models.flops import route_flops

        report["flops_per_clip"] = flops = route_flops(model)
        report["matmul_peak_flops"] = matmul_peak(args.peak_seconds)
        report["graph_only"] = graph_only(repository, family, flops, args.peak_seconds)
        progress(f"peak {report['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; graph-only "
                 f"{report['graph_only']['flops_per_s'] / 1e9:.1f} GFLOP/s, batch-1 ms "
                 + ", ".join(f"{k} {v:.1f}" for k, v in report["graph_only"]["batch1_ms"].items()) + "; per clip "
                 + ", ".join(f"{k} {v / 1e6:.0f} MFLOP" for k, v in flops.items()))

        upload_groups = {}
        if args.uploads:  # before any server starts: encoding 1080p the first time takes minutes
            progress(f"upload-size clips -> {args.upload_clips}")
            upload_groups = make_upload_clips(args.upload_clips, args.upload_clip)
            report["upload_clips"] = [{"name": spec.name, "group": upload_group(spec), "width": spec.width,
                                       "height": spec.height, "seconds": spec.seconds, "gop_seconds": spec.gop_seconds,
                                       "bytes": (args.upload_clips / f"{spec.name}.mp4").stat().st_size}
                                      for spec in args.upload_clip]

        def start(name: str, module: str, *extra: str) -> Server:
            progress(f"starting {name} ...")
            server = Server.start_module(name, module, workdir / f"{name}.log", *extra)
            servers.append(server)
            return server

        # Every target runs at once (idle ones cost nothing) and each load point is measured on
        # all of them in turn, order rotating: the shared machine's noise hits all alike.
        targets = {}
        for name, module, extra in (
            ("gateway-embedded", "loadtests.serve_gateway", ["--repository", str(repository)]),
            ("gateway-embedded-nomb", "loadtests.serve_gateway", ["--repository", str(repository), "--no-micro-batching"]),
            ("torch-eager", "loadtests.baseline_server", eager_args),
        ):
            server = start(name, module, *extra)
            targets[name] = HttpTarget(name, server.url, clips, server_pids=(server.process.pid,))
        if not args.skip_triton:
            from avserve.triton import LocalTriton

            progress("starting tritonserver ...")
            triton = LocalTriton(repository, http_port=0, grpc_port=0, metrics_port=0, log_file=workdir / "triton.log")
            triton.start()
            server = start("gateway-triton", "loadtests.serve_gateway", "--backend", "triton", "--triton-url",
                           triton.grpc_url)
            targets["gateway-triton"] = HttpTarget("gateway-triton", server.url, clips,
                                                   server_pids=(server.process.pid, triton.pid))
            targets["triton-direct"] = TritonDirectTarget("triton-direct", triton.grpc_url, family, clips,
                                                          decode_tensors(clips, model), server_pids=(triton.pid,))
        order = list(targets)
        for target in targets.values():
            progress(f"{target.name}: warm-up {args.warmup:.0f} s")
            await closed_loop(target, clips, 4, args.warmup, seed=99)
        for index, concurrency in enumerate(sweep):
            for name in order[index % len(order):] + order[: index % len(order)]:
                record(await closed_loop(targets[name], clips, concurrency, args.seconds, seed=concurrency), runs, progress)
        peak = max(r["all"]["throughput"] for r in runs if r["target"] == "gateway-embedded")
        rate = report["rate"] = round(max(1.0, args.rate_fraction * peak), 1)
        for name in order:
            if name == "triton-direct":
                continue
            record(await fixed_rate(targets[name], clips, rate, args.seconds, seed=7), runs, progress)
        for route in ("av", "audio", "video"):
            subset = [c for c in clips if c.route == route]
            for name in ("gateway-embedded", "torch-eager"):
                result = await closed_loop(targets[name], subset, args.modality_concurrency, args.seconds, seed=5)
                result.target = f"{name}[{route}]"
                record(result, runs, progress)
        if upload_groups:
            report["uploads"] = await measure_uploads(targets, upload_groups, args, progress, runs)
        report["batch_policies"] = {
            name: await batch_policies(target) for name, target in targets.items() if name.startswith("gateway-embedded")
        }
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


def sampling_supported() -> bool:
    """Whether this checkout's decoder takes `sampling=` (the gateway's `?sampling=fast`); until it
    does, the gateway ignores the parameter and the fast target measures exact sampling."""
    from avserve.media import decode_video

    return "sampling" in inspect.signature(decode_video).parameters


async def measure_uploads(targets: dict, groups: dict, args, progress, runs: list[dict]) -> dict:
    """Each group of upload-size clips on the default gateway (exact and `fast` frame sampling)
    and on FastAPI + eager, closed loop at --upload-concurrency; the targets' order rotates."""
    gateway, eager = targets["gateway-embedded"], targets["torch-eager"]
    every_clip = [clip for group in groups.values() for clip in group]
    upload_targets = {
        "gateway-embedded": HttpTarget("gateway-embedded", gateway.url, every_clip, gateway.server_pids),
        "gateway-embedded-fast": HttpTarget("gateway-embedded-fast", gateway.url, every_clip, gateway.server_pids,
                                            params={"sampling": "fast"}),
        "torch-eager": HttpTarget("torch-eager", eager.url, every_clip, eager.server_pids),
    }
    supported = sampling_supported()
    if not supported:
        progress("uploads: avserve.media.decode_video takes no `sampling` yet: gateway-embedded-fast measures exact "
                 "sampling too (the gateway ignores the unknown query parameter)")
    order = list(upload_targets)
    try:
        for target in upload_targets.values():
            progress(f"{target.name}: upload-size clips, warm-up")
            await closed_loop(target, every_clip, args.upload_concurrency, args.warmup, seed=98)
        for index, (group, clips) in enumerate(groups.items()):
            for name in order[index % len(order):] + order[: index % len(order)]:
                result = await closed_loop(upload_targets[name], clips, args.upload_concurrency, args.upload_seconds,
                                           seed=11)
                result.target = f"{name}[uploads {group}]"
                record(result, runs, progress)
    finally:
        for target in upload_targets.values():
            await target.close()
    return {"groups": {group: [clip.name for clip in clips] for group, clips in groups.items()},
            "concurrency": args.upload_concurrency, "seconds": args.upload_seconds, "sampling_supported": supported}


def upload_clip(spec: str) -> UploadClip:
    try:
        return UploadClip.parse(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
    parser.add_argument("--uploads", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the upload-size clips (720p/1080p, 10-30 s; encoded once, minutes)")
    parser.add_argument("--upload-clip", type=upload_clip, action="append", metavar="HEIGHTp:SECONDS:GOP",
                        help="an upload-size clip, e.g. 1080p:30:2 (repeatable; default: the set of "
                             f"{len(UPLOAD_SET)}: {', '.join(f'{c.height}p:{c.seconds:g}:{c.gop_seconds:g}' for c in UPLOAD_SET)})")
    parser.add_argument("--upload-clips", type=Path, default=CACHE / "uploads",
                        help="directory the upload-size clips are written to and kept in")
    # A 1080p request takes seconds on a busy 2-core machine: runs long enough for several answers.
    parser.add_argument("--upload-seconds", type=float, default=15.0, help="length of each upload-size run")
    parser.add_argument("--upload-concurrency", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized: concurrency 1 4, 2 s per point, one 1080p upload-size clip for 8 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.seconds, args.warmup, args.peak_seconds = [1, 4], 2.0, 1.0, 0.5
        args.modality_concurrency = 4
        args.upload_seconds = 8.0
        args.upload_clip = args.upload_clip or list(QUICK_UPLOADS)
    args.upload_clip = tuple(args.upload_clip or UPLOAD_SET)
    if args.out is None:
        args.out = RESULTS / time.strftime("%Y%m%d-%H%M%S")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    progress = Progress()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report = asyncio.run(run_all(args, progress))
    report["started"] = started
    report["wall_seconds"] = time.perf_counter() - progress.began
    report["ratios"] = compute_ratios(report)
    report["settings"]["out"] = str(args.out)
    write_report(report, args.out)
    progress(f"wrote {args.out}/bench.json, bench.md, bench.png")
    print((args.out / "bench.md").read_text())
    return report


if __name__ == "__main__":
    main()
