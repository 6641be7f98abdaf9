"""A real local Triton Inference Server for a model repository (the `[triton]` extra).

    with LocalTriton("model_repository", http_port=0, grpc_port=0, metrics_port=0) as triton:
        print(triton.http_url, triton.grpc_url, triton.metrics_url)

The `tritonserver` in the nvidia-pytriton wheel has only the Python backend, so the user's
repository (written for Triton's native ONNX Runtime backend) is served through a shadow
repository in a temp dir: same configs with `backend: "python"`, our onnxruntime `model.py`,
and symlinks to the untouched ONNX files and labels. `SupervisedTriton` (what `avserve triton`
runs) restarts the server with backoff when it dies.
"""

from .install import LocalTritonError, TritonInstall, TritonNotInstalledError, find_triton
from .server import LocalTriton, free_ports
from .shadow import ShadowRepository, build_shadow_repository, python_backend_config
from .supervisor import Backoff, RestartPolicy, SupervisedTriton, TritonGaveUp

__all__ = [
    "Backoff",
    "LocalTriton",
    "LocalTritonError",
    "RestartPolicy",
    "ShadowRepository",
    "SupervisedTriton",
    "TritonGaveUp",
    "TritonInstall",
    "TritonNotInstalledError",
    "build_shadow_repository",
    "find_triton",
    "free_ports",
    "python_backend_config",
]
