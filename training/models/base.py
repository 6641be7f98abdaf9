"""The interface every audio-visual classifier in `training.models` implements.

The trainer, the objectives and the ONNX/Triton exporter are written against this contract
only, never against one architecture:

    model.config                  # dataclass deriving from AVConfig (fields below + clip_samples)
    model.head_names              # every output head, e.g. Zorro: ("audio", "video", "fusion", "global")
    model.servable_modalities     # the input sets a faithful graph exists for,
                                  # e.g. Zorro: {"audio","video"}, {"audio"}, {"video"}
    model.heads_for(modalities)   # heads computable from those inputs, Zorro audio-only -> ("audio",)
    model.feature_dim             # width of forward_features outputs
    model(audio=None, video=None, present=None) -> {head: logits [B, num_classes], ..., "logits": mean of those heads}
    model.forward_features(audio=None, video=None, present=None) -> {name: features [B, feature_dim]}
    model.classify(features, present=None) -> {head: logits}

Inputs (what the gateway sends, so train and serve see the same tensors):
    audio: float32 [B, config.clip_samples], mono PCM in [-1, 1] at config.sample_rate.
    video: uint8, or float32 in 0..255 (so mixup can blend frames),
           [B, config.num_frames, config.image_size, config.image_size, 3] RGB.
The audio front-end (log-mel) and pixel normalisation live inside the model, so they are part
of every exported graph (shared/DESIGN.md: train/serve skew impossible by construction).

A modality that is absent is passed as None, never zero-filled: a model computes only the
heads in `heads_for(present)`, and an input set outside `servable_modalities` raises.

Mixed batches (training, evaluation): a batch can hold clips that lack a modality (unimodal
files, modality dropout). The trainer then passes both inputs, zeros where a clip has none,
and `present = {"audio": bool [B], "video": bool [B]}`. The contract: for every clip, the
outputs of the heads in `heads_for(that clip's modalities)` must equal what the unimodal call
(the absent input passed as None) would give. Zorro needs nothing for that (its heads are
modality-pure; other heads are masked out of the loss); MBT uses it to leave an absent stream
out of its bottleneck average and its logit average.

Optional parts, implemented by an architecture when something needs them:

  Token level (`supports_tokens`; masked reconstruction, DropToken-style objectives):
    model.tokenize(audio=None, video=None) -> {modality: patch tokens [B, N_m, D], positions added}
    model.encode_tokens(tokens, present=None, return_tokens=False) -> Encoded
        the encoder on any subset of each modality's tokens (the objective gathers them), its
        features as forward_features would give them, and with return_tokens the encoded
        patch tokens [B, N_kept_m, D] in the order given
    model.patch_targets(audio=None, video=None) -> {modality: [B, N_m, patch_dim_m]}
        what each token covers, computed without training augmentation, aligned with tokenize
    model.token_counts, model.patch_dims     # N_m and patch_dim_m per modality
  forward_features is encode_tokens(tokenize(...)).features in the architectures that have
  both, so the two paths cannot drift apart.

  Optimisation (training/optim.py): `no_weight_decay()` names parameters kept out of weight
  decay besides norms, biases, position embeddings and learned tokens (the default rule);
  `layer_id(name)` / `num_layer_ids` place each parameter on the ladder layer-wise LR decay
  climbs (embeddings 0, encoder block i -> i + 1, everything after the encoder last).

  Fine-tuning (training/checkpoint.py `init_from`): `position_embeddings()` names the
  position-embedding parameters and their token grids, so a pretrained embedding of another
  grid (clip length, frame count, image size) is resized by interpolation, not skipped.

  Export (training/export.py): `export_module()` returns the module whose graph the exporter
  traces: the model itself by default; a copy computing the same function with the ops ONNX
  lacks replaced (PEMT: each orthogonal Sigma = expm(A - A^T) computed once, a constant). The
  exporter checks the ONNX graph against the model itself, not the copy.

  Training augmentation inside the model (SpecAugment, frequency jitter; any
  `layers.InputAugmentation`) can be switched off with `set_input_augmentation(False)`, so a
  reconstruction objective's targets and inputs are the clean signal.

  Linear probing (`avserve train --linear-probe`, VATT App. A.3 "linear evaluation"):
    model.head_prefixes       # ClassVar: state-dict name prefixes of the classifier head's
                              # parameters, i.e. what `classify` uses; everything else is "the
                              # backbone". Zorro: ("classifiers.",), MBT: ("classifier.",).
                              # Required for linear probing (empty: freeze_backbone refuses).
    model.freeze_backbone()   # requires_grad=False on every parameter outside head_prefixes
                              # (True on the head's); from then on the backbone stays in eval
                              # mode under model.train(): every submodule that holds no head
                              # parameter is put back in eval mode, so the backbone's dropout,
                              # stochastic depth, SpecAugment / frequency jitter and batch-norm
                              # statistics are off / frozen, as a probe on frozen features needs;
                              # the head's modules (and the modules containing them) follow the
                              # mode asked for.
    model.backbone_frozen     # whether freeze_backbone() was called
  The head is the linear map(s) on `forward_features`' output, so what a probe trains on is
  exactly the contract's features: for Zorro the decoder queries and the cross-attention decoder
  belong to the frozen backbone (they produce the features), only the per-head nn.Linear
  classifiers are trained (the paper-faithful "linear" classifier).
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from avserve.contract import (
    ANSWER_OUTPUT,
    AUDIO,
    AUDIO_ONLY,
    AUDIO_VIDEO,
    HEAD_OUTPUT_PREFIX,
    MODALITIES,
    VIDEO,
    VIDEO_ONLY,
    head_output,
)

from .layers import InputAugmentation, LearnedPositionEmbedding, patchify, patchify_tubelets, unpatchify_tubelets

__all__ = [
    "AUDIO",
    "AUDIO_ONLY",
    "AUDIO_VIDEO",
    "HEAD_OUTPUT_PREFIX",
    "LOGITS_KEY",
    "VIDEO",
    "VIDEO_ONLY",
    "AVClassifier",
    "AVConfig",
    "Encoded",
    "ModalityGraph",
    "PatchGrid",
    "PatchTokens",
    "PositionGrid",
    "Presence",
    "with_mean_logits",
]

LOGITS_KEY = ANSWER_OUTPUT  # forward()'s key for the head-averaged prediction = the answer output

# Per-clip presence of each modality in a mixed batch: {"audio": bool [B], "video": bool [B]}.
Presence = Mapping[str, Tensor]


@dataclasses.dataclass
class AVConfig:
    """Fields every architecture's config carries; the exporter writes them to config.pbtxt."""

    sample_rate: int = 16_000  # Hz of the mono PCM the model takes
    clip_seconds: float = 2.0  # audio (and video) span of one example
    num_frames: int = 4  # RGB frames per example
    image_size: int = 64  # frames are image_size x image_size
    num_classes: int = 12
    # Training-time horizontal flip of the frames (dataset side, not in the graph): MBT uses
    # ViViT's "random crop, flip, colour jitter"; Zorro App. B lists no flip.
    video_hflip_prob: float = 0.0

    @property
    def clip_samples(self) -> int:
        """Exact length of the audio input; round() because 6.4 * 48000 is 307199.99... in floats."""
        return int(round(self.sample_rate * self.clip_seconds))


@dataclasses.dataclass
class Encoded:
    """What `encode_tokens` returns."""

    features: dict[str, Tensor]  # as forward_features would give them for these tokens
    tokens: dict[str, Tensor] | None = None  # encoded patch tokens [B, N_kept_m, D], if asked for


@dataclasses.dataclass(frozen=True)
class PositionGrid:
    """A learned position embedding [1, prefix_tokens + prod(grid), D] laid out over a token grid
    (e.g. audio (time patches, frequency patches), video (frames, rows, columns)); `prefix_tokens`
    (a CLS token) are kept as they are when the grid is resized.

    `resize` says how a pretrained embedding of another grid is fitted (training/checkpoint.py):
    "interpolate" (patch grids: the same field of view cut finer or coarser) or "crop" (positions
    that are absolute units of time, such as PEMT's one token per second: a 30-s model's first 10
    seconds serve a 10-s clip, and a longer clip repeats the last position it has)."""

    grid: tuple[int, ...]
    prefix_tokens: int = 0
    resize: str = "interpolate"


class AVClassifier(nn.Module, abc.ABC):
    """Abstract base: see the module docstring for the contract."""

    config: AVConfig
    head_names: tuple[str, ...]
    # Paper family, written to the model repository so the gateway can tell models apart.
    architecture: ClassVar[str]
    # What a unimodal graph computes, written to the repository as the `unimodal` parameter:
    #   "head"    exactly the full model's head for that modality (Zorro: modality-pure heads);
    #   "stream"  the model run on that modality's stream alone, a different function from the
    #             audio+video answer, as good as the model's training on unimodal clips (MBT).
    unimodal_graphs: ClassVar[str]
    # Layer-wise LR decay: parameter names matching `encoder_block_pattern` (group 1 = the block
    # index) are encoder block i -> layer id i + 1; names starting with one of
    # `embedding_prefixes` are layer id 0; everything else sits after the encoder.
    encoder_block_pattern: ClassVar[str | None] = None
    embedding_prefixes: ClassVar[tuple[str, ...]] = ()
    # Linear probing: state-dict name prefixes of the classifier head's parameters (what
    # `classify` uses, what `freeze_backbone` leaves trainable); () = not declared.
    head_prefixes: ClassVar[tuple[str, ...]] = ()
    _backbone_frozen: bool = False  # set per instance by freeze_backbone()

    @property
    @abc.abstractmethod
    def servable_modalities(self) -> tuple[frozenset[str], ...]: ...

    @abc.abstractmethod
    def heads_for(self, modalities: frozenset[str]) -> tuple[str, ...]: ...

    @property
    @abc.abstractmethod
    def feature_dim(self) -> int: ...

    @abc.abstractmethod
    def forward_features(
        self, audio: Tensor | None = None, video: Tensor | None = None, present: Presence | None = None
    ) -> dict[str, Tensor]: ...

    @abc.abstractmethod
    def classify(self, features: dict[str, Tensor], present: Presence | None = None) -> dict[str, Tensor]:
        """Per-head classifier on forward_features' output: {head: logits}, no "logits" key."""

    def forward(
        self, audio: Tensor | None = None, video: Tensor | None = None, present: Presence | None = None
    ) -> dict[str, Tensor]:
        per_head = self.classify(self.forward_features(audio=audio, video=video, present=present), present)
        return with_mean_logits(per_head)

    # ---- optional: the token level ----------------------------------------------------------

    @property
    def supports_tokens(self) -> bool:
        return type(self).tokenize is not AVClassifier.tokenize

    def tokenize(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no token-level interface (training/models/base.py)")

    def encode_tokens(self, tokens: dict[str, Tensor], present: Presence | None = None, return_tokens: bool = False) -> Encoded:
        raise NotImplementedError(f"{type(self).__name__} has no token-level interface (training/models/base.py)")

    def patch_targets(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no token-level interface (training/models/base.py)")

    @property
    def token_counts(self) -> dict[str, int]:
        raise NotImplementedError(f"{type(self).__name__} has no token-level interface (training/models/base.py)")

    @property
    def patch_dims(self) -> dict[str, int]:
        raise NotImplementedError(f"{type(self).__name__} has no token-level interface (training/models/base.py)")

    # ---- optional: what the optimiser and fine-tuning need ----------------------------------

    def set_input_augmentation(self, enabled: bool) -> None:
        """Switch the model's own training augmentation (SpecAugment, frequency jitter) on or off."""
        for module in self.modules():
            if isinstance(module, InputAugmentation):
                module.enabled = enabled

    def no_weight_decay(self) -> set[str]:
        """Names of parameters to keep out of weight decay, besides the default rule
        (training/optim.py: only Linear / Conv / Embedding weights decay)."""
        return set()

    @property
    def num_layer_ids(self) -> int:
        """Layer ids run 0 (embeddings) .. num_layer_ids - 1 (after the encoder)."""
        return int(getattr(self.config, "depth", 0)) + 2

    def layer_id(self, name: str) -> int:
        if self.encoder_block_pattern is not None:
            match = re.search(self.encoder_block_pattern, name)
            if match:
                return int(match.group(1)) + 1
        if name.startswith(self.embedding_prefixes):
            return 0
        return self.num_layer_ids - 1

    def export_module(self) -> AVClassifier:
        """The module to trace for ONNX export (the same function); see the module docstring."""
        return self

    def position_embeddings(self) -> dict[str, PositionGrid]:
        """{state-dict name of a learned position embedding: its grid}; empty if none can be resized."""
        return {}

    # ---- optional: linear probing (frozen backbone) -----------------------------------------

    def is_head_parameter(self, name: str) -> bool:
        """Whether the state-dict name `name` belongs to the classifier head (`head_prefixes`)."""
        return bool(self.head_prefixes) and name.startswith(tuple(self.head_prefixes))

    def freeze_backbone(self) -> None:
        """Freeze every parameter outside `head_prefixes` (requires_grad=False; the head's are
        set trainable) and keep the backbone in eval mode from now on (see `train`)."""
        name = type(self).__name__
        if not self.head_prefixes:
            raise ValueError(
                f"{name} declares no head_prefixes (training/models/base.py): cannot tell its classifier head "
                "from its backbone, so it cannot be linear-probed"
            )
        names = [n for n, _ in self.named_parameters()]
        head = [n for n in names if self.is_head_parameter(n)]
        if not head:
            raise ValueError(f"{name}.head_prefixes {tuple(self.head_prefixes)} match no parameter of the model")
        if len(head) == len(names):
            raise ValueError(f"{name}.head_prefixes {tuple(self.head_prefixes)} match every parameter: no backbone to freeze")
        for n, parameter in self.named_parameters():
            parameter.requires_grad_(self.is_head_parameter(n))
        self._backbone_frozen = True
        self.train(self.training)  # re-apply the current mode: the backbone goes to eval now

    @property
    def backbone_frozen(self) -> bool:
        return self._backbone_frozen

    def train(self, mode: bool = True):
        """nn.Module.train; with a frozen backbone, every submodule that holds no head parameter
        is put back in eval mode (its dropout, stochastic depth, input augmentation and
        batch-norm statistics stay off), while the head's modules follow `mode`."""
        super().train(mode)
        if mode and self._backbone_frozen:
            owners = {""}  # modules holding a head parameter: each head parameter's ancestors
            for n, _ in self.named_parameters():
                if self.is_head_parameter(n):
                    parts = n.split(".")[:-1]
                    owners.update(".".join(parts[: i + 1]) for i in range(len(parts)))
            self._backbone_eval(self, "", owners)
        return self

    @staticmethod
    def _backbone_eval(module: nn.Module, prefix: str, owners: set[str]) -> None:
        for child_name, child in module.named_children():
            full = f"{prefix}{child_name}"
            if full in owners:
                AVClassifier._backbone_eval(child, f"{full}.", owners)
            else:
                child.eval()

    # ---- helpers shared by the architectures ------------------------------------------------

    def servable(self, modalities: frozenset[str] | set[str]) -> frozenset[str]:
        """`modalities` as a frozenset, or a ValueError naming the servable sets."""
        modalities = frozenset(modalities)
        if modalities not in self.servable_modalities:
            servable = [sorted(m) for m in self.servable_modalities]
            raise ValueError(f"{type(self).__name__} cannot run on inputs {sorted(modalities)}; servable: {servable}")
        return modalities

    def present_modalities(self, audio: Tensor | None, video: Tensor | None) -> frozenset[str]:
        """The input set of a call, checked against servable_modalities and the input shapes."""
        present = self.servable(frozenset(name for name, x in ((AUDIO, audio), (VIDEO, video)) if x is not None))
        cfg = self.config
        if audio is not None and (audio.dim() != 2 or audio.shape[1] != cfg.clip_samples):
            raise ValueError(f"audio must be [B, {cfg.clip_samples}] PCM, got {tuple(audio.shape)}")
        if video is not None:
            expected = (cfg.num_frames, cfg.image_size, cfg.image_size, 3)
            if video.dim() != 5 or tuple(video.shape[1:]) != expected:
                raise ValueError(f"video must be [B, {', '.join(map(str, expected))}], got {tuple(video.shape)}")
        if audio is not None and video is not None and audio.shape[0] != video.shape[0]:
            raise ValueError(f"batch sizes differ: audio {audio.shape[0]}, video {video.shape[0]}")
        return present


class PatchGrid:
    """Token counts and checks for ViT-style configs that cut the log-mel spectrogram
    [spectrogram_frames, n_mels] into non-overlapping patch_size x patch_size patches and the RGB
    frames into tubelet_frames x patch_size x patch_size tubelets (Zorro Fig. 2, MBT Sec. 3.1:
    one frame per patch; AV-MAE Sec. 4.1: 2 x 16 x 16). Mixed into a config dataclass that has
    those fields (tubelet_frames is optional: 1 when the config has no such field)."""

    tubelet_frames = 1

    def check_patch_grid(self) -> None:
        for name in ("spectrogram_frames", "n_mels", "image_size"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(f"{name}={getattr(self, name)} is not a multiple of patch_size={self.patch_size}")
        if self.tubelet_frames < 1 or self.num_frames % self.tubelet_frames:
            raise ValueError(f"num_frames={self.num_frames} is not a multiple of tubelet_frames={self.tubelet_frames}")

    @property
    def audio_patch_grid(self) -> tuple[int, int]:
        """(time patches, frequency patches): tokens are time-major, as PatchEmbed2d flattens."""
        return self.spectrogram_frames // self.patch_size, self.n_mels // self.patch_size

    @property
    def video_patch_grid(self) -> tuple[int, int, int]:
        """(tubelets along time, rows, columns)."""
        side = self.image_size // self.patch_size
        return self.num_frames // self.tubelet_frames, side, side

    @property
    def num_audio_patches(self) -> int:
        time, frequency = self.audio_patch_grid
        return time * frequency

    @property
    def num_video_patches(self) -> int:
        frames, rows, columns = self.video_patch_grid
        return frames * rows * columns

    @property
    def audio_patch_dim(self) -> int:
        return self.patch_size**2  # one log-mel channel

    @property
    def video_patch_dim(self) -> int:
        return 3 * self.tubelet_frames * self.patch_size**2  # RGB


class PatchTokens:
    """The token-level sizes and targets of a ViT-style classifier (Zorro, MBT, AV-MAE) whose config
    is a PatchGrid and which has `log_mel` (LogMelFrontend) and `pixel_norm` (PixelNormalizer):
    audio tokens are patch_size^2 log-mel patches (time-major), video tokens RGB tubelets
    (time-major; one frame each unless the config's tubelet_frames > 1). Mixed into the model class."""

    @property
    def token_counts(self) -> dict[str, int]:
        return {AUDIO: self.config.num_audio_patches, VIDEO: self.config.num_video_patches}

    @property
    def patch_dims(self) -> dict[str, int]:
        return {AUDIO: self.config.audio_patch_dim, VIDEO: self.config.video_patch_dim}

    @property
    def token_grids(self) -> dict[str, tuple[int, ...]]:
        """Each modality's token grid: audio (time, frequency), video (time, rows, columns)."""
        return {AUDIO: self.config.audio_patch_grid, VIDEO: self.config.video_patch_grid}

    def patch_targets(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        """The clean log-mel (no SpecAugment, no jitter) and normalised pixels under each token."""
        cfg = self.config
        targets = {}
        if audio is not None:
            targets[AUDIO] = patchify(self.log_mel(audio).unsqueeze(1), cfg.patch_size)
        if video is not None:
            frames = self.pixel_norm(video)  # [B*T, 3, H, W]
            voxels = frames.reshape(video.shape[0], -1, *frames.shape[1:]).transpose(1, 2)
            targets[VIDEO] = patchify_tubelets(voxels, cfg.tubelet_frames, cfg.patch_size)
        return targets

    def unpatchify(self, modality: str, patches: Tensor) -> Tensor:
        """patch_targets' inverse, for pictures: audio [B, N, p*p] -> log-mel [B, frames, n_mels];
        video [B, N, 3*t*p*p] -> normalised frames [B, T, 3, H, W]."""
        cfg = self.config
        if modality == AUDIO:
            time, frequency = cfg.audio_patch_grid
            grid = patches.reshape(patches.shape[0], time, frequency, cfg.patch_size, cfg.patch_size)
            return grid.permute(0, 1, 3, 2, 4).reshape(patches.shape[0], time * cfg.patch_size, frequency * cfg.patch_size)
        voxels = unpatchify_tubelets(patches, cfg.video_patch_grid, 3, cfg.tubelet_frames, cfg.patch_size)
        return voxels.transpose(1, 2)


def position_grid(embedding: LearnedPositionEmbedding, grid: tuple[int, ...]) -> PositionGrid:
    """The PositionGrid of `embedding` over `grid`; its extra leading tokens are prefix tokens."""
    tokens = 1
    for side in grid:
        tokens *= side
    return PositionGrid(grid=tuple(grid), prefix_tokens=embedding.embedding.shape[1] - tokens)


def with_mean_logits(per_head: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adds "logits" = mean of the heads' logits.

    Zorro (Sec. 3.1 / App. B) "average[s] its predictions" without saying whether logits or
    probabilities; we average logits because it keeps one tensor type for both softmax and
    sigmoid losses and exports as one op. A single head is returned as is (no averaging
    arithmetic), so a unimodal graph's "logits" is bit-identical to that head.
    """
    heads = list(per_head.values())
    mean = heads[0] if len(heads) == 1 else torch.stack(heads, dim=0).mean(dim=0)
    return {**per_head, LOGITS_KEY: mean}


class ModalityGraph(nn.Module):
    """Thin export wrapper: one servable input set -> the averaged logits and each head's logits.

    Positional inputs in the fixed order (audio, video), only those in `modalities`, because
    ONNX/Triton graphs have no optional inputs on batched models (shared/DESIGN.md).
    Outputs, in `output_names` order: "logits" [B, C] (mean over heads), then one
    "head_<name>" [B, C] per head in `head_names` order — the names the model repository
    contract (avserve/contract.py) gives them, so a Triton client can ask for any one head.
    """

    def __init__(self, model: AVClassifier, modalities: frozenset[str]):
        super().__init__()
        if frozenset(modalities) not in model.servable_modalities:
            raise ValueError(f"{sorted(modalities)} is not servable by {type(model).__name__}")
        self.model = model
        self.modalities = frozenset(modalities)
        self.input_names = tuple(m for m in MODALITIES if m in self.modalities)
        self.head_names = model.heads_for(self.modalities)
        self.output_names = (LOGITS_KEY, *(head_output(h) for h in self.head_names))

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        out = self.model(**dict(zip(self.input_names, inputs, strict=True)))
        return (out[LOGITS_KEY], *(out[h] for h in self.head_names))
