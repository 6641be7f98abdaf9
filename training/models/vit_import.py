"""Starting from an ImageNet ViT: a timm VisionTransformer state dict mapped onto our models.

Zorro (its ImageNet-21k initialisation: "we use the pre-trained weights to initialise the video,
audio and fusion parameters"; digest A3.2) and MBT (Sec. 4.2: both streams from ImageNet-21k
ViT-B) finetune from an ImageNet ViT-B/16; so does AV-MAE's MBT baseline (its Table 6,
"ImageNet-21K (supervised, from MBT)"). Their
layers are our `TransformerBlock`s, which store their parameters under timm's names (norm1,
attn.qkv as one [3D, D] matrix in q|k|v order split per head the same way, attn.proj, norm2,
mlp.fc1, mlp.fc2; LayerNorm eps 1e-6, exact GELU), so block i copies as it is. What has to be
converted:

  video patches   the RGB 16x16 kernel as it is (one frame per token: MBT, Zorro); for t-frame
                  tubelets (AV-MAE, VATT) inflated along time by ViViT's "central frame"
                  initialisation (Arnab et al. 2021, Sec. 3.4; the best in its Table 1), or
                  "filter inflation", the kernel repeated and divided by t (`tubelet_init`);
  audio patches   the RGB kernel averaged over its 3 input channels (AST, Gong et al. 2021,
                  Sec. 2.2: "we average the weights corresponding to each of the 3 input
                  channels"; AST's released code sums them instead, i.e. the spectrogram fed as 3
                  identical channels: `audio_channels="sum"`; MBT does not say). The kernel's
                  rows meet our spectrogram's rows, which are time (training/models/layers.py);
  positions       the CLS position kept, the 14x14 patch grid resampled bicubically (timm's
                  `resample_abs_pos_embed`: bicubic, antialiased, no corner alignment) to the
                  audio (time x frequency) grid, and to each frame's grid for video, then
                  repeated along time (ViViT Sec. 3.4: "we 'repeat' them temporally");
  CLS token       to each stream's CLS; where a model has no CLS position (VATT's AGG token)
                  the token gets CLS + its position, what ViT's first layer sees.

Per architecture (`conversion_rules`): MBT (both streams, so also its bottleneck-fusion layers,
which are the streams' own blocks), Zorro (its one stack; with separate weights the audio,
video and fusion copies of every layer), AV-MAE (each encoder; tied layers once, under all
their names), VATT (the video transformer, its tokeniser's projection and AGG token; its
factorised positions and the raw-waveform audio tower have nothing in a ViT to come from).
Never converted: classifier heads (new classes), MBT's bottleneck tokens, Zorro's fusion tokens
and Perceiver decoder. PEMT has no ViT-shaped part (CNN front-ends, post-LN low-rank shared
layers): asking for it is an error, not a partial conversion.

A ViT file does not say which pixel normalisation its network was trained with: Google's
ImageNet-21k ViTs (timm's `*.augreg_in21k`) take x/127.5 - 1, i.e. mean = std = 0.5
(layers.IMAGENET_MEAN notes it); set the model's pixel_mean / pixel_std to match.

timm is not imported here (it is a dev dependency: the tests build random-weight timm models of
the same architecture); files are read with `safetensors` or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.checkpoint import CheckpointError, InitReport

# A file is a timm ViT state dict when it has these (training.checkpoint.init_from tells them
# from our own checkpoints by them).
SIGNATURE_KEYS = ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight")
# Keys of ViT variants whose function our blocks cannot compute: converting the rest would be a
# different network, so they are refused.
UNSUPPORTED = {
    "norm_pre.weight": "a LayerNorm before the blocks (CLIP-style pre-norm)",
    "reg_token": "register tokens",
    "dist_token": "a distillation token (DeiT)",
    "blocks.0.ls1.gamma": "LayerScale",
    "blocks.0.attn.q_norm.weight": "QK normalisation",
    "blocks.0.attn.norm.weight": "a normalised attention output",
    "blocks.0.norm.weight": "a parallel / residual-post-norm block",
    "blocks.0.mlp.norm.weight": "a normalised MLP (ViT-22B style)",
    "blocks.0.mlp.fc1_g.weight": "a gated MLP (SwiGLU)",
}
TUBELET_INITS = ("central", "inflate")
AUDIO_CHANNELS = ("mean", "sum")


def provenance(path: str | Path) -> str:
    """What run.json's `pretrained` (and the model repository's parameter) records."""
    return f"ImageNet ViT (timm state dict {Path(path).name})"


# --------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------


def is_safetensors(path: str | Path) -> bool:
    """Whether `path` is in the safetensors format, by its content (whatever its suffix): an 8-byte
    little-endian header length, then the JSON header."""
    try:
        with open(path, "rb") as file:
            head = file.read(9)
            size = file.seek(0, 2)
    except OSError:
        return False
    return len(head) == 9 and head[8:] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file or a torch state-dict file (.pth / .bin / .pt), under
    the names timm gives them (a {"model": ...} / {"state_dict": ...} wrapper and DDP's
    "module." prefix taken off), floating-point ones as float32."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        if is_safetensors(path):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - safetensors and torch raise many types for a bad file
        raise CheckpointError(f"{path} is not a readable state dict: {type(error).__name__}: {error}") from error
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    # float32 before any arithmetic (channel means, resampling): hub files may be fp16 / bf16
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def is_vit_state_dict(state: Mapping[str, object]) -> bool:
    return all(key in state for key in SIGNATURE_KEYS)


def is_vit_file(path: str | Path) -> bool:
    """Whether `path` is a timm ViT state-dict file, without reading its tensors (safetensors:
    the header; torch files: a memory-mapped load). False for anything else, our own
    checkpoints included (they keep the classifier under "model", with our names)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        if is_safetensors(path):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as file:
                return is_vit_state_dict(dict.fromkeys(file.keys()))
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a file this reader understands: not a ViT file
        return False
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if isinstance(state, Mapping) and state and all(str(k).startswith("module.") for k in state):
        state = {str(k)[len("module.") :]: v for k, v in state.items()}
    return isinstance(state, Mapping) and is_vit_state_dict(state)


@dataclasses.dataclass
class ViTWeights:
    """A timm ViT's tensors, by role. `positions` is [1, prefix + rows*cols, D] with
    `position_prefix` = 1 when it holds a CLS position (timm's default) and 0 when the CLS token
    gets none (`no_embed_class`, DeiT III)."""

    source: Path
    state: dict[str, Tensor]
    patch_weight: Tensor  # [D, 3, p, p]
    patch_bias: Tensor  # [D]
    cls_token: Tensor | None  # [1, 1, D]
    positions: Tensor
    position_prefix: int
    grid: tuple[int, int]
    depth: int
    used: set[str] = dataclasses.field(default_factory=set)  # keys some converted tensor came from

    @property
    def dim(self) -> int:
        return self.patch_weight.shape[0]

    @property
    def patch_size(self) -> int:
        return self.patch_weight.shape[-1]

    def describe(self) -> str:
        rows, cols = self.grid
        return f"a ViT of width {self.dim}, {self.depth} blocks, {self.patch_size}x{self.patch_size} patches, {rows}x{cols} positions"

    def take(self, key: str) -> Tensor:
        self.used.add(key)
        return self.state[key]

    def block(self, index: int, parameter: str) -> Tensor:
        key = f"blocks.{index}.{parameter}"
        if key not in self.state and parameter == "attn.qkv.bias":  # qkv_bias=False: a zero bias is the same map
            return torch.zeros(self.state[f"blocks.{index}.attn.qkv.weight"].shape[0], dtype=self.patch_weight.dtype)
        if key not in self.state:
            raise CheckpointError(f"{self.source} lacks {key}")
        return self.take(key)


def parse_vit(state: dict[str, Tensor], source: str | Path) -> ViTWeights:
    """The roles of a timm ViT state dict's tensors, or a CheckpointError naming the file and what
    is wrong with it (not a ViT, or a ViT variant our blocks do not compute)."""
    source = Path(source)
    if not is_vit_state_dict(state):
        raise CheckpointError(
            f"{source} is not a timm ViT state dict (no {' / '.join(SIGNATURE_KEYS)}), nor a run directory or our checkpoint"
        )
    for key, what in UNSUPPORTED.items():
        if key in state:
            raise CheckpointError(f"{source} is a ViT with {what} ({key}), which our transformer blocks do not have")
    patch_weight = state["patch_embed.proj.weight"]
    if patch_weight.dim() != 4 or patch_weight.shape[1] != 3 or patch_weight.shape[2] != patch_weight.shape[3]:
        raise CheckpointError(f"{source}: patch_embed.proj.weight {tuple(patch_weight.shape)} is not an RGB square-patch kernel")
    if "pos_embed" not in state:
        raise CheckpointError(f"{source} has no learned absolute position embedding (pos_embed)")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    positions = state["pos_embed"]
    cls_token = state.get("cls_token")
    tokens = positions.shape[1]
    prefix = 1 if cls_token is not None and math.isqrt(tokens - 1) ** 2 == tokens - 1 else 0
    side = math.isqrt(tokens - prefix)
    if side * side != tokens - prefix:
        raise CheckpointError(f"{source}: pos_embed {tuple(positions.shape)} is not a square patch grid (plus a CLS position)")
    return ViTWeights(source, state, patch_weight, state["patch_embed.proj.bias"], cls_token, positions, prefix, (side, side), depth)


# --------------------------------------------------------------------------------------
# Converting tensors
# --------------------------------------------------------------------------------------


def resample_positions(grid_positions: Tensor, source: tuple[int, int], target: tuple[int, int]) -> Tensor:
    """[1, rows*cols, D] over `source` -> [1, prod(target), D], bicubic with antialiasing as timm's
    `resample_abs_pos_embed` does (identity when the grids agree)."""
    if tuple(source) == tuple(target):
        return grid_positions
    dim = grid_positions.shape[-1]
    image = grid_positions.reshape(1, *source, dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=tuple(target), mode="bicubic", align_corners=False, antialias=True)
    return image.permute(0, 2, 3, 1).reshape(1, -1, dim).to(grid_positions.dtype)


def patch_kernel(vit: ViTWeights, shape: tuple[int, ...], audio_channels: str, tubelet_init: str) -> Tensor:
    """The ViT's RGB kernel fitted to a patch embedding of `shape`: [D, 1, p, p] (spectrogram),
    [D, 3, p, p] (frames) or [D, 3, t, p, p] (tubelets)."""
    kernel = vit.patch_weight
    if len(shape) == 4 and shape[1] == 1:
        kernel = kernel.mean(dim=1, keepdim=True) if audio_channels == "mean" else kernel.sum(dim=1, keepdim=True)
    elif len(shape) == 5:
        frames = shape[2]
        if tubelet_init == "central":  # ViViT: zeros but the centre frame, floor(t / 2)
            inflated = kernel.new_zeros(*kernel.shape[:2], frames, *kernel.shape[2:])
            inflated[:, :, frames // 2] = kernel
            kernel = inflated
        else:  # filter inflation: the same response to a static clip as to one frame
            kernel = kernel.unsqueeze(2).expand(-1, -1, frames, -1, -1) / frames
    return kernel.contiguous()


def position_table(vit: ViTWeights, grid: tuple[int, ...], prefix_tokens: int) -> Tensor:
    """The ViT's positions for a model embedding over `grid` (2-D: audio (time, frequency);
    3-D: video (time, rows, columns), each time step the resampled image grid) with
    `prefix_tokens` (0 or 1: a CLS position) in front."""
    patches = resample_positions(vit.positions[:, vit.position_prefix :], vit.grid, tuple(grid[-2:]))
    if len(grid) == 3:
        patches = patches.repeat(1, grid[0], 1)
    if prefix_tokens == 0:
        return patches
    cls = vit.positions[:, :1] if vit.position_prefix else torch.zeros_like(patches[:, :1])
    return torch.cat([cls, patches], dim=1)


# A rule: (regular expression over our state-dict names, how to make that tensor, or None when the
# ViT has nothing for it). The groups a producer reads: `layer` and `param` (a block parameter),
# `param` of a norm or patch embedding.
Producer = Callable[[re.Match, ViTWeights, "ConversionContext"], "Tensor | None"]


@dataclasses.dataclass
class ConversionContext:
    model: nn.Module
    key: str
    shape: tuple[int, ...]
    audio_channels: str
    tubelet_init: str


def _block(match: re.Match, vit: ViTWeights, ctx: ConversionContext) -> Tensor:
    return vit.block(int(match["layer"]), match["param"])


def _final_norm(match: re.Match, vit: ViTWeights, ctx: ConversionContext) -> Tensor | None:
    """None for an average-pooling ViT (its `fc_norm` acts on the pooled token, not on each token
    as ours does): our final norm is then left as initialised, and reported so."""
    key = f"norm.{match['param']}"
    return vit.take(key) if key in vit.state else None


def _patch(match: re.Match, vit: ViTWeights, ctx: ConversionContext) -> Tensor:
    if match["param"] == "bias":
        return vit.take("patch_embed.proj.bias")
    vit.take("patch_embed.proj.weight")
    return patch_kernel(vit, ctx.shape, ctx.audio_channels, ctx.tubelet_init)


def _cls(match: re.Match, vit: ViTWeights, ctx: ConversionContext) -> Tensor:
    if vit.cls_token is None:
        raise CheckpointError(f"{vit.source} has no cls_token for {ctx.key}")
    return vit.take("cls_token")


def _cls_with_position(match: re.Match, vit: ViTWeights, ctx: ConversionContext) -> Tensor:
    """A CLS-like token that gets no position of its own (VATT's AGG): what ViT's first layer sees."""
    token = _cls(match, vit, ctx)
    if not vit.position_prefix:
        return token
    vit.take("pos_embed")
    return token + vit.positions[:, :1]


def _positions(match: re.Match, vit: ViTWeights, ctx: ConversionContext) -> Tensor:
    grid = ctx.model.position_embeddings()[ctx.key]
    vit.take("pos_embed")
    return position_table(vit, grid.grid, grid.prefix_tokens)


def conversion_rules(model: nn.Module) -> list[tuple[str, Producer]]:
    """Which of `model`'s tensors come from which ViT tensors (module docstring)."""
    architecture = getattr(model, "architecture", type(model).__name__)
    block, norm = r"(?P<layer>\d+)\.(?P<param>.+)", r"(?P<param>weight|bias)"
    if architecture in ("mbt", "avmae"):  # one naming: AV-MAE's encoders are named as MBT's streams
        return [
            (rf"encoders\.\w+\.{block}", _block),
            (rf"final_norm\.\w+\.{norm}", _final_norm),
            (rf"patch_embed\.(video|audio)\.proj\.{norm}", _patch),
            (r"cls_token\.(video|audio)", _cls),
            (r"pos_embed\.(video|audio)\.embedding", _positions),
        ]
    if architecture == "zorro":
        return [
            (rf"layers\.(?P<layer>\d+)\.blocks\.\w+\.(?P<param>.+)", _block),  # shared, or audio / video / fusion copies
            (rf"final_norm\.\w+\.{norm}", _final_norm),
            (rf"(video|audio)_patch_embed\.proj\.{norm}", _patch),
            (r"(video|audio)_pos_embed\.embedding", _positions),
        ]
    if architecture == "vatt":  # the video tower: VATT-MA's shared one, else its own
        stack = r"backbones\.shared" if model.config.modality_agnostic else r"backbones\.video"
        return [
            (rf"{stack}\.blocks\.{block}", _block),
            (rf"{stack}\.norm\.{norm}", _final_norm),
            (rf"tokenizers\.video\.proj\.{norm}", _patch),
            (r"agg_token\.video", _cls_with_position),
        ]
    if architecture == "pemt":
        raise CheckpointError(
            "PEMT cannot start from ViT weights: its front-ends are CNNs (SlowFast-R50, an audio ResNet-50) and its "
            "transformers post-LN layers with low-rank shared weights, nothing shaped like a ViT block"
        )
    raise CheckpointError(f"no ViT conversion for a {architecture} model")


def convert(
    model: nn.Module, vit: ViTWeights, audio_channels: str = "mean", tubelet_init: str = "central"
) -> dict[str, Tensor]:
    """{our state-dict name: tensor} for every tensor of `model` a rule gives, each checked
    against the model's shape (a CheckpointError naming the file and the sizes otherwise)."""
    if audio_channels not in AUDIO_CHANNELS or tubelet_init not in TUBELET_INITS:
        raise ValueError(f"audio_channels in {AUDIO_CHANNELS}, tubelet_init in {TUBELET_INITS}")
    rules = [(re.compile(pattern), producer) for pattern, producer in conversion_rules(model)]
    own = model.state_dict()
    config = model.config
    name = type(model).__name__
    depth = _model_depth(model)
    if depth is not None and depth != vit.depth:
        raise CheckpointError(f"{vit.source} is {vit.describe()}; the {name} has {depth} layers")
    patch = config.video_patch[-1] if hasattr(config, "video_patch") else config.patch_size
    if patch != vit.patch_size:
        raise CheckpointError(f"{vit.source} is {vit.describe()}; the {name} cuts {patch}x{patch} patches")
    converted = {}
    for key, target in own.items():
        for pattern, producer in rules:
            match = pattern.fullmatch(key)
            if match:
                ctx = ConversionContext(model, key, tuple(target.shape), audio_channels, tubelet_init)
                tensor = producer(match, vit, ctx)
                if tensor is None:
                    break
                if tuple(tensor.shape) != tuple(target.shape):
                    raise CheckpointError(
                        f"{vit.source} is {vit.describe()}, which does not fit the {name} "
                        f"(width {getattr(config, 'dim', '?')}): {key} would be {tuple(tensor.shape)}, the model's is {tuple(target.shape)}"
                    )
                converted[key] = tensor.to(target.dtype)
                break
    return converted


def _model_depth(model: nn.Module) -> int | None:
    config = model.config
    if getattr(model, "architecture", "") == "vatt":
        return config.size("video").depth
    return getattr(config, "depth", None)


def init_from_vit(
    model: nn.Module, path: str | Path, audio_channels: str = "mean", tubelet_init: str = "central"
) -> InitReport:
    """Loads a timm ViT state-dict file into `model` (module docstring); the report lists what was
    loaded (ours), what was left as initialised ("missing": heads, fusion tokens, ...), the ViT
    tensors nothing came from ("unexpected": its head, ...), and the resampled positions."""
    path = Path(path)
    vit = parse_vit(read_state_dict(path), path)
    tensors = convert(model, vit, audio_channels, tubelet_init)
    result = model.load_state_dict(tensors, strict=False)
    grids = {key: grid.grid for key, grid in model.position_embeddings().items() if key in tensors}
    source = "x".join(map(str, vit.grid))
    resized = [  # a grid of one time step of the ViT's size is the ViT's table as it is
        f"{key}: {source} -> {'x'.join(map(str, grid))}"
        for key, grid in grids.items()
        if math.prod(grid) != math.prod(vit.grid) or tuple(grid[-2:]) != vit.grid
    ]
    unused = sorted(k for k in vit.state if k not in vit.used)
    return ViTInitReport(str(path), sorted(tensors), sorted(result.missing_keys), unused, [], resized, pixels=_pixel_note(model))


@dataclasses.dataclass
class ViTInitReport(InitReport):
    """InitReport plus a reminder of the pixel normalisation, which a ViT file does not record."""

    pixels: str = ""

    def summary(self) -> str:
        return super().summary() + (f"\n  {self.pixels}" if self.pixels else "")


def _pixel_note(model: nn.Module) -> str:
    config = model.config
    if not hasattr(config, "pixel_mean"):
        return ""
    mean, std = tuple(config.pixel_mean), tuple(config.pixel_std)
    return (
        f"pixels: the model normalises with mean {mean}, std {std}; the file does not say what its ViT was trained on "
        "(Google's ImageNet-21k ViTs: 0.5, 0.5: --set pixel_mean=[0.5,0.5,0.5] --set pixel_std=[0.5,0.5,0.5])"
    )
