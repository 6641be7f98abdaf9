"""Zorro-ViT: the masked multimodal transformer (Recasens et al., arXiv:2301.09595v2).

One ViT over [audio tokens | fusion tokens | video tokens] (Fig. 2 order). Masked
self-attention in every layer keeps the audio and video streams modality-pure (audio attends
to audio only, video to video only; the n_fusion=6 learned fusion tokens attend to all).
Four learned queries decode the result by masked cross-attention (Perceiver IO style):
audio -> audio tokens, video -> video tokens, fusion -> fusion tokens, global -> all tokens;
each feeds its own linear classifier, and the prediction is the mean of the heads.

Because of the masks, the audio head of the full model is a function of the audio alone, so
an audio-only call builds only the audio tokens and the audio head (likewise for video), and
gives bit-identically the full model's audio (video) head: see GroupedTransformerLayer.

Sources: shared/papers/zorro-mbt.md (digest, sections A1.x) and the paper (Sec. 3, App. A, B).
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
    CrossAttentionBlock,
    FrequencyJitter,
    GroupedTransformerLayer,
    LearnedPositionEmbedding,
    LogMelFrontend,
    PatchEmbed2d,
    PixelNormalizer,
    SpecAugment,
    init_vit_weights,
)
from .registry import register_model

FUSION = "fusion"
GLOBAL = "global"
SEQUENCE_ORDER = (AUDIO, FUSION, VIDEO)  # Fig. 2 draws Audio | Fusion | Video

# Self-attention mask tables: query group -> key/value groups it may attend to.
# "zorro" is Sec. 3.1 read by its stated intent (digest A1.4: no fusion -> unimodal flow);
# the ablations are Sec. 4.5 / Table 3 in the same form (digest A1.4 "Masking ablations").
SELF_ATTENTION_MASKS: dict[str, dict[str, frozenset[str]]] = {
    "zorro": {
        AUDIO: frozenset({AUDIO}),
        VIDEO: frozenset({VIDEO}),
        FUSION: frozenset({AUDIO, VIDEO, FUSION}),
    },
    # Shared weights, no connection between modalities, no fusion stream.
    "two_streams": {AUDIO: frozenset({AUDIO}), VIDEO: frozenset({VIDEO})},
    # "Vanilla ViT on concatenated modalities": no mask at all.
    "input_level": {g: frozenset({AUDIO, VIDEO, FUSION}) for g in (AUDIO, VIDEO, FUSION)},
    # MBT-inspired: unimodal tokens also read the fusion tokens, so information leaks across.
    "bottleneck": {
        AUDIO: frozenset({AUDIO, FUSION}),
        VIDEO: frozenset({VIDEO, FUSION}),
        FUSION: frozenset({AUDIO, VIDEO, FUSION}),
    },
}

# Decoding cross-attention mask (Sec. 3.1 "Output space"; digest A1.4): head -> token groups.
DECODER_MASKS: dict[str, dict[str, frozenset[str]]] = {
    "with_fusion": {
        AUDIO: frozenset({AUDIO}),
        VIDEO: frozenset({VIDEO}),
        FUSION: frozenset({FUSION}),
        GLOBAL: frozenset({AUDIO, VIDEO, FUSION}),
    },
    "two_streams": {AUDIO: frozenset({AUDIO}), VIDEO: frozenset({VIDEO})},  # Table 3: 2 outputs
}

# Masks under which the audio/video streams never see the other modality, so unimodal
# graphs are exact. Under input_level / bottleneck they are not, and only A+V is servable.
PURE_MASKS = frozenset({"zorro", "two_streams"})


@dataclasses.dataclass
class ZorroConfig(PatchGrid, AVConfig):
    """Zorro-ViT hyper-parameters. Defaults are the paper's ViT-B/16 (zorro_vit_b16)."""

    # --- input (AVConfig fields, paper values) ---
    sample_rate: int = 48_000  # App. B: "Audio is sampled at 48kHz"
    clip_seconds: float = 6.4  # App. B: 6.4 s for YT8M/ACAV/VGGSound; Fig. 2 spectrogram 640 x 128
    num_frames: int = 8  # Fig. 2: "Input video: 8x224x224x3"
    image_size: int = 224  # Fig. 2
    num_classes: int = 527  # Fig. 2 heads "1 x 527" (AudioSet)

    # --- log-mel front-end ---
    n_mels: int = 128  # App. B: "Log-Mel spectrogram with 128 bins"
    win_length: int = 1200  # App. B: "Hanning windows of length 1200 samples" (25 ms)
    hop_length: int = 480  # App. B: "stride 480" (10 ms -> 100 frames/s)
    n_fft: int = 1200  # not in the paper: = win_length (torchaudio's convention when unset)
    window: str = "hann"  # App. B: "Hanning windows"
    f_min: float = 0.0  # not in the paper: torchaudio default
    f_max: float | None = None  # not in the paper: None = Nyquist (torchaudio default)
    log_eps: float = 1e-6  # not in the paper: log(mel + eps) floor
    spectrogram_frames: int = 640  # Fig. 2: 640 frames; crop drops the extra frame of centring

    # --- pixels ---
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN  # not in the paper; see layers.IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    # --- ViT-B/16 encoder (App. A) ---
    patch_size: int = 16  # "patch size 16x16" for audio and video
    dim: int = 768  # "hidden dimension of 768"
    depth: int = 12  # "12 self-attention layers"
    num_heads: int = 12  # "12 attention heads"
    mlp_ratio: float = 4.0  # "intermediate dimension 3072" = 4 x 768

    # --- Zorro specifics ---
    n_fusion: int = 6  # Sec. 4 / App. A: "n_fusion = 6 in all models"
    fusion_mask: str = "zorro"  # one of SELF_ATTENTION_MASKS (Table 3 ablations)
    fusion_start_layer: int = 0  # App. C / Table 4: fusion tokens used from this layer on; default 0
    separate_weights: bool = False  # Sec. 4.3 / Table 2: own weights per audio/video/fusion (267M)

    # --- decoder (Perceiver IO-style masked cross-attention, App. A) ---
    decoder_qk_dim: int = 1024  # App. A: "decoder with qk dimension 1024"
    decoder_v_dim: int = 1024  # not in the paper: Perceiver IO default v_channels = qk_channels
    decoder_num_heads: int = 1  # not in the paper: Perceiver IO decoder default (1 head)
    # Not in the paper. MLP ratio 4 (the standard transformer block) is the one choice that
    # reproduces both parameter counts: 96.8M vs 98M shared and 266.9M vs 267M separate;
    # Perceiver IO's ratio 1 would give 93.3M (-4.8%). See tests/models/test_param_counts.py.
    decoder_mlp_ratio: float = 4.0

    # --- audio augmentation (training mode only) ---
    freq_jitter_bins: int = 10  # App. B: shift mel axis by an integer in (-10, 10)
    # Zorro uses SpecAugment without parameters; MBT Sec. 4.2 (after AST): time <= 192 frames,
    # frequency <= 48 bins, one mask each.
    specaug_time_width: int = 192
    specaug_freq_width: int = 48
    specaug_time_masks: int = 1
    specaug_freq_masks: int = 1

    # --- implementation ---
    attention_impl: str = "grouped"  # "grouped" (exact unimodal parity, cheaper) or "dense" (Eq. 1 as one mask)

    def __post_init__(self) -> None:
        if self.fusion_mask not in SELF_ATTENTION_MASKS:
            raise ValueError(f"fusion_mask {self.fusion_mask!r} not in {sorted(SELF_ATTENTION_MASKS)}")
        if self.attention_impl not in ("grouped", "dense"):
            raise ValueError(f"attention_impl {self.attention_impl!r} must be 'grouped' or 'dense'")
        self.check_patch_grid()
        if not 0 <= self.fusion_start_layer < self.depth:
            raise ValueError(f"fusion_start_layer {self.fusion_start_layer} outside [0, depth={self.depth})")
        if self.uses_fusion_tokens and self.n_fusion < 1:
            raise ValueError("fusion masks other than two_streams need n_fusion >= 1")
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)

    @property
    def uses_fusion_tokens(self) -> bool:
        return FUSION in SELF_ATTENTION_MASKS[self.fusion_mask]



class ZorroViT(PatchTokens, AVClassifier):
    """Zorro-ViT (shared or separate weights, any of the four masking schemes). See module docstring."""

    architecture = "zorro"
    unimodal_graphs = "head"
    encoder_block_pattern = r"^layers\.(\d+)\."
    embedding_prefixes = ("audio_patch_embed.", "audio_pos_embed.", "video_patch_embed.", "video_pos_embed.", "fusion_tokens")
    # Linear probing trains the per-head linear classifiers only: the decoder queries and the
    # cross-attention decoder compute forward_features, so they are part of the frozen backbone.
    head_prefixes = ("classifiers.",)

    def __init__(self, config: ZorroConfig):
        super().__init__()
        self.config = cfg = config
        self.attends_to = SELF_ATTENTION_MASKS[cfg.fusion_mask]
        self.decoder_mask = DECODER_MASKS["with_fusion" if cfg.uses_fusion_tokens else "two_streams"]
        self.head_names = tuple(self.decoder_mask)
        self.groups = tuple(g for g in SEQUENCE_ORDER if g in self.attends_to)

        # Audio: PCM -> log-mel [B, T, n_mels] -> (train-only augmentation) -> 16x16 patches.
        self.log_mel = LogMelFrontend.from_config(cfg)
        self.freq_jitter = FrequencyJitter(cfg.freq_jitter_bins)
        self.spec_augment = SpecAugment.from_config(cfg)
        self.audio_patch_embed = PatchEmbed2d(1, cfg.dim, cfg.patch_size)
        self.audio_pos_embed = LearnedPositionEmbedding(cfg.num_audio_patches, cfg.dim)

        # Video: per-frame 2D patches (not 3D tubelets, Sec. 3.1 / Fig. 2: 8 x 14 x 14 = 1568 tokens),
        # one learned position per token of the flattened T x H x W grid.
        self.pixel_norm = PixelNormalizer(cfg.pixel_mean, cfg.pixel_std)
        self.video_patch_embed = PatchEmbed2d(3, cfg.dim, cfg.patch_size)
        self.video_pos_embed = LearnedPositionEmbedding(cfg.num_video_patches, cfg.dim)

        # Fusion tokens are learned vectors, so a position embedding on them would be redundant.
        if cfg.uses_fusion_tokens:
            self.fusion_tokens = nn.Parameter(torch.empty(1, cfg.n_fusion, cfg.dim))
            nn.init.trunc_normal_(self.fusion_tokens, std=0.02)

        self.layers = nn.ModuleList(
            GroupedTransformerLayer(self.groups, cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.separate_weights)
            for _ in range(cfg.depth)
        )
        norm_names = self.groups if cfg.separate_weights else ("shared",)
        self.final_norm = nn.ModuleDict({n: nn.LayerNorm(cfg.dim, eps=1e-6) for n in norm_names})

        # One decoder shared by the 4 queries (Fig. 2: "Decoding cross-attention", "Learned vectors 4 x 768").
        self.decoder = CrossAttentionBlock(
            cfg.dim, cfg.dim, cfg.decoder_qk_dim, cfg.decoder_v_dim, cfg.decoder_num_heads, cfg.decoder_mlp_ratio
        )
        # One row per head, in head_names order. Module keys get a "_head" suffix because "global"
        # is a Python keyword, which breaks torch.export's generated code for a ModuleDict key.
        self.decoder_queries = nn.Parameter(torch.empty(1, len(self.head_names), cfg.dim))
        nn.init.trunc_normal_(self.decoder_queries, std=0.02)
        self.classifiers = nn.ModuleDict({f"{h}_head": nn.Linear(cfg.dim, cfg.num_classes) for h in self.head_names})

        self.apply(init_vit_weights)

    # --- interface ---------------------------------------------------------------------

    @property
    def servable_modalities(self) -> tuple[frozenset[str], ...]:
        if self.config.fusion_mask in PURE_MASKS:
            return (AUDIO_VIDEO, AUDIO_ONLY, VIDEO_ONLY)
        return (AUDIO_VIDEO,)  # impure streams: a unimodal graph would not reproduce any head

    def heads_for(self, modalities: frozenset[str]) -> tuple[str, ...]:
        modalities = self.servable(modalities)
        if modalities == AUDIO_VIDEO:
            return self.head_names
        (modality,) = modalities
        return (modality,)

    @property
    def feature_dim(self) -> int:
        return self.config.dim

    def forward_features(
        self, audio: Tensor | None = None, video: Tensor | None = None, present: Presence | None = None
    ) -> dict[str, Tensor]:
        # `present` needs no handling: each head reads only its own groups, and the caller
        # drops the heads a clip lacks (base.py, "Mixed batches").
        return self.encode_tokens(self.tokenize(audio, video)).features

    def classify(self, features: dict[str, Tensor], present: Presence | None = None) -> dict[str, Tensor]:
        return {head: self.classifiers[f"{head}_head"](feature) for head, feature in features.items()}

    # --- token level (base.py) ---------------------------------------------------------

    def tokenize(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        self.present_modalities(audio, video)
        tokens: dict[str, Tensor] = {}
        if audio is not None:
            tokens[AUDIO] = self.embed_audio(audio)
        if video is not None:
            tokens[VIDEO] = self.embed_video(video)
        return tokens

    def encode_tokens(self, tokens: dict[str, Tensor], present: Presence | None = None, return_tokens: bool = False) -> Encoded:
        """The masked encoder and the decoding queries over any subset of each group's tokens
        (their positions travel with them); the fusion tokens join when both modalities do."""
        modalities = frozenset(tokens)
        encoded = self.encode(tokens, with_fusion=modalities == AUDIO_VIDEO and self.config.uses_fusion_tokens)
        features = self.decode(encoded, self.heads_for(modalities))
        return Encoded(features, {m: encoded[m] for m in tokens} if return_tokens else None)

    def position_embeddings(self) -> dict[str, PositionGrid]:
        cfg = self.config
        return {
            "audio_pos_embed.embedding": position_grid(self.audio_pos_embed, cfg.audio_patch_grid),
            "video_pos_embed.embedding": position_grid(self.video_pos_embed, cfg.video_patch_grid),
        }

    # --- stages ------------------------------------------------------------------------

    def audio_spectrogram(self, audio: Tensor) -> Tensor:
        """PCM [B, clip_samples] -> log-mel [B, spectrogram_frames, n_mels], augmented in training."""
        return self.spec_augment(self.freq_jitter(self.log_mel(audio)))

    def embed_audio(self, audio: Tensor) -> Tensor:
        spectrogram = self.audio_spectrogram(audio).unsqueeze(1)  # [B, 1, T, n_mels]: time is the "height"
        return self.audio_pos_embed(self.audio_patch_embed(spectrogram))

    def embed_video(self, video: Tensor) -> Tensor:
        b = video.shape[0]
        per_frame = self.video_patch_embed(self.pixel_norm(video))  # [B*T, h*w, dim]
        return self.video_pos_embed(per_frame.reshape(b, -1, self.config.dim))

    def encode(self, tokens: dict[str, Tensor], with_fusion: bool) -> dict[str, Tensor]:
        """Masked transformer over the present groups; fusion tokens join at fusion_start_layer."""
        cfg = self.config
        batch = next(iter(tokens.values())).shape[0]
        for index, layer in enumerate(self.layers):
            if with_fusion and index == cfg.fusion_start_layer:
                tokens = {**tokens, FUSION: self.fusion_tokens.expand(batch, -1, -1)}
            tokens = layer(tokens, self.attends_to, impl=cfg.attention_impl)
        return {g: self.final_norm[g if cfg.separate_weights else "shared"](x) for g, x in tokens.items()}

    def decode(self, tokens: dict[str, Tensor], heads: tuple[str, ...]) -> dict[str, Tensor]:
        """Masked cross-attention decoding: each head's query reads only its groups (DECODER_MASKS).

        Each group's keys/values are projected once, and each query is decoded on its own, so the
        audio head runs the same ops on the same tensors with or without the other heads.
        """
        needed = [g for g in self.groups if g in tokens and any(g in self.decoder_mask[h] for h in heads)]
        kv = {g: self.decoder.project_kv(tokens[g]) for g in needed}
        batch = tokens[needed[0]].shape[0]
        features = {}
        for head in heads:
            sources = [g for g in needed if g in self.decoder_mask[head]]
            k = kv[sources[0]][0] if len(sources) == 1 else torch.cat([kv[g][0] for g in sources], dim=2)
            v = kv[sources[0]][1] if len(sources) == 1 else torch.cat([kv[g][1] for g in sources], dim=2)
            row = self.head_names.index(head)
            query = self.decoder_queries[:, row : row + 1].expand(batch, -1, -1)
            features[head] = self.decoder(query, k, v)[:, 0]
        return features


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


@register_model(ZorroViT)
def zorro_vit_b16() -> ZorroConfig:
    """Paper Zorro-ViT, ViT-B/16, shared weights (98M, Table 3 / App. A): 6.4 s at 48 kHz ->
    640 x 128 log-mel -> 320 audio tokens; 8 x 224^2 frames -> 1568 video tokens; 527 classes."""
    return ZorroConfig()


@register_model(ZorroViT)
def zorro_vit_b16_separate() -> ZorroConfig:
    """Separate audio/video/fusion weights (267M, Sec. 4.3; used for Table 2 fine-tuning)."""
    return ZorroConfig(separate_weights=True)


def _tiny() -> ZorroConfig:
    """A few-minute-on-2-CPU-cores model for the synthetic dataset (not from the paper)."""
    return ZorroConfig(
        sample_rate=16_000,
        clip_seconds=2.0,
        num_frames=4,
        image_size=64,  # 4 x 4 patches per frame -> 64 video tokens
        num_classes=12,
        n_mels=64,
        win_length=400,  # 25 ms / 10 ms at 16 kHz, the paper's window and stride in seconds
        hop_length=160,
        n_fft=400,
        spectrogram_frames=192,  # 2 s gives 201 centred frames; 192 = 12 patches of 16 (48 audio tokens)
        dim=96,
        depth=4,
        num_heads=4,
        n_fusion=6,
        decoder_qk_dim=64,
        decoder_v_dim=64,
        freq_jitter_bins=5,  # the paper's 10 of 128 bins, scaled to 64
        specaug_time_width=48,  # MBT's 192 of 800 frames (24%), scaled to 192 frames
        specaug_freq_width=24,  # MBT's 48 of 128 bins, scaled to 64
    )


@register_model(ZorroViT)
def zorro_tiny() -> ZorroConfig:
    return _tiny()


@register_model(ZorroViT)
def zorro_tiny_separate() -> ZorroConfig:
    return dataclasses.replace(_tiny(), separate_weights=True)
