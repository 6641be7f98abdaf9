"""Start-up failures: clear errors, the server log's tail, and nothing left behind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from avserve.repository import RepositoryError
from avserve.triton import LocalTriton, LocalTritonError, TritonNotInstalledError, find_triton

pytestmark = pytest.mark.slow


def _assert_nothing_left(server: LocalTriton, scratch: Path, tiny) -> None:
    assert not server.is_running() and server.pid is None
    assert tiny.processes_mentioning(str(scratch)) == []
    assert list(scratch.iterdir()) == []


def test_malformed_repository_fails_before_launching(tiny_repository: Path, private_tmp: Path, tiny) -> None:
    (tiny_repository / "tiny_av" / "config.pbtxt").write_text("max_batch_size: many")
    server = LocalTriton(tiny_repository, http_port=0, grpc_port=0, metrics_port=0)
    with pytest.raises(RepositoryError, match=r"tiny_av/config.pbtxt: malformed model config"):
        server.start()
    assert server.command == []  # never launched
    _assert_nothing_left(server, private_tmp, tiny)


def test_model_that_fails_to_load_stops_the_server_with_its_log(
    one_model_repository: Path, private_tmp: Path, tiny
) -> None:
    # A valid repository whose ONNX file is garbage: only the server can find out.
    (one_model_repository / "tiny_audio" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    server = LocalTriton(one_model_repository, http_port=0, grpc_port=0, metrics_port=0)
    with pytest.raises(LocalTritonError) as caught:
        server.start()
    message = str(caught.value)
    assert "tritonserver exited with code" in message
    assert "--- last lines of" in message and "tiny_audio" in message and "onnx" in message.lower()
    assert "--exit-on-error=true" in message  # the command line, to reproduce by hand
    _assert_nothing_left(server, private_tmp, tiny)


def test_without_exit_on_error_a_failed_model_is_still_reported(
    one_model_repository: Path, private_tmp: Path, tiny
) -> None:
    (one_model_repository / "tiny_audio" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    server = LocalTriton(one_model_repository, http_port=0, grpc_port=0, metrics_port=0, exit_on_error=False)
    with pytest.raises(LocalTritonError, match="models failed to load: .*tiny_audio"):
        server.start()
    _assert_nothing_left(server, private_tmp, tiny)


def test_busy_port_is_a_start_up_error(one_model_repository: Path, private_tmp: Path, tiny) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = LocalTriton(one_model_repository, http_port=busy.getsockname()[1], grpc_port=0, metrics_port=0)
        with pytest.raises(LocalTritonError, match="exited with code") as caught:
            server.start()
    assert "HTTP" in str(caught.value) or "address" in str(caught.value).lower()
    _assert_nothing_left(server, private_tmp, tiny)


def test_start_up_timeout_kills_the_server(one_model_repository: Path, private_tmp: Path, tiny) -> None:
    server = LocalTriton(
        one_model_repository, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=0.3, stop_timeout=5
    )
    with pytest.raises(LocalTritonError, match=r"not ready within 0 s"):
        server.start()
    _assert_nothing_left(server, private_tmp, tiny)


def test_missing_triton_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(TritonNotInstalledError, match=r"install the \[triton\] extra"):
        find_triton()
