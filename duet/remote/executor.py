"""The owner's executor: every remote call passes through :meth:`Executor.run_ops`, checked and logged.

One op is a dict the scientist sent (see docs/protocol.md)::

    {"k": "call", "o": out, "p": "torch.add", "a": args, "kw": kwargs}   a function or class on the allowlist
    {"k": "meth", "o": out, "s": self_id, "n": "add", "a": ..., "kw": ...} a method of an object in the store
    {"k": "attr", "o": out, "s": self_id, "n": "grad"}                    a property
    {"k": "py",   "o": out, "n": "Float", "a": ...}                      a remote Python value
    {"k": "put",  "o": out, "v": value}                                   a value the scientist sends
    {"k": "mod",  "o": out, "c": {"fc1": id, ...}}                        a container of remote modules
    {"k": "ctx",  "p": "torch.no_grad", "e": true|false}                  enter / leave a grad mode
    {"k": "del",  "ids": [...]}                                           pointers the scientist dropped

Arguments decode through :mod:`duet.codec` (data only; pointers resolve to the owner's own store). A
failing op stores its error under its result id, so every later op that uses it fails the same way and the
scientist sees it on the next blocking call that depends on it. A malformed op (not a dict, no kind, bad
ids) is refused as a ``ProtocolError`` and reported under its result id if it has a usable one, else "".

Quotas (:class:`~duet.remote.store.Quotas`): sizes are checked *before* a call where they can be known
(see :mod:`duet.remote.guards`: meta-device dry runs, item counts), and every result again before it is
stored. Time is different: a running torch op cannot be interrupted from Python, so ``call_seconds`` is
checked when the call returns; a call over it has its result dropped (freed, never stored) and the scientist
gets ``QuotaExceeded`` on the next blocking call that depends on it. While such a call runs, the owner's
notebook and the connection stay responsive (calls run in the executor's own thread; heartbeats and the
request queue do not wait for it), but the scientist's later calls queue behind it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import codec
from ..errors import DuetError, PermissionDenied, ProtocolError, QuotaExceeded, RemoteError
from . import guards, plans, readonly
from .activity import ActivityLog, ArgKinds, kind
from .allowlist import DEFAULT_ALLOWLIST, Allowlist
from .store import Entry, Quotas, Store

__all__ = ["Executor", "ActivityLog", "Container"]

_MAX_CTX = 32
_MAX_IDS = 100_000  # ids in one "del" op
_NO_KWARGS = ["dict"]  # an empty dict's tree
_PLAN_KINDS = frozenset({"plan", "run"})

Handler = Callable[[dict[str, Any], Sequence[Any]], tuple[Any, set[str]]]


_MAX_FAST = 1025  # items of an argument list decoded without the codec (the codec's limits never bind)
_FAST_DICT = frozenset({3, 5, 7, 9, 11, 13, 15, 17})  # a dict node of 1..8 pairs (never 16 keys of one hash)
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def _flat(node: list[Any]) -> list[Any] | None:
    """The items of a list or dict node if each is a scalar or a well-formed pointer node, else None (the
    codec then decodes it, with its checks and errors)."""
    items = node[1:]
    for x in items:
        if type(x) not in _SCALARS and not (
            type(x) is list and len(x) == 2 and x[0] == "ptr" and type(x[1]) is str and 0 < len(x[1]) <= 256
        ):
            return None
    return items


def _pairs(items: list[Any]) -> zip[tuple[Any, Any]]:
    return zip(items[::2], items[1::2], strict=True)


class _Inherited(Exception):
    """An op used the result of an op that failed: it fails the same way, and is not reported again."""

    def __init__(self, error: RemoteError) -> None:
        super().__init__(str(error))
        self.error = error


class Container(torch.nn.Module):
    """A module the owner builds to hold the scientist's remote layers by name (no code of theirs)."""

    label = "Module"

    def forward(self, *args: Any) -> Any:
        raise RemoteError("NotImplementedError", "a duet module's forward runs on the scientist's side")


class Executor:
    """Runs the scientist's ops against the store, through the allowlist and the quotas."""

    def __init__(
        self, store: Store, allowlist: Allowlist | None = None, quotas: Quotas | None = None
    ) -> None:
        self.store = store
        self.allowlist = allowlist or DEFAULT_ALLOWLIST
        self._quotas = quotas
        self._q = self.quotas  # the quotas of the op being run (read once an op)
        self.log = ActivityLog()
        self._grad_stack: list[bool] = []
        self._lock = threading.Lock()
        self._claimed = 0
        self._used: set[int] = set()
        self._last_args: str | ArgKinds = ""
        self._path = ""
        self._changes = False  # whether the last call's published-data check found something it changes
        self.plans = plans.Plans(self)
        self._table: dict[str, Handler] = {
            "call": self._call,
            "meth": self._meth,
            "attr": self._attr,
            "py": self._py,
            "put": self._put,
            "mod": self._mod,
        }

    @property
    def quotas(self) -> Quotas:
        """The session's quotas: the store's, unless the executor was given its own."""
        return self._quotas or self.store.quotas

    @quotas.setter
    def quotas(self, quotas: Quotas) -> None:
        self._quotas = quotas

    # ---- entry point -------------------------------------------------------------------------------

    def run_ops(self, ops: Any, buffers: Sequence[Any]) -> list[tuple[str, RemoteError]]:
        """Run a batch in order (in the executor's own thread); returns the ops that failed, by result id."""
        if not isinstance(ops, list):
            raise ProtocolError("ops must be a list")
        failures = []
        with self._lock:
            self._claimed = 0  # ops take consecutive, disjoint ranges of the frame's buffers
            for op in ops:
                if type(op) is dict and op.get("k") in _PLAN_KINDS:
                    failures.extend(self._plan_op(op))
                    continue
                failed = self._run_one(op, buffers)
                if failed is not None:
                    failures.append(failed)
        return failures

    def _plan_op(self, op: dict[str, Any]) -> list[tuple[str, RemoteError]]:
        """A plan's definition or one of its runs (see :mod:`duet.remote.plans`)."""
        start = time.perf_counter()
        self._q = self._quotas or self.store.quotas
        try:
            if op["k"] == "plan":
                self.plans.define(op)
                self._record("plan", f"{len(op['t'])} ops", None, "ok", start)
                return []
            return self.plans.run(op)
        except plans.Refused as refused:  # a run refused as a whole: each result it keeps holds the error
            error = self._as_remote(refused.error)
            self._record("run", "", None, error.remote_type, start)
            reported = ""
            for k in refused.keep:
                try:
                    self.store.put(refused.outs[k], None, (), error=error)
                except DuetError:
                    continue
                reported = reported or refused.outs[k]
            return [(reported, error)]
        except Exception as exc:  # noqa: BLE001 - a malformed definition or run, refused
            error = self._as_remote(exc)
            self._record(str(op.get("k")), "", None, error.remote_type, start)
            return [("", error)]

    def _run_one(self, op: Any, buffers: Sequence[Any]) -> tuple[str, RemoteError] | None:
        start = time.perf_counter()
        self._q = self._quotas or self.store.quotas
        self._last_args = ""
        is_dict = isinstance(op, dict)
        if is_dict:
            kind, out = op.get("k"), op.get("o")
            self._path = str(op.get("p") or op.get("n") or kind)[:200]
        else:
            kind = out = None
            self._path = "?"
        try:
            if not is_dict or not isinstance(kind, str):
                raise ProtocolError("an op must be a dict with a string kind 'k'")
            if kind == "del":
                self._del(op)
                return None
            if kind == "ctx":
                self._ctx(op)
                self._record(self._path, "", None, "ok", start)
                return None
            handler = self._table.get(kind)
            if handler is None:
                raise ProtocolError(f"unknown op kind {kind[:40]!r}")
            if not isinstance(out, str):
                raise ProtocolError("an op needs its result id 'o'")
            if "b" in op:
                bufs = self._slice(op, buffers)
            else:
                self._used = set()
                bufs = ()
            result, tags = handler(op, bufs)
            entry = self.store.put(out, result, tags)
            meta = entry.meta
            self.log.record(
                time.time(),
                self._path,
                self._last_args,
                meta.get("type"),
                meta.get("shape"),
                "ok",
                time.perf_counter() - start,
            )
            return None
        except Exception as exc:  # noqa: BLE001 - every failure becomes the scientist's RemoteError
            error = self._as_remote(exc)
            self._record(self._path, self._last_args, None, error.remote_type, start)
            if isinstance(out, str) and kind not in ("ctx", "del"):
                try:
                    self.store.put(out, None, (), error=error)
                except DuetError:  # a bad or reused id: the error goes back unattributed
                    return "", error
                # an inherited failure is already reported: the scientist sees it where it is used
                return None if isinstance(exc, _Inherited) else (out, error)
            return "", error

    def _as_remote(self, exc: Exception) -> RemoteError:
        if isinstance(exc, _Inherited):
            return exc.error
        if isinstance(exc, RemoteError):
            return exc
        detail = str(exc)[:1000] if self.quotas.error_detail or isinstance(exc, DuetError) else ""
        return RemoteError(type(exc).__name__, detail)

    def _record(
        self, path: str, args: str | ArgKinds, entry: Entry | None, status: str, start: float
    ) -> None:
        meta = entry.meta if entry is not None else {}
        seconds = time.perf_counter() - start
        self.log.record(time.time(), path, args, meta.get("type"), meta.get("shape"), status, seconds)

    def _timed(self, path: str, call: Callable[[], Any]) -> Any:
        """Run the call itself; a result that took over ``call_seconds`` is dropped, never stored."""
        start = time.perf_counter()
        result = call()
        elapsed = time.perf_counter() - start
        limit = self._q.call_seconds
        if elapsed > limit:
            del result
            raise QuotaExceeded(f"{path} ran {elapsed:.2f} s, over the {limit:g} s limit for one call")
        guards.check_result(result, self._q.tensor_bytes, path)
        return result

    # ---- decoding ----------------------------------------------------------------------------------

    def _slice(self, op: dict[str, Any], buffers: Sequence[Any]) -> Sequence[Any]:
        """This op's buffers; each buffer of a frame belongs to one op, and backs one tensor at most."""
        self._used = set()
        b = op.get("b")
        if b is None:
            return ()
        if not (isinstance(b, list) and len(b) == 2 and all(type(i) is int and i >= 0 for i in b)):
            raise ProtocolError("bad buffer range in op")
        if b[0] < self._claimed or b[0] + b[1] > len(buffers):
            raise ProtocolError("op refers to buffers the frame does not have, or that another op took")
        self._claimed = b[0] + b[1]
        return buffers[b[0] : b[0] + b[1]]

    def _decode(self, tree: Any, bufs: Sequence[Any], tags: set[str]) -> Any:
        if type(tree) is list and len(tree) <= _MAX_FAST and tree and tree[0] == "list":
            items = _flat(tree)
            if items is not None:  # scalars and pointers only: what codec.decode gives, resolved in order
                return [x if type(x) is not list else self._ref(x[1], tags) for x in items]
        elif type(tree) is list and len(tree) in _FAST_DICT and tree[0] == "dict":
            items = _flat(tree)
            if items is not None and all(type(k) is str for k in items[::2]):
                return {k: v if type(v) is not list else self._ref(v[1], tags) for k, v in _pairs(items)}

        def resolve(oid: str) -> Any:
            entry = self.store.get(oid)
            if entry.error is not None:
                raise _Inherited(entry.error)
            tags.update(entry.tags)
            return entry.obj

        return codec.decode(
            tree, bufs, make_pointer=resolve, max_tensor_bytes=self._q.tensor_bytes, used=self._used
        )

    def _args(
        self, op: dict[str, Any], bufs: Sequence[Any], tags: set[str]
    ) -> tuple[list[Any], dict[str, Any]]:
        a, kw = op.get("a"), op.get("kw")
        args = self._decode(a, bufs, tags) if a is not None else []
        # no keyword arguments (what the client sends for a call without any) decode as they would
        kwargs = self._decode(kw, bufs, tags) if kw is not None and kw != _NO_KWARGS else {}
        return self._accepted(args, kwargs)

    def _accepted(self, args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
        """Decoded arguments, checked to be a list and a dict with string keys, and noted for the log."""
        if isinstance(args, tuple):
            args = list(args)
        if (
            not isinstance(args, list)
            or not isinstance(kwargs, dict)
            or any(type(k) is not str for k in kwargs)
        ):
            raise ProtocolError("arguments must be a list and keyword arguments a dict with string keys")
        self._last_args = ArgKinds(args, kwargs)
        return args, kwargs

    def _ref(self, oid: str, tags: set[str]) -> Any:
        entry = self.store.get(oid)
        if entry.error is not None:
            raise _Inherited(entry.error)
        tags.update(entry.tags)
        return entry.obj

    def _self(self, op: dict[str, Any], tags: set[str]) -> Any:
        entry = self.store.get(op.get("s"))
        if entry.error is not None:
            raise _Inherited(entry.error)
        tags.update(entry.tags)
        return entry.obj

    def _published(self) -> list[Any]:
        return self.store.published_objects()

    # ---- op kinds ----------------------------------------------------------------------------------

    def _call(self, op: dict[str, Any], bufs: Sequence[Any]) -> tuple[Any, set[str]]:
        path = op.get("p")
        if not isinstance(path, str):
            raise ProtocolError("a call needs a dotted path")
        fn = self.allowlist.resolve_function(path)
        tags: set[str] = set()
        args, kwargs = self._args(op, bufs, tags)
        return self._do_call(path, fn, args, kwargs, True), tags

    def _do_call(
        self, path: str, fn: Any, args: list[Any], kwargs: dict[str, Any], dry: bool, guard: bool = True
    ) -> Any:
        """A call's checks and the call itself. A plan's verified run (see :mod:`duet.remote.plans`) may
        skip the dry run (``dry``) and, where the verified run found that the call changes nothing in
        place, the published-data check (``guard``); ``self._changes`` says what that check found."""
        self.allowlist.check_arguments(path, args, kwargs)
        if guard:
            self._changes = readonly.refuse_published_change(
                self.allowlist, self._published, fn=fn, path=path, args=args, kwargs=kwargs
            )
        if dry:
            guards.dry_run_call(fn, path, args, kwargs, self._q.tensor_bytes, self._q.call_seconds)
        return self._timed(path, lambda: self.allowlist.call_function(path, args, kwargs))

    def _meth(self, op: dict[str, Any], bufs: Sequence[Any]) -> tuple[Any, set[str]]:
        tags: set[str] = set()
        obj = self._self(op, tags)
        name = op.get("n")
        if not isinstance(name, str):
            raise ProtocolError("a method call needs a name")
        self._path = f"{type(obj).__name__}.{name[:100]}"
        self.allowlist.check_method(obj, name)
        args, kwargs = self._args(op, bufs, tags)
        result = self._do_meth(obj, name, args, kwargs, True)
        if name == "requires_grad_" and isinstance(obj, torch.Tensor):  # the metadata the scientist reads
            self.store.get(op.get("s")).meta["requires_grad"] = obj.requires_grad
        return result, tags

    def _do_meth(
        self, obj: Any, name: str, args: list[Any], kwargs: dict[str, Any], dry: bool, guard: bool = True
    ) -> Any:
        """A method call's checks (the method itself is checked already) and the call (see _do_call)."""
        if guard:
            self._changes = readonly.refuse_published_change(
                self.allowlist, self._published, obj=obj, name=name, args=args, kwargs=kwargs
            )
        guards.check_items_before(obj, name, args, kwargs)
        if dry:
            limit, seconds = self._q.tensor_bytes, self._q.call_seconds
            if name == "__call__":
                guards.dry_run_module(obj, args, kwargs, limit, seconds)
            else:
                guards.dry_run_method(obj, name, args, kwargs, limit, seconds)
        result = self._timed(self._path, lambda: self.allowlist.call_method(obj, name, args, kwargs))
        if name in guards.RETYPING and isinstance(obj, torch.nn.Module):
            guards.forget_module(obj)
        return result

    def _attr(self, op: dict[str, Any], bufs: Sequence[Any]) -> tuple[Any, set[str]]:
        tags: set[str] = set()
        obj = self._self(op, tags)
        name = op.get("n")
        if not isinstance(name, str):
            raise ProtocolError("a property needs a name")
        self._path = f"{type(obj).__name__}.{name[:100]}"
        return self.allowlist.get_property(obj, name), tags

    def _py(self, op: dict[str, Any], bufs: Sequence[Any]) -> tuple[Any, set[str]]:
        name = op.get("n")
        if not isinstance(name, str):
            raise ProtocolError("a remote Python value needs a type name")
        cls = self.allowlist.python_type(name)
        tags: set[str] = set()
        args, kwargs = self._args(op, bufs, tags)
        if kwargs or len(args) > 1:
            raise PermissionDenied(f"python.{name} takes at most one positional argument")
        guards.check_python_args(name, args)
        path = self._path = f"python.{name}"
        return self._timed(path, lambda: cls(*args)), tags

    def _put(self, op: dict[str, Any], bufs: Sequence[Any]) -> tuple[Any, set[str]]:
        tags: set[str] = set()
        value = self._decode(op.get("v"), bufs, tags)
        self._last_args = kind(value)
        self._path = "send"
        return value, tags

    def _mod(self, op: dict[str, Any], bufs: Sequence[Any]) -> tuple[Any, set[str]]:
        children = op.get("c")
        if not isinstance(children, dict) or len(children) > 10_000:
            raise ProtocolError("a module container needs a dict of children")
        tags: set[str] = set()
        container = Container()
        label = op.get("n")
        if isinstance(label, str) and label.isidentifier():
            container.label = label[:100]
        for name, oid in children.items():
            if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
                raise PermissionDenied(f"refused module attribute name {str(name)[:40]!r}")
            entry = self.store.get(oid)
            if entry.error is not None:
                raise _Inherited(entry.error)
            if not isinstance(entry.obj, torch.nn.Module):
                raise ProtocolError(f"child {name!r} is not a module")
            tags.update(entry.tags)
            container.add_module(name, entry.obj)
        self._last_args = f"{len(children)} children"
        self._path = "Module"
        return container, tags

    def _ctx(self, op: dict[str, Any]) -> None:
        path, enter = op.get("p"), op.get("e")
        if not isinstance(path, str) or not self.allowlist.is_context(path):
            raise PermissionDenied(f"{str(path)[:80]!r} is not an allowed context")
        if type(enter) is not bool:
            raise ProtocolError("a context op says whether it enters ('e': true) or leaves (false)")
        if enter:
            if len(self._grad_stack) >= _MAX_CTX:
                raise QuotaExceeded(f"more than {_MAX_CTX} nested contexts")
            self._grad_stack.append(torch.is_grad_enabled())
            torch.set_grad_enabled(path.endswith("enable_grad"))
        elif self._grad_stack:
            torch.set_grad_enabled(self._grad_stack.pop())

    def _del(self, op: dict[str, Any]) -> None:
        ids = op.get("ids")
        if not isinstance(ids, list) or len(ids) > _MAX_IDS:
            raise ProtocolError(f"a del op needs a list of at most {_MAX_IDS} ids")
        self.store.release_many(ids)  # unknown and published ids are ignored
