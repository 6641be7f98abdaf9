"""Benchmark: sampling 8 frames with decode_video vs decoding every frame.

Writes two 10 s 640x360 H.264 clips, one with a keyframe every second (short GOP) and
one with a single keyframe (long GOP), then reports the median wall time of:

  seek-sampling  avserve.media.decode_video(num_frames=8, size=224): forward-only seeks
  naive seek     seek to every target and decode to it (what forward-only avoids)
  decode-all     decode every frame of the clip, no colour conversion (a lower bound)
  all + RGB      decode every frame and convert it to an RGB array, as a naive loader
                 (e.g. torchvision.io.read_video) does

Then, on the long-GOP upload-size clips (720p/1080p, GOP >= 2 s; avserve.media.synthetic,
encoded once into --upload-clips), the decode CPU time (user + system of this process, all
decoder threads) of sampling 8 frames over the whole clip with `sampling="exact"` vs
`sampling="fast"` (the nearest keyframes), when this checkout's decode_video takes `sampling`.

Run:  .venv/bin/python -m loadtests.bench_decode [--repeats 7] [--no-uploads]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av

from avserve.media import decode_video
from avserve.media.synthetic import UPLOAD_SET, UploadClip, VideoTrack, write_clip, write_upload_clips

FPS = 30
SECONDS = 10
NUM_FRAMES = 8


def make_clips(directory: Path) -> dict[str, Path]:
    def track(gop: int) -> VideoTrack:
        return VideoTrack(
            width=640, height=360, fps=FPS, num_frames=FPS * SECONDS, gop=gop,
            content="footage", options={"preset": "veryfast"},
        )

    return {
        "short GOP (1 s)": write_clip(directory / "gop-1s.mp4", video=track(FPS)),
        "long GOP (1 keyframe)": write_clip(directory / "gop-single.mp4", video=track(10 * FPS * SECONDS)),
    }


def seek_sampling(path: Path) -> None:
    decode_video(path, num_frames=NUM_FRAMES, size=224)


def naive_seek(path: Path) -> None:
    """Seek to each segment centre and decode up to it, converting the frame like decode_video."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for i in range(NUM_FRAMES):
            target = (i + 0.5) * SECONDS / NUM_FRAMES
            container.seek(int(target / stream.time_base), stream=stream)
            for frame in container.decode(stream):
                if frame.time >= target - 1 / FPS:
                    frame.to_ndarray(format="rgb24", width=398, height=224)
                    break


def decode_all(path: Path) -> None:
    with av.open(str(path)) as container:
        for _ in container.decode(video=0):
            pass


def decode_all_to_rgb(path: Path) -> None:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")


def sampling_modes() -> tuple[str, ...]:
    """("exact", "fast") when decode_video takes `sampling`, else ("exact",)."""
    return ("exact", "fast") if "sampling" in inspect.signature(decode_video).parameters else ("exact",)


def median_cpu_ms(function: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Median (CPU ms, wall ms) of `function`: CPU is this process's user + system time, so a
    decoder's threads count (wall time hides them on a multi-core machine)."""
    function()
    cpu, wall = [], []
    for _ in range(repeats):
        began_cpu, began_wall = time.process_time(), time.perf_counter()
        function()
        cpu.append(time.process_time() - began_cpu)
        wall.append(time.perf_counter() - began_wall)
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000


def compare_sampling(directory: Path, repeats: int, long_gop: list[UploadClip]) -> None:
    """Decode CPU of exact vs fast sampling (8 frames over the whole clip) on long-GOP upload clips."""
    write_upload_clips(directory, long_gop)
    modes = sampling_modes()
    print(f"\nupload-size clips, long GOP: decode CPU of {NUM_FRAMES} frames over the whole clip at 224, "
          f"median of {repeats} runs")
    if modes == ("exact",):
        print("(avserve.media.decode_video takes no `sampling` yet: exact only)")
    header = f"{'clip':<28}" + "".join(f"{mode + ' CPU':>14}{mode + ' wall':>14}" for mode in modes)
    header += f"{'fast / exact CPU':>18}" if len(modes) == 2 else ""
    print(header)
    print("-" * len(header))
    for clip in long_gop:
        path = directory / f"{clip.name}.mp4"
        cells, cpu = "", {}
        for mode in modes:
            extra = {"sampling": mode} if len(modes) == 2 else {}
            cpu[mode], wall = median_cpu_ms(lambda: decode_video(path, num_frames=NUM_FRAMES, size=224, **extra), repeats)
            cells += f"{cpu[mode]:>11.0f} ms{wall:>11.0f} ms"
        ratio = f"{cpu['fast'] / cpu['exact']:>17.2f}x" if len(modes) == 2 else ""
        print(f"{clip.name:<28}{cells}{ratio}")


def median_ms(function: Callable[[Path], None], path: Path, repeats: int) -> float:
    function(path)  # warm-up: page cache, codec initialisation
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        function(path)
        times.append(time.perf_counter() - begin)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--uploads", action=argparse.BooleanOptionalAction, default=True,
                        help="also compare exact vs fast sampling on the long-GOP upload-size clips")
    parser.add_argument("--upload-clips", type=Path, default=Path.home() / ".cache" / "avserve-bench" / "uploads")
    parser.add_argument("--upload-clip", type=UploadClip.parse, action="append", metavar="HEIGHTp:SECONDS:GOP",
                        help="compare on this clip (repeatable; default: the long-GOP clips of the bench's set)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        clips = make_clips(Path(directory))
        print(f"{SECONDS} s 640x360 H.264 @ {FPS} fps, {NUM_FRAMES} frames sampled, "
              f"median of {args.repeats} runs\n")
        header = (f"{'clip':<24}{'seek-sampling':>15}{'naive seek':>13}{'decode-all':>13}"
                  f"{'all + RGB':>13}{'decode-all / sampling':>24}")
        print(header)
        print("-" * len(header))
        for name, path in clips.items():
            sampled = median_ms(seek_sampling, path, args.repeats)
            naive = median_ms(naive_seek, path, args.repeats)
            everything = median_ms(decode_all, path, args.repeats)
            everything_rgb = median_ms(decode_all_to_rgb, path, args.repeats)
            print(f"{name:<24}{sampled:>12.1f} ms{naive:>10.1f} ms{everything:>10.1f} ms"
                  f"{everything_rgb:>10.1f} ms{everything / sampled:>23.1f}x")
    if args.uploads:
        compare_sampling(args.upload_clips, args.repeats,
                         args.upload_clip or [clip for clip in UPLOAD_SET if clip.gop_seconds >= 2])


if __name__ == "__main__":
    main()
