"""The optional token-level interface (training/models/base.py) of the architectures that have
it: the same features as forward_features, encoders that take any subset of tokens, and patch
targets aligned with the tokens and free of training augmentation."""

from __future__ import annotations

import pytest
import torch

from training.models import AUDIO, VIDEO, create_model
from training.models.layers import PatchEmbed2d, patchify

TOKEN_MODELS = ["zorro_tiny", "mbt_tiny", "mbt_tiny_cross", "vatt_tiny", "vatt_ma_tiny"]


def test_patchify_is_what_patch_embedding_projects():
    torch.manual_seed(0)
    embed = PatchEmbed2d(3, 8, 4)
    x = torch.randn(2, 3, 8, 12)
    as_linear = patchify(x, 4) @ embed.proj.weight.reshape(8, -1).T + embed.proj.bias
    torch.testing.assert_close(embed(x), as_linear, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TOKEN_MODELS)
def test_encoding_all_tokens_gives_forward_features(name, tiny_model, make_audio, make_video):
    model = tiny_model(name)
    audio, video = make_audio(model.config, 2, seed=1), make_video(model.config, 2, seed=2)
    assert model.supports_tokens
    with torch.no_grad():
        tokens = model.tokenize(audio=audio, video=video)
        assert {m: t.shape[1] for m, t in tokens.items()} == model.token_counts
        encoded = model.encode_tokens(tokens, return_tokens=True)
        expected = model.forward_features(audio=audio, video=video)
    assert encoded.features.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(encoded.features[key], value), key
    assert {m: t.shape for m, t in encoded.tokens.items()} == {m: t.shape for m, t in tokens.items()}


@pytest.mark.parametrize("name", TOKEN_MODELS)
def test_encoders_take_any_subset_of_tokens(name, tiny_model, make_audio, make_video):
    model = tiny_model(name)
    audio, video = make_audio(model.config, 2, seed=1), make_video(model.config, 2, seed=2)
    with torch.no_grad():
        tokens = model.tokenize(audio=audio, video=video)
        kept = {m: t[:, ::3] for m, t in tokens.items()}
        encoded = model.encode_tokens(kept, return_tokens=True)
        full = model.encode_tokens(tokens, return_tokens=True)
    for m, t in kept.items():
        assert encoded.tokens[m].shape == t.shape
    assert not torch.allclose(encoded.features[AUDIO], full.features[AUDIO])  # the dropped tokens mattered


@pytest.mark.parametrize("name", ["zorro_tiny", "mbt_tiny"])
def test_patch_targets_are_clean_and_aligned_with_the_tokens(name, tiny_model, make_audio, make_video):
    model = tiny_model(name).train()  # training mode: SpecAugment (and Zorro's jitter) active
    cfg = model.config
    audio, video = make_audio(cfg, 2, seed=1), make_video(cfg, 2, seed=2)
    targets = model.patch_targets(audio=audio, video=video)
    assert {m: t.shape[1:] for m, t in targets.items()} == {m: (model.token_counts[m], model.patch_dims[m]) for m in (AUDIO, VIDEO)}
    # the first audio patch is the top-left 16x16 of the clean log-mel (time-major, as the tokens are)
    clean = model.log_mel(audio)
    p = cfg.patch_size
    torch.testing.assert_close(targets[AUDIO][:, 0], clean[:, :p, :p].reshape(2, -1))
    torch.testing.assert_close(targets[AUDIO], model.patch_targets(audio=audio)[AUDIO])  # no augmentation drawn
    # the tokens, in training mode, are augmented; switched off, they are the clean signal's
    torch.manual_seed(0)
    augmented = model.tokenize(audio=audio)[AUDIO]
    model.set_input_augmentation(False)
    torch.manual_seed(0)
    clean_tokens = model.tokenize(audio=audio)[AUDIO]
    model.eval()
    with torch.no_grad():
        eval_tokens = model.tokenize(audio=audio)[AUDIO]
    assert not torch.allclose(augmented, clean_tokens)
    torch.testing.assert_close(clean_tokens, eval_tokens)
