"""AV-MAE: Audiovisual Masked Autoencoders (Georgescu et al., ICCV 2023, arXiv:2212.05922), the encoder.

A ViT per modality's tokens: 16x16 patches of a 128-bin log-mel spectrogram (Sec. 4.1: 25 ms
Hamming window, 10 ms hop; 8 s -> 128 x 800 -> 400 tokens) and 2x16x16 RGB tubelets (16 frames
at 224^2 -> 1568 tokens), each with its own tokeniser, learned position embedding and CLS token.
Four ways to encode the two token sets (Sec. 3.2, Fig. 2):

  "early"     one transformer over the concatenation of both modalities' tokens;
  "separate"  two transformers with their own parameters (fusion only in the decoder);
  "mid"       the first depth - S layers separate, the last S (`joint_layers`, default 2) over the
              concatenation;
  "shared"    each modality encoded on its own, by the same (tied) transformer.

Every variant names its layers as MBT does: `encoders.<modality>.<i>`. A tied or joint layer is
ONE module registered under both modalities' names (and first as `encoders.shared.<i>`, the name
`parameters()` reports), so the state dict holds it under the names MBT's streams use, and `--init-from` a pretrained AV-MAE into an MBT of the same size is
the plain name match (Sec. 4.1: "separate encoders initialise each stream; early or shared
encoders initialise both, which are then untied") with no conversion table. Parameter counts
(`parameters()` de-duplicates) count a tied layer once.

Pretraining is the masked objective (training/objectives/masked.py) through the token-level
interface: `tokenize` -> gather the visible tokens -> `encode_tokens`; the decoder lives in the
objective and is dropped for finetuning and export.

As a classifier (unimodal finetuning, Sec. 4.1: "only audio tokens (AST) or only video tokens
(ViViT)" through the pretrained encoder): a linear head per modality on that modality's final
CLS token; the audio+video answer is the mean of the two heads' logits (the paper finetunes
audio-visually as an MBT instead; this route is ours, so an AV-MAE checkpoint serves all three
routes too). With "separate" and "shared" encoders the audio head never sees video, so the
`_audio` graph is exactly the `_av` graph's audio head (`unimodal = head`); with "early" and
"mid" the modalities meet inside the encoder, so a unimodal graph runs the encoder on one
modality's tokens alone (`unimodal = stream`), and a clip lacking a modality in a mixed batch is
kept out of the joint layers' keys so it gets what the unimodal call gives.

The CLS tokens are our choice: the paper does not say how the finetuned encoder pools, and a CLS
per modality is what the MBT it initialises reads (Sec. 3.4 of MBT).

Sources: shared/papers/pemt-vatt-avmae.md (digest, part C); the paper, Sec. 3-4, Tables 14-16.
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
)
from .registry import register_model

STREAMS = (VIDEO, AUDIO)  # sequence order when the modalities are concatenated (video first, as MBT)
ENCODER_FUSIONS = ("early", "separate", "mid", "shared")
SHARED = "shared"  # the name under which tied and joint layers are registered first


@dataclasses.dataclass
class AVMAEConfig(PatchGrid, AVConfig):
    """AV-MAE encoder hyper-parameters. Defaults: ViT-B/16, mid fusion, the VGGSound pretraining
    inputs of Sec. 4.1 (the ablation setting of Tables 1-3)."""

    # --- input (AVConfig fields) ---
    sample_rate: int = 16_000  # Sec. 4.1: "16kHz", mono
    clip_seconds: float = 8.0  # Sec. 4.1: 8 s (AudioSet finetuning: 10 s, Table 18)
    num_frames: int = 16  # Sec. 4.1: "16 randomly sampled frames" (finetuning: 32, Tables 16-18)
    image_size: int = 224  # not stated; ViViT / VideoMAE's 224^2 (digest C.1.1, inferred)
    num_classes: int = 309  # VGGSound

    # --- log-mel front-end (Sec. 4.1) ---
    n_mels: int = 128  # "128 mel-frequency bins"
    win_length: int = 400  # "25ms Hamming window" at 16 kHz
    hop_length: int = 160  # "10ms" hop
    n_fft: int = 400  # not stated: = win_length
    window: str = "hamming"
    f_min: float = 0.0
    f_max: float | None = None
    log_eps: float = 1e-6
    spectrogram_frames: int = 800  # 128 x 100t for t = 8 s

    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    # --- tokenisers (Sec. 4.1) ---
    patch_size: int = 16  # 16x16 spectrogram patches and 16x16 tubelet faces
    tubelet_frames: int = 2  # "tubelets of 16x16x2"

    # --- encoder: ViT-B (Sec. 4.1: "the same configurations as [23, 25]") ---
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    fusion: str = "mid"  # one of ENCODER_FUSIONS (Sec. 3.2)
    joint_layers: int = 2  # S of mid fusion: "S = 2" by default (Sec. 3.2)

    # --- finetuning regularisers (Table 16; pretraining uses none, Table 14) ---
    drop_path: float = 0.0  # stochastic depth; Table 16 finetunes at 0.3
    specaug_time_width: int = 192  # SpecAugment "as in AST / MBT" (Table 16 notes)
    specaug_freq_width: int = 48
    specaug_time_masks: int = 0  # off unless finetuning asks (Table 16: on for A and AV)
    specaug_freq_masks: int = 0
    spec_time_shift: bool = False  # Tables 17-18: random circular time shift

    def __post_init__(self) -> None:
        if self.fusion not in ENCODER_FUSIONS:
            raise ValueError(f"fusion {self.fusion!r} not in {ENCODER_FUSIONS}")
        if self.fusion == "mid" and not 1 <= self.joint_layers < self.depth:
            raise ValueError(f"mid fusion needs 1 <= joint_layers < depth={self.depth}, got {self.joint_layers}")
        self.check_patch_grid()
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)

    @property
    def first_joint_layer(self) -> int:
        """Index of the first layer over both modalities' tokens together (depth: none)."""
        return {"early": 0, "mid": self.depth - self.joint_layers}.get(self.fusion, self.depth)

    @property
    def tied(self) -> bool:
        """Whether each layer is one set of weights for both modalities (everything but "separate",
        whose layers are all private; "mid" ties only its joint layers)."""
        return self.fusion != "separate"


class AVMAE(PatchTokens, AVClassifier):
    """The AV-MAE encoder with a linear head per modality (see the module docstring)."""

    architecture = "avmae"
    head_names = (AUDIO, VIDEO)
    encoder_block_pattern = r"^encoders\.\w+\.(\d+)\."
    embedding_prefixes = ("patch_embed.", "cls_token.", "pos_embed.")
    head_prefixes = ("classifier.",)

    def __init__(self, config: AVMAEConfig):
        super().__init__()
        self.config = cfg = config

        self.log_mel = LogMelFrontend.from_config(cfg)
        self.time_shift = RandomTimeShift() if cfg.spec_time_shift else nn.Identity()
        self.spec_augment = SpecAugment.from_config(cfg)
        self.pixel_norm = PixelNormalizer(cfg.pixel_mean, cfg.pixel_std)

        # v = Tokenise(x) + p with each modality's own tokeniser and positions (Sec. 3.1).
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

        def block(index: int) -> TransformerBlock:
            return TransformerBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, rates[index])

        # Layer i of modality m is encoders[m][i]; a tied or joint layer is the same module in
        # both lists (module docstring), so MBT's names address it from either stream. It is
        # registered first as encoders.shared.<i>, the name parameters() reports it under: a
        # parameter named after a modality belongs to that modality alone.
        shared = {str(i): block(i) for i in range(cfg.depth) if self.is_shared_layer(i)}
        streams = {m: nn.ModuleList(shared.get(str(i)) or block(i) for i in range(cfg.depth)) for m in STREAMS}
        self.encoders = nn.ModuleDict({SHARED: nn.ModuleDict(shared), **streams} if shared else streams)
        norms = {SHARED: nn.LayerNorm(cfg.dim, eps=1e-6)} if cfg.tied else {}
        self.final_norm = nn.ModuleDict({**norms, **{m: norms.get(SHARED) or nn.LayerNorm(cfg.dim, eps=1e-6) for m in STREAMS}})
        self.classifier = nn.ModuleDict({m: nn.Linear(cfg.dim, cfg.num_classes) for m in self.head_names})
        self.apply(init_vit_weights)
        for token in self.cls_token.values():
            nn.init.normal_(token, std=0.02)

    def is_shared_layer(self, index: int) -> bool:
        """Whether layer `index` is one module for both modalities (tied or joint)."""
        cfg = self.config
        return cfg.fusion == "shared" or index >= cfg.first_joint_layer

    # --- interface ---------------------------------------------------------------------

    @property
    def unimodal_graphs(self) -> str:  # type: ignore[override]
        """ "head" when no layer mixes the modalities (separate, shared), else "stream"."""
        return "head" if self.config.first_joint_layer == self.config.depth else "stream"

    @property
    def servable_modalities(self) -> tuple[frozenset[str], ...]:
        return (AUDIO_VIDEO, AUDIO_ONLY, VIDEO_ONLY)

    def heads_for(self, modalities: frozenset[str]) -> tuple[str, ...]:
        modalities = self.servable(modalities)
        return tuple(h for h in self.head_names if h in modalities)

    @property
    def feature_dim(self) -> int:
        return self.config.dim

    def forward_features(
        self, audio: Tensor | None = None, video: Tensor | None = None, present: Presence | None = None
    ) -> dict[str, Tensor]:
        """{modality: its final CLS feature [B, dim]} for the modalities given."""
        return self.encode_tokens(self.tokenize(audio, video), present).features

    def classify(self, features: dict[str, Tensor], present: Presence | None = None) -> dict[str, Tensor]:
        return {m: self.classifier[m](features[m]) for m in self.head_names if m in features}

    # --- token level (base.py) ---------------------------------------------------------

    def tokenize(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        """Patch and tubelet tokens with their positions (no CLS), video first."""
        self.present_modalities(audio, video)
        tokens: dict[str, Tensor] = {}
        if video is not None:
            tokens[VIDEO] = self.pos_embed[VIDEO](self.patch_embed[VIDEO](self.pixel_norm(video), video.shape[0]), start=1)
        if audio is not None:
            spectrogram = self.spec_augment(self.time_shift(self.log_mel(audio))).unsqueeze(1)
            tokens[AUDIO] = self.pos_embed[AUDIO](self.patch_embed[AUDIO](spectrogram), start=1)
        return tokens

    def encode_tokens(self, tokens: dict[str, Tensor], present: Presence | None = None, return_tokens: bool = False) -> Encoded:
        """Each modality's CLS joins its (possibly masked-out) tokens; features are the final CLS."""
        sequences = {}
        for m, x in tokens.items():
            cls = self.pos_embed[m](self.cls_token[m]).expand(x.shape[0], -1, -1)
            sequences[m] = torch.cat([cls, x], dim=1)
        encoded = self.encode(sequences, present)
        normed = {m: self.final_norm[m](x) for m, x in encoded.items()}
        features = {m: x[:, 0] for m, x in normed.items()}
        return Encoded(features, {m: x[:, 1:] for m, x in normed.items()} if return_tokens else None)

    def position_embeddings(self) -> dict[str, PositionGrid]:
        cfg = self.config
        return {
            "pos_embed.audio.embedding": position_grid(self.pos_embed[AUDIO], cfg.audio_patch_grid),
            "pos_embed.video.embedding": position_grid(self.pos_embed[VIDEO], cfg.video_patch_grid),
        }

    # --- the encoder -------------------------------------------------------------------

    def encode(self, sequences: dict[str, Tensor], present: Presence | None = None) -> dict[str, Tensor]:
        """All layers over the modalities in `sequences` ({modality: [B, 1 + N_m, dim]})."""
        for index in range(self.config.depth):
            if index < self.config.first_joint_layer:
                sequences = {m: self.encoders[m][index](x) for m, x in sequences.items()}
            else:
                sequences = self.joint_layer(index, sequences, present)
        return sequences

    def joint_layer(self, index: int, sequences: dict[str, Tensor], present: Presence | None = None) -> dict[str, Tensor]:
        """One layer over the concatenated sequences. In a mixed batch an absent modality's tokens
        are masked out of the keys, so such a clip sees only its own tokens (as a unimodal call)."""
        order = [m for m in STREAMS if m in sequences]
        sizes = [sequences[m].shape[1] for m in order]
        attend = None
        if present is not None and len(order) > 1:
            keys = torch.cat([present[m].bool()[:, None].expand(-1, n) for m, n in zip(order, sizes)], dim=1)
            keys = keys | ~keys.any(dim=1, keepdim=True)  # a clip with nothing present: no all-masked row
            attend = keys[:, None, None, :]
        joint = self.encoders[order[0]][index](torch.cat([sequences[m] for m in order], dim=1), attend)
        return dict(zip(order, joint.split(sizes, dim=1), strict=True))


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


@register_model(AVMAE)
def avmae_vit_b16_early() -> AVMAEConfig:
    """ViT-B, one transformer over both modalities' visible tokens (Table 1, rows 1-2)."""
    return AVMAEConfig(fusion="early")


@register_model(AVMAE)
def avmae_vit_b16_separate() -> AVMAEConfig:
    """Two ViT-B encoders (Table 1, row 3: separate encoder, shared decoder)."""
    return AVMAEConfig(fusion="separate")


@register_model(AVMAE)
def avmae_vit_b16_mid() -> AVMAEConfig:
    """10 separate + 2 joint ViT-B layers (Table 1, rows 5-6: the best, 63.5 audio-visual)."""
    return AVMAEConfig(fusion="mid")


@register_model(AVMAE)
def avmae_vit_b16_shared() -> AVMAEConfig:
    """One ViT-B applied to each modality on its own (Table 1, row 4)."""
    return AVMAEConfig(fusion="shared")


@register_model(AVMAE)
def avmae_vit_l16_mid() -> AVMAEConfig:
    """ViT-L (24 layers, 1024 wide, 16 heads, MLP 4096), mid fusion: the SOTA model of Table 7."""
    return AVMAEConfig(fusion="mid", dim=1024, depth=24, num_heads=16)


def _tiny(**changes) -> AVMAEConfig:
    """mbt_tiny's inputs, width, depth and heads with 2-frame tubelets, so a pretrained tiny AV-MAE
    initialises `mbt_avmae_tiny` by name; not from the paper."""
    base = AVMAEConfig(
        clip_seconds=2.0,
        num_frames=4,  # 2 tubelets x 4 x 4 -> 32 video tokens (90 % masked: 4 visible)
        image_size=64,
        num_classes=12,
        n_mels=64,
        spectrogram_frames=192,  # 12 x 4 patches -> 48 audio tokens (50 % masked: 24 visible)
        dim=96,
        depth=4,
        num_heads=4,
        joint_layers=2,  # mid: 2 separate + 2 joint, as mbt_tiny's fusion layer 2 of 4
        specaug_time_width=48,
        specaug_freq_width=24,
    )
    return dataclasses.replace(base, **changes)


@register_model(AVMAE)
def avmae_tiny() -> AVMAEConfig:
    return _tiny()


@register_model(AVMAE)
def avmae_tiny_separate() -> AVMAEConfig:
    return _tiny(fusion="separate")


@register_model(AVMAE)
def avmae_tiny_early() -> AVMAEConfig:
    return _tiny(fusion="early")


@register_model(AVMAE)
def avmae_tiny_shared() -> AVMAEConfig:
    return _tiny(fusion="shared")
