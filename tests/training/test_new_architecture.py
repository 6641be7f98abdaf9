"""A sixth architecture, written and registered in this file alone, goes through every command's
code path: supervised training, evaluation, export to a Triton repository the gateway reads,
and masked pretraining through the token-level interface, then fine-tuning from it. No project
file knows about it: this is the contract of docs/architecture.md, "Adding an architecture".
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import Tensor, nn

from training.models import AUDIO, AUDIO_ONLY, AUDIO_VIDEO, VIDEO, VIDEO_ONLY, AVClassifier, AVConfig, register_model
from training.models.base import Encoded, PositionGrid, position_grid
from training.models.layers import LearnedPositionEmbedding, PixelNormalizer, patchify


@dataclasses.dataclass
class ToyConfig(AVConfig):
    clip_seconds: float = 0.5
    num_frames: int = 2
    image_size: int = 16
    dim: int = 16
    audio_frame: int = 400  # samples per audio token (25 ms at 16 kHz)
    patch_size: int = 8


class ToyAV(AVClassifier):
    """Per-modality token MLP encoders, mean-pooled, one linear head per modality (modality-pure,
    like Zorro's audio and video heads)."""

    architecture = "toy"
    unimodal_graphs = "head"
    head_names = (AUDIO, VIDEO)
    encoder_block_pattern = r"^encoder\.\w+\.(\d+)\."
    embedding_prefixes = ("embed.", "pos_embed.")

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = cfg = config
        side = cfg.image_size // cfg.patch_size
        self.pixel_norm = PixelNormalizer()
        self.embed = nn.ModuleDict({AUDIO: nn.Linear(cfg.audio_frame, cfg.dim), VIDEO: nn.Linear(3 * cfg.patch_size**2, cfg.dim)})
        self.pos_embed = nn.ModuleDict(
            {m: LearnedPositionEmbedding(n, cfg.dim) for m, n in self.token_counts.items()}
        )
        self.video_grid = (cfg.num_frames, side, side)
        self.encoder = nn.ModuleDict({m: nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU()) for m in (AUDIO, VIDEO)})
        self.heads = nn.ModuleDict({m: nn.Linear(cfg.dim, cfg.num_classes) for m in (AUDIO, VIDEO)})

    @property
    def servable_modalities(self):
        return (AUDIO_VIDEO, AUDIO_ONLY, VIDEO_ONLY)

    def heads_for(self, modalities):
        return tuple(m for m in self.head_names if m in self.servable(modalities))

    @property
    def feature_dim(self) -> int:
        return self.config.dim

    def forward_features(self, audio=None, video=None, present=None):
        return self.encode_tokens(self.tokenize(audio, video)).features

    def classify(self, features, present=None):
        return {m: self.heads[m](f) for m, f in features.items()}

    # the token level
    @property
    def token_counts(self):
        cfg = self.config
        return {AUDIO: cfg.clip_samples // cfg.audio_frame, VIDEO: cfg.num_frames * (cfg.image_size // cfg.patch_size) ** 2}

    @property
    def patch_dims(self):
        return {AUDIO: self.config.audio_frame, VIDEO: 3 * self.config.patch_size**2}

    def patch_targets(self, audio=None, video=None):
        cfg, targets = self.config, {}
        if audio is not None:
            targets[AUDIO] = audio[:, : self.token_counts[AUDIO] * cfg.audio_frame].reshape(audio.shape[0], -1, cfg.audio_frame)
        if video is not None:
            targets[VIDEO] = patchify(self.pixel_norm(video), cfg.patch_size).reshape(video.shape[0], -1, self.patch_dims[VIDEO])
        return targets

    def tokenize(self, audio=None, video=None):
        self.present_modalities(audio, video)
        return {m: self.pos_embed[m](self.embed[m](x)) for m, x in self.patch_targets(audio, video).items()}

    def encode_tokens(self, tokens, present=None, return_tokens=False):
        encoded = {m: self.encoder[m](x) for m, x in tokens.items()}
        return Encoded({m: x.mean(1) for m, x in encoded.items()}, encoded if return_tokens else None)

    def position_embeddings(self) -> dict[str, PositionGrid]:
        return {"pos_embed.video.embedding": position_grid(self.pos_embed[VIDEO], self.video_grid)}


@register_model(ToyAV)
def toy_sixth() -> ToyConfig:
    return ToyConfig()


def _train(tmp_path, synth_dir, name, **kw):
    from training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        model="toy_sixth", data=synth_dir, out=tmp_path / name, steps=3, batch_size=4, lr=1e-2,
        workers=0, progress=False, log_every=1, max_eval_clips=6, **kw,
    )  # fmt: skip
    Trainer(cfg).fit()
    return cfg.out


def test_a_sixth_architecture_trains_evaluates_and_exports(tmp_path, synth_dir):
    from avserve.repository import load_repository
    from training.evaluate import evaluate_run
    from training.export import ExportOptions, export_run

    run = _train(tmp_path, synth_dir, "supervised", modality_dropout=0.3)
    best = json.loads((run / "eval.json").read_text())["best"]
    assert set(best["heads"]) == {AUDIO, VIDEO} and best["num_clips"] == 6

    result = evaluate_run(run, synth_dir, split="test", route="audio")
    assert set(result["heads"]) == {AUDIO} and result["num_clips"] > 0

    exported = export_run(run, tmp_path / "repository", ExportOptions(family="toy"))
    assert {m.name for m in exported} == {"toy_av", "toy_audio", "toy_video"}
    assert all(m.max_abs_diff <= 1e-4 for m in exported)
    repository = load_repository(tmp_path / "repository")
    spec = repository.route("toy", frozenset({AUDIO}))
    assert spec.architecture == "toy" and spec.unimodal == "head" and spec.heads == (AUDIO,)
    assert spec.clip_samples == ToyConfig().clip_samples and spec.parameters["modality_dropout"] == "0.3"


def test_a_sixth_architecture_pretrains_masked_and_fine_tunes_from_it(tmp_path, synth_dir):
    from training.checkpoint import init_from, load_run
    from training.models import create_model

    pretrained = _train(tmp_path, synth_dir, "masked", objective="masked", objective_options={"mask_ratio_video": 0.5})
    best = json.loads((pretrained / "eval.json").read_text())["best"]
    assert best["reconstruction"] > 0 and set(best) >= {"reconstruction/audio", "reconstruction/video"}
    state = torch.load(pretrained / "best.pt", weights_only=False)
    assert set(state["modules"]) == {"decoder"}

    # a fine-tuning model with twice the frames: the video position embedding is interpolated
    model = create_model("toy_sixth", num_frames=4, num_classes=12)
    report = init_from(model, pretrained)
    assert report.resized == ["pos_embed.video.embedding: (1, 8, 16) -> (1, 16, 16)"]
    assert not report.mismatched and not report.unexpected
    source, _ = load_run(pretrained)
    old = source.pos_embed[VIDEO].embedding.detach().reshape(2, 2, 2, 16)
    new = model.pos_embed[VIDEO].embedding.detach().reshape(4, 2, 2, 16)
    # trilinear along time: the resized grid stays within the old values' range, frame by frame
    assert torch.all(new.amin(0) >= old.amin(0) - 1e-6) and torch.all(new.amax(0) <= old.amax(0) + 1e-6)
    assert not torch.equal(new[0], new[-1])
    for key, value in source.state_dict().items():
        if key != "pos_embed.video.embedding":
            assert torch.equal(model.state_dict()[key], value), key


def test_objectives_reject_what_they_cannot_train(tmp_path, synth_dir):
    from training.trainer import TrainError

    with pytest.raises(TrainError, match="mask_ratio_video must be in"):
        _train(tmp_path, synth_dir, "bad", objective="masked", objective_options={"mask_ratio_video": 1.0})
    with pytest.raises(TrainError, match="has no option.*decoder_width.*decoder_depth"):
        _train(tmp_path, synth_dir, "bad2", objective="masked", objective_options={"decoder_width": 8})
    with pytest.raises(TrainError, match="unknown objective 'nope'.*contrastive, masked, pemt_mep_cpp, supervised"):
        _train(tmp_path, synth_dir, "bad3", objective="nope")
    # each was refused before the run directory was made
    assert not any((tmp_path / n).exists() for n in ("bad", "bad2", "bad3"))
