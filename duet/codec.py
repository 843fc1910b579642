"""The safe codec: call arguments and results as a tree of msgpack primitives plus raw tensor buffers.

``encode`` turns a value into a *tree* and appends tensor storage to a list of buffers that travels
beside the header in a :mod:`duet.wire` frame; ``decode`` turns a tree and those buffers back into a value.
Nothing is ever unpickled, evaluated or looked up by a name the peer chose.

Tree format. A scalar travels as itself; everything else is a msgpack array whose first item is a tag,
so user data can never pose as a tag (a bare array is always a node; a bare map is never valid)::

    None, bool, int (-2**63 .. 2**64-1), float, str, bytes      themselves
    ["list", item, ...]               list
    ["tuple", item, ...]              tuple
    ["dict", key, value, key, value]  dict, in order; keys are None/bool/int/float/str/bytes/tuples of those
    ["complex", real, imag]           complex (two floats)
    ["slice", start, stop, step]      slice of None/int
    ["ellipsis"]                      ...
    ["tensor", dtype, [dims], buffer_index, requires_grad]
    ["dtype", name]                   torch.dtype
    ["size", dim, ...]                torch.Size
    ["device", type, index|None]      torch.device, type one of cpu, cuda, mps
    ["ptr", id]                       a reference to an object in the owner's store

Tensors travel as dtype name (from the fixed table ``WIRE_DTYPES``: every dtype of whole bytes, see
:mod:`duet.remote.dtypes`) + shape + the index of one raw, C-contiguous buffer. Decoding copies the bytes
into a fresh tensor that owns its memory; each buffer may be used by one tensor only (pass one ``used`` set
to every ``decode`` of the same frame), so a frame cannot make the receiver allocate more tensor memory than
it carried. ``nn.Parameter`` travels as a tensor with
``requires_grad``. Numpy scalars encode as Python scalars; numpy arrays, sets, ranges, functions, classes,
modules and every other type are refused (``TypeError``). Values out of range (a 65-bit int, nesting too
deep, a sparse or meta tensor) raise ``ValueError``. Any malformed tree raises
:class:`~duet.errors.ProtocolError`; a tensor above ``max_tensor_bytes`` raises
:class:`~duet.errors.QuotaExceeded`. Decoding also bounds nesting, total nodes, dims per tensor (64), dict
keys sharing one hash (16: no hash flooding with crafted tuple keys) and bool tensor bytes (0 or 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ProtocolError, QuotaExceeded
from .parts import ALIGN, FrameBuffer
from .remote.dtypes import DTYPES, RAW_DTYPES, WIRE_DTYPES, dtype_name
from .remote.meta import ENCODE_MAX_DEPTH, describe

__all__ = [
    "DTYPES",
    "RAW_DTYPES",
    "WIRE_DTYPES",
    "PointerRef",
    "decode",
    "describe",
    "dtype_name",
    "encode",
    "encode_value",
]

# a tensor this large, 7/8 or more of a frame put together from parts, is decoded in place
IN_PLACE_MIN = 1 << 20
_DEVICE_TYPES = frozenset({"cpu", "cuda", "mps"})
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_MAX_DIM = 2**62
_MAX_NDIM = 64
_MAX_DEVICE_INDEX = 1023
_MAX_PTR_ID = 256
_MAX_KEY_COLLISIONS = 16


@dataclass(frozen=True)
class PointerRef:
    """A reference to an object in the owner's store."""

    id: str


# ---------------------------------------------------------------------------------------------- encode


def encode(obj: Any, buffers: list[Any], *, pointer_id: Callable[[Any], str | None] | None = None) -> Any:
    """Encode ``obj`` into a tree, appending tensor buffers (zero-copy views) to ``buffers``.

    ``pointer_id(obj)`` is asked about every non-scalar; an id it returns makes the object a ``["ptr", id]``.
    The buffers alias the tensors' memory until the frame is packed: do not change them in place before.
    """
    return _Encoder(buffers, pointer_id).enc(obj, 0)


def encode_value(
    obj: Any, *, pointer_id: Callable[[Any], str | None] | None = None
) -> tuple[Any, list[memoryview]]:
    """Encode ``obj`` on its own: returns ``(tree, buffers)``."""
    buffers: list[memoryview] = []
    return encode(obj, buffers, pointer_id=pointer_id), buffers


class _Encoder:
    def __init__(self, buffers: list[Any], pointer_id: Callable[[Any], str | None] | None) -> None:
        self.buffers = buffers
        self.pointer_id = pointer_id

    def enc(self, obj: Any, depth: int) -> Any:
        if obj is None or isinstance(obj, bool | int | float | str | bytes):
            return _scalar(obj)
        if isinstance(obj, PointerRef):
            return ["ptr", obj.id]
        if self.pointer_id is not None and (ref := self.pointer_id(obj)) is not None:
            return ["ptr", ref]
        if isinstance(obj, torch.Size):
            return ["size", *(int(d) for d in obj)]
        if not isinstance(obj, list | tuple | dict):
            return self.leaf(obj)
        if depth >= ENCODE_MAX_DEPTH:
            raise ValueError(f"value nested deeper than {ENCODE_MAX_DEPTH} containers")
        if isinstance(obj, dict):
            out: list[Any] = ["dict"]
            for k, v in obj.items():
                out += (self.key(k, depth + 1), self.enc(v, depth + 1))
            return out
        return ["tuple" if isinstance(obj, tuple) else "list", *(self.enc(x, depth + 1) for x in obj)]

    def key(self, k: Any, depth: int) -> Any:
        if not _is_key(k):
            raise TypeError(f"dict key of type {type(k).__name__} cannot be sent")
        return self.enc(k, depth)

    def leaf(self, obj: Any) -> Any:
        if isinstance(obj, complex):
            return ["complex", obj.real, obj.imag]
        if isinstance(obj, slice):
            parts = (obj.start, obj.stop, obj.step)
            if not all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in parts):
                raise TypeError("only slices of int/None can be sent")
            return ["slice", *(_scalar(p) for p in parts)]
        if obj is Ellipsis:
            return ["ellipsis"]
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj)
        if isinstance(obj, torch.dtype):
            return ["dtype", dtype_name(obj)]
        if isinstance(obj, torch.device):
            if obj.type not in _DEVICE_TYPES:
                raise ValueError(f"device type {obj.type!r} cannot be sent")
            return ["device", obj.type, obj.index]
        if isinstance(obj, np.ndarray):
            raise TypeError("numpy arrays are not sent implicitly; use torch.from_numpy(arr)")
        if isinstance(obj, np.generic) and obj.dtype.kind in "biufc":
            return self.enc(obj.item(), 0)
        raise TypeError(f"objects of type {type(obj).__qualname__} cannot be sent to a duet peer")

    def tensor(self, t: torch.Tensor) -> list[Any]:
        name = dtype_name(t.dtype)
        device = t.device.type
        if t.layout != torch.strided or device not in _DEVICE_TYPES:
            raise ValueError(
                f"only dense tensors on {sorted(_DEVICE_TYPES)} can be sent, not {t.layout}/{t.device}"
            )
        grad = bool(t.requires_grad)
        # detach().cpu().resolve_conj().resolve_neg().contiguous(), each step only where it changes
        # something (each is a call through torch's dispatcher even when it returns the tensor itself)
        t = t.detach()
        if device != "cpu":
            t = t.cpu()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        if not t.is_contiguous():
            t = t.contiguous()
        self.buffers.append(t.reshape(-1).view(torch.uint8).numpy().data)
        return ["tensor", name, list(t.shape), len(self.buffers) - 1, grad]


def _scalar(obj: Any) -> Any:
    """``obj`` as an exact builtin (a subclass such as IntEnum or numpy.float64 travels as its base)."""
    if obj is None or isinstance(obj, bool):
        return obj if obj is None else bool(obj)
    if isinstance(obj, int):
        if not _INT_MIN <= obj <= _INT_MAX:
            raise ValueError(f"int {obj} does not fit in 64 bits")
        return int(obj)
    return float(obj) if isinstance(obj, float) else str(obj) if isinstance(obj, str) else bytes(obj)


def _is_key(k: Any) -> bool:
    if k is None or isinstance(k, bool | int | float | str | bytes):
        return True
    return type(k) is tuple and all(_is_key(x) for x in k)


# ---------------------------------------------------------------------------------------------- decode


def decode(
    tree: Any,
    buffers: Sequence[memoryview | bytes],
    *,
    make_pointer: Callable[[str], Any] | None = None,
    max_tensor_bytes: int | None = None,
    max_depth: int = 64,
    max_items: int = 1_000_000,
    used: set[int] | None = None,
) -> Any:
    """Decode a tree made by :func:`encode` (checked as hostile input).

    ``make_pointer(id)`` builds what a ``["ptr", id]`` becomes (default: a :class:`PointerRef`); its own
    exceptions propagate unchanged. ``used`` holds the buffer indices already taken in this frame (updated).
    Raises ``ProtocolError`` on any malformed tree, ``QuotaExceeded`` for a tensor above ``max_tensor_bytes``.
    """
    dec = _Decoder(buffers, make_pointer, max_tensor_bytes, max_depth, max_items, used)
    try:
        return dec.dec(tree, 0)
    except RecursionError as exc:  # only when a caller raised max_depth beyond what Python can nest
        raise ProtocolError("value nested too deeply") from exc


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(x: Any, lo: int, hi: int, what: str) -> int:
    if type(x) is not int or not lo <= x <= hi:
        raise ProtocolError(f"{what} must be an int in [{lo}, {hi}], got {_short(x)}")
    return x


class _Decoder:
    __slots__ = ("buffers", "make_pointer", "max_tensor_bytes", "max_depth", "items_left", "used")

    def __init__(
        self,
        buffers: Sequence[memoryview | bytes],
        make_pointer: Callable[[str], Any] | None,
        max_tensor_bytes: int | None,
        max_depth: int,
        max_items: int,
        used: set[int] | None,
    ) -> None:
        self.buffers = buffers
        self.make_pointer = make_pointer
        self.max_tensor_bytes = max_tensor_bytes
        self.max_depth = max_depth
        self.items_left = max_items
        self.used = set() if used is None else used

    def dec(self, node: Any, depth: int) -> Any:
        self.items_left -= 1
        if self.items_left < 0:
            raise ProtocolError("value has too many items")
        if node is None or type(node) in _PLAIN:
            return node
        if type(node) is not list or not node or type(node[0]) is not str:
            raise ProtocolError(f"not a valid value node: {_short(node)}")
        handler = _HANDLERS.get(node[0])
        if handler is None:
            raise ProtocolError(f"unknown tag {_short(node[0])}")
        return handler(self, node, depth)

    def list_(self, node: list[Any], depth: int) -> list[Any]:
        self.enter(node, depth)
        out = []
        for x in node[1:]:
            if x is None or type(x) in _PLAIN:  # what dec() does for a scalar, without the call
                self.items_left -= 1
                if self.items_left < 0:
                    raise ProtocolError("value has too many items")
                out.append(x)
            else:
                out.append(self.dec(x, depth + 1))
        return out

    def tuple_(self, node: list[Any], depth: int) -> tuple[Any, ...]:
        return tuple(self.list_(node, depth))

    def enter(self, node: list[Any], depth: int) -> list[Any]:
        if depth >= self.max_depth:
            raise ProtocolError(f"value nested deeper than {self.max_depth} containers")
        return node

    @staticmethod
    def arity(node: list[Any], n: int) -> None:
        if len(node) != n:
            raise ProtocolError(f"{node[0]} node must have {n - 1} fields, got {len(node) - 1}")

    def dict_(self, node: list[Any], depth: int) -> dict[Any, Any]:
        self.enter(node, depth)
        if len(node) % 2 != 1:
            raise ProtocolError("dict node must hold key/value pairs")
        out: dict[Any, Any] = {}
        hashes: dict[int, int] = {}
        for i in range(1, len(node), 2):
            key = self.dec(node[i], depth + 1)
            if not _is_key(key):
                raise ProtocolError(f"dict key of type {type(key).__name__} is not allowed")
            h = hash(key)
            count = hashes[h] = hashes.get(h, 0) + 1
            if count > _MAX_KEY_COLLISIONS:  # crafted tuple keys could make the dict quadratic
                raise ProtocolError("too many dict keys with the same hash")
            out[key] = self.dec(node[i + 1], depth + 1)
        return out

    def complex_(self, node: list[Any], depth: int) -> complex:
        self.arity(node, 3)
        if type(node[1]) is not float or type(node[2]) is not float:
            raise ProtocolError("complex node must hold two floats")
        return complex(node[1], node[2])

    def ellipsis(self, node: list[Any], depth: int) -> Any:
        self.arity(node, 1)
        return Ellipsis

    def slice_(self, node: list[Any], depth: int) -> slice:
        self.arity(node, 4)
        _, start, stop, step = node
        if {type(start), type(stop), type(step)} - _BOUND_TYPES:
            raise ProtocolError("slice bounds must be int or None")
        return slice(start, stop, step)

    def dtype(self, node: list[Any], depth: int) -> torch.dtype:
        self.arity(node, 2)
        dtype = WIRE_DTYPES.get(node[1]) if type(node[1]) is str else None
        if dtype is None:
            raise ProtocolError(f"unknown dtype {_short(node[1])}")
        return dtype

    def size(self, node: list[Any], depth: int) -> torch.Size:
        if len(node) - 1 > _MAX_NDIM:
            raise ProtocolError(f"size has more than {_MAX_NDIM} dims")
        return torch.Size(_int(d, 0, _MAX_DIM, "a dim") for d in node[1:])

    def device(self, node: list[Any], depth: int) -> torch.device:
        self.arity(node, 3)
        kind, index = node[1], node[2]
        if type(kind) is not str or kind not in _DEVICE_TYPES:
            raise ProtocolError(f"device type {_short(kind)} is not allowed")
        if index is not None:
            _int(index, 0, _MAX_DEVICE_INDEX, "a device index")
        return torch.device(kind, index)

    def ptr(self, node: list[Any], depth: int) -> Any:
        if len(node) != 2:
            self.arity(node, 2)
        ref = node[1]
        if type(ref) is not str or not 0 < len(ref) <= _MAX_PTR_ID:
            raise ProtocolError("pointer id must be a non-empty str")
        return PointerRef(ref) if self.make_pointer is None else self.make_pointer(ref)

    def tensor(self, node: list[Any], depth: int) -> torch.Tensor:
        self.arity(node, 5)
        _, name, shape, index, grad = node
        dtype = self.dtype(["dtype", name], depth)
        if type(shape) is not list or len(shape) > _MAX_NDIM:
            raise ProtocolError(f"tensor shape must be a list of at most {_MAX_NDIM} dims")
        dims = [_int(d, 0, _MAX_DIM, "a tensor dim") for d in shape]
        _int(index, 0, len(self.buffers) - 1, "a buffer index")
        if index in self.used:
            raise ProtocolError(f"buffer {index} is used twice")
        if type(grad) is not bool or (grad and not (dtype.is_floating_point or dtype.is_complex)):
            raise ProtocolError(f"requires_grad must be a bool (and False for {name})")
        try:
            raw = memoryview(self.buffers[index]).cast("B")
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"buffer {index} is not a flat byte buffer") from exc
        nbytes = math.prod(dims) * dtype.itemsize
        if raw.nbytes != nbytes:
            raise ProtocolError(f"tensor {dims} of {name} needs {nbytes} bytes, buffer has {raw.nbytes}")
        if self.max_tensor_bytes is not None and nbytes > self.max_tensor_bytes:
            raise QuotaExceeded(
                f"tensor of {nbytes} bytes exceeds the limit of {self.max_tensor_bytes} bytes"
            )
        self.used.add(index)
        src = np.frombuffer(raw, dtype=np.uint8)
        if dtype == torch.bool and nbytes and src.max() > 1:
            raise ProtocolError("bool tensor holds bytes other than 0 and 1")
        frame = raw.obj
        if (
            type(frame) is FrameBuffer
            and nbytes >= IN_PLACE_MIN
            and nbytes * 8 >= frame.nbytes * 7
            and not raw.readonly
        ):
            address = src.ctypes.data
            offset = address - frame.ctypes.data
            if address % ALIGN == 0 and offset not in frame.aliased:
                # a large tensor that is nearly all of a frame put together from parts: decoded in place
                # (its memory is the frame's, which nothing else uses), once
                frame.aliased.add(offset)
                return torch.frombuffer(raw, dtype=dtype).reshape(dims).requires_grad_(grad)
        try:
            out = torch.empty(dims, dtype=dtype)
        except (
            RuntimeError,
            ValueError,
            OverflowError,
        ) as exc:  # e.g. a 0-sized tensor whose other dims overflow the strides
            raise ProtocolError(f"tensor shape {_short(dims)} is not valid") from exc
        if nbytes:
            out.reshape(-1).view(torch.uint8).numpy()[:] = src
        return out.requires_grad_(grad)


_PLAIN = frozenset({bool, int, float, str, bytes})
_BOUND_TYPES = frozenset({type(None), int})
# the tags a tree may use, each to the method decoding it (one table for every decoder)
# fmt: off
_HANDLERS: dict[str, Callable[[_Decoder, list[Any], int], Any]] = {
    "list": _Decoder.list_, "tuple": _Decoder.tuple_, "dict": _Decoder.dict_, "complex": _Decoder.complex_,
    "slice": _Decoder.slice_, "ellipsis": _Decoder.ellipsis, "tensor": _Decoder.tensor,
    "dtype": _Decoder.dtype, "size": _Decoder.size, "device": _Decoder.device, "ptr": _Decoder.ptr,
}
# fmt: on
