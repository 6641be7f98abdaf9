"""The time window a decode call asks for, checked against the clip and the limits."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ErrorCode, MediaError
from .limits import MediaLimits


@dataclass(frozen=True)
class Window:
    """`[start, end)` in clip seconds; `padded` when the caller fixed the duration."""

    start: float
    end: float
    padded: bool

    @property
    def duration(self) -> float:
        return self.end - self.start


def resolve_window(
    start: float,
    duration: float | None,
    clip_end: float | None,
    limits: MediaLimits,
) -> Window:
    """Validate `[start, start + duration)` and fill in an open end.

    With `duration=None` the window runs to the end of the clip, but never further than
    `limits.max_decode_seconds`: decode time is bounded by the window, not the file.
    `clip_end` is None when the container does not say how long it is.
    """
    if not math.isfinite(start) or start < 0:
        raise MediaError(ErrorCode.INVALID_WINDOW, f"start must be >= 0 seconds, got {start}")
    if duration is not None:
        if not math.isfinite(duration) or duration <= 0:
            raise MediaError(
                ErrorCode.INVALID_WINDOW, f"duration must be > 0 seconds, got {duration}"
            )
        if duration > limits.max_decode_seconds:
            raise MediaError(
                ErrorCode.INVALID_WINDOW,
                f"duration {duration} s exceeds the limit of {limits.max_decode_seconds} s",
            )
    if clip_end is not None and start >= clip_end:
        raise MediaError(
            ErrorCode.INVALID_WINDOW,
            f"start {start} s is not inside the clip, which ends at {clip_end:.3f} s",
        )
    if duration is not None:
        return Window(start, start + duration, padded=True)
    end = start + limits.max_decode_seconds
    if clip_end is not None:
        end = min(end, clip_end)
    return Window(start, end, padded=False)
