"""Training objectives: what the trainer optimises, one module each, registered by name.

    from training.objectives import get_objective, list_objectives
    list_objectives()                    # ["contrastive", "masked", "supervised"]
    get_objective("masked").Options      # its --objective-set fields

The interface is documented in training/objectives/base.py.
"""

from . import contrastive, masked, pemt_mep_cpp, supervised, vatt_nce  # noqa: F401  (importing an objective module registers it)
from .base import (
    NoOptions,
    Objective,
    ObjectiveError,
    ObjectiveSetup,
    StepContext,
    TrainingModule,
    concatenate,
    get_objective,
    list_objectives,
    register_objective,
    select,
)

__all__ = [
    "NoOptions",
    "Objective",
    "ObjectiveError",
    "ObjectiveSetup",
    "StepContext",
    "TrainingModule",
    "concatenate",
    "get_objective",
    "list_objectives",
    "register_objective",
    "select",
]
