"""The one exception the repository reader raises."""

from __future__ import annotations


class RepositoryError(Exception):
    """A model repository (or one model in it) does not follow the contract.

    The message names the file and the rule it breaks, so it can be shown as-is to the
    person who exported the model.
    """
