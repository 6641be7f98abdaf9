"""Checks of one request against its model's spec, shared by both backends.

Checking before queueing gives the caller a precise message ("input 'video' has shape
[...], expected [...]") instead of onnxruntime's or Triton's, and keeps a malformed request
out of a micro-batch where it would make the whole batch fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from avserve.repository import ModelSpec

from .base import InferenceFailed


def check_request(
    spec: ModelSpec, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
) -> tuple[int, tuple[str, ...]]:
    """Validate `inputs`/`outputs`; returns (batch rows, output names to return).

    Rows are 0 for models without a batch dimension (max_batch_size 0).
    """
    expected = {tensor.name for tensor in spec.inputs}
    if set(inputs) != expected:
        missing, unknown = sorted(expected - set(inputs)), sorted(set(inputs) - expected)
        raise InferenceFailed(f"model {spec.name!r} takes inputs {sorted(expected)} (missing {missing}, unknown {unknown})")
    batched = spec.max_batch_size > 0
    rows: int | None = None
    for tensor in spec.inputs:
        array = inputs[tensor.name]
        if not isinstance(array, np.ndarray):
            raise InferenceFailed(f"input {tensor.name!r} must be a numpy array, not {type(array).__name__}")
        if array.dtype != tensor.numpy_dtype:
            raise InferenceFailed(
                f"input {tensor.name!r} of model {spec.name!r} must be {tensor.numpy_dtype} ({tensor.data_type}), "
                f"not {array.dtype}"
            )
        shape = array.shape[1:] if batched else array.shape
        # -1 in the config is a variable dimension: any size goes there.
        if len(shape) != len(tensor.dims) or any(d >= 0 and d != s for d, s in zip(tensor.dims, shape)):
            wanted = (["batch"] if batched else []) + [d if d >= 0 else "*" for d in tensor.dims]
            raise InferenceFailed(
                f"input {tensor.name!r} of model {spec.name!r} has shape {list(array.shape)}, expected {wanted}"
            )
        if batched:
            if array.ndim == 0 or array.shape[0] == 0:
                raise InferenceFailed(f"input {tensor.name!r} has an empty batch")
            if rows is not None and array.shape[0] != rows:
                raise InferenceFailed(f"inputs of model {spec.name!r} disagree on the batch size")
            rows = array.shape[0]
    if batched and rows is not None and rows > spec.max_batch_size:
        raise InferenceFailed(f"batch of {rows} exceeds model {spec.name!r}'s max_batch_size {spec.max_batch_size}")

    names = tuple(tensor.name for tensor in spec.outputs)
    if outputs is None:
        return rows or 0, names
    unknown_outputs = sorted(set(outputs) - set(names))
    if unknown_outputs:
        raise InferenceFailed(f"model {spec.name!r} has no outputs {unknown_outputs} (has {list(names)})")
    return rows or 0, tuple(dict.fromkeys(outputs))
