"""MBT: the Multimodal Bottleneck Transformer (Nagrani et al., NeurIPS 2021, arXiv:2107.00135v3).

Two ViT streams, spectrogram ("audio") and RGB frames ("video"), each with its own weights,
patch embedding, learned position embedding and CLS token (Eq. 1, 4). Layers below the
fusion layer L_f are unimodal (Sec. 3.3); from L_f on the streams exchange information by
one of the paper's fusion schemes:

  "bottleneck"       (Sec. 3.2.3, Eq. 8-9, the MBT proper): B shared bottleneck tokens join
                     each stream's layer input; each stream updates its own copy with its
                     own weights, and the next layer's bottleneck is the average of the copies.
  "cross_attention"  (Sec. 3.2.2, Eq. 5-6, "vanilla cross-attention"): each stream's queries
                     attend to the tokens of both streams, normalised and projected with the
                     querying stream's weights.

L_f = 0 is early fusion, 0 < L_f < depth mid fusion (paper: 8 of 12), L_f = depth late fusion
(no exchange; the footnote's "logits are only aggregated after the classifiers"). Both CLS
outputs go through one shared linear classifier and the pre-softmax logits are averaged
(Sec. 3.4), so the model has one head, "cls".

Note on bottlenecks: the first fused layer reads the *learned* bottleneck tokens, so
information first crosses at layer L_f + 1. With L_f = depth - 1 nothing crosses at all.

Missing modalities are not in the paper (its unimodal numbers come from separately trained
models; digest B1.6). Here the model runs on the present stream alone: the bottleneck
"average" is over the present streams (so one stream keeps its own copy) and the logits are
that stream's CLS logits. In a mixed batch, the per-clip `present` masks do the same clip by
clip, so a clip without video gets, bit for bit, what the audio-only call gives (tested).
A model trained on unimodal clips and with the trainer's `modality_dropout` therefore learns
exactly the function its unimodal graphs serve; without that training the unimodal route is
structurally defined but untrained, and the exporter says which one a model is.

Sources: shared/papers/zorro-mbt.md (digest, Part B) and the paper (Sec. 3, 4.2, App. A).
"""

from __future__ import annotations

import dataclasses

import torch
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
    PatchGrid,
    PatchTokens,
    PositionGrid,
    Presence,
    position_grid,
)
from .layers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LearnedPositionEmbedding,
    LogMelFrontend,
    PatchEmbed2d,
    PixelNormalizer,
    RandomTimeShift,
    SpecAugment,
    TransformerBlock,
    TubeletEmbed,
    init_vit_weights,
    masked_attention,
)
from .registry import register_model

CLS_HEAD = "cls"
STREAMS = (VIDEO, AUDIO)  # Eq. 4: z = [z_rgb || z_spec]
FUSIONS = ("bottleneck", "cross_attention")


@dataclasses.dataclass
class MBTConfig(PatchGrid, AVConfig):
    """MBT hyper-parameters. Defaults are the paper's final model (mbt_vit_b16, Sec. 4.4:
    "bottleneck fusion with t = 8, B = 4, F_l = 8 and modality mixup") on AudioSet."""

    # --- input (AVConfig fields) ---
    sample_rate: int = 16_000  # Sec. 4.2: audio "sampled at 16kHz", mono
    clip_seconds: float = 8.0  # Sec. 4.4: t = 8 s
    num_frames: int = 8  # Sec. 4.2: 8 RGB frames sampled uniformly over the window
    image_size: int = 224  # Sec. 4.2
    num_classes: int = 527  # AudioSet
    video_hflip_prob: float = 0.5  # Sec. 4.2: ViViT's "random crop, flip, colour jitter"; 0.5 not stated

    # --- log-mel front-end (Sec. 4.2, "similar to AST") ---
    n_mels: int = 128  # "128 mel bins"
    win_length: int = 400  # "25ms Hamming window" at 16 kHz
    hop_length: int = 160  # "hop length 10ms"
    n_fft: int = 400  # not in the paper: = win_length
    window: str = "hamming"
    f_min: float = 0.0  # not in the paper: torchaudio default
    f_max: float | None = None  # not in the paper: Nyquist
    log_eps: float = 1e-6  # not in the paper
    spectrogram_frames: int = 800  # "128 x 100t" for t = 8 s; crop drops the centring frame

    # --- pixels ---
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN  # see layers.IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    # --- ViT-B/16 per stream (Sec. 4.2 footnote; digest B1.3: width 768, MLP 3072) ---
    patch_size: int = 16  # "non-overlapping 16x16 patches" for frames and spectrogram
    # Frames per video token: 1 (Sec. 3.1, a 16x16 patch of one frame) or 2 to take the 2x16x16
    # tubelets of an AV-MAE encoder (AV-MAE Sec. 4.1: it finetunes audio-visually as an MBT).
    tubelet_frames: int = 1
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0

    # --- fusion (Sec. 3.2-3.3, 4.3) ---
    fusion: str = "bottleneck"  # one of FUSIONS
    fusion_layer: int = 8  # L_f: Fig. 3, best for bottlenecks; 0 = early, depth = late
    n_bottlenecks: int = 4  # B: Sec. 4.3, "B = 4" (4..1024 within 0.5 mAP)

    # --- regularisation (App. B3) ---
    # "stochastic depth 0.3"; rising linearly from 0 at the first layer to this at the last, as
    # Scenic's ViViT encoder (which MBT is built on) does: inferred, the paper gives one number.
    drop_path: float = 0.3
    specaug_time_width: int = 192  # Sec. 4.2: "max time mask length of 192 frames"
    specaug_freq_width: int = 48  # "max frequency mask length of 48 bins"
    specaug_time_masks: int = 1
    specaug_freq_masks: int = 1
    # Random circular time shift of the spectrogram in training (AV-MAE Tables 17-18, Epic-Kitchens
    # and AudioSet finetuning; not in MBT's own recipe).
    spec_time_shift: bool = False

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion {self.fusion!r} not in {FUSIONS}")
        if not 0 <= self.fusion_layer <= self.depth:
            raise ValueError(f"fusion_layer {self.fusion_layer} outside [0, depth={self.depth}]")
        if self.n_bottlenecks < 0:
            raise ValueError("n_bottlenecks must be >= 0")
        self.check_patch_grid()
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)

    @property
    def num_fused_layers(self) -> int:
        """Layers L_f .. depth-1 (digest B1.4: the formula, not the text's "L_f = 10: 3 layers")."""
        return self.depth - self.fusion_layer


class MBT(PatchTokens, AVClassifier):
    """MBT with bottleneck or vanilla cross-attention fusion from layer `fusion_layer`."""

    architecture = "mbt"
    unimodal_graphs = "stream"
    head_names = (CLS_HEAD,)
    encoder_block_pattern = r"^encoders\.\w+\.(\d+)\."
    embedding_prefixes = ("patch_embed.", "cls_token.", "pos_embed.", "bottleneck")
    head_prefixes = ("classifier.",)  # the one linear classifier shared by both CLS tokens (Sec. 3.4)

    def __init__(self, config: MBTConfig):
        super().__init__()
        self.config = cfg = config

        self.log_mel = LogMelFrontend.from_config(cfg)
        self.spec_augment = SpecAugment.from_config(cfg)
        self.time_shift = RandomTimeShift() if cfg.spec_time_shift else nn.Identity()
        self.pixel_norm = PixelNormalizer(cfg.pixel_mean, cfg.pixel_std)

        # Eq. 1 per modality: [z_cls, E x_1 .. E x_N] + p, with its own E, z_cls and p.
        self.patch_embed = nn.ModuleDict(
            {
                VIDEO: TubeletEmbed(3, cfg.dim, cfg.patch_size, cfg.tubelet_frames),
                AUDIO: PatchEmbed2d(1, cfg.dim, cfg.patch_size),
            }
        )
        self.cls_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, cfg.dim)) for m in STREAMS})
        self.pos_embed = nn.ModuleDict(
            {
                VIDEO: LearnedPositionEmbedding(cfg.num_video_patches + 1, cfg.dim),
                AUDIO: LearnedPositionEmbedding(cfg.num_audio_patches + 1, cfg.dim),
            }
        )

        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.encoders = nn.ModuleDict(
            {
                m: nn.ModuleList(TransformerBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, rate) for rate in rates)
                for m in STREAMS
            }
        )
        self.final_norm = nn.ModuleDict({m: nn.LayerNorm(cfg.dim, eps=1e-6) for m in STREAMS})
        self.classifier = nn.Linear(cfg.dim, cfg.num_classes)  # Sec. 3.4: "the same linear classifier"
        self.apply(init_vit_weights)

        if self.uses_bottlenecks:
            # Sec. 4.2: "initialized using a Gaussian with mean of 0 and standard deviation of 0.02"
            self.bottleneck = nn.Parameter(torch.empty(1, cfg.n_bottlenecks, cfg.dim))
            nn.init.normal_(self.bottleneck, std=0.02)

    @property
    def uses_bottlenecks(self) -> bool:
        cfg = self.config
        return cfg.fusion == "bottleneck" and cfg.fusion_layer < cfg.depth

    # --- interface ---------------------------------------------------------------------

    @property
    def servable_modalities(self) -> tuple[frozenset[str], ...]:
        return (AUDIO_VIDEO, AUDIO_ONLY, VIDEO_ONLY)

    def heads_for(self, modalities: frozenset[str]) -> tuple[str, ...]:
        self.servable(modalities)
        return self.head_names

    @property
    def feature_dim(self) -> int:
        return self.config.dim

    def forward_features(
        self, audio: Tensor | None = None, video: Tensor | None = None, present: Presence | None = None
    ) -> dict[str, Tensor]:
        """{stream: final CLS feature [B, dim]} for the streams given (not modality-pure after L_f)."""
        return self.encode_tokens(self.tokenize(audio, video), present).features

    def classify(self, features: dict[str, Tensor], present: Presence | None = None) -> dict[str, Tensor]:
        """Sec. 3.4: the shared classifier on each CLS, pre-softmax logits averaged (over present streams)."""
        per_stream = {m: self.classifier(f) for m, f in features.items()}
        return {CLS_HEAD: stream_average(per_stream, present)}

    # --- token level (base.py) ---------------------------------------------------------

    def tokenize(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        """Patch tokens with their positions (E x_i + p_i of Eq. 1, no CLS), video first (Eq. 4)."""
        self.present_modalities(audio, video)
        tokens: dict[str, Tensor] = {}
        if video is not None:
            tokens[VIDEO] = self.pos_embed[VIDEO](self.video_patches(video), start=1)
        if audio is not None:
            tokens[AUDIO] = self.pos_embed[AUDIO](self.audio_patches(audio), start=1)
        return tokens

    def encode_tokens(self, tokens: dict[str, Tensor], present: Presence | None = None, return_tokens: bool = False) -> Encoded:
        """Each stream's CLS joins its (possibly subsampled) tokens; features are the final CLS."""
        encoded = self.encode({m: self.prepend_cls(m, x) for m, x in tokens.items()}, present)
        features = {m: self.final_norm[m](x[:, 0]) for m, x in encoded.items()}
        return Encoded(features, {m: self.final_norm[m](x[:, 1:]) for m, x in encoded.items()} if return_tokens else None)

    def position_embeddings(self) -> dict[str, PositionGrid]:
        cfg = self.config
        return {
            "pos_embed.audio.embedding": position_grid(self.pos_embed[AUDIO], cfg.audio_patch_grid),
            "pos_embed.video.embedding": position_grid(self.pos_embed[VIDEO], cfg.video_patch_grid),
        }

    # --- stages ------------------------------------------------------------------------

    def audio_patches(self, audio: Tensor) -> Tensor:
        spectrogram = self.spec_augment(self.time_shift(self.log_mel(audio))).unsqueeze(1)  # [B, 1, T, n_mels]
        return self.patch_embed[AUDIO](spectrogram)

    def video_patches(self, video: Tensor) -> Tensor:
        return self.patch_embed[VIDEO](self.pixel_norm(video), video.shape[0])

    def prepend_cls(self, stream: str, tokens: Tensor) -> Tensor:
        """[z_cls + p_0, tokens...]: the stream's CLS token at position 0 before its tokens."""
        cls = self.pos_embed[stream](self.cls_token[stream]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def embed(self, stream: str, patches: Tensor) -> Tensor:
        """Eq. 1: [z_cls, E x_1 .. E x_N] + p for one stream's patch embeddings."""
        return self.prepend_cls(stream, self.pos_embed[stream](patches, start=1))

    def encode(self, tokens: dict[str, Tensor], present: Presence | None = None, num_layers: int | None = None) -> dict[str, Tensor]:
        """Runs the first `num_layers` (default: all) layers over the streams in `tokens`."""
        cfg = self.config
        bottleneck = None
        for index in range(cfg.depth if num_layers is None else num_layers):
            if index < cfg.fusion_layer:  # Sec. 3.3: unimodal layers, each stream on its own
                tokens = {m: self.encoders[m][index](x) for m, x in tokens.items()}
            elif cfg.fusion == "bottleneck":
                if bottleneck is None:
                    bottleneck = self.bottleneck.expand(next(iter(tokens.values())).shape[0], -1, -1)
                tokens, bottleneck, _ = self.bottleneck_layer(index, tokens, bottleneck, present)
            else:
                tokens = self.cross_attention_layer(index, tokens, present)
        return tokens

    def bottleneck_layer(
        self, index: int, tokens: dict[str, Tensor], bottleneck: Tensor, present: Presence | None = None
    ) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """Eq. 8-9: each stream runs its own layer on [its tokens || bottleneck]; the next bottleneck
        is the average of the streams' copies. Returns (tokens, bottleneck, per-stream copies)."""
        updated, copies = {}, {}
        for m, x in tokens.items():
            y = self.encoders[m][index](torch.cat([x, bottleneck], dim=1))
            updated[m], copies[m] = y.split([x.shape[1], bottleneck.shape[1]], dim=1)
        return updated, stream_average(copies, present), copies

    def cross_attention_layer(self, index: int, tokens: dict[str, Tensor], present: Presence | None = None) -> dict[str, Tensor]:
        """Eq. 5-6: y_i = z_i + MCA(LN_i(z_i), LN_i(z)) with stream i's weights; z = all tokens.
        In a mixed batch an absent stream's tokens are masked out of the keys."""
        order = list(tokens)
        sizes = [tokens[m].shape[1] for m in order]
        everything = torch.cat([tokens[m] for m in order], dim=1)
        attend = None
        if present is not None and len(order) > 1:
            keys = torch.cat([present[m].bool()[:, None].expand(-1, n) for m, n in zip(order, sizes)], dim=1)
            keys = keys | ~keys.any(dim=1, keepdim=True)  # a clip with nothing present: no all-masked row
            attend = keys[:, None, None, :]  # [B, heads=1, queries=1, keys]
        out = {}
        for m, own in zip(order, everything.split(sizes, dim=1)):
            block = self.encoders[m][index]
            q, k, v = block.attn.project_qkv(block.norm1(everything))
            start = sum(sizes[: order.index(m)])
            q = q[:, :, start : start + own.shape[1]]
            x = own + block.drop_path(block.attn.project_out(masked_attention(q, k, v, attend)))
            out[m] = x + block.drop_path(block.mlp(block.norm2(x)))
        return out


def stream_average(values: dict[str, Tensor], present: Presence | None = None) -> Tensor:
    """Mean over the streams of `values`; with `present`, each clip averages its present streams.

    Written so the cases agree bit for bit: both present gives (a + b) / 2 either way, and a clip
    with only stream a gives (1*a + 0*b) / 1 = a, which is what a single-stream call returns.
    """
    tensors = list(values.values())
    if len(tensors) == 1:
        return tensors[0]
    if present is None:
        total = tensors[0]
        for x in tensors[1:]:
            total = total + x
        return total / len(tensors)
    weights = [present[m].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) for m, x in values.items()]
    total, count = weights[0] * tensors[0], weights[0]
    for w, x in zip(weights[1:], tensors[1:]):
        total, count = total + w * x, count + w
    return total / count.clamp_min(1.0)


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


@register_model(MBT)
def mbt_vit_b16() -> MBTConfig:
    """The paper's MBT: ViT-B/16 per stream, bottleneck mid fusion L_f = 8, B = 4, t = 8 s."""
    return MBTConfig()


@register_model(MBT)
def mbt_vit_b16_early() -> MBTConfig:
    """Bottleneck early fusion (L_f = 0; Fig. 1 "Bottleneck Fusion")."""
    return MBTConfig(fusion_layer=0)


@register_model(MBT)
def mbt_vit_b16_late() -> MBTConfig:
    """Late fusion (L_f = 12): two independent ViTs, logits averaged (App. Table 9 baseline)."""
    return MBTConfig(fusion_layer=12)


@register_model(MBT)
def mbt_vit_b16_cross() -> MBTConfig:
    """Vanilla cross-attention mid fusion, at its best fusion layer L_f = 10 (Sec. 4.3)."""
    return MBTConfig(fusion="cross_attention", fusion_layer=10)


def _tiny(**changes) -> MBTConfig:
    """The synthetic-set size of zorro_tiny (same inputs, width, depth, heads), not from the paper."""
    base = MBTConfig(
        sample_rate=16_000,
        clip_seconds=2.0,
        num_frames=4,
        image_size=64,  # 4 x 4 patches per frame -> 64 video tokens + CLS
        num_classes=12,
        n_mels=64,
        spectrogram_frames=192,  # 2 s gives 201 centred frames; 192 = 12 x 4 patches -> 48 audio tokens + CLS
        dim=96,
        depth=4,
        num_heads=4,
        # L_f = 2 of 4: the paper's 8 of 12 rounds to 3, which leaves one fused layer and so no
        # exchange at all (the first fused layer reads the learned bottleneck; module docstring).
        fusion_layer=2,
        drop_path=0.1,  # the paper's 0.3 is for 86M-parameter streams on AudioSet; scaled down
        specaug_time_width=48,  # 192 of 800 frames (24 %), scaled to 192 frames
        specaug_freq_width=24,  # 48 of 128 bins, scaled to 64
    )
    return dataclasses.replace(base, **changes)


@register_model(MBT)
def mbt_tiny() -> MBTConfig:
    return _tiny()


@register_model(MBT)
def mbt_tiny_early() -> MBTConfig:
    return _tiny(fusion_layer=0)


@register_model(MBT)
def mbt_tiny_late() -> MBTConfig:
    return _tiny(fusion_layer=4)


@register_model(MBT)
def mbt_tiny_cross() -> MBTConfig:
    return _tiny(fusion="cross_attention", fusion_layer=2)


@register_model(MBT)
def mbt_avmae_vit_b16() -> MBTConfig:
    """The audio-visual finetuning model of AV-MAE (Sec. 4.1, Table 16): MBT with the AV-MAE
    encoder's 2x16x16 tubelets over 32 frames at 224^2 (the 16-frame pretrained positions are
    interpolated along time), 8-s audio, VGGSound's 309 classes; bottlenecks as in MBT."""
    return MBTConfig(num_frames=32, tubelet_frames=2, num_classes=309, spec_time_shift=False)


@register_model(MBT)
def mbt_avmae_tiny() -> MBTConfig:
    """mbt_tiny with 2-frame tubelets: what a pretrained avmae_tiny initialises by name."""
    return _tiny(tubelet_frames=2)
