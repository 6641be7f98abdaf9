"""PEMT: Parameter Efficient Multimodal Transformers (Lee et al., ICLR 2021, arXiv:2012.04124).

A clip of T seconds is T one-second units. Each unit goes through a CNN per modality and
becomes ONE D-dim embedding (Sec. 2, Table 3):

    f_V   SlowFast-R50: a slow pathway (every alpha-th frame, full width) and a fast one (every
          frame, 1/beta of the width) with time-strided lateral connections fast -> slow after
          pool1, res2, res3 and res4 (Feichtenhofer et al. 2019; not drawn in Table 3);
    f_A   ResNet-50 at half width without pool1, on the unit's 128-bin log-mel (128 x 220);

then global average pooling and a linear map to D: the paper does not say how the CNN outputs
(2048 + 256 and 1024 channels) become D = 768 wide; pooling + linear is our choice (digest
A.1.2). The unit embeddings x^v_{1:T}, x^a_{1:T} are contextualised by post-LN transformers
(L = 6, D = 768, 12 heads, E = 3072):

    mid (the paper's)  g_V, g_A on each modality, then h_AV on both sequences serialised:
                       u^m_t = LN(x^m_t + p^m_t)      BOS x^m_0, private time embeddings (Eq. 2)
                       w^m_t = LN(y^m_t + p_t + m_m)  shared time embedding, modality embedding (Eq. 3)
                       z = h_AV([w^v_{0:T}; w^a_{0:T}])
    early              h_AV alone (2L layers) on the CNN embeddings (Table 1a): needs both inputs
    late               g_V, g_A alone (2L layers each): no cross-modal layer at all

Parameter reduction (Sec. 2.2), `sharing`:
    none         every layer of every transformer its own weights (Multi-6: 127.6M)
    cross_layer  each transformer reuses one layer L times (ALBERT-style; 21.3M)
    all          one layer for every layer of every transformer (7.1M)
    part         (the paper's) cross-layer, and every weight W in {W_q, W_k, W_v, W_b, W_c, W_d}
                 factorised as W = U Sigma V^T with rank O = 128: U shared by the three
                 transformers, Sigma and V (and the biases and LayerNorms) private to each;
                 y = U Sigma normalize(V^T x) + b, Sigma = expm(A - A^T) orthogonal (3.86M).
The paper computes expm by Pade approximation with scaling and squaring; `torch.linalg.matrix_exp`
does the same. ONNX has no matrix exponential, so `export_module()` returns a copy whose Sigma
matrices are constants and each U Sigma is folded into one weight: the exported graph holds plain
matmuls with constant weights (and the normalisation between V^T and U Sigma).

Heads (Sec. 3.2: "a 2-layer MLP with softmax classifier"): "video" on BOS^v_g = y^v_0, "audio" on
BOS^a_g = y^a_0, and in early / mid fusion "fusion" on [BOS^v_h; BOS^a_h] = [z_0; z_{T+1}] (which
summaries the paper feeds is not stated: these are the natural ones, digest A.2.4). The
audio+video answer is the mean of the heads' logits, as for every model here. Mid and late
fusion serve audio-only (f_A -> g_A -> head) and video-only (f_V -> g_V -> head) graphs that are
exactly the audio+video graph's audio and video heads (`unimodal_graphs = "head"`).

Pretraining (MEP + CPP) is training/objectives/pemt_mep_cpp.py; it reaches the model through
`embed_units` (the CNN embeddings, MEP's targets) and `contextualise` (the transformers, on
embeddings the objective may have masked).

Sources: shared/papers/pemt-vatt-avmae.md part A (digest) and the paper (Sec. 2-3, App. A-B).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AUDIO, AUDIO_ONLY, AUDIO_VIDEO, VIDEO, VIDEO_ONLY, AVClassifier, AVConfig, PositionGrid, Presence
from .layers import LogMelFrontend, PixelNormalizer, SpecAugment
from .registry import register_model

FUSION = "fusion"  # the head on h_AV's two BOS outputs
MULTIMODAL = "multimodal"  # h_AV's name among the transformers
FUSIONS = ("early", "mid", "late")
SHARING_MODES = ("none", "cross_layer", "all", "part")
WEIGHT_KINDS = ("query", "key", "value", "out", "fc1", "fc2")  # W_q, W_k, W_v, W_b, W_c, W_d


@dataclasses.dataclass
class PEMTConfig(AVConfig):
    """PEMT hyper-parameters. Defaults: the paper's Multi-6-Part at Kinetics-Sounds finetuning
    input (10-s clips; App. A)."""

    # --- input (AVConfig fields) ---
    sample_rate: int = 44_100  # App. A.1: "44.1kHz"
    clip_seconds: float = 10.0  # Kinetics-Sounds clips (pretraining: 30 s on K700, 10 s on AudioSet)
    # App. A.1: T_s = 4, T_f = 32 per one-second unit (alpha = 8). A.2 says 16 frames are sampled
    # per unit, which cannot feed 32 fast frames; we follow A.1 (32 frames/s) and say so.
    num_frames: int = 320
    image_size: int = 112  # App. A.2: 112 x 112 crops
    num_classes: int = 32  # Kinetics-Sounds; replaced by the data
    video_hflip_prob: float = 0.5  # App. A.2: "random horizontal flip"

    unit_seconds: float = 1.0  # Sec. 2: "non-overlapping 1-second clips"

    # --- audio front-end (App. A.1: 128 x 220 log-mel per second at 44.1 kHz) ---
    n_mels: int = 128
    unit_spectrogram_frames: int = 220  # T_a = 220 per 1-s unit
    hop_length: int = 200  # 44100 / 220 = 200.45: not stated, the nearest whole hop
    win_length: int = 1024  # not stated
    n_fft: int = 1024  # not stated
    window: str = "hann"
    f_min: float = 0.0
    f_max: float | None = None
    log_eps: float = 1e-6
    # App. A.2: SpecAugment "random frequency and time masking"; widths not stated (MBT's
    # shares of the axes: 24 % of the frames, 3/8 of the bins)
    specaug_time_width: int = 52
    specaug_freq_width: int = 48
    specaug_time_masks: int = 1
    specaug_freq_masks: int = 1
    pixel_mean: tuple[float, float, float] = (0.45, 0.45, 0.45)  # SlowFast's Kinetics statistics
    pixel_std: tuple[float, float, float] = (0.225, 0.225, 0.225)

    # --- CNNs (Table 3) ---
    cnn_depths: tuple[int, int, int, int] = (3, 4, 6, 3)  # ResNet-50: res2..res5
    slow_width: int = 64  # slow conv1 channels; res stages 64 / 128 / 256 / 512 inner widths
    slowfast_alpha: int = 8  # speed ratio T_f / T_s
    slowfast_beta_inverse: int = 8  # channel ratio beta = 1/8: fast conv1 has 8 channels
    audio_width: int = 32  # audio conv1 channels: half a ResNet-50's 64

    # --- transformers (Sec. 3: L = 6, A = 12, D = 768, E = 3072) ---
    dim: int = 768
    depth: int = 6
    num_heads: int = 12
    mlp_dim: int = 3072
    fusion: str = "mid"
    sharing: str = "part"
    rank: int = 128  # O (Sec. 2.2)
    layer_norm_eps: float = 1e-12  # BERT's
    dropout: float = 0.1  # BERT's; not stated in the paper
    head_hidden: int = 768  # the 2-layer MLP head's hidden width: not stated, = D

    def __post_init__(self) -> None:
        self.cnn_depths = tuple(int(d) for d in self.cnn_depths)
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r} not in {FUSIONS}")
        if self.sharing not in SHARING_MODES:
            raise ValueError(f"sharing={self.sharing!r} not in {SHARING_MODES}")
        units = self.clip_seconds / self.unit_seconds
        if units < 1 or abs(units - round(units)) > 1e-6:
            raise ValueError(f"clip_seconds={self.clip_seconds} is not a whole number of {self.unit_seconds}-s units")
        if self.num_frames % self.num_units:
            raise ValueError(f"num_frames={self.num_frames} does not split into {self.num_units} units")
        if self.frames_per_unit % self.slowfast_alpha:
            raise ValueError(f"{self.frames_per_unit} frames per unit is not a multiple of alpha={self.slowfast_alpha}")
        if self.slow_width % self.slowfast_beta_inverse:
            raise ValueError(f"slow_width={self.slow_width} is not divisible by 1/beta={self.slowfast_beta_inverse}")
        if self.clip_samples % self.num_units:
            raise ValueError(f"{self.clip_samples} samples do not split into {self.num_units} units")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} not divisible by num_heads={self.num_heads}")

    @property
    def num_units(self) -> int:
        """T: one token per unit (plus a BOS) in each unimodal sequence."""
        return int(round(self.clip_seconds / self.unit_seconds))

    @property
    def frames_per_unit(self) -> int:
        return self.num_frames // self.num_units  # T_f

    @property
    def unit_samples(self) -> int:
        return self.clip_samples // self.num_units

    @property
    def transformer_depths(self) -> dict[str, int]:
        """Layers per transformer: mid L each; early and late 2L (Table 1a)."""
        if self.fusion == "mid":
            return {VIDEO: self.depth, AUDIO: self.depth, MULTIMODAL: self.depth}
        if self.fusion == "early":
            return {MULTIMODAL: 2 * self.depth}
        return {VIDEO: 2 * self.depth, AUDIO: 2 * self.depth}


# --------------------------------------------------------------------------------------
# CNN front-ends (Table 3)
# --------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """ResNet bottleneck, 2-D or 3-D: 1x1 (temporal kernel kt in 3-D) -> 3x3 (stride) -> 1x1,
    batch norm after each, projection shortcut where the shape changes."""

    def __init__(self, dims: int, in_channels: int, inner: int, out: int, stride: int, temporal_kernel: int = 1):
        super().__init__()
        conv, norm = (nn.Conv3d, nn.BatchNorm3d) if dims == 3 else (nn.Conv2d, nn.BatchNorm2d)
        if dims == 3:
            k1, p1 = (temporal_kernel, 1, 1), (temporal_kernel // 2, 0, 0)
            k2, s2, p2 = (1, 3, 3), (1, stride, stride), (0, 1, 1)
            s_short = (1, stride, stride)
        else:
            k1, p1, k2, s2, p2, s_short = 1, 0, 3, stride, 1, stride
        self.conv1, self.bn1 = conv(in_channels, inner, k1, padding=p1, bias=False), norm(inner)
        self.conv2, self.bn2 = conv(inner, inner, k2, stride=s2, padding=p2, bias=False), norm(inner)
        self.conv3, self.bn3 = conv(inner, out, 1, bias=False), norm(out)
        self.shortcut = None
        if in_channels != out or stride != 1:
            self.shortcut = nn.Sequential(conv(in_channels, out, 1, stride=s_short, bias=False), norm(out))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def res_stage(dims: int, in_channels: int, inner: int, blocks: int, stride: int, temporal_kernel: int = 1) -> nn.Sequential:
    out = 4 * inner
    return nn.Sequential(
        *(
            Bottleneck(dims, in_channels if i == 0 else out, inner, out, stride if i == 0 else 1, temporal_kernel)
            for i in range(blocks)
        )
    )


def _stem(dims_in: int, out: int, temporal_kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(dims_in, out, (temporal_kernel, 7, 7), stride=(1, 2, 2), padding=(temporal_kernel // 2, 3, 3), bias=False),
        nn.BatchNorm3d(out),
        nn.ReLU(inplace=True),
        nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    )


class SlowFastCNN(nn.Module):
    """f_V: SlowFast-R50 (Table 3) on one unit's frames [N, 3, T_f, H, W] -> [N, D].

    Slow: every alpha-th frame, temporal kernels 1 in conv1..res3 and 3 in res4-res5; fast: every
    frame, 1/beta of the channels, temporal kernels 5 in conv1 and 3 after. After pool1 and
    res2..res4 a 5x1x1 convolution with temporal stride alpha maps the fast features to 2x their
    channels and concatenates them to the slow ones (SlowFast's "time-strided convolution")."""

    def __init__(self, config: PEMTConfig):
        super().__init__()
        cfg = config
        self.alpha = cfg.slowfast_alpha
        slow, fast = cfg.slow_width, cfg.slow_width // cfg.slowfast_beta_inverse
        self.slow_stem, self.fast_stem = _stem(3, slow, 1), _stem(3, fast, 5)
        lateral = lambda ch: nn.Sequential(  # noqa: E731
            nn.Conv3d(ch, 2 * ch, (5, 1, 1), stride=(self.alpha, 1, 1), padding=(2, 0, 0), bias=False),
            nn.BatchNorm3d(2 * ch),
            nn.ReLU(inplace=True),
        )
        self.laterals = nn.ModuleList([lateral(fast)])
        self.slow_stages, self.fast_stages = nn.ModuleList(), nn.ModuleList()
        slow_in, fast_in = slow + 2 * fast, fast
        for index, blocks in enumerate(cfg.cnn_depths):
            stride = 1 if index == 0 else 2
            width = 2**index
            self.slow_stages.append(res_stage(3, slow_in, slow * width, blocks, stride, temporal_kernel=1 if index < 2 else 3))
            self.fast_stages.append(res_stage(3, fast_in, fast * width, blocks, stride, temporal_kernel=3))
            slow_out, fast_out = 4 * slow * width, 4 * fast * width
            if index < len(cfg.cnn_depths) - 1:
                self.laterals.append(lateral(fast_out))
                slow_in = slow_out + 2 * fast_out
            else:
                slow_in = slow_out
            fast_in = fast_out
        self.out_channels = slow_in + fast_in  # 2048 + 256
        self.proj = nn.Linear(self.out_channels, cfg.dim)

    def forward(self, frames: Tensor) -> Tensor:
        slow = self.slow_stem(frames[:, :, :: self.alpha])
        fast = self.fast_stem(frames)
        slow = torch.cat([slow, self.laterals[0](fast)], dim=1)
        for index, (slow_stage, fast_stage) in enumerate(zip(self.slow_stages, self.fast_stages, strict=True)):
            slow, fast = slow_stage(slow), fast_stage(fast)
            if index + 1 < len(self.laterals):
                slow = torch.cat([slow, self.laterals[index + 1](fast)], dim=1)
        pooled = torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)
        return self.proj(pooled)


class AudioResNet(nn.Module):
    """f_A: ResNet-50 at half width without pool1 (Table 3: conv1 9x9, 32, stride 1) on one
    unit's log-mel [N, 1, n_mels, frames] (frequency x time) -> [N, D]."""

    def __init__(self, config: PEMTConfig):
        super().__init__()
        width = config.audio_width
        self.stem = nn.Sequential(nn.Conv2d(1, width, 9, padding=4, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, channels = [], width
        for index, blocks in enumerate(config.cnn_depths):
            stages.append(res_stage(2, channels, width * 2**index, blocks, 1 if index == 0 else 2))
            channels = 4 * width * 2**index
        self.stages = nn.Sequential(*stages)
        self.out_channels = channels  # 1024
        self.proj = nn.Linear(channels, config.dim)

    def forward(self, spectrogram: Tensor) -> Tensor:
        return self.proj(self.stages(self.stem(spectrogram)).mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------
# Transformers with the paper's parameter sharing (Sec. 2.2)
# --------------------------------------------------------------------------------------


class OrthogonalMatrix(nn.Module):
    """Sigma = expm(A - A^T): orthogonal for any A (Lezcano-Casado & Martinez-Rubio 2019).
    A starts at 0 (Sigma = I). `freeze()` stores Sigma as a constant for export."""

    def __init__(self, size: int):
        super().__init__()
        self.generator = nn.Parameter(torch.zeros(size, size))
        self.frozen: Tensor | None = None

    def forward(self) -> Tensor:
        if self.frozen is not None:
            return self.frozen
        return torch.linalg.matrix_exp(self.generator - self.generator.T)

    @torch.no_grad()
    def freeze(self) -> None:
        self.frozen = self.forward().detach().clone()


class LowRankLinear(nn.Module):
    """y = U Sigma normalize(V^T x) + b (Sec. 2.2): `up` (U, an nn.Linear rank -> out without
    bias) is shared with the same weight of the other transformers; V^T (`down`), Sigma
    (`rotation`) and the bias are this transformer's."""

    def __init__(self, in_features: int, out_features: int, up: nn.Linear):
        super().__init__()
        rank = up.in_features
        if up.out_features != out_features:
            raise ValueError(f"shared U maps to {up.out_features}, this weight to {out_features}")
        self.up = up
        self.down = nn.Linear(in_features, rank, bias=False)
        self.rotation = OrthogonalMatrix(rank)
        self.bias = nn.Parameter(torch.zeros(out_features))
        # U Sigma as one constant, set by `fold()` in an export copy only (None, so never in a
        # trained model's state dict). Persistent: the ONNX exporter makes a state-dict tensor an
        # initializer, which int8 quantization needs; a non-persistent one becomes a Constant node.
        self.register_buffer("folded", None)

    def effective_weight(self) -> Tensor:
        """U Sigma: the (rank -> out) weight applied after the normalisation."""
        return self.folded if self.folded is not None else self.up.weight @ self.rotation()

    @torch.no_grad()
    def fold(self) -> None:
        """Store U Sigma as one weight. The ONNX exporter does not constant-fold a MatMul of two
        constants: without this the graph multiplies U by Sigma on every call, and int8
        quantization (which needs a constant weight) leaves those MatMuls in fp32."""
        self.folded = self.effective_weight().detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(self.down(x), dim=-1), self.effective_weight(), self.bias)


LinearFactory = Callable[[str, int, int], nn.Module]


class PostLNLayer(nn.Module):
    """BERT's layer (Sec. 2): x = LN(x + MHA(x)), x = LN(x + FFN(x)), GELU in the FFN (not
    stated; BERT's). Its six weights come from `linear(kind, in, out)`: dense or low-rank."""

    def __init__(self, config: PEMTConfig, linear: LinearFactory):
        super().__init__()
        d, e = config.dim, config.mlp_dim
        self.num_heads = config.num_heads
        self.query, self.key, self.value = linear("query", d, d), linear("key", d, d), linear("value", d, d)
        self.out = linear("out", d, d)
        self.fc1, self.fc2 = linear("fc1", d, e), linear("fc2", e, d)
        self.norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        heads = lambda t: t.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)))
        x = self.norm1(x + self.dropout(self.out(attended.transpose(1, 2).reshape(b, n, d))))
        return self.norm2(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


class SharedLayerTransformer(nn.Module):
    """`depth` layer applications over `layers` (depth of them, or one reused: cross-layer sharing)."""

    def __init__(self, layers: list[PostLNLayer], depth: int):
        super().__init__()
        if depth % len(layers):
            raise ValueError(f"{len(layers)} distinct layers cannot make {depth}")
        self.layers = nn.ModuleList(layers)
        self.depth = depth

    def forward(self, x: Tensor) -> Tensor:
        for index in range(self.depth):
            x = self.layers[index * len(self.layers) // self.depth](x)
        return x


def weight_shapes(config: PEMTConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each of a layer's six weights."""
    d, e = config.dim, config.mlp_dim
    return {"query": (d, d), "key": (d, d), "value": (d, d), "out": (d, d), "fc1": (d, e), "fc2": (e, d)}


def build_transformers(config: PEMTConfig, shared_bases: nn.ModuleDict | None) -> dict[str, SharedLayerTransformer]:
    """The fusion's transformers (`transformer_depths`) under `config.sharing`."""
    cfg = config
    dense: LinearFactory = lambda kind, i, o: nn.Linear(i, o)  # noqa: E731
    depths = cfg.transformer_depths
    if cfg.sharing == "none":
        return {name: SharedLayerTransformer([PostLNLayer(cfg, dense) for _ in range(depth)], depth) for name, depth in depths.items()}
    if cfg.sharing == "cross_layer":
        return {name: SharedLayerTransformer([PostLNLayer(cfg, dense)], depth) for name, depth in depths.items()}
    if cfg.sharing == "all":
        layer = PostLNLayer(cfg, dense)
        return {name: SharedLayerTransformer([layer], depth) for name, depth in depths.items()}
    assert shared_bases is not None
    low_rank: LinearFactory = lambda kind, i, o: LowRankLinear(i, o, shared_bases[kind])  # noqa: E731
    return {name: SharedLayerTransformer([PostLNLayer(cfg, low_rank)], depth) for name, depth in depths.items()}


# --------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------


class SequenceInput(nn.Module):
    """LN(x_t + p_t [+ m]) over [BOS; x_1..x_T] (Eq. 2 with `bos`, Eq. 3 with a modality embedding)."""

    def __init__(self, config: PEMTConfig, bos: bool):
        super().__init__()
        d = config.dim
        self.bos = nn.Parameter(torch.randn(1, 1, d) * 0.02) if bos else None
        self.time = nn.Parameter(torch.randn(1, config.num_units + 1, d) * 0.02)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, extra: Tensor | None = None) -> Tensor:
        if self.bos is not None:
            x = torch.cat([self.bos.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.time
        return self.norm(x if extra is None else x + extra)


class ClassifierMLP(nn.Sequential):
    """Sec. 3.2: "a 2-layer MLP with softmax classifier" (hidden width and GELU: ours)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int):
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_classes))


@dataclasses.dataclass
class Contextualised:
    """What the transformers give for a clip: each unimodal transformer's outputs [B, T+1, D]
    (BOS first) and h_AV's [B, 2T+2, D] (video BOS, video units, audio BOS, audio units)."""

    unimodal: dict[str, Tensor]
    multimodal: Tensor | None


class PEMT(AVClassifier):
    architecture = "pemt"
    unimodal_graphs = "head"
    head_prefixes = ("heads.",)
    embedding_prefixes = ("video_cnn.", "audio_cnn.", "inputs.", "log_mel.", "pixel_norm.")

    def __init__(self, config: PEMTConfig):
        super().__init__()
        self.config = cfg = config
        # U first, so the shared bases' parameter names are "low_rank_bases.*" (not a transformer's)
        if cfg.sharing == "part":
            shapes = weight_shapes(cfg)
            self.low_rank_bases = nn.ModuleDict({k: nn.Linear(cfg.rank, shapes[k][1], bias=False) for k in WEIGHT_KINDS})
        else:
            self.low_rank_bases = None
        self.log_mel = LogMelFrontend(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            num_frames=cfg.unit_spectrogram_frames,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            log_eps=cfg.log_eps,
            window=cfg.window,
        )
        self.spec_augment = SpecAugment(cfg.specaug_time_width, cfg.specaug_freq_width, cfg.specaug_time_masks, cfg.specaug_freq_masks)
        self.pixel_norm = PixelNormalizer(cfg.pixel_mean, cfg.pixel_std)
        self.video_cnn = SlowFastCNN(cfg)
        self.audio_cnn = AudioResNet(cfg)
        self.transformers = nn.ModuleDict(build_transformers(cfg, self.low_rank_bases))
        inputs: dict[str, nn.Module] = {}
        if cfg.fusion != "early":  # Eq. 2: the unimodal transformers' inputs
            inputs[VIDEO], inputs[AUDIO] = SequenceInput(cfg, bos=True), SequenceInput(cfg, bos=True)
        if cfg.fusion != "late":  # Eq. 3: h_AV's shared time embedding and LayerNorm, one per modality's BOS
            inputs[MULTIMODAL] = SequenceInput(cfg, bos=False)
            self.modality_embedding = nn.ParameterDict({m: nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02) for m in (VIDEO, AUDIO)})
            if cfg.fusion == "early":  # no g in front: h_AV's own BOS vectors
                self.early_bos = nn.ParameterDict({m: nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02) for m in (VIDEO, AUDIO)})
        self.inputs = nn.ModuleDict(inputs)
        head_widths = {VIDEO: cfg.dim, AUDIO: cfg.dim, FUSION: 2 * cfg.dim}
        self.heads = nn.ModuleDict({h: ClassifierMLP(head_widths[h], cfg.head_hidden, cfg.num_classes) for h in self.head_names})
        self._init_transformer_weights()

    def _init_transformer_weights(self) -> None:
        """BERT's N(0, 0.02) for every dense weight (the paper gives no initialisation). A
        factorised weight is different: normalize(V^T x) is a unit vector whatever V's scale, so
        V^T gets N(0, 1/in) (any scale would do) and U gets N(0, 1/rank), which makes each
        output coordinate of U Sigma normalize(V^T x) of variance 1/rank, independent of the
        input's size (our choice)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.low_rank_bases is not None:
            for module in self.modules():
                if isinstance(module, LowRankLinear):
                    nn.init.normal_(module.down.weight, std=1.0 / math.sqrt(module.down.in_features))
            for up in self.low_rank_bases.values():
                nn.init.normal_(up.weight, std=1.0 / math.sqrt(up.in_features))

    # --- interface ---------------------------------------------------------------------

    @property
    def head_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return {"mid": (AUDIO, VIDEO, FUSION), "early": (FUSION,), "late": (AUDIO, VIDEO)}[self.config.fusion]

    @property
    def servable_modalities(self) -> tuple[frozenset[str], ...]:
        if self.config.fusion == "early":
            return (AUDIO_VIDEO,)
        return (AUDIO_VIDEO, AUDIO_ONLY, VIDEO_ONLY)

    def heads_for(self, modalities: frozenset[str]) -> tuple[str, ...]:
        modalities = self.servable(modalities)
        if modalities == AUDIO_VIDEO:
            return self.head_names
        return tuple(h for h in self.head_names if h in modalities)

    @property
    def feature_dims(self) -> dict[str, int]:
        return {h: (2 if h == FUSION else 1) * self.config.dim for h in self.head_names}

    @property
    def feature_dim(self) -> int:
        return self.config.dim  # the unimodal summaries; "fusion" is [z_0; z_{T+1}], 2D wide

    @property
    def num_layer_ids(self) -> int:
        return 2  # one layer id for the front-ends, one for the rest: cross-layer sharing has no ladder

    def forward_features(
        self, audio: Tensor | None = None, video: Tensor | None = None, present: Presence | None = None
    ) -> dict[str, Tensor]:
        """{"video": y^v_0, "audio": y^a_0, "fusion": [z_0; z_{T+1}]}: the heads' inputs."""
        return self.summaries(self.contextualise(self.embed_units(audio, video, present)))

    def classify(self, features: dict[str, Tensor], present: Presence | None = None) -> dict[str, Tensor]:
        return {h: self.heads[h](features[h]) for h in self.head_names if h in features}

    # --- the parts the pretraining objective uses --------------------------------------

    def unit_spectrograms(self, audio: Tensor) -> Tensor:
        """PCM [B, samples] -> per-unit log-mel [B*T, 1, n_mels, frames] (SpecAugment in training)."""
        units = audio.to(torch.float32).reshape(-1, self.config.unit_samples)
        return self.spec_augment(self.log_mel(units)).transpose(1, 2).unsqueeze(1)

    def unit_frames(self, video: Tensor) -> Tensor:
        """RGB [B, frames, H, W, 3] -> per-unit normalised clips [B*T, 3, T_f, H, W]."""
        cfg = self.config
        frames = self.pixel_norm(video)  # [B*frames, 3, H, W]
        clips = frames.reshape(-1, cfg.frames_per_unit, *frames.shape[1:])
        return clips.transpose(1, 2)

    def embed_units(
        self, audio: Tensor | None = None, video: Tensor | None = None, present: Presence | None = None
    ) -> dict[str, Tensor]:
        """x^m_{1:T} = f_m(unit t) for each given modality: {modality: [B, T, D]}.

        In a mixed batch (`present`) only the clips that have a modality go through its CNN (so
        zero-filled stand-ins never reach batch-norm statistics); the others get zeros, which no
        head of theirs reads (heads_for)."""
        self.present_modalities(audio, video)
        units = self.config.num_units
        embedded = {}
        for modality, x, cnn, prepare in (
            (VIDEO, video, self.video_cnn, self.unit_frames),
            (AUDIO, audio, self.audio_cnn, self.unit_spectrograms),
        ):
            if x is None:
                continue
            rows = None if present is None else present[modality].to(x.device)
            if rows is None or bool(rows.all()):
                embedded[modality] = cnn(prepare(x)).reshape(x.shape[0], units, -1)
                continue
            out = x.new_zeros((x.shape[0], units, self.config.dim), dtype=torch.float32)
            if bool(rows.any()):
                out[rows] = cnn(prepare(x[rows])).reshape(int(rows.sum()), units, -1)
            embedded[modality] = out
        return embedded

    def contextualise(self, units: dict[str, Tensor]) -> Contextualised:
        """The transformers on unit embeddings (possibly masked by an objective)."""
        cfg = self.config
        unimodal: dict[str, Tensor] = {}
        if cfg.fusion != "early":
            for m, x in units.items():
                unimodal[m] = self.transformers[m](self.inputs[m](x))
        multimodal = None
        if cfg.fusion != "late" and VIDEO in units and AUDIO in units:
            multimodal = self.fuse(unimodal if cfg.fusion == "mid" else units)
        return Contextualised(unimodal, multimodal)

    def fuse(self, sequences: dict[str, Tensor]) -> Tensor:
        """h_AV on [w^v; w^a] (Eq. 3): mid fusion takes g's outputs [B, T+1, D] (BOS first), early
        fusion the CNN embeddings [B, T, D] (h_AV's own BOS vectors are put in front). Separate
        from `contextualise` so CPP can fuse mismatched (deranged) audio-visual pairs."""
        if self.config.fusion == "late":
            raise ValueError("late fusion has no multimodal transformer")
        if self.config.fusion == "early":
            sequences = {m: torch.cat([self.early_bos[m].expand(x.shape[0], -1, -1), x], dim=1) for m, x in sequences.items()}
        shared = self.inputs[MULTIMODAL]
        w = [shared(sequences[m], self.modality_embedding[m]) for m in (VIDEO, AUDIO)]
        return self.transformers[MULTIMODAL](torch.cat(w, dim=1))

    def summaries(self, context: Contextualised) -> dict[str, Tensor]:
        """The BOS outputs the heads read."""
        features = {m: y[:, 0] for m, y in context.unimodal.items()}
        if context.multimodal is not None:
            z = context.multimodal
            features[FUSION] = torch.cat([z[:, 0], z[:, self.config.num_units + 1]], dim=-1)
        return features

    # --- optimisation, fine-tuning, export -----------------------------------------------

    def orthogonal_parameter_names(self) -> list[str]:
        """Names of the Sigma generators (10x lower LR, App. A.4; recipe pattern '*rotation.generator')."""
        return [n for n, _ in self.named_parameters() if n.endswith("rotation.generator")]

    def orthogonal_matrices(self) -> list[Tensor]:
        return [m() for m in self.modules() if isinstance(m, OrthogonalMatrix)]

    def position_embeddings(self) -> dict[str, PositionGrid]:
        """The time embeddings over T units (plus the BOS slot), so a model pretrained on 30-s
        clips initialises one for 10-s clips (App. A). Cropped, not interpolated: each position
        is one second, so a 10-s clip takes the pretrained seconds 1..10 (interpolating would give
        its second t the embedding of second 3t)."""
        grid = PositionGrid((self.config.num_units,), prefix_tokens=1, resize="crop")
        return {f"inputs.{name}.time": grid for name in self.inputs}

    def export_module(self) -> PEMT:
        """A copy with every Sigma computed once and stored as a constant (ONNX has no matrix
        exponential), and each U Sigma product stored as one weight (`LowRankLinear.fold`): the
        exported graph holds plain matmuls with constant weights, as a dense layer's."""
        exported = copy.deepcopy(self).eval()
        for module in exported.modules():
            if isinstance(module, OrthogonalMatrix):
                module.freeze()
        for module in exported.modules():
            if isinstance(module, LowRankLinear):
                module.fold()
        return exported


# --------------------------------------------------------------------------------------
# Counting, as the paper counts (Sec. 3.1: Transformers only, CNNs excluded)
# --------------------------------------------------------------------------------------


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def transformer_parameters(config: PEMTConfig) -> int:
    """Parameters of the transformers (the layers; shared ones counted once, the shared U
    included), built on the meta device. Embeddings, BOS and heads are not counted."""
    with torch.device("meta"):
        model = PEMT(config)
    unique = {id(p): p for p in model.transformers.parameters()}
    return sum(p.numel() for p in unique.values())


def cnn_parameters(config: PEMTConfig) -> dict[str, int]:
    with torch.device("meta"):
        model = PEMT(config)
    return {VIDEO: count(model.video_cnn), AUDIO: count(model.audio_cnn)}


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


# Table 1c's Multi-6 rows and their transformer parameter counts (the paper's rounded figures)
PAPER_TRANSFORMER_PARAMS: dict[str, float] = {
    "pemt_multi6_none": 128e6,
    "pemt_multi6_cross_layer": 21e6,
    "pemt_multi6_all": 7e6,
    "pemt_multi6_part": 4e6,
    "pemt_multi2": 7e6,
}


@register_model(PEMT)
def pemt_multi6_part() -> PEMTConfig:
    """The paper's model: mid fusion, U shared across transformers, cross-layer (3.86M)."""
    return PEMTConfig(sharing="part")


@register_model(PEMT)
def pemt_multi6_all() -> PEMTConfig:
    """One dense layer for all 18 (7.1M)."""
    return PEMTConfig(sharing="all")


@register_model(PEMT)
def pemt_multi6_cross_layer() -> PEMTConfig:
    """Each transformer one dense layer applied 6 times (21.3M; Table 1a's "Mid")."""
    return PEMTConfig(sharing="cross_layer")


@register_model(PEMT)
def pemt_multi6_none() -> PEMTConfig:
    """No sharing (127.6M; "too large to fit in a Tesla V100 ... even with 2 samples")."""
    return PEMTConfig(sharing="none")


@register_model(PEMT)
def pemt_multi2() -> PEMTConfig:
    """Table 1c's first row: L = 2, D = 320, A = 5, E = 1280, no sharing (7.4M)."""
    return PEMTConfig(sharing="none", depth=2, dim=320, num_heads=5, mlp_dim=1280, head_hidden=320)


@register_model(PEMT)
def pemt_multi6_early() -> PEMTConfig:
    """Table 1a's early fusion: one 12-layer h_AV (cross-layer, as that ablation's rows)."""
    return PEMTConfig(fusion="early", sharing="cross_layer")


@register_model(PEMT)
def pemt_multi6_late() -> PEMTConfig:
    """Table 1a's late fusion: two 12-layer unimodal transformers, no h_AV."""
    return PEMTConfig(fusion="late", sharing="cross_layer")


def _tiny(**changes: Any) -> PEMTConfig:
    """The synthetic set's size (not from the paper): 2-s clips as four 0.5-s units (the
    paper's 1-s units would give T = 2, too short a sequence to mask and predict)."""
    base = PEMTConfig(
        sample_rate=16_000,
        clip_seconds=2.0,
        unit_seconds=0.5,
        num_frames=16,  # 4 frames per unit: fast 4, slow 1
        image_size=64,
        num_classes=12,
        n_mels=32,
        unit_spectrogram_frames=48,  # 8,000 samples / hop 160 -> 51 centred frames
        hop_length=160,
        win_length=400,
        n_fft=400,
        specaug_time_width=12,
        specaug_freq_width=12,
        cnn_depths=(1, 1, 1, 1),
        slow_width=8,
        slowfast_alpha=4,
        slowfast_beta_inverse=4,
        audio_width=8,
        dim=64,
        depth=2,
        num_heads=4,
        mlp_dim=256,
        rank=16,
        head_hidden=64,
        video_hflip_prob=0.0,
    )
    return dataclasses.replace(base, **changes)


@register_model(PEMT)
def pemt_tiny() -> PEMTConfig:
    return _tiny()
