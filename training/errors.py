"""Errors the training commands report to the user on one line (no traceback)."""


class TrainError(RuntimeError):
    """A user-facing problem (bad model name, dataset, objective, options); the CLI prints it in one line."""
