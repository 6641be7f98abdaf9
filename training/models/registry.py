"""timm-style model registry: presets are named functions that return a config.

    @register_model(ZorroViT)
    def zorro_tiny() -> ZorroConfig:
        return ZorroConfig(...)

    create_model("zorro_tiny", num_classes=5)   # -> ZorroViT with that config field replaced
    get_model_config("zorro_vit_b16")          # -> the config only, no weights built
    list_models()                              # -> sorted preset names

A preset returns a config (not a module) so configs can be inspected, overridden and
written to a model repository without allocating weights; the decorator records which
architecture class builds it. Build paper-size models on the meta device to count
parameters: `with torch.device("meta"): create_model("zorro_vit_b16")`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

_PRESETS: dict[str, tuple[Callable[[], Any], type[nn.Module]]] = {}


def register_model(model_cls: type[nn.Module]) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Registers the decorated preset function under its __name__, built by `model_cls(config)`."""

    def decorator(preset: Callable[[], Any]) -> Callable[[], Any]:
        name = preset.__name__
        if name in _PRESETS:
            raise ValueError(f"model {name!r} is already registered")
        _PRESETS[name] = (preset, model_cls)
        return preset

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered preset names (optionally filtered by an fnmatch pattern, e.g. "*tiny*")."""
    return sorted(name for name in _PRESETS if fnmatch.fnmatch(name, pattern))


def _lookup(name: str) -> tuple[Callable[[], Any], type[nn.Module]]:
    try:
        return _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def get_model_config(name: str, **overrides: Any) -> Any:
    """The preset's config with `overrides` (config field names) applied; builds no weights."""
    preset, _ = _lookup(name)
    config = preset()
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config) if f.init}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"unknown config field(s) {unknown} for model {name!r} ({type(config).__name__}); "
            f"valid fields: {', '.join(sorted(fields))}"
        )
    return dataclasses.replace(config, **overrides)  # re-runs __post_init__ validation


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Builds the registered model `name` with config fields replaced by `overrides`."""
    _, model_cls = _lookup(name)
    return model_cls(get_model_config(name, **overrides))
