"""Plans, the scientist's side: find the sequences of ops a loop sends again and again, and send each once.

A training loop sends the same ops every step, on new tensors: the batch's slices, the layers' calls, the
loss, ``backward``, ``step``. When a frame is about to leave, :meth:`Planner.compress` looks for a sequence
that repeats right after itself (the same ops, using their inputs the same way, with only some constants
changed), defines it once as a plan (a template whose pointers are *slots* and whose changing constants are
*holes*) and replaces each occurrence with one ``run`` op; later frames reuse the plans they match. The
owner runs a plan's ops with the same checks and the same results as the ops themselves (see
:mod:`duet.remote.plans`).

A frame that would end in the middle of a known plan's step leaves without that step's first ops
(:meth:`Planner.held_from`): the client sends them with the next frame, so the step still travels as one
run. A run keeps (stores on the owner) only the results the scientist can still use: those with a live
pointer, and those a later op of the frame (or a held op) uses. The others are never stored, and their
releases are not sent. Ops that carry buffers (tensors the scientist sends), contexts, containers and
releases are never planned.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable
from typing import Any

from . import plans

__all__ = ["Planner", "enabled_by_env", "refs_of", "without"]

MIN_OPS = 3  # shortest sequence worth a plan
_LOOKAHEAD = 64  # ops a known plan may start within (see Planner._soon_known)
_CANDIDATES = 8  # nearest repeats of an op tried as the start of a new plan (bounds the search)
_GAP = 8  # ops between two runs of a known plan that _longer tries to take into a longer plan
MAX_TEMPLATES = 256  # plans one client defines (the owner accepts up to plans.MAX_PLANS)
_PLANNED_KINDS = frozenset({"call", "meth", "attr"})


def enabled_by_env() -> bool:
    """``DUET_PLANS=0`` turns plans off (every op then travels on its own, as the owner runs it anyway)."""
    return os.environ.get("DUET_PLANS", "1").strip().lower() not in ("0", "false", "no", "off")


def _plannable(op: dict[str, Any]) -> bool:
    return op.get("k") in _PLANNED_KINDS and "b" not in op and op.get("n") not in plans.UNPLANNED


def _refs(op: dict[str, Any]) -> list[str]:
    """The ids an op uses, in order: its ``self``, then its arguments' pointers (depth first, left to
    right). A flat argument list (pointers and constants, as most calls have) is read without a stack."""
    out = [op["s"]] if "s" in op else []
    for key in ("a", "kw"):
        tree = op.get(key)
        if type(tree) is not list:
            continue
        if len(tree) == 2 and tree[0] == "ptr" and type(tree[1]) is str:
            out.append(tree[1])
            continue
        for node in tree:
            if type(node) is list:
                if len(node) == 2 and node[0] == "ptr" and type(node[1]) is str:
                    out.append(node[1])
                else:
                    _walk_refs(node, out)
    return out


def _walk_refs(tree: list[Any], out: list[str]) -> None:
    stack = [tree]
    while stack:
        node = stack.pop()
        if type(node) is list:
            if len(node) == 2 and node[0] == "ptr" and type(node[1]) is str:
                out.append(node[1])
            else:
                stack.extend(reversed(node))


def _has_ptr(node: Any) -> bool:
    if type(node) is list:
        if len(node) == 2 and node[0] == "ptr":
            return True
        for x in node:
            if type(x) is list and _has_ptr(x):
                return True
    return False


def _note_refs(ops: list[dict[str, Any]], last_use: dict[str, int]) -> None:
    """``last_use[ref] = i`` for each id that op ``i`` uses (see :func:`_refs`), the ops in order."""
    for i, op in enumerate(ops):
        for ref in _refs(op):
            last_use[ref] = i


def _keys(ops: list[dict[str, Any]]) -> list[Any]:
    """Each op's key (its kind, and its path or name), None for an op that is never planned."""
    return [(op["k"], op.get("p") or op.get("n")) if _plannable(op) else None for op in ops]


class _Segment:
    """ops[i:j] with their pointers as slots: ``#k`` is input k (an id the segment uses but did not make)
    or, from ``n_in`` on, the result of the segment's op ``k - n_in``."""

    __slots__ = ("ops", "inputs", "outs", "n_in")

    def __init__(self, ops: list[dict[str, Any]]) -> None:
        made = {op["o"]: j for j, op in enumerate(ops)}
        inputs: dict[str, int] = {}
        for j, op in enumerate(ops):
            for ref in _refs(op):
                if made.get(ref, j) >= j and ref not in inputs:  # made by no earlier op of the segment
                    inputs[ref] = len(inputs)
        self.inputs = list(inputs)
        self.n_in = n_in = len(inputs)
        self.outs = [op["o"] for op in ops]

        def slot(ref: str, j: int) -> str:
            k = made.get(ref)
            return f"#{n_in + k}" if k is not None and k < j else f"#{inputs[ref]}"

        def tree(node: Any, j: int) -> Any:
            if type(node) is list:
                if len(node) == 2 and node[0] == "ptr" and type(node[1]) is str:
                    return ["ptr", slot(node[1], j)]
                return [tree(x, j) for x in node]
            return node

        self.ops = []
        for j, op in enumerate(ops):
            t: dict[str, Any] = {"k": op["k"]}
            if "p" in op:
                t["p"] = op["p"]
            if "s" in op:
                t["s"] = slot(op["s"], j)
            if "n" in op:
                t["n"] = op["n"]
            for key in ("a", "kw"):
                if key in op:
                    t[key] = tree(op[key], j)
            self.ops.append(t)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (``1``, ``1.0`` and ``True`` are three constants)."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _holes(a: Any, b: Any, at: list[tuple[int, ...]], path: tuple[int, ...]) -> bool:
    """Compare two template trees; note where constants differ (``at``); False if they differ otherwise."""
    if _same(a, b):
        return True
    if not (_has_ptr(a) or _has_ptr(b)):
        at.append(path)  # a constant (a slice, a number, a dtype...) that changes: one hole
        return True
    if type(a) is list and type(b) is list and len(a) == len(b) and a and _same(a[0], b[0]) and a[0] != "ptr":
        is_dict = a[0] == "dict"
        for i in range(1, len(a)):
            if is_dict and i % 2 == 1:  # a key: keys never become holes
                if not _same(a[i], b[i]):
                    return False
                continue
            if not _holes(a[i], b[i], at, (*path, i)):
                return False
        return True
    return False


class _Template:
    __slots__ = ("pid", "keys", "ops", "n_in", "holes", "definition", "_prog")

    def __init__(
        self, pid: int, keys: list[Any], seg: _Segment, holes: dict[int, list[tuple[str, tuple[int, ...]]]]
    ) -> None:
        self.pid = pid
        self.keys = keys
        self.n_in = seg.n_in
        self.holes: list[tuple[int, str, tuple[int, ...]]] = []  # (op, "a"|"kw", path in the tree)
        ops = [dict(t) for t in seg.ops]
        for j, where in sorted(holes.items()):
            for field, path in where:
                self.holes.append((j, field, path))
                ops[j][field] = _replace(ops[j][field], path, ["ptr", f"${len(self.holes) - 1}"])
        self.ops = ops
        self.definition = {"k": "plan", "id": pid, "n": seg.n_in, "h": len(self.holes), "t": ops}
        self._prog: list[Any] | None = None

    def match_ops(self, ops: list[dict[str, Any]]) -> tuple[list[str], list[Any]] | None:
        """The input ids and hole values if ``ops`` are this template's ops with other constants (as
        :meth:`match` of their segment, without building it), else None."""
        b = _Binding(ops, self.n_in)
        for j, (prog, op) in enumerate(zip(self._program(), ops)):
            b.j = j
            k, p, n, s, trees = prog
            if op["k"] != k or op.get("p") != p or op.get("n") != n:
                return None
            if s is None:
                if "s" in op:
                    return None
            elif "s" not in op or not b.slot_k(s, op["s"]):
                return None
            for key, flat, tree in trees:
                if key is None:  # the op has a field the template has not
                    if tree in op:
                        return None
                    continue
                if key not in op:
                    return None
                if not (b.flat(flat, op[key]) if flat is not None else b.tree(tree, op[key])):
                    return None
        if len(b.inputs) != self.n_in or len(b.values) != len(self.holes):
            return None
        return b.inputs, [b.values[k] for k in range(len(self.holes))]

    def _program(self) -> list[tuple[Any, Any, Any, int | None, list[tuple[str | None, Any, Any]]]]:
        """The template's ops as :meth:`match_ops` reads them (made once): each op's kind, path and name,
        its ``self`` slot's number, and its argument trees, each flat (see :func:`_flat_program`) where it
        can be."""
        prog = self._prog
        if prog is None:
            prog = []
            for t in self.ops:
                trees: list[tuple[str | None, Any, Any]] = []
                for key in ("a", "kw"):
                    if key in t:
                        trees.append((key, _flat_program(t[key]), t[key]))
                    else:
                        trees.append((None, None, key))
                s = int(t["s"][1:]) if "s" in t else None
                prog.append((t["k"], t.get("p"), t.get("n"), s, trees))
            self._prog = prog
        return prog

    def match(self, seg: _Segment) -> list[Any] | None:
        """The hole values if ``seg`` is this template with other constants, else None."""
        if seg.n_in != self.n_in:
            return None
        values: dict[int, Any] = {}
        for t, s in zip(self.ops, seg.ops):
            if t.keys() != s.keys():
                return None
            for key in t:
                if not _fits(t[key], s[key], values):
                    return None
        if len(values) != len(self.holes):
            return None
        return [values[k] for k in range(len(self.holes))]


class _Binding:
    """Matching a template against a frame's ops directly (no template of them is built): which ids its
    input slots take, in the order :class:`_Segment` numbers them, and its holes' values."""

    __slots__ = ("made", "j", "n_in", "inputs", "index", "values")

    def __init__(self, ops: list[dict[str, Any]], n_in: int) -> None:
        self.made = {op["o"]: j for j, op in enumerate(ops)}
        self.j = 0
        self.n_in = n_in
        self.inputs: list[str] = []
        self.index: dict[str, int] = {}
        self.values: dict[int, Any] = {}

    def slot(self, slot: Any, ref: Any) -> bool:
        """Whether the op's pointer ``ref`` is what the template's ``slot`` (``#k``) stands for."""
        if type(slot) is not str:
            return False
        return self.slot_k(int(slot[1:]), ref)

    def slot_k(self, k: int, ref: Any) -> bool:
        """:meth:`slot` of the template's slot ``#k``."""
        if type(ref) is not str:
            return False
        m = self.made.get(ref, self.j)
        if k >= self.n_in:  # the result of the window's op k - n_in, made before this op
            return m < self.j and m == k - self.n_in
        if m < self.j:  # made in the window: it cannot be an input
            return False
        known = self.index.get(ref)
        if known is not None:
            return known == k
        if k != len(self.inputs):
            return False
        self.index[ref] = k
        self.inputs.append(ref)
        return True

    def flat(self, prog: list[tuple[int, Any]], s: Any) -> bool:
        """:meth:`tree` of a template tree whose items are constants, slots, holes and other trees, from its
        program (see :func:`_flat_program`): the same checks in the same order, without the recursion."""
        if type(s) is not list or len(s) != len(prog):
            return False
        for (what, x), y in zip(prog, s):
            if what == _CONST:
                if type(y) is not type(x) or not x == y:
                    return False
            elif what == _SLOT:
                if type(y) is not list or len(y) != 2 or y[0] != "ptr" or not self.slot_k(x, y[1]):
                    return False
            elif what == _HOLE:
                if _has_ptr(y):
                    return False
                self.values[x] = y
            elif not self.tree(x, y):
                return False
        return True

    def tree(self, t: Any, s: Any) -> bool:
        if type(t) is list:
            if len(t) == 2 and t[0] == "ptr" and type(t[1]) is str:
                ref = t[1]
                if ref.startswith("$"):
                    if _has_ptr(s):
                        return False
                    self.values[int(ref[1:])] = s
                    return True
                return type(s) is list and len(s) == 2 and s[0] == "ptr" and self.slot(ref, s[1])
            if type(s) is not list or len(s) != len(t):
                return False
            return all(self.tree(x, y) for x, y in zip(t, s))
        return _same(t, s)


_CONST, _SLOT, _HOLE, _TREE = 0, 1, 2, 3


def _flat_program(t: Any) -> list[tuple[int, Any]] | None:
    """A template's argument tree as the items :meth:`_Binding.flat` checks: each a constant (not a list),
    a slot (its number), a hole (its number) or another tree; None for a tree that is not a list of
    them (a pointer itself: :meth:`_Binding.tree` reads it)."""
    if type(t) is not list or (len(t) == 2 and t[0] == "ptr" and type(t[1]) is str):
        return None
    prog: list[tuple[int, Any]] = []
    for x in t:
        if type(x) is not list:
            prog.append((_CONST, x))
        elif len(x) == 2 and x[0] == "ptr" and type(x[1]) is str:
            ref = x[1]
            prog.append((_HOLE, int(ref[1:])) if ref.startswith("$") else (_SLOT, int(ref[1:])))
        else:
            prog.append((_TREE, x))
    return prog


def _fits(t: Any, s: Any, values: dict[int, Any]) -> bool:
    if type(t) is list:
        if len(t) == 2 and t[0] == "ptr" and type(t[1]) is str and t[1].startswith("$"):
            if _has_ptr(s):
                return False
            values[int(t[1][1:])] = s
            return True
        if type(s) is not list or len(s) != len(t):
            return False
        return all(_fits(x, y, values) for x, y in zip(t, s))
    return _same(t, s)


def _body_ahead(keys: list[Any], at: list[int], i: int, p: int, first: int) -> tuple[int, int] | None:
    """Where ops[i:i + p] repeat back to back: the start (``first`` or later) and length of a longer loop
    body that repeats back to back a little further on, if there is one that ops[i:i + p] cannot grow into
    (:meth:`Planner._longer` takes in at most ``_GAP`` ops between two runs) and that is no shorter body
    repeated (a chain of ``y = y + 1`` is its own short plan, repeated). A training step whose first
    occurrence differs from the others (a running loss that starts as a local ``0.0``: ``__radd__`` first,
    ``__iadd__`` after) would otherwise be planned as the forward pass's first repeat, ``conv, relu,
    max_pool``, for good. Its lengths are the distances to the next occurrences of the op at ``i``."""
    n = len(keys)
    shorter = [p]  # bodies that would repeat within a longer one: its own repeats, not a new loop
    k = bisect.bisect_right(at, i + p)
    for j in at[k : k + _CANDIDATES]:
        body = j - i
        if body > plans.MAX_PLAN_OPS or first + 2 * body > n:
            break
        if body - p <= _GAP:
            shorter.append(body)
            continue
        run = 0  # how many ops in a row, up to the one at t, have equal keys one body apart
        for t in range(first, min(i + 2 * body, n - body)):
            if keys[t] is None or keys[t] != keys[t + body]:
                run = 0
                continue
            run += 1
            if run == body:
                start = t - body + 1
                window = keys[start : start + body]
                if not any(window[: body - d] == window[d:] for d in shorter):
                    return start, body
                run -= 1  # a shorter body's repeats: look one op further
        shorter.append(body)
    return None


def _replace(tree: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    out = list(tree)
    out[path[0]] = _replace(tree[path[0]], path[1:], value)
    return out


class Planner:
    """One client's plans (the loop thread's: :meth:`compress` runs when a frame leaves)."""

    def __init__(self) -> None:
        self._templates: dict[Any, list[_Template]] = {}  # by their first op's kind and name
        # (within one compress: where a longer loop body than the one just found starts, and its length)
        self._ahead: tuple[int, int] | None = None
        self._count = 0
        self._tried: set[tuple[int, tuple[Any, ...]]] = set()  # longer bodies found not to repeat (_longer)
        self.enabled = enabled_by_env()
        # the owner reads a run's result ids as the number of the first one (its welcome's "run_ids"):
        # consecutive ids then travel as that number (see duet.remote.plans)
        self.first_ids = False

    def __len__(self) -> int:
        return self._count

    def held_from(self, ops: list[dict[str, Any]]) -> int:
        """Where the frame's last ops begin a known plan without finishing it (``len(ops)``: they do not).
        The client holds those ops back for the next frame, so that the step travels whole, as one run,
        rather than op by op (see :meth:`Remote._flush_burst`)."""
        n = len(ops)
        if not self.enabled or not self._templates:
            return n
        longest = max(len(t.keys) for known in self._templates.values() for t in known)
        start = max(0, n - longest + 1)
        keys = _keys(ops[start:])
        for k, key in enumerate(keys):
            if key is None:
                continue
            tail = keys[k:]
            known = self._templates.get(key, ())
            if any(len(t.keys) > len(tail) and t.keys[: len(tail)] == tail for t in known):
                return start + k  # (the earliest: the longest unfinished step)
        return n

    def compress(
        self, ops: list[dict[str, Any]], alive: set[str], later: Iterable[dict[str, Any]] = ()
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """The frame's ops with repeated sequences as plan runs, and the ids those runs do not keep.

        ``alive``: the results made by these ops that had a live pointer when the ops were taken from the
        queue (under the queue's lock: any op queued later can use only those). ``later``: ops taken with
        them but held back for the next frame (see :meth:`held_from`): what they use is kept."""
        n = len(ops)
        if not self.enabled or n < MIN_OPS:
            return ops, set()
        keys = _keys(ops)
        last_use: dict[str, int] = {}
        _note_refs(ops, last_use)
        for op in later:
            for ref in _refs(op):
                last_use[ref] = n
        positions: dict[Any, list[int]] = {}
        for i, k in enumerate(keys):
            if k is not None:
                positions.setdefault(k, []).append(i)
        out: list[dict[str, Any]] = []
        dropped: set[str] = set()
        starts = self._starts(keys)
        self._ahead = None
        i = 0
        while i < n:
            if keys[i] is None:
                out.append(ops[i])
                i += 1
                continue
            step = self._longer(ops, keys, positions, i, last_use, alive, out, dropped)
            if step:
                i += step
                continue
            step = self._known(ops, keys, i, last_use, alive, out, dropped)
            if step:
                i += step
                continue
            if self._soon_known(starts, i):
                out.append(ops[i])  # a known plan starts a little further on: do not define a shifted copy
                i += 1
                continue
            step = self._discover(ops, keys, positions, i, last_use, alive, out, dropped)
            if step:
                i += step
                continue
            out.append(ops[i])
            i += 1
        return out, dropped

    def _known(
        self,
        ops: list[Any],
        keys: list[Any],
        i: int,
        last_use: dict[str, int],
        alive: set[str],
        out: list[Any],
        dropped: set[str],
    ) -> int:
        for t in self._templates.get(keys[i], ()):
            p = len(t.keys)
            if keys[i : i + p] != t.keys:
                continue
            window = ops[i : i + p]
            found = t.match_ops(window)
            if found is not None:
                inputs, holes = found
                outs = [op["o"] for op in window]
                out.append(self._run(t, inputs, outs, holes, i + p, last_use, alive, dropped))
                return p
        return 0

    def _starts(self, keys: list[Any]) -> list[int]:
        """Where a plan known when the frame began starts in it (by its ops' kinds and names). A plan found
        in this frame does not count: the same frame may then find a second plan of the same loop one op
        later (a training step with the running loss's ``+`` at its head), which takes whole steps."""
        if not self._templates:
            return []
        return [
            k
            for k, key in enumerate(keys)
            if key in self._templates
            and any(keys[k : k + len(t.keys)] == t.keys for t in self._templates[key])
        ]

    @staticmethod
    def _soon_known(starts: list[int], i: int) -> bool:
        """Whether a known plan starts within the next ops (then ops up to it go as they are, rather than
        into a plan shifted against it)."""
        k = bisect.bisect_right(starts, i)
        return k < len(starts) and starts[k] < i + _LOOKAHEAD

    def _discover(
        self,
        ops: list[Any],
        keys: list[Any],
        positions: dict[Any, list[int]],
        i: int,
        last_use: dict[str, int],
        alive: set[str],
        out: list[Any],
        dropped: set[str],
    ) -> int:
        if self._count >= MAX_TEMPLATES:
            return 0
        n = len(ops)
        ahead = self._ahead
        if ahead is not None:  # a longer loop body was found to start at ahead[0] (see _body_ahead)
            if i < ahead[0]:
                return 0
            self._ahead = None
            if i == ahead[0]:
                step = self._try(ops, keys, i, i + ahead[1], last_use, alive, out, dropped)
                if step:
                    return step
        at = positions[keys[i]]
        first = bisect.bisect_left(at, i + MIN_OPS)
        for j in at[first : first + _CANDIDATES]:
            if j - i > plans.MAX_PLAN_OPS or 2 * j - i > n:
                break
            if ahead is None and keys[i:j] == keys[j : 2 * j - i]:
                found = _body_ahead(keys, at, i, j - i, i + 1)
                if found is not None:
                    self._ahead = found
                    return 0
            step = self._try(ops, keys, i, j, last_use, alive, out, dropped)
            if step:
                return step
        return 0

    def _longer(
        self,
        ops: list[Any],
        keys: list[Any],
        positions: dict[Any, list[int]],
        i: int,
        last_use: dict[str, int],
        alive: set[str],
        out: list[Any],
        dropped: set[str],
    ) -> int:
        """Where a known plan starts but the loop's body is longer: the plan, then a few ops (the running
        loss's ``+``, left out when the plan was found on a first step without it), then the plan again.
        The whole body becomes a plan of its own, which later frames then prefer (see _known)."""
        if self._count >= MAX_TEMPLATES:
            return 0
        known = [t for t in self._templates.get(keys[i], ()) if keys[i : i + len(t.keys)] == t.keys]
        if not known:
            return 0
        p = len(known[0].keys)  # the longest (see _known)
        at = positions[keys[i]]
        n = len(ops)
        if keys[i + p : i + 2 * p] == known[0].keys:
            # the plan repeats right after itself: it is the loop's whole body (`y = y + 1` ...), unless a
            # longer body made of more than its repeats starts here (a forward pass's repeated layers)
            found = _body_ahead(keys, at, i, p, i)
            if found is None or found[0] != i:
                return 0
            return self._try(ops, keys, i, i + found[1], last_use, alive, out, dropped)
        k = bisect.bisect_right(at, i + p)
        for j in at[k : k + _CANDIDATES]:
            if j - i - p > _GAP or j - i > plans.MAX_PLAN_OPS or 2 * j - i > n:
                break
            tried = (known[0].pid, tuple(keys[i + p : j]))
            if tried in self._tried:
                continue
            step = self._try(ops, keys, i, j, last_use, alive, out, dropped)
            if step:
                return step
            if len(self._tried) < 4096:
                self._tried.add(tried)
        return 0

    def _try(
        self,
        ops: list[Any],
        keys: list[Any],
        i: int,
        j: int,
        last_use: dict[str, int],
        alive: set[str],
        out: list[Any],
        dropped: set[str],
    ) -> int:
        """Define ops[i:j] as a plan if ops[j:2j-i] repeat it (with only constants changed), and run both."""
        p = j - i
        if keys[i:j] != keys[j : j + p] or None in keys[i:j]:
            return 0
        a, b = _Segment(ops[i:j]), _Segment(ops[j : j + p])
        if a.n_in != b.n_in:
            return 0
        holes: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
        for k, (x, y) in enumerate(zip(a.ops, b.ops)):
            if x.keys() != y.keys() or any(x[f] != y[f] for f in x if f not in ("a", "kw")):
                return 0
            for f in ("a", "kw"):
                if f in x:
                    where: list[tuple[int, ...]] = []
                    if not _holes(x[f], y[f], where, ()):
                        return 0
                    if where:
                        holes.setdefault(k, []).extend((f, path) for path in where)
        self._count += 1
        t = _Template(self._count, keys[i:j], a, holes)
        values_a, values_b = t.match(a), t.match(b)
        if values_a is None or values_b is None:  # (cannot happen: the holes came from a and b)
            self._count -= 1
            return 0
        known = self._templates.setdefault(keys[i], [])
        known.append(t)
        known.sort(key=lambda x: -len(x.keys))  # the longest first: a whole loop body over a part of one
        out.append(t.definition)
        out.append(self._run(t, a.inputs, a.outs, values_a, j, last_use, alive, dropped))
        out.append(self._run(t, b.inputs, b.outs, values_b, j + p, last_use, alive, dropped))
        return 2 * p

    def _run(
        self,
        t: _Template,
        inputs: list[str],
        outs: list[str],
        holes: list[Any],
        end: int,
        last_use: dict[str, int],
        alive: set[str],
        dropped: set[str],
    ) -> dict[str, Any]:
        keep = []
        for k, oid in enumerate(outs):
            if oid in alive or last_use.get(oid, -1) >= end:
                keep.append(k)
            else:
                dropped.add(oid)
        return {"k": "run", "id": t.pid, "i": inputs, "h": holes, "o": self._ids(outs), "keep": keep}

    def _ids(self, outs: list[str]) -> list[str] | int:
        """A run's result ids, or the number of the first one where they are s<n>, s<n + 1>, … and the
        owner reads that."""
        if self.first_ids and outs:
            first = outs[0]
            if first[:1] == "s" and first[1:].isascii() and first[1:].isdigit() and first[1:2] != "0":
                n = int(first[1:])
                if n + len(outs) < 10**38 and outs == [f"s{k}" for k in range(n, n + len(outs))]:
                    return n
        return outs


def refs_of(op: dict[str, Any]) -> list[str]:
    """The ids an op uses (its ``self`` and its arguments' pointers)."""
    return _refs(op)


def without(releases: Iterable[str], dropped: set[str]) -> list[str]:
    """The releases still worth sending: a result no run kept was never stored."""
    return [r for r in releases if r not in dropped]
