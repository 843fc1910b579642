"""The dtypes that travel over the wire, by name, and the check that refuses to publish what cannot.

Every tensor travels as its raw bytes (see :mod:`duet.codec`), so any dtype whose elements are whole
bytes can: the usual ones (``DTYPES``, with full CPU arithmetic) and the storage-only ones torch has
(float8 variants, float4 pairs, complex32, the bits types: ``RAW_DTYPES``). What cannot travel is refused
when the owner publishes it: quantized dtypes (their bytes mean nothing without the scale and zero point)
and the sub-byte ``int1..int7``/``uint1..uint7`` shells (their tensors cannot even be copied).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

__all__ = ["DTYPES", "RAW_DTYPES", "WIRE_DTYPES", "check_publishable", "dtype_name"]


def _table(names: str) -> Mapping[str, torch.dtype]:
    return MappingProxyType(
        {n: d for n in names.split() if isinstance(d := getattr(torch, n, None), torch.dtype)}
    )


#: The dtypes with full CPU support, by wire name. Built once from our own constants, never from peer text.
DTYPES = _table(
    "bool uint8 int8 int16 int32 int64 uint16 uint32 uint64 "
    "float16 bfloat16 float32 float64 complex64 complex128"
)
#: The storage-only dtypes: they travel as bytes too (few operators support them).
RAW_DTYPES = _table(
    "float8_e4m3fn float8_e4m3fnuz float8_e5m2 float8_e5m2fnuz float8_e8m0fnu float4_e2m1fn_x2 "
    "complex32 bits8 bits16 bits1x8 bits2x4 bits4x2"
)
#: Every dtype a tensor on the wire may have.
WIRE_DTYPES: Mapping[str, torch.dtype] = MappingProxyType({**DTYPES, **RAW_DTYPES})
DTYPE_TO_NAME = {d: n for n, d in WIRE_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The wire name of a dtype (``"float32"``); ``TypeError`` if it does not travel."""
    try:
        return DTYPE_TO_NAME[dtype]
    except KeyError:
        raise TypeError(f"tensors of dtype {dtype} cannot be sent") from None


def check_publishable(obj: Any, _depth: int = 0) -> None:
    """``TypeError`` naming the dtype if ``obj`` holds a tensor (or a module a parameter or buffer, or a
    container an item) whose dtype cannot travel: a request for it could be accepted, never answered."""
    if isinstance(obj, torch.dtype):
        dtype_name(obj)
    elif isinstance(obj, torch.Tensor):
        dtype_name(obj.dtype)
    elif isinstance(obj, torch.nn.Module):
        for t in [*obj.parameters(), *obj.buffers()]:
            dtype_name(t.dtype)
    elif isinstance(obj, list | tuple | dict) and _depth < 64:
        for x in [*obj, *obj.values()] if isinstance(obj, dict) else obj:
            check_publishable(x, _depth + 1)
