"""The scientist's handles on remote objects: Pointer, the remote torch namespace, and remote Python types.

A pointer's own attributes all start with ``_duet`` or are the few documented methods (``get``,
``request``, ``delete``), so ``ptr.sum`` or ``ptr.shape`` always mean the remote object's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import PermissionDenied

if TYPE_CHECKING:
    from .client import Remote, RequestHandle

__all__ = ["Pointer", "RemoteNamespace", "RemotePython", "GradContext"]

# answered from the object's metadata, without touching its value
_META = frozenset({"shape", "dtype", "device", "requires_grad", "ndim"})
# metadata that can change while the object lives (``requires_grad_()``, ``append``): asked for each time
_MUTABLE_TYPES = frozenset({"list", "dict", "OrderedDict"})
# names a namespace remembers (d.torch.nn …): bounded, whatever names a program asks for
_NAMESPACE_CHILDREN = 1024


_set = object.__setattr__


class Pointer:
    """A reference to an object held by the owner. Every call on it returns a new pointer at once."""

    __slots__ = ("_duet_remote", "_duet_id", "_duet_meta", "_duet_owned", "__weakref__")
    _duet_remote: Remote
    _duet_id: str
    _duet_meta: dict[str, Any] | None
    _duet_owned: bool

    def __init__(
        self, remote: Remote, oid: str, meta: dict[str, Any] | None = None, owned: bool = True
    ) -> None:
        # (object.__setattr__: not the remote-attribute guard below, for each of a training loop's pointers)
        _set(self, "_duet_remote", remote)
        _set(self, "_duet_id", oid)
        _set(self, "_duet_meta", meta)
        # the owner's object is released when this pointer goes (or on delete())
        _set(self, "_duet_owned", owned)

    def __del__(self) -> None:
        # (a pointer's last reference is gone: a deque append, no lock and no I/O, in whatever thread
        # drops it; cheaper per pointer than a weakref.finalize, which a training loop makes by thousands)
        try:
            if self._duet_owned:
                _set(self, "_duet_owned", False)
                self._duet_remote._release(self._duet_id)
        except Exception:  # noqa: BLE001 - never raise from a finalizer (a half-built pointer, shutdown)
            pass

    # ---- the documented methods ---------------------------------------------------------------------

    def get(
        self,
        request_block: bool = False,
        name: str = "",
        reason: str = "",
        timeout_secs: float = 20,
        delete_obj: bool = False,
        strict: bool = False,
    ) -> Any:
        """The value, if the owner's queue lets it out (see API.md)."""
        return self._duet_remote.get(
            self,
            request_block=request_block,
            name=name,
            reason=reason,
            timeout_secs=timeout_secs,
            delete_obj=delete_obj,
            strict=strict,
        )

    def request(self, name: str = "", reason: str = "", timeout_secs: float | None = None) -> RequestHandle:
        """Ask for the value without waiting; returns a handle with ``.status`` and ``.wait()``."""
        return self._duet_remote.request(self, name=name, reason=reason, timeout_secs=timeout_secs)

    def delete(self) -> None:
        """Free the owner's object now (published objects are never freed); the pointer is unusable after."""
        if self._duet_owned:
            self._duet_owned = False
            self._duet_remote._release(self._duet_id)
            self._duet_remote.flush_soon()

    # ---- remote attributes ---------------------------------------------------------------------------

    def _duet_metadata(self, key: str | None = None, fresh: bool = False) -> dict[str, Any]:
        """The owner's metadata (cached; asked again when ``fresh`` or when it lacks ``key``)."""
        meta = self._duet_meta
        if meta is None or fresh or (key is not None and key not in meta):
            meta = self._duet_remote.metadata(self)
            self._duet_meta = meta
        return meta

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _META:
            return self._duet_meta_value(name)
        if self._duet_remote.is_property(self, name):
            return self._duet_remote.attr(self, name)
        return _Method(self, name)

    def _duet_meta_value(self, name: str) -> Any:
        if name == "device":
            meta = self._duet_meta if self._duet_meta is not None else self._duet_metadata()
            if meta.get("device") is not None:
                return torch.device(meta["device"])
            # the owner computes on CPU (the allowlist refuses every other device)
            return torch.device("cpu") if meta.get("dtype") and meta.get("shape") is not None else None
        meta = self._duet_metadata(fresh=name == "requires_grad")
        if name in ("shape", "ndim"):
            shape = meta.get("shape")
            if shape is None:
                return None
            return torch.Size(shape) if name == "shape" else len(shape)
        if name == "dtype":
            return getattr(torch, meta["dtype"]) if meta.get("dtype") else None
        return meta.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_duet"):
            object.__setattr__(self, name, value)
        else:
            raise PermissionDenied(f"setting attributes of remote objects is not supported ({name!r})")

    def __call__(self, *args: Any, **kwargs: Any) -> Pointer:
        return self._duet_remote.method(self, "__call__", args, kwargs)

    def __len__(self) -> int:
        meta = self._duet_meta
        if meta is None or "len" not in meta or meta.get("type") in _MUTABLE_TYPES:
            meta = self._duet_metadata(fresh=True)  # one round trip; a list's length can change
        if meta.get("len") is None:
            raise TypeError(f"remote object of type {meta.get('type')} has no len()")
        return int(meta["len"])

    def __bool__(self) -> bool:
        raise TypeError("a pointer has no truth value here: compare remotely and .get() the result")

    def __iter__(self) -> Any:
        """``a, b = d.torch.max(x, 0)``: one pointer per item (``len()`` asks the owner's metadata)."""
        if self._duet_metadata("len").get("type") in ("dict", "OrderedDict"):
            raise TypeError("iterate over a remote dict's .keys(), .values() or .items()")
        return iter([self[i] for i in range(len(self))])

    def __repr__(self) -> str:
        meta = self._duet_meta or {}
        bits = [str(meta.get("type") or "object")]
        if meta.get("shape") is not None:
            bits.append(str(tuple(meta["shape"])))
        if meta.get("dtype"):
            bits.append(str(meta["dtype"]))
        if meta.get("name"):
            bits.append(repr(meta["name"]))
        return f"<Pointer {self._duet_id[:10]} {' '.join(bits)}>"

    def __getitem__(self, key: Any) -> Pointer:
        return self._duet_remote.method(self, "__getitem__", (key,), {})

    def __setitem__(self, key: Any, value: Any) -> None:
        self._duet_remote.method(self, "__setitem__", (key, value), {})

    def __hash__(self) -> int:
        return hash(self._duet_id)


def _binary(name: str) -> Any:
    def op(self: Pointer, *args: Any) -> Pointer:
        return self._duet_remote.method(self, name, args, {})

    op.__name__ = name
    return op


for _name in (
    "add sub mul truediv floordiv mod pow matmul and or xor lshift rshift "
    "radd rsub rmul rtruediv rfloordiv rmod rpow rmatmul rand ror rxor "
    "iadd isub imul itruediv ifloordiv imod ipow imatmul iand ior ixor "
    "eq ne lt le gt ge neg pos abs invert"
).split():
    setattr(Pointer, f"__{_name}__", _binary(f"__{_name}__"))


class _Method:
    """A bound remote method, called to queue the call."""

    __slots__ = ("_ptr", "_name")

    def __init__(self, ptr: Pointer, name: str) -> None:
        self._ptr, self._name = ptr, name

    def __call__(self, *args: Any, **kwargs: Any) -> Pointer:
        return self._ptr._duet_remote.method(self._ptr, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self._name} of {self._ptr!r}>"


class GradContext:
    """``with d.torch.no_grad():`` – the grad mode changes on the owner's side for the calls inside."""

    def __init__(self, remote: Remote, path: str) -> None:
        self._remote, self._path = remote, path

    def __enter__(self) -> GradContext:
        self._remote.context(self._path, True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._remote.context(self._path, False)


class RemoteNamespace:
    """``d.torch`` and everything under it: attribute access builds a dotted path, calling it queues a call."""

    def __init__(self, remote: Remote, path: str = "torch") -> None:
        self._remote, self._path = remote, path
        # what each name led to, and under which of the remote's tables (a new welcome replaces them)
        self._children: dict[str, tuple[Any, Any]] = {}
        self._context: tuple[Any, bool] = (None, False)  # whether the path is a context, by which tables

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        tables = self._remote.tables
        known = self._children.get(name)
        if known is not None and known[0] is tables:
            return known[1]  # a loop's ``d.torch.nn.functional.relu``: checked once per tables
        path = f"{self._path}.{name}"
        child = self._remote.local_constant(path)
        if child is None:
            self._remote.check_path(path)
            child = RemoteNamespace(self._remote, path)
        if len(self._children) < _NAMESPACE_CHILDREN:
            self._children[name] = (tables, child)
        return child

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        remote = self._remote
        tables, context = self._context
        if tables is not remote.tables:  # asked once per tables (a loop calls ``f.relu`` every step)
            tables = remote.tables
            context = remote.is_context(self._path)
            self._context = (tables, context)
        if context:
            return GradContext(remote, self._path)
        return remote.call(self._path, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote {self._path}>"


class RemotePython:
    """``d.python``: Float, Int, Bool, List, Dict, Tuple, String built on the owner's side."""

    def __init__(self, remote: Remote) -> None:
        self._remote = remote

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self._remote.check_python_type(name)

        def build(*args: Any) -> Pointer:
            return self._remote.python(name, args)

        build.__name__ = name
        return build
