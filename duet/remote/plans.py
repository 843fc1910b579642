"""Plans, the owner's side: a sequence of calls the scientist repeats (a training step), defined once and
then run with one op a step.

The scientist's client finds a sequence of ops it sends again and again (see :mod:`duet.remote.planner`)
and sends it once as a *template*: the same ops, with each pointer replaced by a *slot* (``#k``: the plan's
k-th input, or the result of one of its earlier ops) and each constant that changes from step to step by a
*hole* (``$k``)::

    {"k": "plan", "id": 7, "n": 6, "h": 2, "t": [template op, ...]}
    {"k": "run",  "id": 7, "i": [input ids], "h": [hole values], "o": [one result id per op], "keep": [op indices]}

A run's result ids may also come as the number of the first one, ``"o": 2210`` standing for ``s2210``,
``s2211``, … one per op (what the client sends where its ids are consecutive, once the owner's welcome
says ``"run_ids": "first"``).

A run runs every op of the template, in order, through the same checks as the op itself would pass
(:meth:`Executor._do_call` / ``_do_meth``: the allowlist, the arguments, the published-data check, the
Python-item limits, the call's time and result checks), and logs every op in the activity log. Only the
results named in ``keep`` are stored (the ones the scientist still points at); the others exist only
while the run lasts. Their provenance is followed op by op: a kept result's sources are those of the
plan inputs it was computed from, and an op that returns nothing or writes into an entry's storage
gives its sources to what it may have written into (:meth:`Store.spread`), as :meth:`Store.put` does for
a single op.

What a run may skip is what an earlier run proved. A run whose inputs have the same types, shapes and
dtypes as an earlier run that passed every check (the same modules, in the same mode, with no module
retyped since, under the same quotas and grad mode) is *verified*: as long as each op's result keeps the
type, shape and dtype it had then, its ops skip the dry runs (which depend on nothing else, so they would
pass again), and the ops that use no hole and no Python value run on a fast path: their arguments built
from the run's slots, the allowlist's checks and call, the published-data check where the proving run
found that the call writes in place, the time and store-quota checks, the size check unless the result is
a tensor of the proved shape, provenance, and the log row the proving run wrote (see :func:`_fast_record`).
Python values (a running loss, a size) count by their type only, so an op that uses one, like an op that
uses a hole, is checked in full on every run, with two exceptions that no value can make costly: arithmetic
on a float with floats and ints (the running loss's ``+``), and basic indexing of a tensor by holes (a
batch's slice: a view, checked to be basic indexing on every run). From the first result that differs
(``nonzero``, a smaller last batch), or the first failure, every later op of the run is checked in full.

Errors keep the semantics of single ops: a failing op's error is reported under its result id, the ops
that use its result fail the same way without being reported again, and the other ops run.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .. import codec
from ..errors import DuetError, ProtocolError, QuotaExceeded, RemoteError
from . import guards, readonly
from .activity import ArgKinds
from .store import _meta

if TYPE_CHECKING:
    from .executor import Executor
    from .store import Entry, Store

__all__ = ["Plans", "Refused", "UNPLANNED", "MAX_PLANS", "MAX_PLAN_OPS", "MAX_TEMPLATE_OPS"]

MAX_PLANS = 1024  # plans one session may define
MAX_PLAN_OPS = 512  # ops in one plan
MAX_TEMPLATE_OPS = 65_536  # ops in all of a session's plans together
MAX_SLOTS = 4096  # inputs (or holes) of one plan
_VERIFIED_KEYS = 64  # input signatures remembered per plan
_KINDS = frozenset({"call", "meth", "attr"})
# methods whose bookkeeping needs the object's store entry (its metadata, the dry-run cache): never planned
UNPLANNED = frozenset({*guards.RETYPING, "requires_grad_"})
_SCALARS = (type(None), bool, int, float, str)


class _SlotError(Exception):
    """A slot holds an error instead of a value."""

    def __init__(self, error: RemoteError, inherited: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.inherited = inherited


class _Op:
    """One template op, checked and compiled once."""

    __slots__ = ("kind", "name", "self_slot", "args", "kwargs", "holey", "refs", "fast_args", "fast_kwargs")

    def __init__(self, raw: Any, index: int, n_in: int, n_holes: int) -> None:
        if not isinstance(raw, dict) or raw.get("k") not in _KINDS:
            raise ProtocolError(f"plan op {index}: a call, method or property op")
        if "o" in raw or "b" in raw:
            raise ProtocolError(f"plan op {index}: a template op names no result id and no buffers")
        self.kind: str = raw["k"]
        limit = n_in + index  # slots it may use: the inputs and the results of the ops before it
        refs: set[int] = set()
        holey = [False]
        self.self_slot = -1
        if self.kind == "call":
            name = raw.get("p")
        else:
            name = raw.get("n")
            self.self_slot = _slot(raw.get("s"), limit, index)
            refs.add(self.self_slot)
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ProtocolError(f"plan op {index}: needs a path or name")
        if name in UNPLANNED:
            raise ProtocolError(f"plan op {index}: {name!r} is not run in a plan")
        self.name = name
        self.args = _scan(raw.get("a"), limit, n_holes, refs, holey, index) if self.kind != "attr" else None
        self.kwargs = (
            _scan(raw.get("kw"), limit, n_holes, refs, holey, index) if self.kind != "attr" else None
        )
        self.holey = holey[0]
        self.refs = tuple(sorted(refs))
        self.fast_args = _builder(self.args, False)
        self.fast_kwargs = _builder(self.kwargs, True)


def _slot(ref: Any, limit: int, index: int) -> int:
    if type(ref) is str and ref.startswith("#") and 1 < len(ref) <= 8 and ref[1:].isdigit():
        k = int(ref[1:])
        if k < limit:
            return k
    raise ProtocolError(f"plan op {index}: a slot must name an input or an earlier op's result")


def _scan(tree: Any, limit: int, n_holes: int, refs: set[int], holey: list[bool], index: int) -> Any:
    """Check a template argument tree's pointer nodes (slots and holes) and note which slots it uses; the
    rest of the tree is decoded (and checked) by the codec on every run."""
    if tree is None:
        return None
    stack, seen = [(tree, 0)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if depth > 32 or seen > 10_000:
            raise ProtocolError(f"plan op {index}: arguments too large or too deep")
        if type(node) is list:
            if len(node) == 2 and node[0] == "ptr":
                ref = node[1]
                if type(ref) is str and ref.startswith("$") and ref[1:].isdigit() and int(ref[1:]) < n_holes:
                    holey[0] = True
                else:
                    refs.add(_slot(ref, limit, index))
                continue
            if node and node[0] in ("tensor", "buf"):
                raise ProtocolError(f"plan op {index}: a template carries no tensors")
            stack.extend((x, depth + 1) for x in node)
        elif type(node) is dict:
            raise ProtocolError(f"plan op {index}: arguments are codec trees")
    return tree


_ITEM_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def _builder(tree: Any, is_kwargs: bool) -> tuple[Any, ...] | None:
    """A flat argument tree compiled once: ``("hole", k)`` for a whole tree that is one hole, else
    ``(keys, items)`` with each item ``(0, constant)``, ``(1, slot)`` or ``(2, hole)`` (keys None for a
    list). None: any other tree, which the codec decodes on every run (with its checks)."""
    if type(tree) is not list or not tree:
        return None
    if len(tree) == 2 and tree[0] == "ptr":
        ref = tree[1]
        return ("hole", int(ref[1:])) if ref[0] == "$" else None
    keys: tuple[str, ...] | None
    if tree[0] == "list" and not is_kwargs and len(tree) <= 65:
        keys, values = None, tree[1:]
    elif tree[0] == "dict" and len(tree) % 2 == 1 and len(tree) <= 33:
        keys, values = tuple(tree[1::2]), tree[2::2]
        if not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
            return None
    else:
        return None
    items: list[tuple[int, Any]] = []
    for x in values:
        if type(x) in _ITEM_SCALARS:
            items.append((0, x))
        elif type(x) is list and len(x) == 2 and x[0] == "ptr":
            ref = x[1]
            items.append((2, int(ref[1:])) if ref[0] == "$" else (1, int(ref[1:])))
        else:
            return None
    return (keys, tuple(items))


class _Plan:
    __slots__ = ("ops", "n_in", "n_holes", "verified", "last_users", "deps", "spread_inputs")

    def __init__(self, ops: list[_Op], n_in: int, n_holes: int) -> None:
        self.ops = ops
        self.n_in = n_in
        self.n_holes = n_holes
        # the results each op is the last to use: a result no one keeps is let go there, as a local loop
        # lets go of a tensor it rebinds (autograd keeps what backward needs)
        last = {j: j for j in range(len(ops))}  # (a result no op uses: at once)
        for j, op in enumerate(ops):
            for ref in op.refs:
                if ref >= n_in:
                    last[ref - n_in] = j
        self.last_users: list[tuple[int, ...]] = [
            tuple(k for k, j2 in last.items() if j2 == j) for j in range(len(ops))
        ]
        # the inputs each slot is computed from, in a run where nothing fails (what a run finds then)
        self.deps: list[frozenset[int]] = [frozenset([i]) for i in range(n_in)]
        for op in ops:
            self.deps.append(frozenset().union(*[self.deps[r] for r in op.refs]))
        # the inputs whose entries an op's spread depends on: those its sources come from and those it reads
        self.spread_inputs: list[tuple[int, ...]] = [
            tuple(sorted(self.deps[n_in + j] | {r for r in op.refs if r < n_in})) for j, op in enumerate(ops)
        ]
        # input signature -> (each op's result signature, whether each op changes something in place,
        # the inputs known by identity: index and weak reference, each op's fast record or None,
        # [the allowlist, each fast op's binding under it], filled by the verified runs, and each op's last
        # spread that changed nothing, or None: see _spread_key)
        self.verified: dict[
            Any,
            tuple[
                list[Any],
                list[bool],
                tuple[tuple[int, weakref.ref[Any]], ...],
                list[Any],
                list[Any],
                list[Any],
            ],
        ] = {}


def _sig(obj: Any, refs: list[Any]) -> Any:
    """What a dry run of an op using ``obj`` may depend on; objects known by identity go to ``refs``."""
    t = type(obj)
    if t is torch.Tensor:
        return (t, obj.shape, obj.dtype)
    if t in _SCALARS:
        return (t,)  # a Python value by its type only: every op that uses one is dry-run (see Plans.run)
    if t in _BY_IDENTITY:
        refs.append(obj)
        return ("O", t, id(obj))
    if isinstance(obj, torch.nn.Module):
        refs.append(obj)
        return ("M", id(obj), obj.training)
    try:
        return guards._sig(obj)
    except guards._Uncached:
        if not issubclass(t, (list, tuple, dict)) and len(_BY_IDENTITY) < 1024:
            _BY_IDENTITY.add(t)  # (guards._sig refuses such an object by its type alone, not by its size)
        refs.append(obj)
        return ("O", t, id(obj))


# types whose objects a run's signature knows by identity (an optimizer...): guards._sig refuses them
_BY_IDENTITY: set[type] = set()

# which of _sig's cases a type's objects take, for a run's inputs (see Plans._key): tensors, scalars and
# modules always take the same; any other type (_OTHER) goes through _sig each time
_TENSOR, _SCALAR, _MODULE, _OTHER = "tensor", "scalar", "module", "other"
_INPUT_KINDS: dict[type, str] = {torch.Tensor: _TENSOR, **{t: _SCALAR for t in _SCALARS}}


def _input_kind(t: type) -> str:
    if t is torch.Tensor:
        return _TENSOR
    if t in _SCALARS:
        return _SCALAR
    if t not in _BY_IDENTITY and issubclass(t, torch.nn.Module):
        return _MODULE
    return _OTHER


def _result_sig(obj: Any) -> Any:
    return _sig(obj, [])


_FLOAT_SIG = (float,)  # _result_sig of a float
_ONE_SLICE = ArgKinds([slice(None)], {}).raw  # the argument kinds of ``tensor[a:b:c]``, whatever its bounds


def _no_pointer(oid: str) -> Any:
    raise ProtocolError("a hole's value holds no pointer")


class Plans:
    """The plans of one session, run by its executor (in the executor's thread, under its lock)."""

    def __init__(self, executor: Executor) -> None:
        self._ex = executor
        self._plans: dict[int, _Plan] = {}
        self._ops = 0
        self.runs = 0  # runs, and runs without dry runs (for tests and the bench)
        self.verified_runs = 0
        self.fast_ops = 0  # ops run on a verified run's fast path

    def __len__(self) -> int:
        return len(self._plans)

    # ---- definitions ------------------------------------------------------------------------------------

    def define(self, op: dict[str, Any]) -> None:
        pid, n_in, n_holes, template = op.get("id"), op.get("n"), op.get("h", 0), op.get("t")
        if type(pid) is not int or not 0 < pid < 1 << 31:
            raise ProtocolError("a plan needs an int id")
        if pid in self._plans:
            raise ProtocolError(f"plan {pid} is already defined")
        if (
            type(n_in) is not int
            or type(n_holes) is not int
            or not (0 <= n_in <= MAX_SLOTS and 0 <= n_holes <= MAX_SLOTS)
        ):
            raise ProtocolError("a plan needs its counts of inputs and holes")
        if not isinstance(template, list) or not 0 < len(template) <= MAX_PLAN_OPS:
            raise ProtocolError(f"a plan holds 1 to {MAX_PLAN_OPS} ops")
        if len(self._plans) >= MAX_PLANS or self._ops + len(template) > MAX_TEMPLATE_OPS:
            raise QuotaExceeded(
                f"a session may define at most {MAX_PLANS} plans of {MAX_TEMPLATE_OPS} ops in all"
            )
        ops = [_Op(raw, i, n_in, n_holes) for i, raw in enumerate(template)]
        self._plans[pid] = _Plan(ops, n_in, n_holes)
        self._ops += len(ops)

    # ---- runs -------------------------------------------------------------------------------------------

    def run(self, op: dict[str, Any]) -> list[tuple[str, RemoteError]]:
        """Run a plan; returns the failures to report, by result id (see the module for the semantics)."""
        ex = self._ex
        store = ex.store
        plan = self._plans.get(op.get("id"))  # type: ignore[arg-type]
        if plan is None:
            raise ProtocolError(f"no plan {str(op.get('id'))[:20]!r}")
        n_in, ops = plan.n_in, plan.ops
        ids_in, outs, keep = op.get("i"), op.get("o"), op.get("keep")
        if type(outs) is int:  # the first of consecutive ids (see the module)
            if not 0 <= outs < _MAX_ID_NUMBER - len(ops):
                raise ProtocolError("a plan run's first result id is a number of up to 38 digits")
            outs = _SerialIds(outs, len(ops))
        elif not isinstance(outs, list) or len(outs) != len(ops) or not all(_result_id(o) for o in outs):
            raise ProtocolError("a plan run names one result id per op")
        elif len(set(outs)) != len(outs):
            raise ProtocolError("a plan run's result ids must differ")
        if not isinstance(keep, list) or not all(type(k) is int and 0 <= k < len(ops) for k in keep):
            raise ProtocolError("a plan run keeps results by op index")
        if not isinstance(ids_in, list) or len(ids_in) != n_in or not all(type(i) is str for i in ids_in):
            raise Refused(outs, keep, ProtocolError("a plan run names one input id per input"))
        holes_raw = op.get("h", [])
        if not isinstance(holes_raw, list) or len(holes_raw) != plan.n_holes:
            raise Refused(outs, keep, ProtocolError("a plan run gives one value per hole"))
        q = ex._q = ex.quotas
        try:
            holes = [
                _batch_slice(h)
                or codec.decode(
                    h, (), make_pointer=_no_pointer, max_tensor_bytes=q.tensor_bytes, max_items=10_000
                )
                for h in holes_raw
            ]
        except DuetError as exc:
            raise Refused(outs, keep, exc) from None

        self.runs += 1
        n = n_in + len(ops)
        slots: list[Any] = [None] * n
        errors: list[_SlotError | None] = [None] * n
        deps: list[frozenset[int]] = [frozenset()] * n  # the inputs each slot was computed from
        entries: list[Entry | None] = [None] * n_in
        input_deps = plan.deps  # (frozenset([i]) for input i, made once per plan)
        for i, entry in enumerate(store.entries_of(ids_in)):
            if entry is None:
                try:
                    entry = store.lookup(ids_in[i])  # the error a single op gets (or the entry, put since)
                except DuetError as exc:  # each op that uses it fails with this, as a single op would
                    errors[i] = _SlotError(ex._as_remote(exc), False)
                    continue
            entries[i] = entry
            deps[i] = input_deps[i]
            if entry.error is not None:
                errors[i] = _SlotError(entry.error, True)
            else:
                slots[i] = entry.obj

        key, known = self._key(plan, slots, errors)
        try:
            found = plan.verified.get(key) if key is not None else None
        except TypeError:  # an unhashable signature: every run is dry-run
            key = found = None
        if found is not None and any(r() is not slots[i] for i, r in found[2]):
            found = None  # an input known by identity is another object at the same address
        expected, changing = (found[0], found[1]) if found is not None else (None, None)
        # the ops a verified run runs on its fast path (see _fast_record), None where it takes the long one
        fast: list[Any] | None = found[3] if found is not None else None
        # each fast op's allowlist binding, made on its first fast run (valid while the allowlist is the same
        # object: an allowlist's tables never change)
        binders: list[Any] = []
        spreads: list[Any] = found[5] if found is not None else []
        if found is not None:
            bound_for = found[4]
            if bound_for[0] is not ex.allowlist:
                bound_for[:] = [ex.allowlist, [None] * len(ops)]
            binders = bound_for[1]
        dry = expected is None
        changes: list[bool] = []
        records: list[Any] = []  # the fast records a verifying run collects
        if not dry:
            self.verified_runs += 1
        sigs: list[Any] = []
        failures: list[tuple[str, RemoteError]] = []
        used: list[int] = []

        def value(ref: int) -> Any:
            err = errors[ref]
            if err is not None:
                raise err
            used.append(ref)
            return slots[ref]

        def resolve(oid: str) -> Any:
            if oid[0] == "$":
                return holes[int(oid[1:])]
            return value(int(oid[1:]))

        record = ex.log.record
        kept = set(keep)
        held = 0  # bytes of the results this run holds (see the quota check after each call)
        sizes = [0] * n
        perf = time.perf_counter
        shared_storage = store.shared_storage
        spread_inputs = plan.spread_inputs
        refuse_change, check_items_before = readonly.refuse_published_change, guards.check_items_before
        plan_deps, last_users = plan.deps, plan.last_users
        for j, top in enumerate(ops):
            start = perf()
            out = n_in + j
            record_j = fast[j] if fast is not None else None
            meta: Any = None
            index: list[Any] | None = None
            if record_j is not None and top.holey:
                index = _index_args(top, slots, holes)
                if index is None:  # not basic indexing this time: this op takes the long path
                    record_j = None
            if record_j is not None:
                # the fast path: an op this run's signature has proved (no hole, no Python value), run with
                # the checks a verified run keeps, logged as its verifying run logged it (see _fast_record)
                path, raw, meta, proved_bytes = record_j
                refs = top.refs
                kwargs: dict[str, Any]
                try:
                    if index is not None:  # a batch's slice: its kinds are logged as they come
                        args, kwargs = index, {}
                        raw = _ONE_SLICE if type(index[0]) is slice else ArgKinds(args, kwargs).raw
                    else:
                        fa, fk = top.fast_args, top.fast_kwargs
                        args = [] if fa is None else [slots[x] if tag else x for tag, x in fa[1]]
                        kwargs = (
                            {}
                            if fk is None
                            else dict(zip(fk[0], [slots[x] if tag else x for tag, x in fk[1]]))
                        )
                    bound = binders[j]
                    if top.kind == "call":
                        if changing[j]:  # type: ignore[index]
                            refuse_change(
                                ex.allowlist,
                                ex._published,
                                fn=ex.allowlist.resolve_function(top.name),
                                path=top.name,
                                args=args,
                                kwargs=kwargs,
                            )
                        if bound is None:
                            bound = binders[j] = ex.allowlist.bind_function(top.name)
                        t0 = perf()
                        result = bound(args, kwargs)
                    else:
                        obj = slots[top.self_slot]
                        if changing[j]:  # type: ignore[index]
                            refuse_change(
                                ex.allowlist, ex._published, obj=obj, name=top.name, args=args, kwargs=kwargs
                            )
                        if bound is None or bound[0] is not type(obj):
                            bound = binders[j] = (
                                type(obj),
                                ex.allowlist.bind_method(obj, top.name),
                                guards.may_check_items(obj, top.name),
                            )
                        if bound[2]:
                            check_items_before(obj, top.name, args, kwargs)
                        t0 = perf()
                        result = bound[1](obj, args, kwargs)
                    elapsed = perf() - t0
                    if elapsed > q.call_seconds:
                        del result
                        raise QuotaExceeded(
                            f"{path} ran {elapsed:.2f} s, over the {q.call_seconds:g} s limit for one call"
                        )
                    is_tensor = type(result) is torch.Tensor
                    sig: Any
                    if is_tensor:
                        shape = result.shape  # (one torch.Size: the signature's, and the log row's)
                        sig = (torch.Tensor, shape, result.dtype)
                        same = sig == expected[j]  # type: ignore[index]
                        # (a tensor of the proved type, shape and dtype passed it in the verifying run)
                        if not same:
                            guards.check_result(result, q.tensor_bytes, path)
                    elif type(result) is float:  # (an item, a running loss: check_result passes any float)
                        sig = _FLOAT_SIG
                        same = sig == expected[j]  # type: ignore[index]
                    else:
                        sig = _result_sig(result)
                        same = sig == expected[j]  # type: ignore[index]
                        guards.check_result(result, q.tensor_bytes, path)
                    if result is None or type(result) is float:  # (guards._size_of gives a float 0 bytes)
                        nbytes = 0
                    else:
                        for u in refs:
                            if result is slots[u]:  # (an in-place method returns its tensor)
                                nbytes = 0
                                break
                        else:
                            if not is_tensor:
                                nbytes = guards._size_of(result)
                            elif same:  # (the proved shape and dtype: the proved byte count)
                                nbytes = proved_bytes
                            else:
                                nbytes = result.numel() * result.element_size()
                        if nbytes and store._scientist_bytes + held + nbytes > q.store_bytes:
                            del result
                            raise _over_store_quota(
                                path, store.scientist_bytes + held + nbytes, q.store_bytes
                            )
                except Exception as exc:  # noqa: BLE001 - as a single op: the error goes under its result id
                    error = ex._as_remote(exc)
                    errors[out] = _SlotError(error, True)
                    failures.append((outs[j], error))
                    ex._record(path, raw, None, error.remote_type, start)
                    sigs.append(None)
                    changes.append(True)
                    fast = None  # the rest of the run takes the long path
                    continue
                self.fast_ops += 1
                if (
                    same
                ):  # the op's own bookkeeping, as the long path's below (which a different result takes)
                    slots[out] = result
                    sizes[out] = nbytes
                    held += nbytes
                    dep = deps[out] = plan_deps[out]
                    if dep:
                        if result is None:
                            objects = [slots[u] for u in refs]
                            # an op that returns nothing: where what it used holds no storage and no graph
                            # (an optimizer's step), skipped if the same spread changed nothing last time
                            # (see _spread_key); backward's graph is new each run, and followed
                            skey = (
                                _spread_key(store, 0, entries, spread_inputs[j])
                                if all(_no_storage(o) for o in objects)
                                else None
                            )
                            if skey is None or skey != spreads[j]:
                                grew = _spread_op(store, entries, dep, refs, n_in, objects)
                                spreads[j] = None if grew else skey
                        elif is_tensor and (ptr := shared_storage(result)):
                            # a view of an entry (a batch's slice): skipped where the same spread changed
                            # nothing last time (see _spread_key)
                            skey = (
                                None
                                if result.grad_fn is not None
                                else _spread_key(store, ptr, entries, spread_inputs[j])
                            )
                            if skey is None or skey != spreads[j]:
                                grew = _spread_op(store, entries, dep, refs, n_in, [result])
                                spreads[j] = None if grew else skey
                    for k in last_users[j]:
                        if k not in kept:
                            slots[n_in + k] = None
                            held -= sizes[n_in + k]
                            sizes[n_in + k] = 0
                    record(
                        time.time(),
                        path,
                        raw,
                        meta[0],
                        shape if is_tensor else meta[1],
                        "ok",
                        perf() - start,
                    )
                    continue
                ex._path, ex._last_args = path, raw
                used[:] = refs
                changes.append(True)
                dry, changing, fast, meta = True, None, None, None  # from here on the run differs
            else:
                ex._last_args = ""
                ex._path = top.name
                ex._changes = False
                del used[:]
                # an op that uses a Python value (a running loss, a size) is checked in full every run: the
                # run's signature knows such values by type only
                plain = any(type(slots[r]) in _SCALARS for r in top.refs)
                guard = (
                    dry or plain or changing is None or changing[j]
                )  # verified: the check where it found changes
                check = dry or top.holey or plain
                try:
                    if top.kind == "call":
                        fn = ex.allowlist.resolve_function(top.name)
                        args, kwargs = self._args(top, value, resolve, holes)
                        result = ex._do_call(top.name, fn, args, kwargs, check, guard or top.holey)
                    else:
                        obj = value(top.self_slot)
                        ex._path = f"{type(obj).__name__}.{top.name[:100]}"
                        if top.kind == "meth":
                            ex.allowlist.check_method(obj, top.name)
                            args, kwargs = self._args(top, value, resolve, holes)
                            result = ex._do_meth(obj, top.name, args, kwargs, check, guard or top.holey)
                        else:
                            result = ex.allowlist.get_property(obj, top.name)
                    nbytes = self._held(result, slots, used, held)
                except Exception as exc:  # noqa: BLE001 - as a single op: the error goes under its result id
                    if isinstance(exc, _SlotError):
                        error, inherited = exc.error, exc.inherited
                    else:
                        error, inherited = ex._as_remote(exc), False
                    errors[out] = _SlotError(error, True)
                    if not inherited:
                        failures.append((outs[j], error))
                    ex._record(ex._path, ex._last_args, None, error.remote_type, start)
                    sigs.append(None)
                    changes.append(True)
                    records.append(None)
                    fast = None  # the ops that use its result must inherit its error: the long path
                    continue
                changes.append(ex._changes)
                sig = (
                    (torch.Tensor, result.shape, result.dtype)
                    if type(result) is torch.Tensor
                    else _result_sig(result)
                )
                if dry and expected is None:  # a verifying run: what a verified run may do on the fast path
                    records.append(_fast_record(top, plain, ex._path, ex._last_args, result, slots, holes))
                if expected is not None and not dry and sig != expected[j]:
                    dry = True  # from here on the run's values differ from the verified run's
                    changing = fast = None
            slots[out] = result
            sizes[out] = nbytes
            held += nbytes
            dep = deps[used[0]] if len(used) == 1 else frozenset().union(*[deps[u] for u in used])
            deps[out] = dep
            if dep and (result is None or (type(result) is torch.Tensor and store.shares_storage(result))):
                read = [e for u in used if u < n_in and (e := entries[u]) is not None]
                store.spread(
                    _sources(entries, dep), read, [slots[u] for u in used] if result is None else [result]
                )
            if meta is None:
                if type(result) is torch.Tensor:
                    meta = ("Tensor", tuple(result.shape))
                else:
                    described = _meta(result)
                    meta = (described.get("type"), described.get("shape"))
            elif meta[0] == "Tensor":
                meta = ("Tensor", tuple(result.shape))
            sigs.append(sig)
            for k in plan.last_users[j]:
                if k not in kept:
                    slots[n_in + k] = None
                    held -= sizes[n_in + k]
                    sizes[n_in + k] = 0
            record(time.time(), ex._path, ex._last_args, meta[0], meta[1], "ok", perf() - start)

        for j in sorted(set(keep)):
            oid, out = outs[j], n_in + j
            err = errors[out]
            try:
                if err is not None:
                    store.put(oid, None, (), error=err.error)
                else:
                    inputs = [e for i in sorted(deps[out]) if (e := entries[i]) is not None]
                    tags = {t for e in inputs for t in e.tags}
                    store.put(oid, slots[out], tags, inputs=inputs)
            except DuetError as exc:
                error = ex._as_remote(exc)
                try:
                    store.put(oid, None, (), error=error)
                except DuetError:
                    failures.append(("", error))
                    continue
                failures.append((oid, error))
        if expected is None and key is not None and not failures and all(e is None for e in errors):
            try:
                identities = tuple((i, weakref.ref(slots[i])) for i in known)
            except TypeError:  # an input known by identity without weak references: never verified
                return failures
            if len(plan.verified) >= _VERIFIED_KEYS:
                plan.verified.pop(next(iter(plan.verified)))
            plan.verified[key] = (
                sigs,
                changes,
                identities,
                records,
                [None, []],  # (the allowlist, each fast op's binding: made on its first fast run)
                [None] * len(ops),  # (each op's last spread that changed nothing: see _spread_key)
            )
        return failures

    def _held(self, result: Any, slots: list[Any], used: list[int], held: int) -> int:
        """The bytes a result adds to what the run holds (none if it is one of its operands), refused if that
        would take the session over its store quota, as the same results stored would."""
        if result is None or any(result is slots[u] for u in used):
            return 0
        nbytes = guards._size_of(result)
        store, limit = self._ex.store, self._ex._q.store_bytes
        if nbytes and store.scientist_bytes + held + nbytes > limit:
            raise _over_store_quota(self._ex._path, store.scientist_bytes + held + nbytes, limit)
        return nbytes

    def _args(self, top: _Op, value: Any, resolve: Any, holes: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        args = _build(top.fast_args, top.args, value, resolve, holes, self._ex._q.tensor_bytes, [])
        kwargs = _build(top.fast_kwargs, top.kwargs, value, resolve, holes, self._ex._q.tensor_bytes, {})
        return self._ex._accepted(args, kwargs)

    def _key(self, plan: _Plan, slots: list[Any], errors: list[Any]) -> tuple[Any, list[int]]:
        """The run's input signature and the inputs it knows by identity (None: a run that cannot be verified)."""
        q = self._ex._q
        if errors[: plan.n_in].count(None) != plan.n_in:  # an input holds an error
            return None, []
        known: list[int] = []
        parts: list[Any] = [q.tensor_bytes, q.call_seconds, torch.is_grad_enabled(), guards.generation()]
        kinds = _INPUT_KINDS
        try:
            for i in range(plan.n_in):
                obj = slots[i]
                t = type(obj)
                k = kinds.get(t)
                if k is _TENSOR:  # (_sig's cases, told apart by one lookup of the type)
                    parts.append((torch.Tensor, obj.shape, obj.dtype))
                elif k is _MODULE:
                    parts.append(("M", id(obj), obj.training))
                    known.append(i)
                elif k is _SCALAR:
                    parts.append((t,))
                else:
                    objs: list[Any] = []
                    parts.append(_sig(obj, objs))
                    if objs:
                        known.append(i)
                    if k is None and len(kinds) < 1024:
                        kinds[t] = _input_kind(t)
        except TypeError:  # (an unhashable signature fails where the run looks it up)
            return None, []
        return tuple(parts), known


def _over_store_quota(path: str, total: int, limit: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"{path} would make the session hold {total:,} bytes (the store's and this run's), "
        f"over its store quota of {limit:,}"
    )


def _fast_record(
    top: _Op, plain: bool, path: str, args: Any, result: Any, slots: list[Any], holes: list[Any]
) -> tuple[str, Any, Any, int] | None:
    """What a verified run needs to run op ``top`` on its fast path, from the verifying run that has just run
    it: the log's path and argument kinds, the result's log kind and shape (a tensor's shape is read from
    each result), and a tensor result's byte count (that of every tensor of the proved shape and dtype).
    None for an op that stays on the long path: a property, an op with a hole or a Python value, arguments
    the codec decodes, a result whose log entry the type alone does not fix. Two such ops do run on it:
    basic indexing of a tensor by holes (a batch's slice, a view whatever its bounds, checked to be basic
    indexing on every run: see :func:`_index_args`), and arithmetic on a Python float with floats and ints
    (a running loss: constant time, a float or a bool as the result; see :func:`_float_op`)."""
    if top.kind == "attr":
        return None
    if top.holey:
        if _index_args(top, slots, holes) is None or type(result) is not torch.Tensor:
            return None
    elif plain:
        if not _float_op(top, slots) or type(result) not in (float, bool):
            return None
    if not top.holey and (
        (top.args is not None and (top.fast_args is None or top.fast_args[0] == "hole"))
        or (top.kwargs is not None and (top.fast_kwargs is None or top.fast_kwargs[0] == "hole"))
    ):
        return None
    nbytes = 0
    if type(result) is torch.Tensor:
        meta: Any = ("Tensor", None)
        nbytes = result.numel() * result.element_size()  # (any tensor of its shape and dtype has as many)
    elif type(result) in _SCALARS:
        described = _meta(result)
        meta = (described.get("type"), described.get("shape"))
    else:
        return None
    raw = args.raw if isinstance(args, ArgKinds) else args
    return (path, raw, meta, nbytes)


def _index_args(top: _Op, slots: list[Any], holes: list[Any]) -> list[Any] | None:
    """The arguments of ``tensor[index]`` with holes in the index, if that is basic indexing (ints, slices of
    ints, None, ``...``: a view, see :func:`guards._basic_index`); None for any other op or index."""
    fa = top.fast_args
    if top.kind != "meth" or top.name != "__getitem__" or top.kwargs is not None or fa is None:
        return None
    if type(slots[top.self_slot]) is not torch.Tensor:
        return None
    if fa[0] == "hole":
        args = holes[fa[1]]
    elif fa[0] is None:
        args = [x if tag == 0 else (slots[x] if tag == 1 else holes[x]) for tag, x in fa[1]]
    else:
        return None
    if type(args) is not list or len(args) != 1 or not guards._basic_index(args[0]):
        return None
    return args


# what a Python float may do on the fast path: arithmetic and comparisons (a float is never changed in
# place: ``total += loss.item()`` makes a new float, as ``+`` does)
_FLOAT_OPS = frozenset(
    {"__abs__", "__add__", "__eq__", "__floordiv__", "__ge__", "__gt__", "__iadd__", "__ifloordiv__",
     "__imul__", "__isub__", "__itruediv__", "__le__", "__lt__", "__mod__", "__mul__", "__ne__", "__neg__",
     "__pow__", "__radd__", "__rfloordiv__", "__rmod__", "__rmul__", "__rpow__", "__rsub__", "__rtruediv__",
     "__sub__", "__truediv__"}
)  # fmt: skip


def _float_op(top: _Op, slots: list[Any]) -> bool:
    """Whether ``top`` is arithmetic on a Python float with floats and ints (slots or constants) and no
    keywords: it takes constant time (a huge int fails to convert, it does not run long) and its result is a
    float or a bool."""
    if top.kind != "meth" or top.name not in _FLOAT_OPS or top.kwargs is not None:
        return False
    if type(slots[top.self_slot]) is not float:
        return False
    fa = top.fast_args
    if top.args is None:
        return True
    if fa is None or fa[0] is not None:
        return False
    return all(tag != 2 and type(slots[x] if tag == 1 else x) in (float, int) for tag, x in fa[1])


def _build(fast: Any, tree: Any, value: Any, resolve: Any, holes: list[Any], limit: int, empty: Any) -> Any:
    if tree is None:
        return empty
    if fast is None:
        return codec.decode(tree, (), make_pointer=resolve, max_tensor_bytes=limit)
    if fast[0] == "hole":
        return holes[fast[1]]
    keys, items = fast
    values = [x if tag == 0 else (value(x) if tag == 1 else holes[x]) for tag, x in items]
    return values if keys is None else dict(zip(keys, values))


def _sources(entries: Sequence[Entry | None], dep: frozenset[int]) -> frozenset[str]:
    sets = [e.sources for i in dep if (e := entries[i]) is not None and e.sources]
    if len(sets) == 1:
        return sets[0]
    return frozenset().union(*sets)


def _spread_op(
    store: Store,
    entries: Sequence[Entry | None],
    dep: frozenset[int],
    refs: Any,
    n_in: int,
    objects: list[Any],
) -> bool:
    """A fast op's spread: the sources of the inputs its result comes from, to what it read and to what
    ``objects`` reach (see Store.spread); whether an entry's sources grew."""
    read = [e for u in refs if u < n_in and (e := entries[u]) is not None]
    return store.spread(_sources(entries, dep), read, objects)


def _spread_key(store: Store, ptr: int, entries: Sequence[Entry | None], inputs: tuple[int, ...]) -> Any:
    """What the spread of a tensor result without an autograd graph, sharing the storage at ``ptr`` with an
    entry, depends on besides the store's entries' state: the store's generation (its storage index and
    every entry's sources), the storage, and the entries (by serial) its sources come from and it reads.
    A spread that changed nothing would change nothing again under the same key."""
    return (store.generation, ptr, [e.serial if (e := entries[u]) is not None else 0 for u in inputs])


def _no_storage(obj: Any) -> bool:
    """Whether a spread finds no storage and no autograd graph through ``obj`` (see Store.spread)."""
    return not isinstance(obj, (torch.Tensor, torch.nn.Module))


def _result_id(oid: Any) -> bool:
    return type(oid) is str and oid.startswith("s") and 1 < len(oid) <= 40


def _batch_slice(hole: Any) -> list[slice] | None:
    """The value :func:`codec.decode` makes of ``["list", ["slice", start, stop, step]]`` with int or None
    bounds (a batch's slice, the hole of nearly every run), built without the codec's walk; None for any
    other tree, which the codec decodes (and checks)."""
    if type(hole) is list and len(hole) == 2 and hole[0] == "list":
        s = hole[1]
        if (
            type(s) is list
            and len(s) == 4
            and s[0] == "slice"
            and type(s[1]) in codec._BOUND_TYPES
            and type(s[2]) in codec._BOUND_TYPES
            and type(s[3]) in codec._BOUND_TYPES
        ):
            return [slice(s[1], s[2], s[3])]
    return None


_MAX_ID_NUMBER = 10**38  # "s" and 38 digits: within the 40 characters of a result id


class _SerialIds(Sequence[str]):
    """The result ids ``s<first>``, ``s<first + 1>``, …: one per op of a run, made when asked for."""

    __slots__ = ("first", "n")

    def __init__(self, first: int, n: int) -> None:
        self.first, self.n = first, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: Any) -> Any:
        if type(j) is not int or not 0 <= j < self.n:
            return [f"s{self.first + k}" for k in range(self.n)][j]  # (a slice, or the error of a bad index)
        return f"s{self.first + j}"


class Refused(Exception):
    """A run refused as a whole: its error goes under every kept result id."""

    def __init__(self, outs: Sequence[str], keep: list[int], error: DuetError) -> None:
        super().__init__(str(error))
        self.outs, self.keep, self.error = outs, keep, error
