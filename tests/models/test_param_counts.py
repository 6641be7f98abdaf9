"""Paper-size presets, built on the meta device only (no weights allocated): parameter counts
against the paper and token/output shapes against Fig. 2."""

from __future__ import annotations

import pytest
import torch

from training.models import create_model

# (preset, paper count, source)
PAPER_COUNTS = [
    ("zorro_vit_b16", 98e6, "Zorro Table 3 / App. A: Zorro-ViT 98M"),
    ("zorro_vit_b16_separate", 267e6, "Zorro Sec. 4.3: separate weights, 98M to 267M"),
]
MEASURED = {"zorro_vit_b16": 96_797_756, "zorro_vit_b16_separate": 266_909_756}  # recorded exact counts


def build_on_meta(name: str, **overrides):
    with torch.device("meta"):
        return create_model(name, **overrides)


@pytest.mark.parametrize("name, paper, source", PAPER_COUNTS)
def test_paper_preset_parameter_count_within_2_percent(name, paper, source):
    model = build_on_meta(name)
    assert all(p.is_meta for p in model.parameters())  # nothing was allocated
    count = sum(p.numel() for p in model.parameters())
    print(f"{name}: {count:,} parameters vs {paper / 1e6:.0f}M ({source}): {100 * (count / paper - 1):+.2f}%")
    assert abs(count / paper - 1) < 0.02
    assert count == MEASURED[name]  # any architecture change must update the recorded count on purpose


def test_separate_weights_add_two_vit_b_encoder_stacks():
    """Digest C2: 267M - 98M ~ 2 x 85.05M (two more ViT-B stacks: audio and video get their own,
    fusion keeps the original), plus two more final LayerNorms."""
    shared = sum(p.numel() for p in build_on_meta("zorro_vit_b16").parameters())
    separate = sum(p.numel() for p in build_on_meta("zorro_vit_b16_separate").parameters())
    vit_b_stack = 12 * 7_087_872  # digest C2: one ViT-B layer = 7,087,872 params
    assert separate - shared == 2 * vit_b_stack + 2 * 2 * 768


def test_paper_preset_token_counts_and_output_shapes():
    model = build_on_meta("zorro_vit_b16")
    cfg = model.config
    assert cfg.clip_samples == 307_200  # 6.4 s at 48 kHz
    assert (cfg.num_audio_patches, cfg.num_video_patches) == (320, 1568)  # Fig. 2
    with torch.device("meta"):
        audio = torch.empty(2, cfg.clip_samples)
        video = torch.empty(2, 8, 224, 224, 3, dtype=torch.uint8)
        spectrogram = model.log_mel(audio)
        audio_tokens = model.embed_audio(audio)
        video_tokens = model.embed_video(video)
        out = model(audio=audio, video=video)
        audio_only = model(audio=audio)
    assert spectrogram.shape == (2, 640, 128)  # Fig. 2: "Input spectrogram: 640 x 128"
    assert audio_tokens.shape == (2, 320, 768)  # "Audio tokens: 320 x 768"
    assert video_tokens.shape == (2, 1568, 768)  # "Video tokens: 1568 x 768"
    assert model.fusion_tokens.shape == (1, 6, 768)  # n_fusion = 6
    assert model.decoder_queries.shape == (1, 4, 768)  # "Learned vectors 4 x 768"
    assert model.decoder.q.out_features == 1024  # App. A: decoder qk dimension 1024
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: (2, 527) for k in ("audio", "video", "fusion", "global", "logits")
    }
    assert set(audio_only) == {"audio", "logits"}


def test_separate_preset_has_own_weights_per_stream():
    model = build_on_meta("zorro_vit_b16_separate")
    assert set(model.layers[0].blocks) == {"audio", "fusion", "video"}
    assert set(model.final_norm) == {"audio", "fusion", "video"}
    shared = build_on_meta("zorro_vit_b16")
    assert set(shared.layers[0].blocks) == {"shared"}
