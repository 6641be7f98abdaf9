"""Real gateways over real HTTP: uvicorn on free ports, serving a real exported Zorro repository.

Servers are session-scoped (one set per xdist worker) and run in a thread of the test
process, so tests can also read the server's state (its upload directory, log records).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from avserve.gateway import GatewaySettings, create_app
from avserve.gateway.server import server_config
from avserve.media.synthetic import AudioTrack, VideoTrack, write_clip
from avserve.repository import read_model_config, write_model_config

# Plain helper functions live next to this file (pyproject.toml: pytest's `pythonpath`).
from gateway_helpers import FAMILY, free_port

# Families derived from the exported zorro_tiny_av, each with only the audio+video model,
# to exercise every `missing_modality` policy.
POLICY_FAMILIES = {"zorro_zero_fill": "zero_fill", "zorro_reject": "reject", "zorro_route": "route"}


@dataclass
class Gateway:
    url: str
    settings: GatewaySettings
    server: uvicorn.Server

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def leftover_uploads(self) -> list[Path]:
        return sorted(self.settings.upload_dir.iterdir())


def start_gateway(settings: GatewaySettings) -> tuple[Gateway, threading.Thread]:
    port = free_port()
    app = create_app(settings)
    # The HTTP protocol `avserve serve` ships (header timeout, JSON protocol errors), not plain uvicorn's.
    config = server_config(app, settings, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    return Gateway(f"http://127.0.0.1:{port}", settings, server), thread


@pytest.fixture(scope="session")
def gateway_factory(tmp_path_factory) -> Iterator:
    """Start gateways with given settings; all are stopped at the end of the session."""
    running: list[tuple[Gateway, threading.Thread]] = []

    def start(**overrides) -> Gateway:
        upload_dir = tmp_path_factory.mktemp("uploads")
        # Tests fire bursts of concurrent requests to check other things: no shedding by queue
        # length unless a test asks (tests/gateway/test_overload.py tests admission control).
        overrides.setdefault("media_queue_factor", 1e6)
        settings = GatewaySettings(upload_dir=upload_dir, log_format="text", **overrides)
        gateway, thread = start_gateway(settings)
        running.append((gateway, thread))
        return gateway

    yield start
    for gateway, thread in running:
        gateway.server.should_exit = True
    for gateway, thread in running:
        thread.join(30)


@pytest.fixture(scope="session")
def serving_repository(zorro_repository, tmp_path_factory) -> Path:
    """zorro_tiny_{av,audio,video} plus one audio+video-only family per missing_modality policy."""
    source, _ = zorro_repository
    repository = tmp_path_factory.mktemp("serving_repository")
    for model_dir in source.iterdir():
        shutil.copytree(model_dir, repository / model_dir.name)
    for family, policy in POLICY_FAMILIES.items():
        name = f"{family}_av"
        shutil.copytree(source / f"{FAMILY}_av", repository / name)
        config = read_model_config(repository / name / "config.pbtxt")
        config.name = name
        config.parameters["family"].string_value = family
        config.parameters["missing_modality"].string_value = policy
        write_model_config(repository / name / "config.pbtxt", config)
    return repository


@pytest.fixture(scope="session")
def embedded_gateway(gateway_factory, serving_repository) -> Gateway:
    return gateway_factory(repository=serving_repository, default_model=FAMILY)


@dataclass(frozen=True)
class Clips:
    av: Path  # h264 + aac mp4, 2 s: the model's clip length
    audio: Path  # the same audio track alone (m4a)
    video: Path  # the same video track alone (mp4)
    long_av: Path  # 6 s: three model windows
    large_frames: Path  # 160x160 video, for the frame-size limit
    long_audio: Path  # 12 s of audio, for the duration limit


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Clips:
    directory = tmp_path_factory.mktemp("clips")
    video = VideoTrack(width=64, height=48, fps=10, num_frames=20, content="footage")
    audio = AudioTrack(sample_rate=16000, layout="mono", seconds=2.0, tone_hz=300.0, step_hz=200.0)
    return Clips(
        av=write_clip(directory / "av.mp4", video=video, audio=audio),
        audio=write_clip(directory / "audio.m4a", audio=audio),
        video=write_clip(directory / "video.mp4", video=video),
        long_av=write_clip(
            directory / "long.mp4",
            video=VideoTrack(width=64, height=48, fps=10, num_frames=60, content="footage"),
            audio=AudioTrack(sample_rate=16000, layout="mono", seconds=6.0, tone_hz=300.0, step_hz=150.0),
        ),
        large_frames=write_clip(directory / "large.mp4", video=VideoTrack(width=160, height=160, fps=5, num_frames=5)),
        long_audio=write_clip(directory / "long.m4a", audio=AudioTrack(sample_rate=8000, layout="mono", seconds=12.0)),
    )


@pytest.fixture(scope="session")
def synthetic_uploads(tmp_path_factory) -> list[tuple[Path, str]]:
    """Realistic uploads from the dataset generator: every container/codec recipe, incl.
    audio-only and video-only files. Returns (path, modalities) pairs."""
    import csv

    from training.data.synth import SynthConfig, generate_dataset

    out = tmp_path_factory.mktemp("synthetic")
    manifest = generate_dataset(out, clips=5, seed=7, config=SynthConfig(unimodal_fraction=1.0), progress=False)
    with manifest.open(newline="") as handle:
        return [(out / row["path"], row["modalities"]) for row in csv.DictReader(handle)]
