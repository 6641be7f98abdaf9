"""Registry: names, overrides, errors, config-only access."""

import dataclasses

import pytest

from training.models import ZorroConfig, ZorroViT, create_model, get_model_config, list_models, register_model

ZORRO_PRESETS = {"zorro_vit_b16", "zorro_vit_b16_separate", "zorro_tiny", "zorro_tiny_separate"}


def test_zorro_presets_are_registered():
    assert ZORRO_PRESETS <= set(list_models())
    assert set(list_models("zorro_tiny*")) == {"zorro_tiny", "zorro_tiny_separate"}


def test_create_model_applies_overrides():
    model = create_model("zorro_tiny", num_classes=5, depth=2)
    assert isinstance(model, ZorroViT)
    assert model.config.num_classes == 5 and len(model.layers) == 2
    assert all(head.out_features == 5 for head in model.classifiers.values())


def test_get_model_config_returns_config_without_building():
    config = get_model_config("zorro_vit_b16", clip_seconds=2.56, spectrogram_frames=256)
    assert isinstance(config, ZorroConfig)
    assert config.clip_samples == 122_880  # 2.56 s at 48 kHz
    assert config.num_audio_patches == 128  # digest A1.2: 256 x 128 -> 16 x 8 patches
    # The preset itself is untouched by an override.
    assert get_model_config("zorro_vit_b16").clip_samples == 307_200


def test_unknown_model_lists_known_names():
    with pytest.raises(KeyError) as err:
        create_model("zorro_huge")
    assert "zorro_tiny" in str(err.value) and "zorro_vit_b16" in str(err.value)


def test_unknown_override_is_a_clear_error():
    with pytest.raises(TypeError, match="unknown config field.*'num_clases'.*valid fields.*num_classes"):
        create_model("zorro_tiny", num_clases=3)


def test_invalid_override_value_is_rejected_by_the_config():
    with pytest.raises(ValueError, match="fusion_mask"):
        get_model_config("zorro_tiny", fusion_mask="everything")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        get_model_config("zorro_tiny", spectrogram_frames=200)


def test_duplicate_registration_fails():
    with pytest.raises(ValueError, match="already registered"):

        @register_model(ZorroViT)
        def zorro_tiny():  # noqa: F811 - deliberately the same name
            return ZorroConfig()


def test_every_preset_config_is_a_dataclass_with_the_common_fields():
    for name in list_models():
        config = get_model_config(name)
        assert dataclasses.is_dataclass(config)
        for field in ("sample_rate", "clip_seconds", "num_frames", "image_size", "num_classes"):
            assert hasattr(config, field), (name, field)
        assert config.clip_samples == round(config.sample_rate * config.clip_seconds)
