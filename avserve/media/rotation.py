"""Display rotation: how a stored frame must be turned to be seen upright.

Phones record portrait video as landscape frames plus a display matrix saying "rotate
this by 90 degrees". We apply it so models always see upright pictures.
"""

from __future__ import annotations

import numpy as np
from av.stream import Stream
from av.video.frame import VideoFrame


def frame_rotation(frame: VideoFrame, stream: Stream) -> int:
    """Counter-clockwise degrees (0, 90, 180 or 270) that turn `frame` upright.

    FFmpeg attaches the container's display matrix to every decoded frame, which PyAV
    reads as `frame.rotation` (counter-clockwise). Old files may only carry a `rotate`
    tag instead, which is clockwise.
    """
    degrees = frame.rotation
    if degrees == 0:
        tag = stream.metadata.get("rotate", "0")
        try:
            degrees = -round(float(tag))
        except ValueError:
            degrees = 0
    # Only quarter turns are meaningful for a pixel grid; snap anything else.
    return (round(degrees / 90) * 90) % 360


def rotate_upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate an [H, W, C] picture counter-clockwise by `rotation` degrees."""
    quarter_turns = (rotation // 90) % 4
    if quarter_turns == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=quarter_turns, axes=(0, 1)))
