# syntax=docker/dockerfile:1
# The avserve gateway only: FastAPI + PyAV + the Triton gRPC client (+ onnxruntime for the
# embedded backend). No torch, no training code, no extras. Build from the repository root:
#   docker build -f deploy/gateway.Dockerfile -t avserve-gateway .
# (deploy/gateway.Dockerfile.dockerignore keeps the build context to what is copied below.)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Exact versions of every dependency; the package itself without extras (PyAV wheels bundle FFmpeg).
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md ./
COPY avserve ./avserve
RUN pip install -c requirements/constraints.txt . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin avserve

USER avserve
WORKDIR /tmp
ENV AVSERVE_BACKEND=triton \
    AVSERVE_TRITON_URL=triton:8001 \
    AVSERVE_LOG_FORMAT=json
# 8081: the metrics listener when AVSERVE_METRICS_PORT=8081 (docker-compose.yml sets it).
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["avserve", "serve", "--backend", "triton", "--host", "0.0.0.0", "--port", "8080"]
