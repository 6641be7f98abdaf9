"""Which served model answers an upload, from what it contains and what the client asked.

Everything comes from the repository's route table and each model's `missing_modality`
policy, so a new family needs no gateway change:

- an exact model for the wanted modalities answers (`zorro_av`, `zorro_audio`, `zorro_video`);
- otherwise a model of the family taking more modalities answers if its policy is
  `zero_fill` (the missing inputs are zeros and the answer is flagged as degraded), or the
  request is refused (`reject`: 422 `modality_not_served`);
- in `auto` mode an audio+video upload may fall back to a unimodal model when the family
  has no audio+video one (the other track is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from avserve.contract import AUDIO, AUDIO_ONLY, AUDIO_VIDEO, VIDEO, VIDEO_ONLY
from avserve.repository import ModelSpec, Repository

from .errors import ApiError

ModalityChoice = Literal["auto", "av", "audio", "video"]
_FORCED = {"av": AUDIO_VIDEO, AUDIO: AUDIO_ONLY, VIDEO: VIDEO_ONLY}


def modality_label(modalities: frozenset[str] | set[str]) -> str:
    return "+".join(sorted(modalities)) or "none"


def route_label(modalities: frozenset[str]) -> str:
    """Short name of a modality set for metrics: av, audio or video."""
    return "av" if modalities == AUDIO_VIDEO else modality_label(modalities)


@dataclass(frozen=True)
class Route:
    spec: ModelSpec
    used: frozenset[str]  # modalities decoded from the upload
    zero_filled: frozenset[str] = frozenset()  # inputs sent as zeros

    @property
    def degraded(self) -> bool:
        return bool(self.zero_filled)

    @property
    def label(self) -> str:
        return route_label(self.used) + ("+zero_fill" if self.zero_filled else "")


def default_family(repository: Repository, configured: str | None) -> str | None:
    if configured:
        return configured
    families = repository.families
    return families[0] if families else None


def choose_route(
    repository: Repository, family: str, present: frozenset[str], choice: ModalityChoice = "auto"
) -> Route:
    routes = repository.routes.get(family)
    if not routes:
        raise ApiError(
            404, "unknown_model", f"no model family {family!r} (served: {', '.join(repository.families) or 'none'})"
        )
    wanted = present if choice == "auto" else _FORCED[choice]
    absent = wanted - present
    if absent:
        raise ApiError(
            422,
            "modality_not_present",
            f"modality={choice} needs {modality_label(wanted)} but the upload has {modality_label(present)} "
            f"(no decodable {modality_label(absent)} stream)",
        )
    exact = repository.route(family, wanted)
    if exact is not None:
        return Route(exact, wanted)

    larger = sorted(
        (repository.model(name) for modalities, name in routes.items() if modalities > wanted),
        key=lambda spec: (len(spec.modalities), spec.name),
    )
    if larger:
        fallback = larger[0]
        if fallback.missing_modality == "zero_fill":
            return Route(fallback, wanted, fallback.modalities - wanted)
        if fallback.missing_modality == "reject":
            raise ApiError(
                422,
                "modality_not_served",
                f"model family {family!r} does not serve {modality_label(wanted)}-only clips "
                f"(its models need {modality_label(fallback.modalities)})",
            )
    if choice == "auto":
        smaller = sorted(
            (repository.model(name) for modalities, name in routes.items() if modalities < wanted),
            key=lambda spec: (-len(spec.modalities), spec.name),
        )
        if smaller:
            return Route(smaller[0], smaller[0].modalities)
    served = ", ".join(sorted(modality_label(m) for m in routes))
    raise ApiError(
        422,
        "no_route",
        f"model family {family!r} has no model for {modality_label(wanted)} clips (it serves {served})",
    )
