"""Fixtures shared across test packages."""

from pathlib import Path

import pytest


# Modules holding the suite's longest tests (minutes of training, loops of SIGKILLed
# subprocesses), collected first. `make test` runs two xdist workers with --dist worksteal: each
# runs its half of the collection in order and, once done, takes tests still queued at the end of
# the other's. A test of several minutes met late in a half runs alone at the end while the other
# worker has nothing left to take; started first, the short tests fill in around it. Add a module
# here when one of its tests takes minutes.
RUN_FIRST = (
    "tests/training/test_learning.py",
    "tests/export/test_kill_export.py",
    "tests/training/test_kill_resume.py",
)


def pytest_collection_modifyitems(config, items):
    """The RUN_FIRST modules first, in that order; every other test keeps its place relative to
    the rest (a stable sort: modules stay together, so module fixtures are still set up once)."""
    rank = {module: index for index, module in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(RUN_FIRST)))


def _shared_root(tmp_path_factory, worker_id: str) -> Path:
    """The temp directory every xdist worker of this run sees (each worker's basetemp is a
    subdirectory of it); without xdist, the run's own basetemp."""
    return tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent


def _shared_export(tmp_path_factory, worker_id: str, preset: str, directory: str, seed: int = 1234, prepare=None):
    """Export a seeded, untrained `preset` (family = the preset name, the synthetic dataset's
    12 labels; `prepare(model)`, deterministic, changes its weights first if given) into
    `<shared tmp>/<directory>` once per test run, shared by the xdist workers
    (pytest-xdist's documented recipe: the first worker to take the lock exports, the others
    find the finished repository). Returns (repository_path, torch_model).

    Every worker builds the same model from the same seed, so the torch model returned is the
    one the repository holds whichever worker exported it. Untrained weights still give
    distinct, input-dependent answers, which is all serving tests need.
    """
    import torch
    from filelock import FileLock

    from training.data.synth import CLASS_NAMES
    from training.export import ExportOptions, export_model
    from training.models import create_model

    torch.manual_seed(seed)
    model = create_model(preset, num_classes=len(CLASS_NAMES)).eval()
    if prepare is not None:
        prepare(model)
    repository = _shared_root(tmp_path_factory, worker_id) / directory
    with FileLock(str(repository) + ".lock"):
        # export_model writes _av, _audio, then _video, each swapped in whole: the last one's
        # config means the whole export finished (a worker whose export failed leaves none).
        if not (repository / f"{preset}_video" / "config.pbtxt").is_file():
            export_model(model, CLASS_NAMES, repository, ExportOptions(family=preset, max_batch_size=16))
    return repository, model


@pytest.fixture(scope="session")
def zorro_repository(tmp_path_factory, worker_id):
    """A Triton model repository holding zorro_tiny_av, _audio and _video, exported by the real
    exporter from a seeded, untrained zorro_tiny (~5-15 s, once per test run).

    Returns (repository_path, torch_model).
    """
    return _shared_export(tmp_path_factory, worker_id, "zorro_tiny", "zorro_repository")


@pytest.fixture(scope="session")
def mbt_repository(tmp_path_factory, worker_id):
    """mbt_tiny_av, _audio and _video (MBT: one head, `cls`; unimodal graphs run one stream
    alone), exported like `zorro_repository` from a seeded, untrained mbt_tiny.

    Returns (repository_path, torch_model).
    """
    return _shared_export(tmp_path_factory, worker_id, "mbt_tiny", "mbt_repository")


@pytest.fixture(scope="session")
def vatt_repository(tmp_path_factory, worker_id):
    """vatt_tiny_av, _audio and _video (VATT: an audio and a video head on independent
    transformers, the audio+video answer their mean; unimodal graphs are `head` graphs), exported
    like `zorro_repository` from a seeded, untrained vatt_tiny.

    Returns (repository_path, torch_model).
    """
    return _shared_export(tmp_path_factory, worker_id, "vatt_tiny", "vatt_repository")


def rotate_pemt_sigmas(model, seed: int = 4321) -> None:
    """Every Sigma generator of a PEMT set to seeded N(0, 1) values: they start at 0 (Sigma = I),
    which would leave the exporter's frozen-Sigma path (export_module) untested."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name in model.orthogonal_parameter_names():
            parameters[name].copy_(torch.randn(parameters[name].shape, generator=generator))


@pytest.fixture(scope="session")
def pemt_repository(tmp_path_factory, worker_id):
    """pemt_tiny_av, _audio and _video (PEMT mid fusion: audio, video and fusion heads; the
    unimodal graphs are `head` graphs), exported like `zorro_repository` from a seeded, untrained
    pemt_tiny whose orthogonal Sigma matrices are random rotations (not the identity they start
    as), so the graphs hold the frozen Sigma of `PEMT.export_module()`.

    Returns (repository_path, torch_model).
    """
    return _shared_export(tmp_path_factory, worker_id, "pemt_tiny", "pemt_repository", prepare=rotate_pemt_sigmas)


@pytest.fixture(scope="session")
def avmae_separate_repository(tmp_path_factory, worker_id):
    """avmae_tiny_separate_av, _audio and _video (AV-MAE with separate encoders: an audio and a
    video head, the audio+video answer their mean; unimodal graphs are `head` graphs), exported
    like `zorro_repository` from a seeded, untrained avmae_tiny_separate.

    Returns (repository_path, torch_model).
    """
    return _shared_export(tmp_path_factory, worker_id, "avmae_tiny_separate", "avmae_separate_repository")


@pytest.fixture(scope="session")
def shared_dataset(tmp_path_factory, worker_id):
    """`shared_dataset(directory, clips=..., seed=..., config=None)`: the synthetic dataset
    `generate_dataset` writes for those arguments, in `<shared tmp>/<directory>`, generated once
    per test run and shared by the xdist workers like the exports above (a 240-clip set costs
    20-30 s to encode, and the tests that train on one may run on either worker). Returns the
    dataset directory.

    The generator is deterministic (same seed and config, same bytes: tests/data/test_synth.py),
    so the set is the one each worker would have written. Tests only read it: a test that
    changes files must copy it first. One directory name per set of arguments.
    """

    def make(directory: str, *, clips: int, seed: int, config=None) -> Path:
        from filelock import FileLock

        from training.data.synth import generate_dataset

        root = _shared_root(tmp_path_factory, worker_id) / directory
        # Marked complete beside the set, not in it (the set holds what generate_dataset wrote):
        # without the mark a worker failed part-way, and the set is written again over it.
        complete = root.with_name(directory + ".complete")
        with FileLock(str(root) + ".lock"):
            if not complete.is_file():
                generate_dataset(root, clips=clips, seed=seed, config=config, progress=False)
                complete.touch()
        return root

    return make
