"""Starting from ImageNet ViT weights (training/models/vit_import.py), checked against timm itself.

No checkpoint can be downloaded here: every ViT is a timm VisionTransformer of the real
architecture with random weights, its LayerNorms, biases, CLS token and positions perturbed away
from their initial values (ones / zeros) so a tensor mapped to the wrong place cannot hide."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from typer.testing import CliRunner

from avserve.cli import build_app
from training.checkpoint import CheckpointError, init_from, pretraining_of
from training.models import create_model
from training.models.layers import IMAGENET_MEAN, IMAGENET_STD
from training.models.vit_import import init_from_vit, is_vit_file

# The tiny presets' transformer (mbt_tiny, zorro_tiny, avmae_tiny): width 96, 4 layers, 4 heads.
TINY = dict(patch_size=16, embed_dim=96, depth=4, num_heads=4, mlp_ratio=4.0)


def perturbed(vit: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`vit` with every norm weight ~ 1 + N(0, 0.1), every bias, the CLS token and the positions
    ~ N(0, 0.1 .. 0.5): nothing left at a value a wrong mapping or a skipped tensor would also have."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name in ("cls_token", "pos_embed"):
                p.copy_(0.5 * noise)
    return vit.eval()


def save(vit: torch.nn.Module, path):
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def normalised(frames: torch.Tensor) -> torch.Tensor:
    """What our PixelNormalizer gives for float frames [T, H, W, 3] in 0..255, as timm's input [T, 3, H, W]."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (frames.permute(0, 3, 1, 2) / 255.0 - mean) / std


@pytest.fixture(scope="module")
def vit_b16(tmp_path_factory):
    """timm's vit_base_patch16_224 (random weights, perturbed) and its state dict as .safetensors."""
    import timm

    torch.manual_seed(0)
    vit = perturbed(timm.create_model("vit_base_patch16_224", pretrained=False), seed=1)
    return vit, save(vit, tmp_path_factory.mktemp("vit") / "vit_base_patch16_224.safetensors")


@pytest.fixture(scope="module")
def mbt_b16(vit_b16):
    """The paper's MBT (late fusion, so the video stream alone is a ViT) on one 224^2 frame:
    a 14 x 14 video grid, no interpolation; the audio grid 50 x 8 is resampled."""
    torch.manual_seed(0)
    model = create_model("mbt_vit_b16_late", num_frames=1, num_classes=3).eval()
    report = init_from(model, vit_b16[1])
    return model, report


def test_vit_b16_video_stream_equals_timm(vit_b16, mbt_b16):
    vit, _ = vit_b16
    model, _ = mbt_b16
    frames = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(2)) * 255.0
    with torch.no_grad():
        ours = model.forward_features(video=frames[None])["video"]
        theirs = vit.forward_features(normalised(frames))[:, 0]
    assert (ours - theirs).abs().max().item() < 1e-5
    assert theirs.abs().max().item() > 0.5  # a real feature, not a vanishing one


def test_vit_b16_report_names_what_was_and_was_not_initialised(vit_b16, mbt_b16):
    model, report = mbt_b16
    assert report.source == str(vit_b16[1])
    # everything but the classifier of the new classes: both streams (blocks, norms, patches, CLS, positions)
    assert report.missing == ["classifier.bias", "classifier.weight"]
    assert len(report.loaded) == len(model.state_dict()) - 2
    assert "encoders.audio.11.attn.qkv.weight" in report.loaded and "patch_embed.audio.proj.weight" in report.loaded
    assert report.unexpected == ["head.bias", "head.weight"]  # ImageNet's classifier: never converted
    assert report.resized == ["pos_embed.audio.embedding: 14x14 -> 50x8"]
    assert "loaded 300 tensors" in report.summary()  # 2 streams x (12 blocks x 12 + final norm 2 + patch 2 + CLS + positions)


def test_audio_stream_gets_the_channel_averaged_kernel_and_resampled_positions(vit_b16, mbt_b16):
    vit, _ = vit_b16
    model, _ = mbt_b16
    kernel = model.patch_embed["audio"].proj.weight
    assert kernel.shape == (768, 1, 16, 16)
    assert torch.equal(kernel, vit.patch_embed.proj.weight.mean(dim=1, keepdim=True))
    assert torch.equal(model.patch_embed["audio"].proj.bias, vit.patch_embed.proj.bias)
    # The same method as timm's own resampling: (50 time x 8 frequency patches) + CLS kept
    expected = resample_abs_pos_embed(vit.pos_embed, new_size=[50, 8], num_prefix_tokens=1)
    positions = model.pos_embed["audio"].embedding
    assert positions.shape == (1, 1 + 50 * 8, 768)
    assert (positions - expected).abs().max().item() < 1e-6
    assert torch.equal(positions[:, 0], vit.pos_embed[:, 0])
    for name in ("audio", "video"):
        assert torch.equal(model.cls_token[name], vit.cls_token)
        assert torch.equal(model.encoders[name][7].mlp.fc2.bias, vit.blocks[7].mlp.fc2.bias)


def test_a_vit_of_another_size_or_a_non_vit_file_is_a_clear_error(vit_b16, mbt_b16, tmp_path):
    import timm

    model, _ = mbt_b16
    small = save(timm.create_model("vit_small_patch16_224", pretrained=False), tmp_path / "vit_small.safetensors")
    before = model.encoders["video"][0].attn.qkv.weight.clone()
    with pytest.raises(CheckpointError, match=r"vit_small\.safetensors is a ViT of width 384.*does not fit the MBT \(width 768\)"):
        init_from(model, small)
    assert torch.equal(model.encoders["video"][0].attn.qkv.weight, before)  # refused before loading anything

    other = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7)}, str(other))
    assert not is_vit_file(other)
    with pytest.raises(CheckpointError, match=r"resnet\.safetensors is not a timm ViT state dict"):
        init_from(model, other)

    # safetensors content under a .pth name: told by its content, not its suffix
    deeper = save(VisionTransformer(img_size=64, **{**TINY, "depth": 5}), tmp_path / "deep.pth")
    tiny = create_model("mbt_tiny")
    with pytest.raises(CheckpointError, match=r"deep\.pth is a ViT of width 96, 5 blocks.*has 4 layers"):
        init_from(tiny, deeper)


def test_torch_state_dict_files_are_read_too(tmp_path):
    """A .pth state dict (timm's older hub files), here in a {"model": ...} wrapper: the same conversion."""
    vit = perturbed(VisionTransformer(img_size=64, **TINY), seed=3)
    path = tmp_path / "vit_tiny.pth"
    torch.save({"model": vit.state_dict()}, path)
    assert is_vit_file(path)
    model = create_model("mbt_tiny")
    report = init_from(model, path)
    assert report.missing == ["bottleneck", "classifier.bias", "classifier.weight"]  # MBT's fusion tokens are new
    assert torch.equal(model.encoders["audio"][3].norm2.weight, vit.blocks[3].norm2.weight)
    assert pretraining_of(path) == "ImageNet ViT (timm state dict vit_tiny.pth)"

    half = tmp_path / "vit_tiny_fp16.safetensors"  # hub files may be half precision: read as float32
    save_file({k: v.half().contiguous() for k, v in vit.state_dict().items()}, str(half))
    init_from(model, half)
    assert model.pos_embed["video"].embedding.dtype == torch.float32
    assert torch.equal(model.encoders["video"][1].attn.qkv.weight, vit.blocks[1].attn.qkv.weight.half().float())


def test_zorro_video_tokens_equal_timm_without_class_token(tmp_path):
    """Zorro has no CLS: a ViT without one (no CLS position either) gives its video tokens exactly;
    with separate weights every group's copy of every layer is the ViT's."""
    vit = perturbed(VisionTransformer(img_size=64, class_token=False, global_pool="avg", fc_norm=False, **TINY), seed=4)
    path = save(vit, tmp_path / "vit_nocls.safetensors")
    model = create_model("zorro_tiny_separate", num_frames=1).eval()
    report = init_from_vit(model, path)
    frames = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5)) * 255.0
    with torch.no_grad():
        encoded = model.encode_tokens(model.tokenize(video=frames[None]), return_tokens=True)
        theirs = vit.forward_features(normalised(frames))
    assert (encoded.tokens["video"] - theirs).abs().max().item() < 1e-5
    for group in ("audio", "video", "fusion"):
        assert torch.equal(model.layers[2].blocks[group].attn.proj.weight, vit.blocks[2].attn.proj.weight)
        assert torch.equal(model.final_norm[group].bias, vit.norm.bias)
    assert "audio_pos_embed.embedding: 4x4 -> 12x4" in report.resized
    assert {"fusion_tokens", "decoder_queries", "decoder.q.weight"} <= set(report.missing)


def test_an_average_pooling_vit_leaves_the_final_norm_as_initialised(tmp_path):
    """Its fc_norm normalises the pooled token, not each token: not our final norm."""
    vit = perturbed(VisionTransformer(img_size=64, global_pool="avg", **TINY), seed=10)
    model = create_model("mbt_tiny")
    report = init_from(model, save(vit, tmp_path / "vit_avg.safetensors"))
    assert {"final_norm.audio.weight", "final_norm.video.bias"} <= set(report.missing)
    assert {"fc_norm.weight", "fc_norm.bias"} <= set(report.unexpected)
    assert torch.equal(model.final_norm["video"].weight, torch.ones(96))


def test_tubelets_take_the_central_frame_and_positions_repeat_in_time(tmp_path):
    """AV-MAE (2x16x16 tubelets, tied layers): a 2-frame clip of one image repeated is that image
    to ViT (ViViT's central-frame kernel sees it once); over more tubelets in time every time
    step gets the image's positions."""
    vit = perturbed(VisionTransformer(img_size=64, **TINY), seed=6)
    path = save(vit, tmp_path / "vit.safetensors")
    model = create_model("avmae_tiny_shared", num_frames=2).eval()  # one tubelet in time
    init_from(model, path)
    kernel = model.patch_embed["video"].proj.weight
    assert kernel.shape == (96, 3, 2, 16, 16)
    assert torch.equal(kernel[:, :, 1], vit.patch_embed.proj.weight) and not kernel[:, :, 0].any()
    frame = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(7)) * 255.0
    with torch.no_grad():
        ours = model.forward_features(video=frame.expand(2, -1, -1, -1)[None])["video"]
        theirs = vit.forward_features(normalised(frame))[:, 0]
    assert (ours - theirs).abs().max().item() < 1e-5

    longer = create_model("avmae_tiny_shared", num_frames=6)  # 3 tubelets in time
    report = init_from(longer, path)
    positions = longer.pos_embed["video"].embedding
    assert positions.shape == (1, 1 + 3 * 16, 96)
    for step in range(3):
        assert torch.equal(positions[:, 1 + 16 * step : 17 + 16 * step], vit.pos_embed[:, 1:])
    assert "pos_embed.video.embedding: 4x4 -> 3x4x4" in report.resized


def test_vatt_video_tower_and_pemt_refused(tmp_path):
    vit = perturbed(VisionTransformer(img_size=64, **TINY), seed=8)
    path = save(vit, tmp_path / "vit.safetensors")
    vatt = create_model("vatt_tiny")
    report = init_from(vatt, path)
    assert torch.equal(vatt.agg_token["video"], vit.cls_token + vit.pos_embed[:, :1])  # AGG gets no position of its own
    assert vatt.tokenizers["video"].proj.weight.shape == (96, 3, 4, 16, 16)
    assert "tokenizers.video.pos_time" in report.missing and "backbones.audio.blocks.0.attn.qkv.weight" in report.missing
    assert torch.equal(vatt.backbones["video"].norm.weight, vit.norm.weight)
    with pytest.raises(CheckpointError, match="PEMT cannot start from ViT weights: its front-ends are CNNs"):
        init_from(create_model("pemt_tiny"), path)


def test_avserve_train_init_from_a_vit_file(tmp_path, synth_dir):
    """`avserve train --init-from FILE` with a ViT of mbt_tiny's size: trains, reports, records where it started."""
    vit = perturbed(VisionTransformer(img_size=64, **TINY), seed=9)
    path = save(vit, tmp_path / "vit_tiny_in21k.safetensors")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        build_app(),
        ["train", "--model", "mbt_tiny", "--data", str(synth_dir), "--out", str(out), "--steps", "2", "--batch-size", "2",
         "--no-progress", "--eval-split", "", "--init-from", str(path),
         "--set", "pixel_mean=[0.5,0.5,0.5]", "--set", "pixel_std=[0.5,0.5,0.5]"],  # Google's IN-21k ViT normalisation
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "vit_tiny_in21k.safetensors: loaded 108 tensors" in result.output  # 2 streams x (4 blocks x 12 + 6)
    assert "missing (3): bottleneck, classifier.bias, classifier.weight" in result.output
    assert "the model normalises with mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)" in result.output
    run = json.loads((out / "run.json").read_text())
    assert run["pretrained"] == "ImageNet ViT (timm state dict vit_tiny_in21k.safetensors)"
    assert run["init_from"] == str(path.resolve())


def test_avserve_train_refuses_a_vit_for_pemt_in_one_line(tmp_path, synth_dir):
    path = save(VisionTransformer(img_size=64, **TINY), tmp_path / "vit.safetensors")
    result = CliRunner().invoke(
        build_app(),
        ["train", "--model", "pemt_tiny", "--data", str(synth_dir), "--out", str(tmp_path / "run"), "--steps", "1",
         "--no-progress", "--init-from", str(path)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--init-from: PEMT cannot start from ViT weights" in errors[0]
