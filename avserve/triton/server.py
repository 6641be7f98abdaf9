"""`LocalTriton`: run the real `tritonserver` against a user's model repository.

    with LocalTriton("model_repository", http_port=0, grpc_port=0, metrics_port=0) as triton:
        client = tritonclient.grpc.InferenceServerClient(triton.grpc_url)

`start()` validates the repository, builds a shadow repository and a backend directory in a
temp dir, launches the server in its own process group and waits for `/v2/health/ready`.
`stop()` sends SIGINT (Triton unloads models and stops its Python stubs), kills the whole
process group if that takes too long, and removes the temp dir. Port 0 picks a free port.

The temp dir is the server's only scratch space, so stop() leaves nothing behind even after the
server was killed:

    avserve-triton-XXXX/repository/   the shadow repository (shadow.py)
                        backends/     the Python backend: library, utils, stub
                        tmp/          the server's working directory, TMPDIR, and the Python
                                      backend's python_env_* dir (see _prepare_python_backend)
                        server.log    unless log_file is given

`avserve triton` keeps one running with restarts (supervisor.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

from avserve.processes import die_with_parent, free_ports, stop_process_group
from avserve.repository import Repository, load_repository

from .install import LocalTritonError, TritonInstall, find_triton
from .shadow import ShadowRepository, build_shadow_repository

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
# Python-backend shared memory per model instance: the 1 MiB default grows in 1 MiB steps,
# and a batch of video clips is several MiB, so start (and grow) bigger.
SHM_BYTES = 16 * 1024 * 1024
# The Python backend makes a dir for extracted execution environments from the fixed template
# "/tmp/python_env_XXXXXX" (pb_env.cc, EnvironmentManager: it ignores TMPDIR) and removes it only
# on a clean shutdown, so every killed server left an empty /tmp/python_env_* behind. The
# template's first 16 bytes are one constant in the library's .rodata; in our copy they become a
# relative path of the same length, so mkdtemp() makes the dir in the server's working
# directory (its own tmp/), which stop() removes whatever happened to the server.
PYTHON_ENV_TEMPLATE = b"/tmp/python_env_"
PYTHON_ENV_PRIVATE = b"././/python_env_"  # -> <cwd>/python_env_XXXXXX


class TritonEndpoints:
    """Where a local Triton listens and logs: the URLs and log access LocalTriton and
    SupervisedTriton share (they set `address`, the three ports and `log_path`)."""

    address: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path | None

    def _host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address

    @property
    def http_url(self) -> str:
        return f"http://{self._host()}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        # tritonclient.grpc takes host:port without a scheme.
        return f"{self._host()}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._host()}:{self.metrics_port}/metrics"

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self):  # start() and stop() are the subclass's
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class LocalTriton(TritonEndpoints):
    def __init__(
        self,
        repository: Path | str,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        address: str = "127.0.0.1",
        log_verbose: int = 0,
        log_file: Path | str | None = None,
        exit_on_error: bool = True,
        validate: bool = True,
        startup_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        install: TritonInstall | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.source = Path(repository)
        self.address = address
        self.log_verbose = log_verbose
        self.exit_on_error = exit_on_error
        self.validate = validate
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self._requested_log_file = Path(log_file) if log_file is not None else None
        self._install = install
        self._cancel = cancel  # once set, a start() still waiting for readiness gives up
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.log_path: Path | None = None
        self.command: list[str] = []
        self.repository: Repository | None = None  # the validated source, when validate=True
        self.shadow: ShadowRepository | None = None
        self.startup_seconds: float | None = None
        self._shm_prefix = ""

    # ---- where it runs ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def workdir(self) -> Path | None:
        """This server's temp dir (None before start() and after stop())."""
        return self._workdir

    @property
    def tmp_dir(self) -> Path | None:
        """The server's working directory and TMPDIR, inside `workdir`."""
        return self._workdir / "tmp" if self._workdir is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def poll(self) -> int | None:
        """The server's exit status once it has exited on its own (negative: killed by that
        signal), None while it runs or when it was never started."""
        return self._process.poll() if self._process is not None else None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalTriton:
        if self._process is not None:
            raise LocalTritonError("this LocalTriton is already started")
        install = self._install or find_triton()
        if self.validate:
            self.repository = load_repository(self.source)  # RepositoryError names the bad file
        try:
            self._prepare(install)
            began = time.monotonic()
            self._launch(install)
            self._wait_until_ready()
            self.startup_seconds = time.monotonic() - began
        except BaseException:
            self.stop()  # the error already carries the log tail; leave no process or temp dir
            raise
        return self

    def stop(self) -> None:
        """Stop gracefully (SIGINT), then kill the process group; always remove the temp dir."""
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, graceful=signal.SIGINT, timeout=self.stop_timeout)
        if self._shm_prefix:
            for leftover in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
                leftover.unlink(missing_ok=True)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def wait(self) -> int:
        """Block until the server exits on its own; returns its exit code."""
        if self._process is None:
            raise LocalTritonError("the server is not running")
        return self._process.wait()

    # ---- internals ---------------------------------------------------------------------------

    def _prepare(self, install: TritonInstall) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="avserve-triton-"))
        assert self.tmp_dir is not None
        self.tmp_dir.mkdir()
        self.shadow = build_shadow_repository(self.source, self._workdir / "repository")
        if not self.shadow.models:
            raise LocalTritonError(
                f"{self.source}: no model can run on the local tritonserver ({self.shadow.skipped})"
            )
        backend_dir = self._workdir / "backends"
        _prepare_python_backend(install, backend_dir / "python")
        self.http_port, self.grpc_port, self.metrics_port = _resolve_ports(self._requested_ports, self.address)
        self.log_path = self._requested_log_file or self._workdir / "server.log"
        # Unique per server: two servers on one host must not share Python-backend shm regions.
        self._shm_prefix = f"avserve_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.command = [
            str(install.binary),
            f"--model-repository={self.shadow.path}",
            f"--backend-directory={backend_dir}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={SHM_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_BYTES}",
            f"--cache-directory={install.caches}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true",
            f"--exit-on-error={'true' if self.exit_on_error else 'false'}",
            "--strict-readiness=true",
            # Shorter than our own stop timeout, so Triton's graceful path normally wins.
            f"--exit-timeout-secs={max(1, int(self.stop_timeout / 2))}",
            f"--log-verbose={self.log_verbose}",
        ]

    def _launch(self, install: TritonInstall) -> None:
        assert self.log_path is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            log = stack.enter_context(open(self.log_path, "ab"))
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_environment(install, self.tmp_dir),
                cwd=self.tmp_dir,
                # Own process group: a terminal's Ctrl-C reaches us, not Triton, so shutdown
                # stays ordered; and stop() can kill Triton and its stubs together.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise self._failure(f"tritonserver exited with code {code} during start-up")
            status = _http_status(f"{self.http_url}/v2/health/ready")
            # The metrics service starts a few ms after HTTP: "ready" means every URL answers.
            if status == 200 and _http_status(self.metrics_url) == 200:
                return
            if status is not None and not self.exit_on_error:
                unavailable = self._unavailable_models()
                if unavailable:
                    raise self._failure(f"models failed to load: {unavailable}")
            if time.monotonic() > deadline:
                raise self._failure(f"tritonserver was not ready within {self.startup_timeout:.0f} s")
            if self._cancel is not None and self._cancel.is_set():
                raise LocalTritonError("start-up cancelled")
            time.sleep(0.1)

    def _unavailable_models(self) -> dict[str, str]:
        """With --exit-on-error=false a failed model leaves the server live but never ready."""
        request = urllib.request.Request(f"{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                index = json.loads(response.read())
        except (OSError, ValueError):
            return {}
        if any(entry.get("state") in ("LOADING", None) for entry in index):
            return {}
        return {entry["name"]: entry.get("reason", "") for entry in index if entry.get("state") == "UNAVAILABLE"}

    def _failure(self, message: str) -> LocalTritonError:
        tail = self.log_tail()
        return LocalTritonError(
            f"{message}\ncommand: {' '.join(self.command)}\n--- last lines of {self.log_path} ---\n{tail}"
        )


# ---- process and environment helpers ---------------------------------------------------------


def _prepare_python_backend(install: TritonInstall, python_dir: Path) -> None:
    """`--backend-directory`/python must hold the backend library, its utils and the stub.

    The wheel keeps stubs per Python version outside backends/python; Triton looks for
    `triton_python_backend_stub` next to libtriton_python.so, so the three are copied together.
    """
    python_dir.mkdir(parents=True)
    shutil.copy2(install.python_backend / "triton_python_backend_utils.py", python_dir)
    library = (install.python_backend / "libtriton_python.so").read_bytes()
    if library.count(PYTHON_ENV_TEMPLATE) == 1:
        library = library.replace(PYTHON_ENV_TEMPLATE, PYTHON_ENV_PRIVATE)
    else:  # another build of the backend: it still works, but may leave /tmp/python_env_* behind
        logger.warning("%s: python_env template not found; killed servers may leave /tmp/python_env_* dirs",
                       install.python_backend / "libtriton_python.so")  # fmt: skip
    (python_dir / "libtriton_python.so").write_bytes(library)
    shutil.copystat(install.python_backend / "libtriton_python.so", python_dir / "libtriton_python.so")
    shutil.copy2(install.stub, python_dir / install.stub.name)


def _server_environment(install: TritonInstall, tmp_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if tmp_dir is not None:  # the server's and its stubs' temp files stay in its own dir
        env.update(TMPDIR=str(tmp_dir), TMP=str(tmp_dir), TEMP=str(tmp_dir))
    # The stub runs `python3` from PATH: it must be this interpreter (the venv has numpy and
    # onnxruntime), not the system one.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The copied libraries lose their $ORIGIN-relative RPATH to nvidia_pytriton.libs, and the
    # stub must load the same libpython as this interpreter (LIBDIR), not a system one.
    library_dirs = [sysconfig.get_config_var("LIBDIR") or "", str(install.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in library_dirs if d)
    return env


def _http_status(url: str) -> int | None:
    """The HTTP status of GET `url`, or None while nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


def _resolve_ports(requested: tuple[int, int, int], address: str) -> tuple[int, int, int]:
    picked = iter(free_ports(sum(1 for port in requested if port == 0), address))
    http, grpc, metrics = (port if port != 0 else next(picked) for port in requested)
    return http, grpc, metrics
