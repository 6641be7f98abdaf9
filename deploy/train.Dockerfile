# syntax=docker/dockerfile:1
# The avserve trainer: the package with the [train] extra (torch wheels bundle CUDA and NCCL; the
# node's NVIDIA driver is all a GPU needs) and the training code, run by torchrun. What
# deploy/k8s/training/ runs. Build from the repository root:
#   docker build -f deploy/train.Dockerfile -t avserve-train .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md ./
COPY avserve ./avserve
COPY training ./training
RUN pip install -c requirements/constraints.txt ".[train]" \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin avserve

USER avserve
WORKDIR /tmp
# torchrun -m avserve.cli train ... (the Kubernetes manifests give the full command)
CMD ["avserve", "train", "--help"]
