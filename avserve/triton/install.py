"""Locate the `tritonserver` that the `nvidia-pytriton` wheel (the `[triton]` extra) ships.

The wheel bundles a real Triton (CPU, Python backend only) with its libraries under
hashed names. We only read files from it; nothing in site-packages is modified.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path


class LocalTritonError(Exception):
    """The local Triton could not be prepared, started or stopped."""


class TritonNotInstalledError(LocalTritonError):
    """The `[triton]` extra (nvidia-pytriton) is not installed, or lacks a needed file."""


@dataclass(frozen=True)
class TritonInstall:
    root: Path  # .../site-packages/pytriton/tritonserver
    binary: Path  # bin/tritonserver
    python_backend: Path  # backends/python: libtriton_python.so + triton_python_backend_utils.py
    stub: Path  # the Python-backend stub built for *this* interpreter's Python version
    libs: Path  # nvidia_pytriton.libs: the server's shared libraries
    caches: Path  # response-cache implementations (caches/local)

    def check(self) -> TritonInstall:
        for path in (self.binary, self.python_backend / "libtriton_python.so", self.stub, self.libs):
            if not path.exists():
                raise TritonNotInstalledError(f"incomplete nvidia-pytriton install: {path} is missing")
        return self


def find_triton() -> TritonInstall:
    """The bundled server, or `TritonNotInstalledError` naming the extra to install."""
    # find_spec locates the package without importing it (pytriton's import is heavy).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalledError(
            "tritonserver is not installed: install the [triton] extra (pip install 'avserve[triton]')"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return TritonInstall(
        root=root,
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=package.parent / "nvidia_pytriton.libs",
        caches=root / "caches",
    ).check()
