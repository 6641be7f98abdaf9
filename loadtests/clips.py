"""The request mix every load generator here sends: one definition for locust and the bench.

Clips with both tracks, audio-only and video-only files, at a few frame sizes and lengths,
written with PyAV (no system ffmpeg). Importing this needs only numpy and PyAV, so the
separate locust environment (.venv-loadtest) can use it too: locust puts its working directory
on sys.path, so run from the repo root there (avserve is not installed in that environment).

    clips = make_clips(Path("/tmp/clips"))     # -> [Clip(name, path, route, weight), ...]
    groups = make_upload_clips(Path("/tmp/uploads"))   # -> {"1080p long GOP": [Clip, ...], ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avserve.media.synthetic import UPLOAD_SET, AudioTrack, UploadClip, VideoTrack, write_clip, write_upload_clips

ROUTES = ("av", "audio", "video")


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    route: str  # "av", "audio" or "video": which graph the gateway picks for it
    weight: float  # share of requests in the mix


# name, route, weight, video (w, h, fps, seconds) or None, audio (rate, layout, seconds) or None, extension
MIX: tuple[tuple, ...] = (
    ("av_96x72_2s", "av", 0.25, (96, 72, 12, 2.0), (44100, "stereo", 2.0), "mp4"),
    ("av_320x240_4s", "av", 0.15, (320, 240, 25, 4.0), (48000, "stereo", 4.0), "mp4"),
    ("av_640x360_10s", "av", 0.10, (640, 360, 25, 10.0), (48000, "stereo", 10.0), "mp4"),
    ("audio_16k_2s", "audio", 0.15, None, (16000, "mono", 2.0), "m4a"),
    ("audio_44k_10s", "audio", 0.10, None, (44100, "stereo", 10.0), "m4a"),
    ("video_96x72_2s", "video", 0.15, (96, 72, 12, 2.0), None, "mp4"),
    ("video_320x240_6s", "video", 0.10, (320, 240, 25, 6.0), None, "mp4"),
)


def make_clips(directory: Path, routes: tuple[str, ...] = ROUTES) -> list[Clip]:
    """Write the mix into `directory` (kept when already there) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    clips = []
    for index, (name, route, weight, video, audio, extension) in enumerate(MIX):
        if route not in routes:
            continue
        path = directory / f"{name}.{extension}"
        if not path.is_file():
            video_track = audio_track = None
            if video is not None:
                width, height, fps, seconds = video
                video_track = VideoTrack(width=width, height=height, fps=fps, num_frames=round(fps * seconds), gop=fps,
                                         content="footage")
            if audio is not None:
                rate, layout, seconds = audio
                audio_track = AudioTrack(sample_rate=rate, layout=layout, seconds=seconds, tone_hz=220.0 + 110 * index,
                                         step_hz=50.0)
            partial = path.with_suffix(".part" + path.suffix)
            write_clip(partial, video=video_track, audio=audio_track)
            partial.replace(path)
        clips.append(Clip(name, path, route, weight))
    return clips


def upload_group(clip: UploadClip) -> str:
    """The bench measures upload-size clips by group: CPU per request cannot be told apart per
    clip within one run, and `fast` sampling only matters with long GOPs."""
    return f"{clip.height}p {'long' if clip.gop_seconds >= 2 else 'short'} GOP"


def make_upload_clips(directory: Path, specs: tuple[UploadClip, ...] = UPLOAD_SET, progress: bool = True,
                      ) -> dict[str, list[Clip]]:
    """The upload-size clips (`avserve data synth --preset uploads`; written once into `directory`,
    then kept), grouped by `upload_group`, equal weights within a group."""
    write_upload_clips(directory, specs, progress=progress)
    groups: dict[str, list[Clip]] = {}
    for spec in specs:
        groups.setdefault(upload_group(spec), []).append(Clip(spec.name, directory / f"{spec.name}.mp4", "av", 1.0))
    return groups
