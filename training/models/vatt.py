"""VATT: Video-Audio-Text Transformer (Akbari et al., NeurIPS 2021, arXiv:2104.11178).

Three transformers on raw signals, one per modality, with no cross-attention and no fusion
layer: the modalities meet only in the contrastive losses of pretraining
(training/objectives/vatt_nce.py). Per modality (Sec. 3.1-3.2):

  video   4x16x16 voxel (tubelet) patches of frames normalised to [-1, 1], a linear projection
          (a Conv3d with kernel = stride = patch), factorised learnable positions
          e_ijk = e_time,i + e_height,j + e_width,k (8 + 14 + 14 vectors at 32x224^2);
  audio   the raw waveform cut into 128-sample segments, a linear projection, learnable 1-D
          positions: no spectrogram, so this is the one graph in the repository that takes PCM
          straight into a matmul;
  text    (pretraining only, never served: `VATTTextEncoder`, a module of the objective) a
          2^16-word embedding, at most 16 words, no absolute positions but a learnable T5
          relative-position bias on the attention scores of the first layer;

then [x_AGG; tokens] through a pre-LN transformer (Small / Base / Medium / Large, Table 7) whose
AGG output is "the aggregated representation used for classification and common space mapping".
VATT-MA (modality-agnostic) shares one Medium backbone between the three modalities, each
keeping its own tokeniser and positions (Sec. 3.2).

Classification (not in the paper as an audio-visual model; digest B.1.5): VATT finetunes one
modality at a time, so here each modality has its own linear head on its AGG output ("audio",
"video"), and the audio+video answer is the mean of the two heads' logits: late fusion, our
choice. The heads are modality-pure by construction (`unimodal_graphs = "head"`): the audio
graph computes exactly the audio+video graph's audio head, and the audio backbone's output does
not depend on the video at all (tests/models/test_vatt.py).

DropToken (Sec. 3.1.1) is not in this module: the model never drops a token. The pretraining
objective drops a random 50 % of each clip's video and audio tokens through the token interface
(`tokenize`, a random subset, `encode_tokens`), after the positions are added, so kept tokens
keep their positions (the official code adds positions first, too). Finetuning and evaluation
see every token, as App. A.2.1 says.

Sources: shared/papers/pemt-vatt-avmae.md part B (digest) and the paper (Sec. 3, App. A.2).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    AUDIO,
    AUDIO_ONLY,
    AUDIO_VIDEO,
    VIDEO,
    VIDEO_ONLY,
    AVClassifier,
    AVConfig,
    Encoded,
    PositionGrid,
    Presence,
)
from .layers import PixelNormalizer, TransformerBlock, init_vit_weights
from .registry import register_model

TEXT = "text"  # the third modality: pretraining only, never a graph input


@dataclasses.dataclass(frozen=True)
class TransformerSize:
    depth: int
    dim: int
    mlp_dim: int
    heads: int


# Table 7 (App. A.2.2). "tiny" is ours: the synthetic set's size (zorro_tiny's width and depth).
BACKBONE_SIZES: dict[str, TransformerSize] = {
    "small": TransformerSize(depth=6, dim=512, mlp_dim=2048, heads=8),  # 20.9M
    "base": TransformerSize(depth=12, dim=768, mlp_dim=3072, heads=12),  # 87.9M
    "medium": TransformerSize(depth=12, dim=1024, mlp_dim=4096, heads=16),  # 155.0M
    "large": TransformerSize(depth=24, dim=1024, mlp_dim=4096, heads=16),  # 306.1M
    "tiny": TransformerSize(depth=4, dim=96, mlp_dim=384, heads=4),
    "tiny_text": TransformerSize(depth=2, dim=96, mlp_dim=384, heads=4),
}
# Table 7's parameter counts, for the tests and docs/models.md.
PAPER_BACKBONE_PARAMS: dict[str, float] = {"small": 20.9e6, "base": 87.9e6, "medium": 155.0e6, "large": 306.1e6}


@dataclasses.dataclass
class VATTConfig(AVConfig):
    """VATT hyper-parameters. Defaults are VATT-BBS at its pretraining input (App. A.2.1)."""

    # --- input (AVConfig fields) ---
    sample_rate: int = 48_000  # App. A.2.1: audio "sampled in sync at 48kHz"
    clip_seconds: float = 3.2  # 32 frames at 10 fps; 153,600 samples -> 1200 audio tokens
    num_frames: int = 32  # App. A.2.1: 32 frames at 10 fps
    image_size: int = 224  # pretraining; the paper finetunes video at 320 (8+20+20 buckets)
    num_classes: int = 527  # AudioSet (the audio finetuning set, Table 2); replaced by the data
    video_hflip_prob: float = 0.5  # App. A.2.1: "horizontal flip"; the probability is not stated

    # --- tokenisers (Sec. 3.1) ---
    video_patch: tuple[int, int, int] = (4, 16, 16)  # t x h x w voxels: "4x16x16"
    audio_patch_samples: int = 128  # t' = 128 (Table 10: the best of 128..1024)
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # App. A.2.1: video normalised to [-1, 1]
    pixel_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    vocab_size: int = 2**16  # Sec. 3.1: "the same as word2vec"
    max_words: int = 16  # Sec. 3.1: "clipping or padding" to 16 words
    text_relative_buckets: int = 32  # T5's defaults; the paper says only "T5-compatible"
    text_relative_max_distance: int = 128

    # --- backbones (Table 7; BBS = Base video, Base audio, Small text) ---
    video_backbone: str = "base"
    audio_backbone: str = "base"
    text_backbone: str = "small"
    # VATT-MA (Sec. 3.2): one backbone (video_backbone's size; the paper's is Medium) shared by
    # the three modalities. Each modality keeps its own tokeniser, positions and (not stated in
    # the paper, our choice) AGG token, so the shared weights are exactly the transformer's.
    modality_agnostic: bool = False
    drop_path: float = 0.0  # not in the paper (no stochastic depth is mentioned)

    # --- common spaces (Sec. 3.3, App. A.2.3; used by the pretraining objective) ---
    va_dim: int = 512  # d_va
    va_hidden: int = 512  # g_v->va's hidden width: not stated, = d_va
    vt_dim: int = 256  # d_vt
    drop_token_rate: float = 0.5  # Sec. 3.1.1 / 4.1: DropToken rate "in all pretraining"

    def __post_init__(self) -> None:
        self.video_patch = tuple(int(p) for p in self.video_patch)
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)
        for name in ("video_backbone", "audio_backbone", "text_backbone"):
            if getattr(self, name) not in BACKBONE_SIZES:
                raise ValueError(f"{name}={getattr(self, name)!r} not in {sorted(BACKBONE_SIZES)}")
        if self.modality_agnostic and len({self.video_backbone, self.audio_backbone, self.text_backbone}) != 1:
            raise ValueError("modality_agnostic shares one backbone: video_backbone, audio_backbone and text_backbone must be equal")
        pt, ph, pw = self.video_patch
        if self.num_frames % pt or self.image_size % ph or self.image_size % pw:
            raise ValueError(f"{self.num_frames}x{self.image_size}^2 frames are not a whole number of {self.video_patch} voxels")
        if not 0.0 <= self.drop_token_rate < 1.0:
            raise ValueError(f"drop_token_rate {self.drop_token_rate} outside [0, 1)")

    def size(self, modality: str) -> TransformerSize:
        return BACKBONE_SIZES[{VIDEO: self.video_backbone, AUDIO: self.audio_backbone, TEXT: self.text_backbone}[modality]]

    @property
    def video_grid(self) -> tuple[int, int, int]:
        """(time, height, width) buckets: 8 x 14 x 14 at 32 x 224^2."""
        pt, ph, pw = self.video_patch
        return self.num_frames // pt, self.image_size // ph, self.image_size // pw

    @property
    def num_video_tokens(self) -> int:
        return math.prod(self.video_grid)

    @property
    def num_audio_tokens(self) -> int:
        """ceil(T' / t'): the waveform is zero-padded to whole segments."""
        return -(-self.clip_samples // self.audio_patch_samples)

    @property
    def video_patch_dim(self) -> int:
        return 3 * math.prod(self.video_patch)  # 3072 at 4x16x16


# --------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------


class VATTBackbone(nn.Module):
    """Pre-LN transformer (Sec. 3.2: "LayerNorm before MHA and MLP", GeLU MLP) plus a final
    LayerNorm. `attention` (an additive float mask [B or 1, heads or 1, N, N], e.g. -inf on
    padded keys) applies to every layer; `first_layer_bias` (text's relative positions) is added
    in the first layer only."""

    def __init__(self, size: TransformerSize, drop_path: float = 0.0):
        super().__init__()
        rates = [drop_path * i / max(size.depth - 1, 1) for i in range(size.depth)]
        self.blocks = nn.ModuleList(TransformerBlock(size.dim, size.heads, size.mlp_dim / size.dim, r) for r in rates)
        self.norm = nn.LayerNorm(size.dim, eps=1e-6)

    def forward(self, x: Tensor, attention: Tensor | None = None, first_layer_bias: Tensor | None = None) -> Tensor:
        for index, block in enumerate(self.blocks):
            mask = attention
            if index == 0 and first_layer_bias is not None:
                mask = first_layer_bias if mask is None else first_layer_bias + mask
            x = block(x, mask)
        return self.norm(x)


class VoxelEmbedding(nn.Module):
    """RGB frames [B, T, H, W, 3] -> tubelet tokens [B, t*h*w, dim] (time-major) with factorised
    positions e_time,i + e_height,j + e_width,k added (Sec. 3.1)."""

    def __init__(self, config: VATTConfig, dim: int):
        super().__init__()
        self.normalize = PixelNormalizer(config.pixel_mean, config.pixel_std)
        self.proj = nn.Conv3d(3, dim, kernel_size=config.video_patch, stride=config.video_patch)
        time, height, width = config.video_grid
        self.pos_time = nn.Parameter(torch.empty(1, time, dim))
        self.pos_height = nn.Parameter(torch.empty(1, height, dim))
        self.pos_width = nn.Parameter(torch.empty(1, width, dim))
        for p in (self.pos_time, self.pos_height, self.pos_width):
            nn.init.trunc_normal_(p, std=0.02)

    def voxels(self, video: Tensor) -> Tensor:
        """Normalised frames as the Conv3d reads them: [B, 3, T, H, W]."""
        b, t = video.shape[:2]
        frames = self.normalize(video)  # [B*T, 3, H, W]
        return frames.reshape(b, t, *frames.shape[1:]).transpose(1, 2)

    def positions(self) -> Tensor:
        grid = self.pos_time[:, :, None, None] + self.pos_height[:, None, :, None] + self.pos_width[:, None, None, :]
        return grid.reshape(1, -1, grid.shape[-1])

    def forward(self, video: Tensor) -> Tensor:
        tokens = self.proj(self.voxels(video)).flatten(2).transpose(1, 2)
        return tokens + self.positions()


class WaveformEmbedding(nn.Module):
    """Mono PCM [B, samples] -> [B, ceil(samples / t'), dim]: each t'-sample segment projected
    linearly, plus a learnable 1-D position (Sec. 3.1)."""

    def __init__(self, config: VATTConfig, dim: int):
        super().__init__()
        self.segment = config.audio_patch_samples
        self.proj = nn.Linear(self.segment, dim)
        self.pos = nn.Parameter(torch.empty(1, config.num_audio_tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def segments(self, audio: Tensor) -> Tensor:
        pad = -audio.shape[1] % self.segment
        if pad:
            audio = F.pad(audio, (0, pad))
        return audio.reshape(audio.shape[0], -1, self.segment)

    def forward(self, audio: Tensor) -> Tensor:
        return self.proj(self.segments(audio.to(torch.float32))) + self.pos


def relative_position_bucket(relative: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bidirectional bucketing (Raffel et al. 2020): half the buckets per direction, exact
    for small distances, logarithmic up to max_distance."""
    num_buckets //= 2
    buckets = (relative > 0).long() * num_buckets
    distance = relative.abs()
    exact = num_buckets // 2
    is_small = distance < exact
    large = exact + (
        torch.log(distance.float().clamp_min(1) / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    ).long()
    large = large.clamp_max(num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class VATTTextEncoder(nn.Module):
    """The text tower (Sec. 3.1-3.2): word ids [B, max_words] (0 = padding) -> AGG output [B, dim].

    Pretraining only: it belongs to the objective (saved in its checkpoint slot, never exported).
    In VATT-MA it has no backbone of its own and runs the model's shared one (`backbone=`).
    """

    def __init__(self, config: VATTConfig, own_backbone: bool = True):
        super().__init__()
        size = config.size(TEXT)
        self.size = size
        self.buckets, self.max_distance = config.text_relative_buckets, config.text_relative_max_distance
        self.embedding = nn.Embedding(config.vocab_size, size.dim)  # W_tp: one-hot x W = a lookup
        self.agg_token = nn.Parameter(torch.zeros(1, 1, size.dim))
        self.relative_bias = nn.Embedding(self.buckets, size.heads)
        self.backbone = VATTBackbone(size) if own_backbone else None
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.trunc_normal_(self.agg_token, std=0.02)
        nn.init.zeros_(self.relative_bias.weight)
        if self.backbone is not None:
            self.backbone.apply(init_vit_weights)

    def embedding_parameters(self) -> int:
        """The 2^16 x d table, which the paper's counts leave out (digest B.1.3)."""
        return self.embedding.weight.numel()

    def forward(self, words: Tensor, backbone: VATTBackbone | None = None) -> Tensor:
        backbone = backbone if backbone is not None else self.backbone
        if backbone is None:
            raise ValueError("a modality-agnostic text encoder needs the model's shared backbone")
        b, n = words.shape
        x = torch.cat([self.agg_token.expand(b, -1, -1), self.embedding(words)], dim=1)
        positions = torch.arange(n + 1, device=words.device)
        bucket = relative_position_bucket(positions[None, :] - positions[:, None], self.buckets, self.max_distance)
        bias = self.relative_bias(bucket).permute(2, 0, 1).unsqueeze(0)  # [1, heads, N, N]
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=words.device), words != 0], dim=1)
        padding = torch.zeros(b, 1, 1, n + 1, device=words.device).masked_fill(~keep[:, None, None, :], float("-inf"))
        return backbone(x, attention=padding, first_layer_bias=bias)[:, 0]


def _linear_bn(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim))


class CommonSpaces(nn.Module):
    """The projection heads of Sec. 3.3 (App. A.2.3): g_v->va (two-layer, ReLU), g_a->va, g_v->vt
    and g_t->vt (linear), batch norm after each linear layer. Pretraining only: the vatt_nce
    objective owns them (training/objectives/vatt_nce.py), so they are never exported."""

    def __init__(self, config: VATTConfig):
        super().__init__()
        cfg = config
        self.video_to_va = nn.Sequential(
            _linear_bn(cfg.size(VIDEO).dim, cfg.va_hidden), nn.ReLU(), _linear_bn(cfg.va_hidden, cfg.va_dim)
        )
        self.audio_to_va = _linear_bn(cfg.size(AUDIO).dim, cfg.va_dim)
        self.va_to_vt = _linear_bn(cfg.va_dim, cfg.vt_dim)
        self.text_to_vt = _linear_bn(cfg.size(TEXT).dim, cfg.vt_dim)



# --------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------


class VATT(AVClassifier):
    """VATT's video and audio transformers (modality-specific or shared) with a linear head each."""

    architecture = "vatt"
    unimodal_graphs = "head"
    head_names = (AUDIO, VIDEO)
    head_prefixes = ("heads.",)
    encoder_block_pattern = r"^backbones\.\w+\.blocks\.(\d+)\."
    embedding_prefixes = ("tokenizers.", "agg_token.")

    def __init__(self, config: VATTConfig):
        super().__init__()
        self.config = cfg = config
        dims = {m: cfg.size(m).dim for m in (VIDEO, AUDIO)}
        self.tokenizers = nn.ModuleDict({VIDEO: VoxelEmbedding(cfg, dims[VIDEO]), AUDIO: WaveformEmbedding(cfg, dims[AUDIO])})
        self.agg_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, d)) for m, d in dims.items()})
        names = ("shared",) if cfg.modality_agnostic else (VIDEO, AUDIO)
        self.backbones = nn.ModuleDict({n: VATTBackbone(cfg.size(VIDEO if n == "shared" else n), cfg.drop_path) for n in names})
        self.heads = nn.ModuleDict({m: nn.Linear(dims[m], cfg.num_classes) for m in self.head_names})
        self.apply(init_vit_weights)
        for token in self.agg_token.values():
            nn.init.trunc_normal_(token, std=0.02)

    def backbone(self, modality: str) -> VATTBackbone:
        """The transformer `modality` runs through (text only in VATT-MA: it is the objective's otherwise)."""
        if self.config.modality_agnostic:
            return self.backbones["shared"]
        return self.backbones[modality]

    # --- interface ---------------------------------------------------------------------

    @property
    def servable_modalities(self) -> tuple[frozenset[str], ...]:
        return (AUDIO_VIDEO, AUDIO_ONLY, VIDEO_ONLY)

    def heads_for(self, modalities: frozenset[str]) -> tuple[str, ...]:
        modalities = self.servable(modalities)
        return tuple(h for h in self.head_names if h in modalities)

    @property
    def feature_dims(self) -> dict[str, int]:
        return {m: self.config.size(m).dim for m in (AUDIO, VIDEO)}

    @property
    def feature_dim(self) -> int:
        widths = set(self.feature_dims.values())
        if len(widths) != 1:
            raise ValueError(f"this VATT has per-modality widths {self.feature_dims}; use feature_dims")
        return widths.pop()

    @property
    def num_layer_ids(self) -> int:
        return max(self.config.size(m).depth for m in (AUDIO, VIDEO)) + 2

    def forward_features(
        self, audio: Tensor | None = None, video: Tensor | None = None, present: Presence | None = None
    ) -> dict[str, Tensor]:
        """{modality: AGG output [B, d_m]}; each modality's is a function of that modality alone."""
        return self.encode_tokens(self.tokenize(audio, video), present).features

    def classify(self, features: dict[str, Tensor], present: Presence | None = None) -> dict[str, Tensor]:
        return {m: self.heads[m](features[m]) for m in self.head_names if m in features}

    # --- token level (base.py) ---------------------------------------------------------

    def tokenize(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        """Projected patches with their positions (no AGG): what DropToken samples from."""
        self.present_modalities(audio, video)
        tokens = {}
        if video is not None:
            tokens[VIDEO] = self.tokenizers[VIDEO](video)
        if audio is not None:
            tokens[AUDIO] = self.tokenizers[AUDIO](audio)
        return tokens

    def encode_tokens(self, tokens: dict[str, Tensor], present: Presence | None = None, return_tokens: bool = False) -> Encoded:
        """[x_AGG; tokens] through each modality's backbone; the features are the AGG outputs."""
        features, encoded = {}, {}
        for m, x in tokens.items():
            out = self.backbone(m)(torch.cat([self.agg_token[m].expand(x.shape[0], -1, -1), x], dim=1))
            features[m], encoded[m] = out[:, 0], out[:, 1:]
        return Encoded(features, encoded if return_tokens else None)

    def patch_targets(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        """Raw waveform segments [B, N_a, 128] and normalised voxels [B, N_v, 3*4*16*16] (channel,
        time, row, column: the Conv3d's reading order), aligned with `tokenize`."""
        targets = {}
        if audio is not None:
            targets[AUDIO] = self.tokenizers[AUDIO].segments(audio.to(torch.float32))
        if video is not None:
            x = self.tokenizers[VIDEO].voxels(video)  # [B, 3, T, H, W]
            (pt, ph, pw), (t, h, w) = self.config.video_patch, self.config.video_grid
            x = x.reshape(x.shape[0], 3, t, pt, h, ph, w, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
            targets[VIDEO] = x.reshape(x.shape[0], t * h * w, -1)
        return targets

    @property
    def token_counts(self) -> dict[str, int]:
        return {AUDIO: self.config.num_audio_tokens, VIDEO: self.config.num_video_tokens}

    @property
    def patch_dims(self) -> dict[str, int]:
        return {AUDIO: self.config.audio_patch_samples, VIDEO: self.config.video_patch_dim}

    def position_embeddings(self) -> dict[str, PositionGrid]:
        """Each factor of the video positions is its own 1-D grid (8+14+14 -> 8+20+20 at 320^2,
        App. A.3.1; the paper interpolates bicubically, torch has no 1-D bicubic: linear), and
        the audio positions a 1-D grid over the segments."""
        time, height, width = self.config.video_grid
        return {
            "tokenizers.video.pos_time": PositionGrid((time,)),
            "tokenizers.video.pos_height": PositionGrid((height,)),
            "tokenizers.video.pos_width": PositionGrid((width,)),
            "tokenizers.audio.pos": PositionGrid((self.config.num_audio_tokens,)),
        }


# --------------------------------------------------------------------------------------
# Counting: parameters as Table 7 counts them, FLOPs as Tables 5-6 do
# --------------------------------------------------------------------------------------


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pretraining_parameter_counts(config: VATTConfig) -> dict[str, int]:
    """Built on the meta device: the served model without its classification heads (whose size
    depends on the label set), the text tower without its 2^16 x d embedding table (the paper's
    totals leave it out, digest B.1.3), and the common-space heads (vatt_nce's projections)."""
    with torch.device("meta"):
        model = VATT(config)
        text = VATTTextEncoder(config, own_backbone=not config.modality_agnostic)
        spaces = CommonSpaces(config)
    counts = {
        "backbones": count(model.backbones),
        "tokenizers": count(model.tokenizers) + count(model.agg_token),
        "text": count(text) - text.embedding_parameters(),
        "common_spaces": count(spaces),
    }
    counts["total"] = sum(counts.values())
    return counts


def paper_gflops(config: VATTConfig, drop_token_rate: float = 0.0, modalities: tuple[str, ...] = (VIDEO, AUDIO, TEXT)) -> float:
    """Forward GFLOPs of one clip under the paper's convention (digest B.4): 2 x the MACs of
    dense layers (the patch projections included) + 1 x the attention MACs (QK^T and AV).

    DropToken keeps round((1 - rate) * N) tokens of video and audio after their projection
    (Table 5's "multimodal GFLOPs" drop after projecting); text keeps its 16 words.
    """
    from .flops import dense_and_attention_flops

    with torch.device("meta"):
        model = VATT(config).eval()
        text = VATTTextEncoder(config, own_backbone=not config.modality_agnostic).eval()

    def run() -> None:
        inputs = {}
        if AUDIO in modalities:
            inputs[AUDIO] = torch.empty(1, config.clip_samples, device="meta")
        if VIDEO in modalities:
            s = config.image_size
            inputs[VIDEO] = torch.empty(1, config.num_frames, s, s, 3, dtype=torch.uint8, device="meta")
        if inputs:
            tokens = model.tokenize(**inputs)
            kept = {m: x[:, : round((1.0 - drop_token_rate) * x.shape[1])] for m, x in tokens.items()}
            model.encode_tokens(kept)
        if TEXT in modalities:
            shared = model.backbone(TEXT) if config.modality_agnostic else None
            text(torch.ones(1, config.max_words, dtype=torch.long, device="meta"), backbone=shared)

    dense, attention = dense_and_attention_flops(run)
    return (dense + attention / 2) / 1e9


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


@register_model(VATT)
def vatt_bbs() -> VATTConfig:
    """VATT-BBS: Base video, Base audio, Small text (197M, Sec. 4.2.1)."""
    return VATTConfig(video_backbone="base", audio_backbone="base", text_backbone="small")


@register_model(VATT)
def vatt_mbs() -> VATTConfig:
    """VATT-MBS: Medium video (264M; the DropToken study of Table 5)."""
    return VATTConfig(video_backbone="medium", audio_backbone="base", text_backbone="small")


@register_model(VATT)
def vatt_lbs() -> VATTConfig:
    """VATT-LBS: Large video (415M)."""
    return VATTConfig(video_backbone="large", audio_backbone="base", text_backbone="small")


@register_model(VATT)
def vatt_ma_medium() -> VATTConfig:
    """VATT-MA-Medium: one Medium backbone shared by video, audio and text (155M)."""
    return VATTConfig(video_backbone="medium", audio_backbone="medium", text_backbone="medium", modality_agnostic=True)


def _tiny(**changes: Any) -> VATTConfig:
    """The synthetic set's size (zorro_tiny's width and depth), not from the paper."""
    base = VATTConfig(
        sample_rate=16_000,
        clip_seconds=2.0,  # 32,000 samples -> 250 waveform tokens of 128 samples (8 ms each)
        num_frames=8,  # 2 tubelets of 4 frames in time
        image_size=64,  # 4 x 4 tubelets per frame group -> 2 x 4 x 4 = 32 video tokens
        num_classes=12,
        video_backbone="tiny",
        audio_backbone="tiny",
        text_backbone="tiny_text",
        vocab_size=2**16,  # the hashing tokenizer's buckets (training/data/text.py)
        va_dim=128,
        va_hidden=128,
        vt_dim=64,
    )
    return dataclasses.replace(base, **changes)


@register_model(VATT)
def vatt_tiny() -> VATTConfig:
    return _tiny()


@register_model(VATT)
def vatt_ma_tiny() -> VATTConfig:
    return _tiny(text_backbone="tiny", modality_agnostic=True)

