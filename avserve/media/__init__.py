"""Probing and decoding media with PyAV, shared by training and serving.

    info = probe(path)                        # which streams decode, and their shape
    audio = decode_audio(path, sample_rate=16000, start=0.0, duration=10.0)
    video = decode_video(path, num_frames=8, size=224)              # sampling="fast": nearest keyframes
    read = read_media(path, plans)            # the gateway's one open per request: probe, then decode

Every failure caused by the input is a `MediaError` with a stable `ErrorCode`; the
limits in `MediaLimits` bound the size and the decoding work a single file can cost.
"""

from .audio import DecodedAudio, decode_audio
from .errors import ErrorCode, MediaError
from .limits import DEFAULT_LIMITS, MediaLimits
from .probe import AudioStreamInfo, MediaInfo, VideoStreamInfo, probe
from .reader import AudioInput, ClipWindow, DecodePlan, MediaRead, VideoInput, WindowPlan, read_media
from .video import DecodedVideo, decode_video

__all__ = [
    "DEFAULT_LIMITS",
    "AudioInput",
    "AudioStreamInfo",
    "ClipWindow",
    "DecodePlan",
    "MediaRead",
    "VideoInput",
    "WindowPlan",
    "read_media",
    "DecodedAudio",
    "DecodedVideo",
    "ErrorCode",
    "MediaError",
    "MediaInfo",
    "MediaLimits",
    "VideoStreamInfo",
    "decode_audio",
    "decode_video",
    "probe",
]
