"""Fixtures shared across test packages."""

import pytest


@pytest.fixture(scope="session")
def zorro_repository(tmp_path_factory, worker_id):
    """A Triton model repository holding zorro_tiny_av, _audio and _video, exported by the real
    exporter from a seeded, untrained zorro_tiny with the synthetic dataset's 12 labels.

    Returns (repository_path, torch_model). Untrained weights still give distinct,
    input-dependent answers, which is all serving tests need. The export (~5-15 s) is done
    once per test run and shared by the xdist workers (pytest-xdist's documented recipe).
    """
    import torch
    from filelock import FileLock

    from training.data.synth import CLASS_NAMES
    from training.export import ExportOptions, export_model
    from training.models import create_model

    torch.manual_seed(1234)
    model = create_model("zorro_tiny", num_classes=len(CLASS_NAMES)).eval()
    shared_root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    repository = shared_root / "zorro_repository"
    with FileLock(str(repository) + ".lock"):
        if not (repository / "zorro_tiny_av" / "config.pbtxt").is_file():
            export_model(model, CLASS_NAMES, repository, ExportOptions(family="zorro_tiny", max_batch_size=16))
    return repository, model
