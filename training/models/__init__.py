"""Audio-visual classifiers: one module per architecture, a timm-style registry, shared layers.

    from training.models import create_model, list_models
    model = create_model("zorro_tiny", num_classes=5)
    out = model(audio=pcm, video=frames)   # {"audio": ..., "video": ..., "fusion": ..., "global": ..., "logits": ...}

    model = create_model("mbt_tiny")
    out = model(audio=pcm)                  # {"cls": ..., "logits": ...}: the audio stream alone

The common interface is documented in training/models/base.py.
"""

from . import avmae, mbt, pemt, vatt, zorro  # noqa: F401  (importing an architecture module registers its presets)
from .base import AUDIO, AUDIO_ONLY, AUDIO_VIDEO, HEAD_OUTPUT_PREFIX, LOGITS_KEY, VIDEO, VIDEO_ONLY, AVClassifier, AVConfig, ModalityGraph
from .mbt import MBT, MBTConfig
from .registry import create_model, get_model_config, list_models, register_model
from .zorro import ZorroConfig, ZorroViT

__all__ = [
    "AUDIO",
    "AUDIO_ONLY",
    "AUDIO_VIDEO",
    "LOGITS_KEY",
    "MBT",
    "MBTConfig",
    "VIDEO",
    "VIDEO_ONLY",
    "AVClassifier",
    "AVConfig",
    "HEAD_OUTPUT_PREFIX",
    "ModalityGraph",
    "ZorroConfig",
    "ZorroViT",
    "create_model",
    "get_model_config",
    "list_models",
    "register_model",
]
