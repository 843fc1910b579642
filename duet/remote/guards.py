"""The executor's resource guards: meta-device dry runs, tensor byte and Python item limits.

Everything here runs *before* a call (or right after it, before its result is stored) and raises
:class:`~duet.errors.QuotaExceeded`; nothing here runs the call.

- **Dry run.** A tensor call runs first on torch's ``meta`` device (shapes only, no memory), so a call that
  would allocate more than ``Quotas.tensor_bytes`` is refused before anything is allocated. A module's
  forward is dry-run the same way through ``torch.func.functional_call`` with meta parameters. A call with
  no meta kernel (data-dependent shapes: ``nonzero``, ``unique`` …) is left to the real call, whose result
  is checked before it is stored.
- **Compute.** The same dry run counts the call's floating-point operations (:mod:`duet.remote.flops`), and a
  call whose count is over what ``Quotas.call_seconds`` allows at ``FLOPS_PER_SECOND`` is refused before it
  runs. Bytes and FLOP are cached together by call signature, so a repeated shape costs a dict lookup.
- **Items.** Python values (lists, dicts, strings, ints) have no meta device; the calls that make them
  large (``tolist``, ``split``/``unbind``/``chunk``, sequence concatenation, ``List(tensor)``) are checked
  against ``MAX_ITEMS`` from their operands' sizes first, and every result's node count (shared and cyclic
  references counted each time they are reached, as the metadata walk does) is bounded before it is stored.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..errors import QuotaExceeded
from . import flops
from .allowlist import OPTIMIZERS, RUNTIME, SCHEDULERS
from .flops import DEFAULT_CALL_SECONDS, FLOPS_PER_SECOND, check_flops

__all__ = [
    "FLOPS_PER_SECOND",
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "check_items_before",
    "check_result",
    "dry_run_call",
    "dry_run_method",
    "check_python_args",
    "check_tensor_bytes",
    "count_nodes",
    "dry_run_module",
    "forget_module",
    "module_structure",
    "RETYPING",
    "warm_up",
]

MAX_ITEMS = 1_000_000  # nodes in one Python value a call makes (a list of 1M floats is ~30 MB)
MAX_INT_BITS = 1 << 16  # a remote Int of 65,536 bits; int * int beyond that only burns the owner's CPU
# calls that never go through the meta device: they allocate nothing tensor-sized, or have side effects
_NO_DRY_RUN_PATHS = frozenset(OPTIMIZERS) | frozenset(SCHEDULERS) | frozenset(RUNTIME)
_NO_DRY_RUN_METHODS = frozenset(
    {
        "backward",
        "item",
        "tolist",
        "numel",
        "size",
        "dim",
        "__len__",
        "__setitem__",
        "split",
        "unbind",
        "chunk",
    }
)
_CREATORS = frozenset(
    "tensor zeros ones full empty arange linspace logspace eye rand randn randint randperm normal "
    "poisson bernoulli multinomial as_tensor".split()
)
_GROWERS = frozenset(
    {"__add__", "__iadd__", "__radd__", "extend", "append", "insert", "__setitem__", "update"}
)


# ---- dry runs on the meta device ---------------------------------------------------------------------------


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    if isinstance(x, (list, tuple)) and not isinstance(x, torch.Size):
        return type(x)(_to_meta(v) for v in x)
    return x


def _size_of(result: Any) -> int:
    if isinstance(result, torch.Tensor):
        return result.numel() * result.element_size()
    if isinstance(result, torch.nn.Module):
        return sum(p.numel() * p.element_size() for p in result.parameters())
    if isinstance(result, (list, tuple)):
        return sum(_size_of(r) for r in result[:64] if isinstance(r, torch.Tensor))
    return 0


def check_tensor_bytes(result: Any, limit: int, what: str) -> None:
    size = _size_of(result)
    if size > limit:
        raise QuotaExceeded(_over(what, size, limit))


def _over(what: str, size: int, limit: int) -> str:
    return f"{what} would make {size:,} bytes, over the {limit:,}-byte limit for one tensor"


class _Uncached(Exception):
    pass


_SCALARS = (bool, int, float, str, torch.dtype, torch.device)
_EXACT_SCALARS = frozenset({type(None), *_SCALARS})


def _sig(x: Any, depth: int = 0) -> Any:
    """What a dry run's outcome depends on (shapes, dtypes, plain values); raises _Uncached for anything else.

    Exact types are told apart with one ``type()`` (this runs for every dry run of a training loop);
    subclasses and the rarer kinds take :func:`_sig_of`, which gives them the same signature.
    """
    t = type(x)
    if t is torch.Tensor:
        return ("T", x.shape, x.dtype)  # a torch.Size hashes and compares as the tuple it is
    if t in _EXACT_SCALARS:
        return (t, x)
    if (t is list or t is tuple) and depth < 4 and len(x) <= 64:
        items: list[Any] = []
        for v in x:
            tv = type(v)
            if tv is torch.Tensor:
                items.append(("T", v.shape, v.dtype))
            elif tv in _EXACT_SCALARS:
                items.append((tv, v))
            elif tv is slice:
                items.append(("S", v.start, v.stop, v.step))
            else:
                items.append(_sig(v, depth + 1))
        return (t, tuple(items))
    if t is dict and depth < 4 and len(x) <= 64:
        return ("D", tuple([(k, _sig(v, depth + 1)) for k, v in x.items()]) if x else ())
    return _sig_of(x, depth)


def _sig_of(x: Any, depth: int) -> Any:
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), x.dtype)
    if x is None or isinstance(x, _SCALARS):
        return (type(x), x)
    if isinstance(x, slice):
        return ("S", x.start, x.stop, x.step)
    if isinstance(x, (list, tuple)) and depth < 4 and len(x) <= 64:
        return (type(x), tuple([_sig(v, depth + 1) for v in x]))
    if isinstance(x, dict) and depth < 4 and len(x) <= 64:
        return ("D", tuple([(k, _sig(v, depth + 1)) for k, v in x.items()]))
    raise _Uncached


def _meta_size(run: Callable[[], Any]) -> int:
    try:
        with torch.no_grad():
            return _size_of(run())
    except Exception:  # noqa: BLE001 - no meta kernel, or bad arguments: the real call decides
        return 0


def _measure(run: Callable[[], Any]) -> tuple[int, int]:
    """The bytes a dry run's result holds and the FLOP it counted (what it counted before any failure)."""
    counter = flops.Counter()
    try:
        with torch.no_grad(), counter:
            result = run()
        return _size_of(result), counter.flops
    except Exception:  # noqa: BLE001 - the counting mode may fail where the meta kernel alone would not
        return _meta_size(run), counter.flops


_HOOKS = frozenset(
    {
        "_backward_pre_hooks",
        "_backward_hooks",
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_state_dict_hooks",
        "_state_dict_pre_hooks",
        "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
    }
)
_FORWARD_HOOKS = ("_forward_hooks", "_forward_pre_hooks")
_PLAIN = frozenset({type(None), bool, int, float, str, torch.dtype, torch.device})
_MAX_STRUCTURE = 256  # modules in one structure signature


def _plain(v: Any, depth: int = 0) -> Any:
    """A hashable stand-in for a module attribute a forward may read; raises _Uncached for anything else."""
    t = type(v)
    if t in _PLAIN:
        return (t, v)
    if (t is tuple or t is list) and depth < 3 and len(v) <= 16:
        return (t, tuple([_plain(x, depth + 1) for x in v]))
    if t is type(_plain) or t is type(len):  # a module-level function (TransformerEncoderLayer.activation)
        return (t, v)  # by identity: the same function object
    raise _Uncached


def _structure(module: torch.nn.Module, count: list[int]) -> Any:
    """What a module's forward depends on besides its inputs: its type, mode and plain attributes, its
    parameters' and buffers' shapes and dtypes, and its children's structures; raises _Uncached for a
    module with hooks or an attribute that is not a plain value."""
    count[0] += 1
    if count[0] > _MAX_STRUCTURE:
        raise _Uncached
    attrs = []
    for k, v in module.__dict__.items():
        if k in _HOOKS:
            if v and k in _FORWARD_HOOKS:
                raise _Uncached
            continue
        if k == "_parameters" or k == "_buffers":
            attrs.append(
                (k, tuple([(n, None if t is None else (type(t), t.shape, t.dtype)) for n, t in v.items()]))
            )
        elif k == "_modules":
            attrs.append((k, tuple([(n, None if c is None else _structure(c, count)) for n, c in v.items()])))
        elif k == "_non_persistent_buffers_set":
            attrs.append((k, tuple(sorted(v))))
        else:
            attrs.append((k, _plain(v)))
    return (type(module), tuple(attrs))


def module_structure(module: torch.nn.Module) -> Any:
    """A hashable signature two modules share only if their forwards make the same shapes from the same
    inputs (see :func:`_structure`), or None."""
    try:
        key = _structure(module, [0])
        hash(key)
        return key
    except (_Uncached, TypeError, RuntimeError, ValueError):  # unhashable, or lazy (uninitialised) params
        return None


class _DryRunCache:
    """Bytes and FLOP a dry run found, by call signature: a training loop repeats the same shapes.

    A module's results are kept per module (its forward reads the module), and also by the module's
    structure (:func:`module_structure`): a model sent again, or a layer repeated in a network, finds what
    a module of the same structure found, without a dry run of its own."""

    def __init__(self, size: int = 4096) -> None:
        self._sizes: dict[Any, tuple[int, int]] = {}
        self._modules: weakref.WeakKeyDictionary[torch.nn.Module, dict[Any, tuple[int, int]]] = (
            weakref.WeakKeyDictionary()
        )
        self._shared: dict[Any, tuple[int, int]] = {}
        self._size = size
        self._lock = threading.Lock()

    def size(self, key: Any, module: torch.nn.Module | None, run: Callable[[], Any]) -> tuple[int, int]:
        try:
            sig = _sig(key)
        except _Uncached:
            return _measure(run)
        with self._lock:
            if module is None:
                table = self._sizes
            elif (found := self._modules.get(module)) is not None:
                table = found
            else:
                table = self._modules[module] = {}
            size = table.get(sig)
        if size is not None:
            return size
        shared = None
        if module is not None and (structure := module_structure(module)) is not None:
            shared = (structure, sig)
            with self._lock:
                size = self._shared.get(shared)
        if size is None:
            size = _measure(run)
        with self._lock:
            self._put(table, sig, size)
            if shared is not None:
                self._put(self._shared, shared, size)
        return size

    def _put(self, table: dict[Any, tuple[int, int]], key: Any, size: tuple[int, int]) -> None:
        table[key] = size
        if len(table) > self._size:
            table.pop(next(iter(table)))

    def forget_modules(self) -> None:
        """Drop what was found per module: one changed its dtype (and so may have a parent's forward). What
        is kept by structure stays true: the structure holds the dtypes."""
        with self._lock:
            self._modules = weakref.WeakKeyDictionary()


_CACHE = _DryRunCache()
RETYPING = frozenset({"cpu", "double", "float", "half", "to"})  # module methods that change its dtype


_GENERATION = [
    0
]  # counts forget_module calls: a plan's verified runs (duet.remote.plans) hold only within one


def forget_module(module: torch.nn.Module) -> None:
    """Call after a module's dtype or device changed: its cached dry runs (and its parents') are stale."""
    _CACHE.forget_modules()
    _GENERATION[0] += 1


def generation() -> int:
    """How many times cached dry runs of modules were forgotten (see :func:`forget_module`)."""
    return _GENERATION[0]


def _dry(
    key: Any,
    run: Callable[[], Any],
    limit: int,
    seconds: float,
    what: str,
    module: torch.nn.Module | None = None,
) -> None:
    size, count = _CACHE.size(key, module, run)
    if size > limit:
        raise QuotaExceeded(_over(what, size, limit))
    if count > seconds * FLOPS_PER_SECOND:
        check_flops(count, seconds, what)


def dry_run_call(
    fn: Any,
    path: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    limit: int,
    call_seconds: float = DEFAULT_CALL_SECONDS,
) -> None:
    """Refuse a function call or constructor whose result would be over ``limit`` bytes, or whose counted
    FLOP would take over ``call_seconds`` (see :mod:`duet.remote.flops`)."""
    if path in _NO_DRY_RUN_PATHS:
        return
    if isinstance(fn, type) and issubclass(fn, torch.nn.Module):
        meta = {**kwargs, "device": "meta"}
        _dry((path, args, kwargs), lambda: fn(*args, **meta), limit, call_seconds, path)
        return

    def run() -> Any:
        meta_kwargs = {k: _to_meta(v) for k, v in kwargs.items()}
        if path.rsplit(".", 1)[-1] in _CREATORS:
            meta_kwargs["device"] = "meta"
        return fn(*[_to_meta(a) for a in args], **meta_kwargs)

    _dry((path, args, kwargs), run, limit, call_seconds, path)


def _basic_index(index: Any) -> bool:
    """Whether ``tensor[index]`` is basic indexing (ints, slices of ints, None, ``...``), which makes a
    view: no new memory, whatever the index (a batch's slice, which changes every step)."""
    items = index if type(index) is tuple and len(index) <= 64 else (index,)
    for item in items:
        t = type(item)
        if t is slice:
            if not all(type(v) in (int, type(None)) for v in (item.start, item.stop, item.step)):
                return False
        elif t is not int and item is not None and item is not Ellipsis:
            return False  # a bool, a tensor or a list index copies (advanced indexing)
    return True


def dry_run_method(
    obj: Any,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    limit: int,
    call_seconds: float = DEFAULT_CALL_SECONDS,
) -> None:
    """Refuse a tensor method (or operator) over ``limit`` bytes or ``call_seconds`` of counted FLOP."""
    if not isinstance(obj, torch.Tensor) or name in _NO_DRY_RUN_METHODS:
        return
    if name == "__getitem__" and len(args) == 1 and not kwargs and _basic_index(args[0]):
        return  # a view of the tensor: no new memory, and no time to speak of
    fn = getattr(torch.Tensor, name, None)
    if fn is None:
        return

    def run() -> Any:
        meta_kwargs = {k: _to_meta(v) for k, v in kwargs.items()}
        return fn(_to_meta(obj), *(_to_meta(a) for a in args), **meta_kwargs)

    _dry((name, obj, args, kwargs), run, limit, call_seconds, f"Tensor.{name}")


def dry_run_module(
    module: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    limit: int,
    call_seconds: float = DEFAULT_CALL_SECONDS,
) -> None:
    """Refuse a module's forward (run with meta parameters) whose output would be over ``limit`` bytes,
    or whose counted FLOP would take over ``call_seconds``."""
    if not isinstance(module, torch.nn.Module) or type(module).forward is torch.nn.Module.forward:
        return

    def run() -> Any:
        state = {k: _to_meta(v) for k, v in (*module.named_parameters(), *module.named_buffers())}
        meta_args = tuple(_to_meta(a) for a in args)
        meta_kwargs = {k: _to_meta(v) for k, v in kwargs.items()}
        return torch.func.functional_call(module, state, meta_args, meta_kwargs)

    what = f"{type(module).__name__}.__call__"
    _dry((module.training, args, kwargs), run, limit, call_seconds, what, module)


def warm_up() -> None:
    """Import torch's meta-device code now, not mid-call: meta decompositions (about 0.5 s the first time
    a meta linear runs) and, through ``torch._refs`` on the first meta elementwise operator, ``torch._dynamo``
    and sympy (about 1.5 s); and the FLOP counter's code (about 1.5 s the first time it counts)."""
    x = _to_meta(torch.zeros(1, 1))
    _meta_size(lambda: torch.nn.functional.linear(x, x))
    _meta_size(lambda: x + 1)
    flops.warm_up()


# ---- Python values -------------------------------------------------------------------------------------------


def _length(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.dim() else 1
    try:
        return len(x)
    except TypeError:
        return 1


def _split_count(obj: torch.Tensor, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    if not isinstance(dim, int) or obj.dim() == 0:
        return 1
    extent = int(obj.shape[dim]) if -obj.dim() <= dim < obj.dim() else 1
    if name == "unbind":
        return extent
    first = (
        args[0]
        if args
        else kwargs.get("split_size_or_sections", kwargs.get("split_size", kwargs.get("chunks")))
    )
    if isinstance(first, int) and first > 0:
        return min(first, extent) if name == "chunk" else math.ceil(extent / first)
    if isinstance(first, (list, tuple)):
        return len(first)
    return 1


# the tensor methods check_items_before looks at (it lets every other tensor method through)
ITEM_METHODS = frozenset({"tolist", "split", "unbind", "chunk"})


def may_check_items(obj: Any, name: str) -> bool:
    """Whether :func:`check_items_before` can refuse a call of ``name`` on ``obj``: the same answer for every
    object of ``obj``'s exact type (a plan's binding asks once per type)."""
    if isinstance(obj, torch.Tensor):
        return name in ITEM_METHODS
    return isinstance(obj, (list, tuple, dict, str)) and name in _GROWERS


def check_items_before(obj: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse, from the operands' sizes, a call that would make a Python value of over ``MAX_ITEMS`` items."""
    if isinstance(obj, torch.Tensor):
        if name == "tolist":
            count = obj.numel()
        elif name in ("split", "unbind", "chunk"):
            count = _split_count(obj, name, args, kwargs)
        else:
            return
    elif isinstance(obj, (list, tuple, dict, str)) and name in _GROWERS:
        extra = sum(_length(a) for a in args[:1]) if name not in ("append", "insert") else 1
        count = len(obj) + extra
    else:
        return
    if count > MAX_ITEMS:
        raise QuotaExceeded(f"{name} would make {count:,} items, over the limit of {MAX_ITEMS:,}")


def check_python_args(name: str, args: Sequence[Any]) -> None:
    """``d.python.List(x)``: refuse building a value of over ``MAX_ITEMS`` items from ``x``."""
    if args and (count := _length(args[0])) > MAX_ITEMS:
        raise QuotaExceeded(f"python.{name} would hold {count:,} items, over the limit of {MAX_ITEMS:,}")


def count_nodes(obj: Any, limit: int = MAX_ITEMS) -> int:
    """Nodes of a Python value, counting a shared or cyclic reference each time it is reached; stops past limit."""
    count, stack = 0, [obj]
    while stack:
        x = stack.pop()
        count += 1
        if count > limit:
            break
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)) and not isinstance(x, torch.Size):
            stack.extend(x)
    return count


def check_result(result: Any, limit: int, what: str) -> None:
    """The last check before a result is stored: tensor bytes, Python items, int size."""
    if result is None or type(result) is float:
        return
    if isinstance(result, torch.Tensor):
        if (size := result.numel() * result.element_size()) > limit:
            raise QuotaExceeded(_over(what, size, limit))
    elif isinstance(result, (list, tuple, dict)) and not isinstance(result, torch.Size):
        if count_nodes(result) > MAX_ITEMS:
            raise QuotaExceeded(f"{what} made a value of over {MAX_ITEMS:,} items (or a cycle): refused")
        check_tensor_bytes(result, limit, what)
    elif isinstance(result, (str, bytes)) and len(result) > MAX_ITEMS:
        raise QuotaExceeded(f"{what} made a string of {len(result):,} characters, over {MAX_ITEMS:,}")
    elif isinstance(result, int) and not isinstance(result, bool) and result.bit_length() > MAX_INT_BITS:
        raise QuotaExceeded(f"{what} made an int of {result.bit_length():,} bits, over {MAX_INT_BITS:,}")
    else:
        check_tensor_bytes(result, limit, what)
