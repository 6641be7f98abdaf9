"""A whole model repository: every model's spec, and the route table the gateway picks from.

Each family exports one model per servable modality set (`zorro_av`, `zorro_audio`, ...);
`routes[family][modalities]` names the model that serves exactly those modalities.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from avserve.contract import EXPORT_JOURNAL_PREFIX, EXPORT_JOURNAL_SUFFIX

from .errors import RepositoryError
from .spec import ModelSpec, load_model_spec

log = logging.getLogger("avserve.repository")


@dataclass(frozen=True)
class Repository:
    root: Path | None
    models: Mapping[str, ModelSpec]
    routes: Mapping[str, Mapping[frozenset[str], str]]

    @classmethod
    def from_specs(cls, specs: Iterable[ModelSpec], root: Path | None = None) -> Repository:
        """Index specs by name and build the route table (also used with Triton's config API)."""
        models: dict[str, ModelSpec] = {}
        routes: dict[str, dict[frozenset[str], str]] = {}
        for spec in specs:
            if spec.name in models:
                raise RepositoryError(f"two models are named {spec.name!r}")
            models[spec.name] = spec
            family = routes.setdefault(spec.family, {})
            if spec.modalities in family:
                raise RepositoryError(
                    f"models {family[spec.modalities]!r} and {spec.name!r} both serve family "
                    f"{spec.family!r} with modalities {'+'.join(sorted(spec.modalities))!r}"
                )
            family[spec.modalities] = spec.name
        return cls(root=root, models=models, routes=routes)

    @property
    def families(self) -> list[str]:
        return sorted(self.routes)

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise RepositoryError(f"no model named {name!r} (have {sorted(self.models)})") from None

    def route(self, family: str, modalities: Iterable[str]) -> ModelSpec | None:
        """The model of `family` taking exactly `modalities`, or None if it was not exported."""
        name = self.routes.get(family, {}).get(frozenset(modalities))
        return self.models[name] if name is not None else None


def model_directories(repo_dir: Path) -> list[Path]:
    """The model directories to read: every sub-directory but hidden ones (editor/VCS noise, an
    exporter's staging) and the models of a family whose export is still swapping them in (a
    pending journal, avserve.contract.EXPORT_JOURNAL_PREFIX: that family is half old, half new
    until the export, or the next one, finishes)."""
    mid_swap: set[str] = set()
    for journal in repo_dir.glob(f"{EXPORT_JOURNAL_PREFIX}*{EXPORT_JOURNAL_SUFFIX}"):
        try:
            entry = json.loads(journal.read_text())
            names = set(entry["install"]) | set(entry.get("remove", ()))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a journal being written: its swap has not begun
        log.warning("%s: an export of these models did not finish; leaving out %s", journal, ", ".join(sorted(names)))
        mid_swap |= names
    return sorted(
        p for p in repo_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in mid_swap
    )


def load_repository(repo_dir: Path) -> Repository:
    """Read every model under `repo_dir`; all problems are reported together in one error."""
    repo_dir = Path(repo_dir)
    if not repo_dir.is_dir():
        raise RepositoryError(f"{repo_dir}: model repository is not a directory")
    model_dirs = model_directories(repo_dir)
    if not model_dirs:
        raise RepositoryError(f"{repo_dir}: model repository has no models")
    specs: list[ModelSpec] = []
    problems: list[str] = []
    for model_dir in model_dirs:
        try:
            specs.append(load_model_spec(model_dir))
        except RepositoryError as error:
            problems.append(str(error))
    if problems:
        raise RepositoryError("\n".join(problems))
    return Repository.from_specs(specs, root=repo_dir)
