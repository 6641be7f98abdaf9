"""Fixtures of the load-test tests: a real gateway (uvicorn in a thread) and the clip mix."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    from loadtests.clips import make_clips

    directory = tmp_path_factory.mktemp("loadtest_clips")
    make_clips(directory)
    return directory


@pytest.fixture(scope="session")
def gateway_url(zorro_repository, tmp_path_factory) -> Iterator[str]:
    import uvicorn

    from avserve.gateway import GatewaySettings, create_app
    from avserve.processes import free_ports

    repository, _ = zorro_repository
    port = free_ports(1)[0]
    settings = GatewaySettings(repository=repository, upload_dir=tmp_path_factory.mktemp("uploads"), log_format="text",
                               log_level="WARNING", media_queue_factor=1e6)  # load tests: measure, never shed
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)
