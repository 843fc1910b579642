"""What the scientist may know of a value without a request: :func:`describe` (re-exported by
:mod:`duet.codec`)."""

from __future__ import annotations

import sys
from typing import Any

import torch

from .dtypes import DTYPE_TO_NAME as _DTYPE_TO_NAME

__all__ = ["ENCODE_MAX_DEPTH", "describe"]

ENCODE_MAX_DEPTH = 64  # containers nested in one value (the codec's limit; describe stops there too)

_SCALAR_BYTES = {type(None): 0, bool: 1, int: 8, float: 8, complex: 16}


def describe(obj: Any, _depth: int = 0) -> dict[str, Any]:
    """Metadata for the pandas views: type, shape, dtype, size_bytes, numel (elements a release reveals).

    A tensor reveals its numel, a scalar 1, a container the sum over its items (dict keys count too),
    an ``nn.Module`` its parameters and buffers.
    """
    cls = type(obj)
    if cls in _SCALAR_BYTES:  # exactly None, bool, int, float or complex (a subclass takes the long way)
        return _meta(cls.__name__, None, None, _SCALAR_BYTES[cls], 1)
    kind = cls.__name__
    if isinstance(obj, torch.Tensor):  # the common case, without the lists a module needs
        numel, dtype = obj.numel(), _DTYPE_TO_NAME.get(obj.dtype) or str(obj.dtype)
        return _meta(kind, list(obj.shape), dtype, numel * obj.element_size(), numel)
    if isinstance(obj, torch.nn.Module):
        tensors = [*obj.parameters(), *obj.buffers()]
        dtypes = {_DTYPE_TO_NAME.get(t.dtype, str(t.dtype)) for t in tensors}
        numel, size = sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)
        return _meta(kind, None, dtypes.pop() if len(dtypes) == 1 else None, size, numel)
    if isinstance(obj, torch.Size):
        return _meta(kind, [len(obj)], None, 8 * len(obj), len(obj))
    if isinstance(obj, (list, tuple, dict)) and _depth < ENCODE_MAX_DEPTH:
        items = [*obj, *obj.values()] if isinstance(obj, dict) else obj
        parts = [describe(x, _depth + 1) for x in items]
        return _meta(
            kind, [len(obj)], None, sum(p["size_bytes"] for p in parts), sum(p["numel"] for p in parts)
        )
    if isinstance(obj, (str, bytes)):
        return _meta(kind, None, None, len(obj.encode() if isinstance(obj, str) else obj), 1)
    return _meta(kind, None, None, _SCALAR_BYTES.get(type(obj), sys.getsizeof(obj)), 1)


def _meta(
    kind: str, shape: list[int] | None, dtype: str | None, size_bytes: int, numel: int
) -> dict[str, Any]:
    return {"type": kind, "shape": shape, "dtype": dtype, "size_bytes": size_bytes, "numel": numel}
