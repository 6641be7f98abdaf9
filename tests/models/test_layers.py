"""Shared layers: log-mel front-end vs torchaudio and in ONNX, pixels, augmentation, masked attention."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchaudio

from training.models.layers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrequencyJitter,
    GroupedTransformerLayer,
    LogMelFrontend,
    MultiHeadSelfAttention,
    PixelNormalizer,
    SpecAugment,
    group_mask,
)


def test_signals(sample_rate: int, samples: int) -> torch.Tensor:
    """Tone + noise, quiet noise, a clipped square wave, and digital silence."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(samples) / sample_rate
    return torch.stack(
        [
            0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(samples, generator=g),
            0.01 * torch.randn(samples, generator=g),
            torch.sign(torch.sin(2 * math.pi * 97 * t)),
            torch.zeros(samples),
        ]
    )


test_signals.__test__ = False  # a helper, not a test


def torchaudio_log_mel(pcm, sample_rate, n_fft, win_length, hop_length, n_mels, eps=1e-6):
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length, n_mels=n_mels
    )(pcm)
    return torch.log(mel + eps).transpose(1, 2)  # -> [B, frames, n_mels]


@pytest.mark.parametrize(
    "sample_rate, n_fft, win_length, hop_length, n_mels, seconds",
    [
        (16_000, 400, 400, 160, 64, 2.0),  # zorro_tiny
        (16_000, 512, 400, 160, 64, 1.0),  # window shorter than n_fft (zero-padded window)
    ],
)
def test_log_mel_matches_torchaudio(sample_rate, n_fft, win_length, hop_length, n_mels, seconds):
    samples = int(sample_rate * seconds)
    pcm = test_signals(sample_rate, samples)
    reference = torchaudio_log_mel(pcm, sample_rate, n_fft, win_length, hop_length, n_mels)
    assert reference.shape[1] == 1 + samples // hop_length  # centring adds one frame ...
    frontend = LogMelFrontend(sample_rate, n_fft, win_length, hop_length, n_mels, num_frames=samples // hop_length)
    ours = frontend(pcm)
    assert ours.shape == (4, samples // hop_length, n_mels)  # ... which the front-end crops
    diff = (ours - reference[:, : ours.shape[1]]).abs()
    print(f"log-mel max |diff| vs torchaudio: {diff.max():.2e}")
    assert diff.max() < 1e-4
    assert torch.equal(ours[3], torch.full_like(ours[3], math.log(1e-6)))  # silence is exactly log(eps)


@pytest.mark.parametrize(
    "sample_rate, n_fft, n_mels",
    [
        (16_000, 400, 128),  # MBT-like: 128 narrow filters over 201 bins
        (48_000, 1200, 128),  # zorro_vit_b16 (App. B)
    ],
)
@pytest.mark.filterwarnings("ignore:At least one mel filterbank has all zero values")  # same empty filter in ours
def test_log_mel_with_narrow_filters_is_close_to_float64_reference(sample_rate, n_fft, n_mels):
    """With 128 mel bins the lowest filters cover a single DFT bin, whose small power comes from
    cancellation inside an n_fft-tap float32 dot product; that rounds more than an FFT does. So
    compare against float64: measured worst case ~2e-4 (16 kHz) / ~4e-4 (48 kHz) in the lowest
    bins (torchaudio's own float32 FFT: ~5e-5), mean ~1e-6."""
    hop, samples = sample_rate // 100, sample_rate
    pcm = test_signals(sample_rate, samples).double()
    mel64 = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    reference = torch.log(mel64.double()(pcm) + 1e-6).transpose(1, 2)[:, :100]
    ours = LogMelFrontend(sample_rate, n_fft, n_fft, hop, n_mels, num_frames=100)(pcm.float()).double()
    diff = (ours - reference).abs()
    print(f"log-mel |diff| vs float64 at {sample_rate} Hz, n_fft {n_fft}: max {diff.max():.2e}, mean {diff.mean():.2e}")
    assert diff.max() < 6e-4 and diff.mean() < 1e-5


def test_log_mel_pads_short_input_with_silence():
    frontend = LogMelFrontend(16_000, 400, 400, 160, 64, num_frames=20)
    out = frontend(0.1 * torch.randn(2, 1600))  # 11 centred frames
    assert out.shape == (2, 20, 64)
    assert torch.equal(out[:, 11:], torch.full((2, 9, 64), math.log(1e-6)))
    assert (out[:, :11] > math.log(1e-6)).all()


def test_log_mel_has_no_trainable_parameters():
    frontend = LogMelFrontend(16_000, 400, 400, 160, 64, num_frames=10)
    assert list(frontend.parameters()) == []
    assert {name for name, _ in frontend.named_buffers()} == {"dft_basis", "mel_filterbank"}


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the crop/pad branch is constant for a fixed clip
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is deprecated (still the fastest)
@pytest.mark.filterwarnings("ignore:Constant folding - Only steps=1")  # exporter-internal note, no effect on results
def test_log_mel_onnx_export_matches_torch(tmp_path):
    frontend = LogMelFrontend(16_000, 400, 400, 160, 64, num_frames=192).eval()
    pcm = test_signals(16_000, 32_000)
    path = tmp_path / "log_mel.onnx"
    torch.onnx.export(
        frontend, (pcm[:1],), path, dynamo=False, opset_version=17,
        input_names=["audio"], output_names=["log_mel"],
        dynamic_axes={"audio": {0: "batch"}, "log_mel": {0: "batch"}},
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ours,) = session.run(None, {"audio": pcm.numpy()})
    np.testing.assert_allclose(ours, frontend(pcm).numpy(), atol=1e-4, rtol=0)


def test_pixel_normalizer_uint8_and_float_inputs_agree_and_match_formula():
    frames = torch.randint(0, 256, (2, 3, 8, 8, 3), dtype=torch.uint8)
    normalizer = PixelNormalizer()
    out = normalizer(frames)
    assert out.shape == (6, 3, 8, 8) and out.dtype == torch.float32
    assert torch.equal(out, normalizer(frames.float()))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = (frames.reshape(6, 8, 8, 3).permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_spec_augment_masks_only_in_training():
    log_mel = torch.randn(4, 100, 64)
    augment = SpecAugment(max_time_width=30, max_freq_width=20, num_time_masks=2, num_freq_masks=2)
    augment.eval()
    assert augment(log_mel) is log_mel
    augment.train()
    torch.manual_seed(0)
    out = augment(log_mel)
    changed = out != log_mel
    assert changed.any()
    # Masked cells hold the example's mean; whole frames / whole bins are masked, nothing else.
    fill = log_mel.mean(dim=(1, 2), keepdim=True).expand_as(log_mel)
    assert torch.equal(out[changed], fill[changed])
    for b in range(4):
        rows = changed[b].all(dim=1)
        cols = changed[b].all(dim=0)
        assert torch.equal(changed[b], rows[:, None] | cols[None, :])
        assert rows.sum() <= 60 and cols.sum() <= 40


def test_frequency_jitter_shifts_whole_mel_axis_by_bounded_integer():
    log_mel = torch.randn(16, 10, 64)
    jitter = FrequencyJitter(max_shift=10)
    assert jitter.eval()(log_mel) is log_mel
    torch.manual_seed(0)
    out = jitter.train()(log_mel)
    shifts = set()
    for b in range(16):
        matches = [
            s for s in range(-10, 11)
            if torch.equal(out[b, :, max(s, 0) : 64 + min(s, 0)], log_mel[b, :, max(-s, 0) : 64 - max(s, 0)])
        ]  # fmt: skip
        assert len(matches) == 1, b
        shifts.add(matches[0])
    assert len(shifts) > 3  # shifts are random per example


def test_masked_self_attention_gives_masked_keys_exactly_zero_weight_and_gradient():
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(dim=16, num_heads=2)
    x = torch.randn(2, 6, 16, requires_grad=True)
    attend = torch.ones(6, 6, dtype=torch.bool)
    attend[:3, 3:] = False  # tokens 0-2 may not read tokens 3-5
    out = attention(x, attend)
    (grad,) = torch.autograd.grad(out[:, :3].sum(), x)
    assert torch.count_nonzero(grad[:, 3:]) == 0  # exactly zero, not small
    assert torch.count_nonzero(grad[:, :3]) > 0
    # And the first rows equal self-attention over the first three tokens alone.
    torch.testing.assert_close(out[:, :3], attention(x[:, :3]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("separate_weights", [False, True])
def test_grouped_and_dense_attention_agree(separate_weights):
    torch.manual_seed(0)
    layer = GroupedTransformerLayer(("a", "f", "v"), dim=32, num_heads=4, mlp_ratio=2.0, separate_weights=separate_weights)
    table = {"a": {"a"}, "v": {"v"}, "f": {"a", "v", "f"}}
    tokens = {"a": torch.randn(2, 5, 32), "f": torch.randn(2, 2, 32), "v": torch.randn(2, 7, 32)}
    grouped = layer(tokens, table, impl="grouped")
    dense = layer(tokens, table, impl="dense")
    for g in tokens:
        torch.testing.assert_close(grouped[g], dense[g], atol=1e-5, rtol=0)
    # The audio group of the grouped layer is the same computation with or without other groups.
    assert torch.equal(grouped["a"], layer({"a": tokens["a"]}, table)["a"])
    assert len(layer.blocks) == (3 if separate_weights else 1)


def test_group_mask_expands_the_table():
    mask = group_mask(["a", "f"], [2, 1], ["a", "f", "v"], [2, 1, 3], {"a": {"a"}, "f": {"a", "f", "v"}})
    expected = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
