"""Decoding packet by packet, skipping the few that fail, within `MediaLimits`.

FFmpeg's own tools log a packet the decoder rejects ("Error while decoding stream") and go on
with the next one, so a file with one damaged AC-3 frame still plays. We do the same, but
count what we skip per stream and call, and refuse the stream once the count or the bytes
pass `limits.max_bad_packets` / `limits.max_bad_packet_bytes`: beyond that the answer would
rest on too little of the clip.
"""

from __future__ import annotations

from av.audio.frame import AudioFrame
from av.error import FFmpegError
from av.packet import Packet
from av.video.frame import VideoFrame

from ._container import StreamKind
from .errors import ErrorCode, MediaError
from .limits import MediaLimits

# What a decoder raises for one bad packet: every AVERROR (FFmpegError; InvalidDataError is
# also a ValueError) and PyAV's own checks on what the decoder produced (ValueError).
PACKET_ERRORS = (FFmpegError, ValueError)


class PacketSkipper:
    """Decodes the packets of one stream, skipping (and counting) those that fail.

    A packet seen twice (a decoder that seeks back over it) is counted once. With `strict`
    the limit raises TOO_MANY_BAD_PACKETS; without (the probe) it only sets `exceeded`.
    """

    def __init__(self, kind: StreamKind, limits: MediaLimits, *, strict: bool = True) -> None:
        self.kind = kind
        self.limits = limits
        self.strict = strict
        self.packets = 0
        self.bytes = 0
        self.exceeded = False
        self._seen: set[tuple[int, int | None]] = set()

    def decode(self, packet: Packet) -> list[AudioFrame | VideoFrame]:
        try:
            return packet.decode()  # type: ignore[return-value]
        except PACKET_ERRORS as error:
            self._skip(packet, error)
            return []

    def _skip(self, packet: Packet, error: Exception) -> None:
        key = (packet.pos, packet.dts)
        if packet.pos is not None and packet.pos >= 0:
            if key in self._seen:
                return
            self._seen.add(key)
        self.packets += 1
        self.bytes += packet.size
        limits = self.limits
        if self.packets > limits.max_bad_packets or self.bytes > limits.max_bad_packet_bytes:
            self.exceeded = True
            if self.strict:
                raise MediaError(
                    ErrorCode.TOO_MANY_BAD_PACKETS,
                    f"the {self.kind} stream has {self.packets} packets ({self.bytes} bytes) that do not "
                    f"decode, more than the limit of {limits.max_bad_packets} packets or "
                    f"{limits.max_bad_packet_bytes} bytes (last error: {error})",
                ) from error
