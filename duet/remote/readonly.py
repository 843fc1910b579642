"""Published objects are read-only: the executor refuses a call that would change one in place.

A call is refused if it would change a published object — or a tensor sharing memory with one (a slice,
``detach()``, ``.data``, a published model's parameter) — through an in-place method or operator
(``Allowlist.mutates``), ``inplace=True`` (by keyword or position), an optimizer over its parameters, batch
norm's running statistics (a training-mode module call, ``F.batch_norm(training=True)``), or a container
holding a published module. Mode switches (``train``/``eval``), ``zero_grad`` and ``requires_grad_`` on a
published module change no value and are allowed; so is anything done to a ``clone()``. Only the direct
items of a published list or dict are covered, not deeper ones.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from ..errors import PermissionDenied
from .allowlist import Allowlist

__all__ = ["published_memory", "refuse_published_change"]

# changing these on a published module changes no value: mode flags and gradients
_HARMLESS_ON_MODULES = frozenset({"train", "eval", "zero_grad", "requires_grad_"})


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    elif isinstance(obj, dict):
        yield from (v for v in list(obj.values())[:10_000] if isinstance(v, torch.Tensor))
    elif isinstance(obj, (list, tuple)):
        yield from (v for v in obj[:10_000] if isinstance(v, torch.Tensor))


def _memory(t: torch.Tensor) -> int:
    """The address of a tensor's storage (0 for an empty one, which nothing can change)."""
    try:
        return int(t.untyped_storage().data_ptr()) if t.numel() else 0
    except RuntimeError:
        return 0


def published_memory(published: Iterable[Any]) -> tuple[set[int], set[int]]:
    """(storage addresses of published tensors, ids of published objects and their direct items)."""
    objs = list(published)
    return _addresses(objs), _ids(objs)


def _ids(published: list[Any]) -> set[int]:
    ids: set[int] = set()
    for obj in published:
        ids.add(id(obj))
        if isinstance(obj, dict):
            ids.update(id(v) for v in list(obj.values())[:10_000])
        elif isinstance(obj, (list, tuple)):
            ids.update(id(v) for v in obj[:10_000])
    return ids


# (the list ``published()`` last returned, its objects' ids): a store gives the same list until its published
# objects change (Store.published_objects); kept only when no published object is a container, whose items
# the owner may change in place
_IDS_SEEN: tuple[Any, frozenset[int]] = (None, frozenset())


def _published_ids(source: Any, objs: list[Any]) -> set[int] | frozenset[int]:
    global _IDS_SEEN
    seen = _IDS_SEEN
    if seen[0] is source and source is not None:
        return seen[1]
    ids = frozenset(_ids(objs))
    if not any(isinstance(o, (dict, list, tuple)) for o in objs):
        _IDS_SEEN = (source, ids)
    return ids


def _addresses(published: list[Any]) -> set[int]:
    return {a for obj in published for t in _tensors(obj) if (a := _memory(t))}


def _inplace(fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether a functional call asks ``inplace=True`` (by keyword or by position)."""
    if kwargs.get("inplace") is True:
        return True
    try:
        position = _inplace_position(fn)
    except TypeError:  # an unhashable callable: not one of torch's functions with an inplace flag
        return False
    return position is not None and len(args) > position and args[position] is True


@functools.lru_cache(maxsize=1024)
def _inplace_position(fn: Any) -> int | None:
    """Where ``fn`` takes ``inplace`` positionally, if it does (looked up once per function: this runs
    for every functional call of a training loop)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    for i, p in enumerate(params):
        if p.name == "inplace" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return i
    return None


_CLASS_INPLACE: dict[type, bool] = {}


def _class_says_inplace(cls: type) -> bool:
    known = _CLASS_INPLACE.get(cls)
    if known is None:
        known = any("inplace" in vars(c) for c in cls.__mro__)
        if len(_CLASS_INPLACE) < 1024:
            _CLASS_INPLACE[cls] = known
    return known


def _inplace_module(module: torch.nn.Module) -> bool:
    """``getattr(module, "inplace", False) is True``, without the AttributeError that ``nn.Module`` raises
    and catches for a layer that has no such flag (most): where no class defines ``inplace``, it can only
    be an instance attribute (or a parameter, buffer or child, never ``True``)."""
    if _class_says_inplace(type(module)):
        return getattr(module, "inplace", False) is True
    return module.__dict__.get("inplace", False) is True


def _has_buffers(module: torch.nn.Module) -> bool:
    """Whether ``module.buffers()`` would yield anything (a layer without children is asked directly)."""
    if not module._modules:
        return any(b is not None for b in module._buffers.values())
    return next(iter(module.buffers()), None) is not None


def _targets(
    fn: Any,
    obj: Any,
    name: str,
    path: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    allowlist: Allowlist,
) -> list[Any]:
    """The objects a call would change in place (a cheap first pass: usually none)."""
    targets: list[Any] = []
    if obj is not None:
        if isinstance(obj, torch.nn.Module) and name == "__call__":
            if _inplace_module(obj):
                targets.extend(args[:1])
            if obj.training and _has_buffers(obj):  # batch norm's running statistics
                targets.extend(obj.buffers())
        elif allowlist.mutates(obj, name) and not (
            isinstance(obj, torch.nn.Module) and name in _HARMLESS_ON_MODULES
        ):
            targets.append(obj)
    elif path.startswith("torch.optim.") and not path.startswith("torch.optim.lr_scheduler."):
        for group in args[:1]:
            for p in group if isinstance(group, (list, tuple)) else [group]:
                targets.extend(p.get("params", []) if isinstance(p, dict) else [p])
    elif path.startswith("torch.nn.functional."):
        if path.endswith(".batch_norm"):
            targets.extend(args[1:3])
        if _inplace(fn, args, kwargs):
            targets.extend(args[:1])
    return targets


def refuse_published_change(
    allowlist: Allowlist,
    published: Callable[[], Iterable[Any]],
    *,
    fn: Any = None,
    obj: Any = None,
    name: str = "",
    path: str = "",
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> bool:
    """Raise PermissionDenied if the call (method ``name`` of ``obj``, or function ``fn`` at ``path``) would
        change a published object in place. ``published()`` is asked only when the call changes something; it
    returns a new list, or the same list as long as the published objects are the same (what it found in that
    list is then reused).
        Returns whether it changes anything in place (what a plan's verified runs rely on, see
        :mod:`duet.remote.plans`)."""
    targets = _targets(fn, obj, name, path, args, kwargs or {}, allowlist)
    if not targets:
        return False
    source = published()
    objs = list(source)
    ids = _published_ids(source, objs)
    if name == "requires_grad_" and isinstance(obj, torch.Tensor):
        hit = id(obj) in ids  # the flag of a view of published data changes nothing the owner holds
    else:  # a target is published, or shares memory with published tensors (listed only when needed)
        addresses: set[int] | None = None
        hit = False
        for target in targets:
            tensors = [] if id(target) in ids else list(_tensors(target))
            if tensors and addresses is None:
                addresses = _addresses(objs)
            if id(target) in ids or (addresses is not None and any(_memory(t) in addresses for t in tensors)):
                hit = True
                break
    if hit:
        what = f"{type(obj).__name__}.{name}" if obj is not None else path
        raise PermissionDenied(
            f"{what} would change the owner's published data in place: published objects are read-only "
            "(work on a copy: .clone())"
        )
    return True
