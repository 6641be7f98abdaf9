import numpy as np
import pytest
import torch

from training.checkpoint import BEST, RUN_FILE, RunInfo, save_checkpoint, write_json
from training.data.synth import CLASS_NAMES
from training.models import create_model


def make_run(run_dir, model_name="zorro_tiny", seed=0):
    """A run directory as the trainer writes it, with freshly initialised weights."""
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=len(CLASS_NAMES))
    run_dir.mkdir(parents=True)
    write_json(run_dir / RUN_FILE, RunInfo(model=model_name, overrides={}, classes=list(CLASS_NAMES), multilabel=False).to_dict())
    save_checkpoint(run_dir / BEST, {"model": model.state_dict(), "step": 1})
    return model.eval()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "zorro_tiny"
    model = make_run(run_dir)
    return run_dir, model


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
    from training.export import ExportOptions, export_run

    repository = tmp_path_factory.mktemp("repository")
    models = export_run(tiny_run[0], repository, ExportOptions(family="zorro_tiny"))
    return repository, {m.name: m for m in models}


@pytest.fixture(scope="session")
def small_synth(shared_dataset):
    """12 real encoded synthetic clips (seed 3), written once per run (tests/conftest.py)."""
    return shared_dataset("export_synth", clips=12, seed=3)


@pytest.fixture(scope="session")
def real_clips(small_synth):
    """Decoded inputs of real encoded synthetic clips, exactly as the gateway will send them."""
    from avserve.media import decode_audio, decode_video
    from training.models import get_model_config

    cfg = get_model_config("zorro_tiny")
    root = small_synth
    manifest = root / "manifest.csv"
    import csv

    rows = [r for r in csv.DictReader(manifest.open()) if r["modalities"] == "audio+video"][:4]
    audio = np.stack(
        [decode_audio(root / r["path"], sample_rate=cfg.sample_rate, duration=cfg.clip_seconds).samples for r in rows]
    )
    video = np.stack(
        [decode_video(root / r["path"], num_frames=cfg.num_frames, size=cfg.image_size).frames for r in rows]
    )
    return audio.astype(np.float32), video
