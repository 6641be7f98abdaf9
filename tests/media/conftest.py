"""Fixtures for the media tests: synthetic clips written with PyAV on first use.

Clips are tiny (about 1 s, 64 px) and cached for the session, so each xdist worker only
encodes the clips its own tests ask for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avserve.media.synthetic import AudioTrack, VideoTrack, write_clip


class ClipFactory:
    """`clips.make("name.ext", video=..., audio=...)` writes a clip once and returns its path."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._made: dict[str, Path] = {}

    def make(
        self, filename: str, *, video: VideoTrack | None = None, audio: AudioTrack | None = None
    ) -> Path:
        if filename not in self._made:
            self._made[filename] = write_clip(self.directory / filename, video=video, audio=audio)
        return self._made[filename]

    def write_bytes(self, filename: str, data: bytes) -> Path:
        path = self.directory / filename
        path.write_bytes(data)
        return path

    def truncated(self, source: Path, fraction: float = 0.5) -> Path:
        data = source.read_bytes()
        return self.write_bytes(f"truncated-{source.name}", data[: int(len(data) * fraction)])

    def corrupted(self, source: Path, *, seed: int = 0) -> Path:
        """A copy whose middle 40 % is overwritten with random bytes."""
        data = bytearray(source.read_bytes())
        begin, end = int(len(data) * 0.3), int(len(data) * 0.7)
        data[begin:end] = np.random.default_rng(seed).bytes(end - begin)
        return self.write_bytes(f"corrupted{seed}-{source.name}", bytes(data))


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> ClipFactory:
    return ClipFactory(tmp_path_factory.mktemp("clips"))
