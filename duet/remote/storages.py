"""Which storages an object's bytes live in, and the leaves of a loss's autograd graph: what the store
follows to spread provenance (see :mod:`duet.remote.store`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _storages(obj: Any) -> set[int]:
    """The storages (by address) whose bytes make up a tensor or a module's parameters and buffers."""
    if isinstance(obj, torch.Tensor):
        return _storages_of_all([obj])
    if isinstance(obj, torch.nn.Module):
        return _storages_of_all([*obj.parameters(), *obj.buffers()])
    return set()


def _graph_leaves(t: torch.Tensor, limit: int = 200_000) -> list[torch.Tensor] | None:
    """The leaf tensors of ``t``'s autograd graph (where ``backward`` accumulates gradients); None for a
    graph of more than ``limit`` nodes. (This runs after every ``backward`` of a training loop: a node is
    looked at once, and its kind's ``variable`` answer is known per type.)"""
    leaves: list[torch.Tensor] = []
    root = t.grad_fn
    if root is None:
        return leaves
    seen: set[Any] = {root}
    stack = [root]
    holds = _HOLDS_VARIABLE
    while stack:
        fn = stack.pop()
        known = holds.get(type(fn))
        if known is None:
            known = _may_hold_variable(fn)
        if known:
            var = getattr(fn, "variable", None)
            if isinstance(var, torch.Tensor):
                leaves.append(var)
        for f, _ in getattr(fn, "next_functions", ()):
            if f is not None and f not in seen:
                if len(seen) >= limit:
                    return None
                seen.add(f)
                stack.append(f)
    return leaves


_HOLDS_VARIABLE: dict[type, bool] = {}


def _may_hold_variable(fn: Any) -> bool:
    """Whether an autograd node can have a ``variable`` (AccumulateGrad does; asking every other kind of
    node raises and catches an AttributeError inside ``getattr``). Known per node type: torch's nodes take
    their attributes from their type, and a node with an instance dict is always asked."""
    cls = type(fn)
    known = _HOLDS_VARIABLE.get(cls)
    if known is None:
        known = hasattr(cls, "variable") or hasattr(fn, "__dict__")
        if len(_HOLDS_VARIABLE) < 4096:
            _HOLDS_VARIABLE[cls] = known
    return known


def _trainable(obj: Any) -> bool:
    return isinstance(obj, torch.nn.Module) or (isinstance(obj, torch.Tensor) and obj.requires_grad)


def _storages_of_all(tensors: Iterable[torch.Tensor]) -> set[int]:
    keys = set()
    for t in tensors:
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # no storage to alias (meta, sparse...)
            continue
        if ptr:
            keys.add(ptr)
    return keys
