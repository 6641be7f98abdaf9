"""Layers shared by the five architectures (Zorro, MBT, PEMT, VATT, AV-MAE).

Input front-ends (inside every exported graph):
    LogMelFrontend     raw mono PCM [B, samples] -> log-mel [B, frames, n_mels]
    PixelNormalizer    uint8/float RGB [B, T, H, W, 3] -> normalised [B*T, 3, H, W]
Training-only spectrogram augmentation (identity in eval mode, hence in export; an objective
can switch it off):
    InputAugmentation (their base), SpecAugment, FrequencyJitter, RandomTimeShift
Patches: patchify / patchify_tubelets (a patch's raw values: masked reconstruction's targets),
    unpatchify_tubelets (back to frames, for pictures), PatchEmbed2d, TubeletEmbed
Transformer parts:
    LearnedPositionEmbedding, Mlp, MultiHeadSelfAttention (boolean mask),
    TransformerBlock (pre-LN), CrossAttentionBlock (decoder), GroupedTransformerLayer
    (one layer over named token groups with a group-level attention mask table).

Spectrogram layout is [B, frames, n_mels] (time first) everywhere: the papers write the
spectrogram as T x N_s (Zorro Sec. 3.1, Fig. 2 "640 x 128"), and 16x16 patches over it
flatten time-major, so audio tokens are ordered by time like video tokens are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------
# Audio front-end
# --------------------------------------------------------------------------------------


def hz_to_mel_htk(hz: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz_htk(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def htk_mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> Tensor:
    """Triangular HTK-scale filterbank [n_freqs, n_mels], no area normalisation.

    Same construction as torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk"),
    which is what torchaudio.transforms.MelSpectrogram uses by default, so the in-graph
    front-end can be checked against it. Computed in float64, stored as float32.
    """
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    m_min, m_max = (2595.0 * math.log10(1.0 + f / 700.0) for f in (f_min, f_max))  # python floats: meta-safe
    m_pts = torch.linspace(m_min, m_max, n_mels + 2, dtype=torch.float64)
    f_pts = mel_to_hz_htk(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).to(torch.float32)


WINDOWS = {"hann": torch.hann_window, "hamming": torch.hamming_window}


def windowed_dft_basis(n_fft: int, win_length: int, window: str = "hann") -> Tensor:
    """conv1d weight [2 * (n_fft // 2 + 1), 1, n_fft]: rows are window * cos, then window * -sin.

    The periodic window ("hann": Zorro App. B; "hamming": MBT Sec. 4.2, after AST) of
    `win_length` is zero-padded to n_fft in the centre, exactly as torch.stft does. Built in
    float64 (the phase 2*pi*k*n/N loses digits in float32 at n_fft=1200).
    """
    if window not in WINDOWS:
        raise ValueError(f"window {window!r} not in {sorted(WINDOWS)}")
    window = WINDOWS[window](win_length, periodic=True, dtype=torch.float64)
    left = (n_fft - win_length) // 2
    window = F.pad(window, (left, n_fft - win_length - left))
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    phase = 2.0 * math.pi * torch.outer(k, n).remainder(n_fft) / n_fft  # remainder keeps phase small
    basis = torch.cat([torch.cos(phase) * window, -torch.sin(phase) * window], dim=0)
    return basis.unsqueeze(1).to(torch.float32)


class LogMelFrontend(nn.Module):
    """Mono PCM float32 [B, samples] -> log-mel [B, num_frames, n_mels] (time first).

    STFT as a strided conv1d with a fixed windowed-DFT basis: exports to ONNX with both
    exporters and runs fast in ONNX Runtime, unlike torch.stft / the ONNX STFT op
    (shared/notes/environment.md). Then power spectrum (|X|^2), HTK mel filterbank, log(x + eps).
    Matches torchaudio.transforms.MelSpectrogram defaults (center=True, reflect padding,
    power=2, HTK mel, no filter normalisation). Centring gives 1 + samples // hop frames;
    the output is cropped (or padded with log(eps), i.e. silence) to exactly `num_frames`.
    The bases are buffers (not parameters): the front-end is not trained.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        win_length: int,
        hop_length: int,
        n_mels: int,
        num_frames: int,
        f_min: float = 0.0,
        f_max: float | None = None,
        log_eps: float = 1e-6,
        window: str = "hann",
    ):
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} > n_fft {n_fft}")
        self.n_fft, self.hop_length, self.n_mels, self.num_frames = n_fft, hop_length, n_mels, num_frames
        self.n_freqs = n_fft // 2 + 1
        self.log_eps = log_eps
        f_max = sample_rate / 2 if f_max is None else f_max
        self.register_buffer("dft_basis", windowed_dft_basis(n_fft, win_length, window), persistent=False)
        self.register_buffer(
            "mel_filterbank", htk_mel_filterbank(self.n_freqs, f_min, f_max, n_mels, sample_rate), persistent=False
        )

    @classmethod
    def from_config(cls, cfg) -> "LogMelFrontend":
        """From an architecture config's fields of the same names (spectrogram_frames = num_frames)."""
        return cls(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            num_frames=cfg.spectrogram_frames,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            log_eps=cfg.log_eps,
            window=cfg.window,
        )

    def forward(self, pcm: Tensor) -> Tensor:
        pad = self.n_fft // 2
        x = F.pad(pcm.unsqueeze(1), (pad, pad), mode="reflect")  # centre frames like torch.stft
        spectrum = F.conv1d(x, self.dft_basis, stride=self.hop_length)  # [B, 2F, frames]
        real, imag = spectrum[:, : self.n_freqs], spectrum[:, self.n_freqs :]
        power = real * real + imag * imag
        mel = torch.matmul(power.transpose(1, 2), self.mel_filterbank)  # [B, frames, n_mels]
        log_mel = torch.log(mel + self.log_eps)
        frames = log_mel.shape[1]
        if frames >= self.num_frames:
            return log_mel[:, : self.num_frames]
        silence = math.log(self.log_eps)
        return F.pad(log_mel, (0, 0, 0, self.num_frames - frames), value=silence)


# --------------------------------------------------------------------------------------
# Video front-end
# --------------------------------------------------------------------------------------

# ImageNet statistics (torchvision / timm defaults). Google's ImageNet-21k ViT checkpoints,
# which Zorro initialises from (Table 2), were trained on x/127.5 - 1 instead: pass
# mean = std = (0.5, 0.5, 0.5) when loading those weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PixelNormalizer(nn.Module):
    """RGB frames [B, T, H, W, 3] (uint8, or float in 0..255 so mixup can blend) ->
    float32 [B*T, 3, H, W], (x / 255 - mean) / std per channel."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        # Folded into one multiply-add: x * scale + shift.
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: Tensor) -> Tensor:
        b, t, h, w, c = frames.shape
        x = frames.to(torch.float32).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        return x * self.scale + self.shift


# --------------------------------------------------------------------------------------
# Spectrogram augmentation (training mode only)
# --------------------------------------------------------------------------------------


class InputAugmentation(nn.Module):
    """A training-only augmentation inside a model: identity in eval mode, and whenever an
    objective switches it off (`AVClassifier.set_input_augmentation(False)`, e.g. masked
    reconstruction wants clean inputs and targets)."""

    enabled: bool = True

    def active(self) -> bool:
        return self.training and self.enabled


class SpecAugment(InputAugmentation):
    """Time and frequency masking (Park et al. 2019) on log-mel [B, frames, n_mels].

    Each example gets `num_time_masks` masks of width U[0, max_time_width] frames and
    `num_freq_masks` of width U[0, max_freq_width] bins at uniform positions, filled with the
    example's mean log-mel (a "neutral" value; 0 would be a loud log-power of 1). Identity in
    eval mode, so it never appears in an exported graph.
    """

    @classmethod
    def from_config(cls, cfg) -> "SpecAugment":
        """From an architecture config's specaug_* fields."""
        return cls(cfg.specaug_time_width, cfg.specaug_freq_width, cfg.specaug_time_masks, cfg.specaug_freq_masks)

    def __init__(self, max_time_width: int, max_freq_width: int, num_time_masks: int = 1, num_freq_masks: int = 1):
        super().__init__()
        self.max_time_width, self.max_freq_width = max_time_width, max_freq_width
        self.num_time_masks, self.num_freq_masks = num_time_masks, num_freq_masks

    @staticmethod
    def _band_mask(batch: int, length: int, max_width: int, count: int, device: torch.device) -> Tensor:
        """[B, length] boolean, True inside any of `count` random bands per example."""
        mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        pos = torch.arange(length, device=device)
        for _ in range(count):
            width = torch.randint(0, max_width + 1, (batch, 1), device=device)
            start = (torch.rand(batch, 1, device=device) * (length - width + 1)).floor().long()
            mask |= (pos >= start) & (pos < start + width)
        return mask

    def forward(self, log_mel: Tensor) -> Tensor:
        if not self.active() or (self.num_time_masks == 0 and self.num_freq_masks == 0):
            return log_mel
        b, frames, bins = log_mel.shape
        time_mask = self._band_mask(b, frames, min(self.max_time_width, frames), self.num_time_masks, log_mel.device)
        freq_mask = self._band_mask(b, bins, min(self.max_freq_width, bins), self.num_freq_masks, log_mel.device)
        masked = time_mask[:, :, None] | freq_mask[:, None, :]
        fill = log_mel.detach().mean(dim=(1, 2), keepdim=True)
        return torch.where(masked, fill, log_mel)


class FrequencyJitter(InputAugmentation):
    """Shifts each example's mel axis by an integer in [-max_shift, max_shift] (Zorro App. B:
    "shift the frequency by an integer sampled on the range (-10, 10)"). Vacated bins get the
    example's minimum (silence). Identity in eval mode."""

    def __init__(self, max_shift: int):
        super().__init__()
        self.max_shift = max_shift

    def forward(self, log_mel: Tensor) -> Tensor:
        if not self.active() or self.max_shift == 0:
            return log_mel
        b, _, bins = log_mel.shape
        shift = torch.randint(-self.max_shift, self.max_shift + 1, (b, 1, 1), device=log_mel.device)
        source = torch.arange(bins, device=log_mel.device).view(1, 1, bins) - shift  # out[k] = in[k - shift]
        inside = (source >= 0) & (source < bins)
        shifted = torch.gather(log_mel, 2, source.clamp(0, bins - 1).expand_as(log_mel))
        silence = log_mel.detach().amin(dim=(1, 2), keepdim=True)
        return torch.where(inside, shifted, silence)


class RandomTimeShift(InputAugmentation):
    """Circularly shifts each example's log-mel [B, frames, n_mels] along time by an offset drawn
    uniformly from [0, frames) (AV-MAE Tables 17-18, "random time shifting", after the MBT code's
    finetuning augmentation): what falls off the end comes back at the start, so no frame is lost
    and no silence is invented. Identity in eval mode."""

    def forward(self, log_mel: Tensor) -> Tensor:
        if not self.active():
            return log_mel
        b, frames, bins = log_mel.shape
        offset = torch.randint(0, frames, (b, 1, 1), device=log_mel.device)
        source = (torch.arange(frames, device=log_mel.device).view(1, frames, 1) - offset).remainder(frames)
        return torch.gather(log_mel, 1, source.expand(b, frames, bins))  # out[k] = in[(k - offset) mod frames]


# --------------------------------------------------------------------------------------
# Transformer parts
# --------------------------------------------------------------------------------------


def init_vit_weights(module: nn.Module) -> None:
    """ViT/timm initialisation: truncated-normal(0.02) linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """[N, C, H, W] -> [N, (H/p)*(W/p), C*p*p]: each non-overlapping patch's values, patches
    row-major and each patch laid out (channel, row, column), as PatchEmbed2d's conv reads it,
    so PatchEmbed2d(x) equals a linear map of patchify(x)."""
    n, c, h, w = x.shape
    p = patch_size
    patches = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // p) * (w // p), c * p * p)


def patchify_tubelets(voxels: Tensor, frames: int, patch_size: int) -> Tensor:
    """[B, C, T, H, W] -> [B, (T/t)*(H/p)*(W/p), C*t*p*p]: each non-overlapping t x p x p tubelet's
    values, tubelets time-major then row-major, each laid out (channel, time, row, column) as a
    Conv3d of that kernel reads it, so TubeletEmbed equals a linear map of these. With t = 1 the
    layout is patchify's, frame after frame."""
    b, c, time, h, w = voxels.shape
    t, p = frames, patch_size
    x = voxels.reshape(b, c, time // t, t, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (time // t) * (h // p) * (w // p), c * t * p * p)


def unpatchify_tubelets(patches: Tensor, grid: tuple[int, int, int], channels: int, frames: int, patch_size: int) -> Tensor:
    """The inverse of patchify_tubelets: [B, N, C*t*p*p] over a (T/t, H/p, W/p) grid -> [B, C, T, H, W]."""
    b = patches.shape[0]
    gt, gh, gw = grid
    t, p = frames, patch_size
    x = patches.reshape(b, gt, gh, gw, channels, t, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, channels, gt * t, gh * p, gw * p)


class TubeletEmbed(nn.Module):
    """Normalised frames [B*T, 3, H, W] of B clips -> tokens [B, (T/t)*(H/p)*(W/p), dim] (time-major).

    t = 1: one p x p patch per frame (ViT on each frame: Zorro, MBT Sec. 3.1) as a Conv2d; t > 1:
    t x p x p tubelets (ViViT's tubelet embedding, AV-MAE Sec. 4.1: 2 x 16 x 16) as a Conv3d."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, frames: int = 1):
        super().__init__()
        self.frames = frames
        if frames == 1:
            self.proj: nn.Module = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        else:
            kernel = (frames, patch_size, patch_size)
            self.proj = nn.Conv3d(in_channels, dim, kernel_size=kernel, stride=kernel)

    def forward(self, frames: Tensor, batch: int) -> Tensor:
        if self.frames == 1:
            per_frame = self.proj(frames).flatten(2).transpose(1, 2)  # [B*T, h*w, dim]
            return per_frame.reshape(batch, -1, per_frame.shape[-1])
        voxels = frames.reshape(batch, -1, *frames.shape[1:]).transpose(1, 2)  # [B, 3, T, H, W]
        return self.proj(voxels).flatten(2).transpose(1, 2)


class PatchEmbed2d(nn.Module):
    """Non-overlapping patch x patch conv: [N, C, H, W] -> tokens [N, (H/p)*(W/p), dim] (row-major)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class LearnedPositionEmbedding(nn.Module):
    """Absolute learned position embedding added to a fixed-length token sequence."""

    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(1, num_tokens, dim))
        nn.init.trunc_normal_(self.embedding, std=0.02)

    def forward(self, tokens: Tensor, start: int = 0) -> Tensor:
        """tokens [B, N, D] + positions start .. start + N - 1 (start > 0 skips prefix tokens)."""
        if start == 0 and tokens.shape[1] == self.embedding.shape[1]:
            return tokens + self.embedding
        return tokens + self.embedding[:, start : start + tokens.shape[1]]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def masked_attention(q: Tensor, k: Tensor, v: Tensor, attend: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d_head)) v over [B, heads, N, d] with a boolean mask (True = may attend).

    Zorro Eq. (1): the softmax is restricted to the allowed keys. SDPA turns False into -inf
    before the softmax, so masked weights are exactly 0 (exp(-inf) = 0), not merely small;
    and their gradient is exactly 0 too. Every query row must allow at least one key.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attend)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with an optional boolean mask.

    Split into project_qkv / project_out so a layer can project each token group with its own
    weights and attend across groups in between (GroupedTransformerLayer).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each [B, heads, N, head_dim]

    def project_out(self, o: Tensor) -> Tensor:
        b, _, n, _ = o.shape
        return self.proj(o.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))

    def forward(self, x: Tensor, attend: Tensor | None = None) -> Tensor:
        q, k, v = self.project_qkv(x)
        return self.project_out(masked_attention(q, k, v, attend))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random subset of examples
    (probability p) and scale the kept ones by 1/(1-p). Identity in eval mode and at p = 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability {p} outside [0, 1)")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class TransformerBlock(nn.Module):
    """Pre-LN ViT block: x + Attn(LN(x)), then x + MLP(LN(x)); optional stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # eps of the ViT reference implementation
        self.attn = MultiHeadSelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, attend: Tensor | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attend))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossAttentionBlock(nn.Module):
    """Decoder block: learned queries cross-attend to encoder tokens, then an MLP (pre-LN, residual).

    Perceiver IO-style decoding with its own q/k width (`qk_dim`, Zorro App. A: 1024 at ViT-B)
    and value width (`v_dim`, Perceiver IO default: = qk_dim); the output projection maps back
    to `dim`. Keys/values are projected by `project_kv` separately so a caller can project each
    token group once and let several queries attend to different subsets of groups.
    """

    def __init__(self, dim: int, kv_dim: int, qk_dim: int, v_dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        if qk_dim % num_heads or v_dim % num_heads:
            raise ValueError(f"qk_dim {qk_dim} / v_dim {v_dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, qk_dim)
        self.k = nn.Linear(kv_dim, qk_dim)
        self.v = nn.Linear(kv_dim, v_dim)
        self.proj = nn.Linear(v_dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def project_kv(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens [B, N, kv_dim] -> (k, v), each [B, heads, N, d]."""
        return self._heads(self.k(tokens)), self._heads(self.v(tokens))

    def forward(self, queries: Tensor, k: Tensor, v: Tensor, attend: Tensor | None = None) -> Tensor:
        """queries [B, Q, dim]; k, v from project_kv -> [B, Q, dim]."""
        b, nq, _ = queries.shape
        o = masked_attention(self._heads(self.q(self.norm_q(queries))), k, v, attend)
        x = queries + self.proj(o.transpose(1, 2).reshape(b, nq, -1))
        return x + self.mlp(self.norm_mlp(x))


class GroupedTransformerLayer(nn.Module):
    """One pre-LN transformer layer over a sequence made of named token groups.

    `attends_to[g]` is the row of a group-level mask table: the groups whose tokens the
    queries of group g may attend to (Zorro Sec. 3.1, Eq. 1; one table per fusion scheme).
    Every token-wise op (LayerNorms, q/k/v and output projections, MLP) runs on each group's
    tensor separately, with the group's own weights (`separate_weights`, Zorro's 267M model:
    "different weights for the audio, video and fusion latents") or one shared set.

    Two attention implementations, identical in exact arithmetic:
      "grouped": each query group attends, unmasked, to the concatenation of the groups its
          row allows. Disallowed keys are never touched, so a group that only attends to itself
          runs exactly the same ops on exactly the same tensors whether or not other groups are
          present: unimodal graphs are bit-identical to the full model's stream. Also cheaper
          (no dense N x N scores). Default.
      "dense": one attention over the whole sequence with the boolean token mask expanded from
          the table (the paper's formulation; kept as a reference and for kernels that want one
          big attention call).
    Groups missing from `tokens` (an absent modality, or fusion tokens before their first
    layer) are simply skipped, in both rows and columns.
    """

    def __init__(self, groups: Sequence[str], dim: int, num_heads: int, mlp_ratio: float, separate_weights: bool):
        super().__init__()
        self.groups = tuple(groups)
        names = self.groups if separate_weights else ("shared",)
        self.blocks = nn.ModuleDict({n: TransformerBlock(dim, num_heads, mlp_ratio) for n in names})
        self.separate_weights = separate_weights

    def block(self, group: str) -> TransformerBlock:
        return self.blocks[group if self.separate_weights else "shared"]

    def forward(
        self,
        tokens: Mapping[str, Tensor],
        attends_to: Mapping[str, Iterable[str]],
        impl: str = "grouped",
    ) -> dict[str, Tensor]:
        order = [g for g in self.groups if g in tokens]  # sequence order of the present groups
        qkv = {g: self.block(g).attn.project_qkv(self.block(g).norm1(tokens[g])) for g in order}
        if impl == "grouped":
            attended = {}
            for g in order:
                sources = [s for s in order if s in set(attends_to[g])]
                k = qkv[sources[0]][1] if len(sources) == 1 else torch.cat([qkv[s][1] for s in sources], dim=2)
                v = qkv[sources[0]][2] if len(sources) == 1 else torch.cat([qkv[s][2] for s in sources], dim=2)
                attended[g] = masked_attention(qkv[g][0], k, v)
        elif impl == "dense":
            sizes = [tokens[g].shape[1] for g in order]
            q, k, v = (torch.cat([qkv[g][i] for g in order], dim=2) for i in range(3))
            mask = group_mask(order, sizes, order, sizes, attends_to, device=q.device)
            attended = dict(zip(order, masked_attention(q, k, v, mask).split(sizes, dim=2), strict=True))
        else:
            raise ValueError(f"unknown attention impl {impl!r}; use 'grouped' or 'dense'")
        out = {}
        for g in order:
            block = self.block(g)
            x = tokens[g] + block.attn.project_out(attended[g])
            out[g] = x + block.mlp(block.norm2(x))
        return out


def group_mask(
    query_groups: Sequence[str],
    query_sizes: Sequence[int],
    key_groups: Sequence[str],
    key_sizes: Sequence[int],
    attends_to: Mapping[str, Iterable[str]],
    device: torch.device | None = None,
) -> Tensor:
    """Expands a group-level mask table into a boolean token mask [sum(query_sizes), sum(key_sizes)]."""
    rows = []
    for qg, qn in zip(query_groups, query_sizes, strict=True):
        allowed = set(attends_to[qg])
        row = [torch.full((qn, kn), kg in allowed, dtype=torch.bool, device=device) for kg, kn in zip(key_groups, key_sizes, strict=True)]
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)
