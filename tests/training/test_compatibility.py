"""Behaviour pinned across the objectives / contract refactor (issue 12).

tests/fixtures/legacy/ holds what the code before it (commit d863d7e) wrote: three small run
directories (checkpoint format 1) with their `avserve evaluate` results, and the outputs of
the exported graphs of a fixed seeded zorro_tiny and mbt_tiny. Those runs must still load,
evaluate, export and fine-tune, and today's exports must give the same numbers, bit for bit
(onnxruntime on this CPU; a different CPU family could pick other kernels).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"


def exported_outputs(model, exported) -> dict[str, np.ndarray]:
    """Every output of every exported graph on example_inputs(batch=3, seed=7), as the pins were made."""
    from training.export import example_inputs

    outputs = {}
    for entry in exported:
        session = ort.InferenceSession(str(entry.directory / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        inputs = example_inputs(model, names, batch=3, seed=7)
        values = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
        for output, value in zip(session.get_outputs(), values):
            outputs[f"{entry.name}/{output.name}"] = value
    return outputs


def assert_same_outputs(got: dict[str, np.ndarray], pins: str, family: str) -> None:
    """`got` holds exactly the pinned outputs of `family`'s graphs, each equal bit for bit."""
    pinned = np.load(LEGACY / pins)
    expected = {key: pinned[key] for key in pinned.files if key.startswith(f"{family}_")}
    assert expected and sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(got[key], value), (key, float(np.abs(got[key] - value).max()))


@pytest.mark.parametrize("preset", ["zorro_tiny", "mbt_tiny"])
def test_exported_graphs_of_a_seeded_model_are_unchanged(preset, request):
    """The run's shared export of `preset` (tests/conftest.py `_shared_export`: torch seed 1234,
    the synthetic set's labels, default export options) is the export the pins were made from
    (tests/fixtures/legacy/pin_graph_outputs.py): checked here instead of exporting it again."""
    from types import SimpleNamespace

    repository, model = request.getfixturevalue(f"{preset.removesuffix('_tiny')}_repository")
    models = sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    exported = [SimpleNamespace(name=p.name, directory=p) for p in models]
    assert_same_outputs(exported_outputs(model, exported), "graph_outputs.npz", preset)


@pytest.fixture(scope="module")
def legacy_data(tmp_path_factory) -> Path:
    """The dataset the legacy runs were trained and evaluated on (`avserve data synth --clips 24 --seed 0`)."""
    from training.data.synth import generate_dataset

    return Path(generate_dataset(tmp_path_factory.mktemp("legacy_synth"), clips=24, seed=0)).parent


@pytest.mark.parametrize("run", ["zorro_supervised", "mbt_supervised"])
def test_runs_trained_before_the_refactor_load_evaluate_and_export(run, legacy_data, tmp_path):
    from training.checkpoint import load_run
    from training.evaluate import evaluate_run
    from training.export import ExportOptions, export_run

    model, info = load_run(LEGACY / run)
    assert info.step == 2 and not model.training

    result = evaluate_run(LEGACY / run, legacy_data, split="test")
    before = json.loads((LEGACY / run / "evaluate_test.json").read_text())
    for key in ("num_clips", "heads", "average", "by_modalities"):
        assert result[key] == before[key], key

    family = {"zorro_supervised": "zorro_old", "mbt_supervised": "mbt_old"}[run]
    exported = export_run(LEGACY / run, tmp_path, ExportOptions(family=family))
    assert_same_outputs(exported_outputs(model, exported), "legacy_run_outputs.npz", family)


def test_a_contrastive_run_from_before_fine_tunes_and_its_projectors_resume(legacy_data, tmp_path):
    from training import checkpoint as ckpt
    from training.trainer import TrainConfig, Trainer

    legacy = torch.load(LEGACY / "zorro_contrastive" / "best.pt", weights_only=False)
    assert legacy["format_version"] == 1 and "modules" not in legacy
    assert set(ckpt.module_states(legacy)) == {"projectors"}  # format 1 slot, read as today's

    info = ckpt.read_run_info(LEGACY / "zorro_contrastive")
    cfg = TrainConfig(
        model="zorro_tiny", data=legacy_data, out=tmp_path / "ft", init_from=LEGACY / "zorro_contrastive",
        overrides=info.overrides, steps=1, batch_size=4, workers=0, progress=False, max_eval_clips=2,
    )  # fmt: skip
    trainer = Trainer(cfg)
    report = trainer.init_report
    assert len(report.loaded) == len(legacy["model"]) and not report.unexpected and not report.mismatched
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, legacy["model"][key]), key
    trainer.fit()

    # the projectors of a format-1 checkpoint load into today's contrastive objective
    from training.objectives import ObjectiveSetup, get_objective
    from training.optim import resolve_recipe

    setup = ObjectiveSetup(model=trainer.model, classes=info.classes, multilabel=False, recipe=resolve_recipe("contrastive"))
    objective = get_objective("contrastive")(setup)
    objective.projectors.load_state_dict(ckpt.module_states(legacy)["projectors"])


def test_evaluation_can_pick_frames_as_a_fast_sampling_gateway(legacy_data):
    """`frame_sampling="fast"` scores what a gateway with `sampling=fast` serves: on the synthetic set
    (a keyframe every second) some frames change, so the video route's scores do; audio's do not."""
    from training.evaluate import run_outputs

    run = LEGACY / "zorro_supervised"
    outputs = {
        (route, sampling): run_outputs(run, legacy_data, "test", route=route, frame_sampling=sampling)[2]
        for route in ("audio", "video") for sampling in ("exact", "fast")
    }  # fmt: skip
    np.testing.assert_array_equal(outputs["audio", "exact"].logits["logits"], outputs["audio", "fast"].logits["logits"])
    exact, fast = outputs["video", "exact"].logits["logits"], outputs["video", "fast"].logits["logits"]
    assert exact.shape == fast.shape and not np.allclose(exact, fast)
    with pytest.raises(ValueError, match="frame sampling"):
        run_outputs(run, legacy_data, "test", frame_sampling="keyframes")
