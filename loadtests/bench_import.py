"""Benchmark: what `avserve data import` costs per listed clip, by stage, and how probing scales
with --workers.

    .venv/bin/python -m loadtests.bench_import [--rows 20000] [--probe-files 200]

Stages, each timed in one run:

  read lists     parse an AudioSet-format list of --rows rows (read_lists)
  index files    walk --rows empty files named like a downloader names them (ClipIndex)
  match          find every listed clip's file (the index lookups)
  probe x N, B   probe --probe-files real tiny clips (1 s, 32x32 H.264 + AAC) in N supervised
                 worker processes (N = --workers), B files per worker call (B = --batch); the
                 pool's start is included, as a user sees it (the forkserver behind it is started
                 once, before the clock); every way --repeat times, interleaved

  probe inline   the same files probed one after the other in this process (what isolation costs)

Printed: microseconds per row for the list stages, files per second for probing, and probing's
speed-up over one worker, measured side by side.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import string
import tempfile
import time
from pathlib import Path

from training.data import clip_import
from training.data.clip_import import ClipIndex, _match, _probe_all
from training.data.importers import ImportOptions, ListFile, read_lists

_ID_ALPHABET = string.ascii_letters + string.digits + "-_"


def write_audioset_list(directory: Path, rows: int, seed: int = 0) -> tuple[Path, list[str]]:
    rng = random.Random(seed)
    ids = ["".join(rng.choice(_ID_ALPHABET) for _ in range(11)) for _ in range(rows)]
    path = directory / "unbalanced_train_segments.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("# Segments csv created by bench_import\n# num_ytids=0\n# YTID, start_seconds, end_seconds, positive_labels\n")
        for ytid in ids:
            start = rng.randrange(0, 300, 10)
            handle.write(f'{ytid}, {start}.000, {start + 10}.000, "/m/09x0r,/m/0jbk"\n')
    return path, ids


def timed(work):
    began = time.perf_counter()
    value = work()
    seconds = time.perf_counter() - began
    return value, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--probe-files", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, clip_import.PROBE_BATCH], help="files per worker call")
    parser.add_argument("--repeat", type=int, default=2, help="run every way this many times, interleaved")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="avserve-bench-import-"))
    try:
        listed, _ = write_audioset_list(root, args.rows)
        listing, read_seconds = timed(lambda: read_lists("audioset", [ListFile.parse(str(listed))], ImportOptions()))
        clips = root / "clips"
        clips.mkdir()
        for clip in listing.clips:  # the "<id>_<start>_<end>" names of common downloaders
            (clips / f"{clip.video_id}_{clip.start:.3f}_{clip.end:.3f}.wav").touch()
        index, index_seconds = timed(lambda: ClipIndex(clips))
        problems: list = []
        matched, match_seconds = timed(lambda: _match(listing, index, problems))
        rows = len(listing.clips)
        print(f"[import] {rows} rows: read lists {read_seconds / rows * 1e6:.1f} us/row, index files "
              f"{index_seconds / rows * 1e6:.1f} us/file, match {match_seconds / rows * 1e6:.1f} us/row "
              f"({len(matched)} matched, {len(problems)} problems)", flush=True)

        from avserve.media.synthetic import AudioTrack, VideoTrack, write_clip

        media = root / "media"
        media.mkdir()
        first = write_clip(media / "clip_0.mp4", video=VideoTrack(width=32, height=32, fps=10, num_frames=10),
                           audio=AudioTrack(sample_rate=16000, layout="mono"))  # fmt: skip
        for number in range(1, args.probe_files):
            shutil.copyfile(first, media / f"clip_{number}.mp4")
        probe_listing = read_lists("audioset", [ListFile.parse(str(listed))], ImportOptions())
        probe_listing.clips = probe_listing.clips[: args.probe_files]
        for number, clip in enumerate(probe_listing.clips):
            os.replace(media / f"clip_{number}.mp4", media / f"{clip.video_id}_{clip.start:.3f}_{clip.end:.3f}.mp4")
        to_probe = _match(probe_listing, ClipIndex(media), [])
        _probe_all(to_probe[:1], 1, False, [])  # start the forkserver (once per process) before the clock
        ways = [(workers, batch) for _ in range(args.repeat) for workers in args.workers for batch in args.batch]
        results = []
        for workers, batch in ways:
            clip_import.PROBE_BATCH = batch
            readable, seconds = timed(lambda: _probe_all(to_probe, workers, False, []))
            assert len(readable) == len(to_probe)
            results.append((workers, batch, len(to_probe) / seconds))
            print(f"[import] probe x {workers} workers, {batch} files/call: {len(to_probe) / seconds:.1f} files/s", flush=True)
        from avserve.media import probe

        _, inline_seconds = timed(lambda: [probe(entry.path) for entry in to_probe])
        inline = len(to_probe) / inline_seconds
        print(f"[import] probe in this process, one after the other (no isolation): {inline:.1f} files/s", flush=True)
        base = results[0][2]
        print("\n| probing | files/s | vs first |\n|---|---:|---:|")
        for workers, batch, rate in results:
            print(f"| {workers} worker process(es), {batch} files/call | {rate:.1f} | {rate / base:.2f}x |")
        print(f"| in-process, serial | {inline:.1f} | {inline / base:.2f}x |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
