"""Plans: a repeated sequence of ops sent once and run with one op (duet.remote.planner, duet.remote.plans).

The client's side is tested on op lists; the owner's on an executor, fed by a real client whose frames go
straight to it (in the duet loop thread), with plans and without. The end-to-end test over WebRTC is in
tests/test_remote_e2e.py.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from duet import loop
from duet.remote import client, guards, planner, plans
from duet.remote.allowlist import Allowlist
from duet.remote.client import Remote
from duet.remote.executor import Executor
from duet.remote.planner import Planner
from duet.remote.pointer import Pointer, RemoteNamespace
from duet.remote.store import Quotas, Store

# ---- the client's side: finding plans ------------------------------------------------------------------------


class Ops:
    """Op dicts as the client builds them, with result ids s1, s2, ..."""

    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []

    def op(self, **op: Any) -> str:
        op["o"] = f"s{len(self.ops) + 1}"
        self.ops.append(op)
        return op["o"]

    def meth(self, s: str, n: str, *args: Any) -> str:
        op: dict[str, Any] = {"k": "meth", "s": s, "n": n}
        if args:
            op["a"] = ["list", *args]
        return self.op(**op)

    def call(self, p: str, *args: Any, **kw: Any) -> str:
        tree: list[Any] = ["dict"]
        for k, v in kw.items():
            tree += [k, v]
        return self.op(k="call", p=p, a=["list", *args], kw=tree)


def ptr(oid: str) -> list[str]:
    return ["ptr", oid]


def training_ops(steps: int) -> tuple[Ops, list[str]]:
    """What a client sends for ``steps`` training steps (slices of published pX/pY, a layer s0, an
    optimizer sOpt), and the result id of the running total of the losses."""
    o = Ops()
    total = None
    for b in range(steps):
        xb = o.meth("pX", "__getitem__", ["slice", 8 * b, 8 * b + 8, None])
        yb = o.meth("pY", "__getitem__", ["slice", 8 * b, 8 * b + 8, None])
        o.meth("sOpt", "zero_grad")
        h = o.meth("sLayer", "__call__", ptr(xb))
        h = o.call("torch.nn.functional.relu", ptr(h))
        loss = o.call("torch.nn.functional.cross_entropy", ptr(h), ptr(yb))
        o.meth(loss, "backward")
        o.meth("sOpt", "step")
        item = o.meth(loss, "item")
        total = item if total is None else o.meth(total, "__add__", ptr(item))
    assert total is not None
    return o, [total]


def planner_on() -> Planner:
    p = Planner()
    p.enabled = True
    return p


def calls(ops: list[dict[str, Any]]) -> list[str]:
    """The result ids of the calls a frame makes the owner run, in order (a run stands for its plan's ops)."""
    out: list[str] = []
    for op in ops:
        if op["k"] == "run":
            out.extend(op["o"])
        elif op["k"] not in ("plan", "del"):
            out.append(op["o"])
    return out


def test_a_repeated_training_step_is_defined_once_and_sent_as_runs() -> None:
    o, alive = training_ops(8)
    out, dropped = planner_on().compress(copy.deepcopy(o.ops), set(alive))
    kinds = [op["k"] for op in out]
    definitions = [op for op in out if op["k"] == "plan"]
    runs = [op for op in out if op["k"] == "run"]
    # the step is found at once; a second plan of the same loop, one op later, takes in the running `+`
    assert kinds[0] == "plan" and 1 <= len(definitions) <= 2
    assert len(runs) >= 7 and len(out) <= 12  # 80 calls in all
    assert calls(out) == [op["o"] for op in o.ops]  # every call, in the order the user made them
    first = definitions[0]
    assert first["n"] == 4 and first["h"] == 2  # inputs pX, pY, sOpt, sLayer; holes: the two slices
    assert all("o" not in t for t in first["t"])
    slices = [r["h"] for r in runs if r["id"] == first["id"]]
    assert slices[0] == [["list", ["slice", 0, 8, None]]] * 2
    assert slices[1] == [["list", ["slice", 8, 16, None]]] * 2
    # kept: what a later op uses (the loss's item and the running total) and what has a pointer
    later = [op for f in out for op in ([f] if f["k"] not in ("plan", "run") else [])]
    for run in runs:
        kept = {run["o"][k] for k in run["keep"]}
        used_later = {
            i for op in out[out.index(run) + 1 :] for i in json.dumps(op).split('"') if i in run["o"]
        }
        assert kept == used_later | (set(alive) & set(run["o"]))
    assert set(alive) <= set(calls(out))
    kept_all = {run["o"][k] for run in runs for k in run["keep"]}
    assert dropped == {i for run in runs for i in run["o"]} - kept_all
    assert later  # the last `+` (its result is the one the user holds) travels as it is


def test_later_frames_reuse_a_plan_and_a_result_with_a_pointer_is_kept() -> None:
    p = planner_on()
    o, _ = training_ops(6)
    first, second = o.ops[:29], o.ops[29:]  # the second frame starts in the middle of a step
    out1, _ = p.compress(copy.deepcopy(first), set())
    n_plans = len(p)
    live = second[-3]["o"]  # a loss the user still holds
    out2, dropped = p.compress(copy.deepcopy(second), {live})
    # at most one new definition: the whole loop body, the first frame's plan and the running total's `+`
    first_plan = next(op for op in out1 if op["k"] == "plan")
    new_plans = [op for op in out2 if op["k"] == "plan"]
    assert len(p) == n_plans + len(new_plans) and len(new_plans) <= 1

    def names(plan: dict[str, Any]) -> list[Any]:
        return [t.get("p") or t.get("n") for t in plan["t"]]

    for plan in new_plans:
        assert names(plan) == [*names(first_plan), "__add__"]
    assert any(op["k"] == "run" for op in out2)
    assert calls(out1) + calls(out2) == [op["o"] for op in o.ops]
    assert live not in dropped
    run = next(op for op in out2 if op["k"] == "run" and live in op["o"])
    assert run["o"].index(live) in run["keep"]


def test_the_running_totals_add_joins_the_plan_and_later_frames_prefer_the_whole_body() -> None:
    """The first step has no `+` (the total starts as the first loss), so the plan found there is a step
    without it; the next steps repeat the step *and* the `+`, which become one plan, and every later
    frame runs whole steps: no op travels on its own."""
    p = planner_on()
    o, alive = training_ops(12)
    per_step = 9
    cut = 3 * per_step + 2  # three steps (the first without its `+`) and the next step's two slices
    out1, _ = p.compress(copy.deepcopy(o.ops[:cut]), set())
    out2, _ = p.compress(copy.deepcopy(o.ops[cut : cut + 4 * (per_step + 1)]), set())
    out3, _ = p.compress(copy.deepcopy(o.ops[cut + 4 * (per_step + 1) :]), set(alive))
    bodies = {op["id"]: len(op["t"]) for out in (out1, out2) for op in out if op["k"] == "plan"}
    assert sorted(bodies.values()) == [per_step, per_step + 1]
    assert calls(out1) + calls(out2) + calls(out3) == [op["o"] for op in o.ops]
    whole = next(pid for pid, n in bodies.items() if n == per_step + 1)
    assert not any(op["k"] == "plan" for op in out3)
    later = [op for op in out3 if op["k"] != "del"]
    assert later and all(op["k"] == "run" and op["id"] == whole for op in later[:-1])


def cnn_steps(steps: int) -> Ops:
    """Training steps of a CNN whose forward pass repeats a block (a layer, relu, max-pool, twice), with a
    running loss that starts as a local ``0.0``: the first step ends with ``__radd__``, the others with
    ``__iadd__`` (19 ops a step)."""
    o = Ops()
    total = None
    for b in range(steps):
        xb = o.meth("pX", "__getitem__", ["slice", 8 * b, 8 * b + 8, None])
        yb = o.meth("pY", "__getitem__", ["slice", 8 * b, 8 * b + 8, None])
        o.meth("sOpt", "zero_grad")
        h = xb
        for layer in ("sConv1", "sConv2"):
            h = o.meth(layer, "__call__", ptr(h))
            h = o.call("torch.nn.functional.relu", ptr(h))
            h = o.call("torch.nn.functional.max_pool2d", ptr(h), 2)
        h = o.call("torch.flatten", ptr(h), 1)
        h = o.call("torch.nn.functional.relu", ptr(o.meth("sFc1", "__call__", ptr(h))))
        h = o.call("torch.nn.functional.log_softmax", ptr(o.meth("sFc2", "__call__", ptr(h))), dim=1)
        loss = o.call("torch.nn.functional.nll_loss", ptr(h), ptr(yb))
        o.meth(loss, "backward")
        o.meth("sOpt", "step")
        item = o.meth(loss, "item")
        total = o.meth(item, "__radd__", 0.0) if total is None else o.meth(total, "__iadd__", ptr(item))
    return o


def test_a_step_that_repeats_a_block_of_its_forward_pass_travels_whole() -> None:
    """The first step differs from the others at its last op, and the first frame holds two and a half
    steps: the first repeat found there is the forward pass's block (3 ops, twice in a row). The next
    frame grows it into the whole step (its 13 other ops are more than `_longer` takes in between two runs),
    and later frames run one step a run: not three ops a run and the rest one by one."""
    p = planner_on()
    o = cnn_steps(12)
    per_step = 19
    frames = [o.ops[:48], o.ops[48 : 48 + 4 * per_step], o.ops[48 + 4 * per_step :]]
    outs, held = [], []
    for frame in frames:  # as the client sends them: an unfinished step waits for the next frame
        batch = held + frame
        cut = p.held_from(batch)
        held = batch[cut:]
        outs.append(p.compress(copy.deepcopy(batch[:cut]), set(), held)[0])
    outs.append(p.compress(copy.deepcopy(held), set())[0])  # the last ops, flushed as the loop ends
    assert [c for out in outs for c in calls(out)] == [op["o"] for op in o.ops]
    bodies = {op["id"]: len(op["t"]) for out in outs for op in out if op["k"] == "plan"}
    assert sorted(bodies.values()) == [3, per_step]
    runs = [op for op in outs[2] if op["k"] == "run"]
    assert [bodies[r["id"]] for r in runs] == [per_step] * len(runs) and len(runs) >= 4
    assert sum(op["k"] != "run" for op in outs[2]) < per_step  # only the frame's edges go op by op


def test_a_frame_that_holds_enough_such_steps_defines_the_step_from_its_second_one() -> None:
    """The same steps in one frame: the block's repeat is not defined, since the whole step repeats from
    the second step on; the first step (which differs) goes op by op, every later one as a run."""
    o = cnn_steps(8)
    out, _ = planner_on().compress(copy.deepcopy(o.ops), set())
    assert calls(out) == [op["o"] for op in o.ops]
    bodies = [len(op["t"]) for op in out if op["k"] == "plan"]
    assert bodies == [19]
    assert [op["k"] for op in out] == [op["k"] for op in o.ops[:19]] + ["plan"] + ["run"] * 7


def test_a_chain_of_one_call_keeps_one_plan_over_many_frames() -> None:
    """`y = y + 1` repeated: the plan found first is the whole loop body, not the first of ever longer
    ones (every frame would otherwise define one more, up to the client's limit)."""
    p = planner_on()
    q = Ops()
    y = "pX"
    for _ in range(2000):
        y = q.meth(y, "__add__", 1)
    outs = [p.compress(copy.deepcopy(q.ops[k : k + 200]), set())[0] for k in range(0, 2000, 200)]
    assert len(p) == 1
    assert sum(len(op["o"]) if op["k"] == "run" else op["k"] != "plan" for out in outs for op in out) == 2000


def test_a_constant_of_another_type_is_a_hole_not_the_same_constant() -> None:
    o = Ops()
    for scale in (2, 2.0, 2, 2.0):  # 2 == 2.0 in Python, but int and float are different results
        h = o.call("torch.add", ptr("pX"), scale)
        h = o.call("torch.nn.functional.relu", ptr(h))
        o.call("torch.sum", ptr(h))
    out, _ = planner_on().compress(copy.deepcopy(o.ops), set())
    runs = [op for op in out if op["k"] == "run"]
    assert runs and all(len(r["h"]) == 1 for r in runs)
    assert [type(r["h"][0]) for r in runs] == [int, float, int, float]


def test_what_carries_buffers_contexts_and_releases_is_never_planned() -> None:
    o = Ops()
    for _ in range(4):
        o.ops.append({"k": "ctx", "p": "torch.no_grad", "e": True})
        h = o.op(k="put", v=["tensor", 0], b=[0, 1])
        h = o.meth(h, "float")  # retyping: never in a plan (the owner's dry-run cache must see it)
        o.ops.append({"k": "ctx", "p": "torch.no_grad", "e": False})
    out, dropped = planner_on().compress(copy.deepcopy(o.ops), set())
    assert out == o.ops and not dropped


def test_plans_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUET_PLANS", "0")
    assert not planner.enabled_by_env()
    monkeypatch.setenv("DUET_PLANS", "1")
    assert planner.enabled_by_env()
    o, alive = training_ops(6)
    off = Planner()
    off.enabled = False
    assert off.compress(o.ops, set(alive)) == (o.ops, set())


# ---- the owner's side: running plans ---------------------------------------------------------------------------


class Loopback:
    """A real client whose frames go straight to an owner's executor (run in the duet loop thread)."""

    def __init__(self, store: Store, use_plans: bool) -> None:
        self.store = store
        self.executor = Executor(store)
        self.frames: list[dict[str, Any]] = []
        self.failures: list[tuple[str, Any]] = []
        self.remote = Remote(lambda: self, lambda: "owner")  # type: ignore[arg-type,return-value]
        self.remote.planner.enabled = use_plans
        self.remote.planner.first_ids = True  # as after an owner's welcome that says it reads them
        self.torch = RemoteNamespace(self.remote, "torch")

    def send(self, header: dict[str, Any], buffers: Any = (), **kw: Any) -> None:
        self.frames.append(copy.deepcopy(header))
        if header["t"] == "ops":
            self.failures += self.executor.run_ops(header["ops"], [memoryview(bytes(b)) for b in buffers])

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Queue the calls made inside and send them as one frame (as a fast loop's calls travel)."""
        # what is queued before leaves first: a flush the loop thread has yet to run would otherwise take
        # the first calls made inside, in a frame of their own (on a loaded machine)
        self.remote.flush()
        self.remote._scheduled = True  # no flush is scheduled until ours
        try:
            yield
        finally:
            self.remote.flush()

    def pointer(self, entry: Any) -> Pointer:
        return Pointer(self.remote, entry.id, owned=False)

    def value(self, p: Pointer) -> Any:
        self.remote.flush()
        entry = self.store.lookup(p._duet_id)
        assert entry.error is None, entry.error
        return entry.obj


def published() -> tuple[Store, Any, Any]:
    store = Store()
    g = torch.Generator().manual_seed(0)
    x = store.publish(torch.randn(64, 5, generator=g), name="x", tags=["#x"])
    y = store.publish(torch.randint(0, 3, (64,), generator=g), name="y", tags=["#y"])
    return store, x, y


def train(
    side: Loopback, x: Any, y: Any, epochs: int = 2
) -> tuple[list[float], dict[str, torch.Tensor], Any]:
    torch.manual_seed(1)
    layer = side.torch.nn.Linear(5, 3)
    opt = side.torch.optim.SGD(layer.parameters(), lr=0.1)
    xs, ys = side.pointer(x), side.pointer(y)
    totals = []
    for _ in range(epochs):
        total = None
        with side.batched():
            for b in range(0, 64, 8):
                xb, yb = xs[b : b + 8], ys[b : b + 8]
                opt.zero_grad()
                loss = side.torch.nn.functional.cross_entropy(side.torch.nn.functional.relu(layer(xb)), yb)
                loss.backward()
                opt.step()
                total = loss.item() if total is None else total + loss.item()
        totals.append(side.value(total))
    module = side.value(layer)
    return totals, {k: v.detach().clone() for k, v in module.state_dict().items()}, layer


@pytest.fixture
def sides() -> Iterator[tuple[tuple[Loopback, Any, Any], tuple[Loopback, Any, Any]]]:
    s1, x1, y1 = published()
    s2, x2, y2 = published()
    yield (Loopback(s1, use_plans=True), x1, y1), (Loopback(s2, use_plans=False), x2, y2)


def test_a_planned_training_loop_trains_exactly_as_its_ops_one_by_one(sides: Any) -> None:
    (planned, x1, y1), (single, x2, y2) = sides
    totals1, weights1, layer1 = train(planned, x1, y1)
    totals2, weights2, layer2 = train(single, x2, y2)
    assert totals1 == totals2
    assert weights1.keys() == weights2.keys() and all(torch.equal(weights1[k], weights2[k]) for k in weights1)
    assert planned.failures == [] and single.failures == []
    ops = [op for f in planned.frames if f["t"] == "ops" for op in f["ops"]]
    assert any(op["k"] == "run" for op in ops)
    assert planned.executor.plans.runs > 0 and planned.executor.plans.verified_runs > 0
    # the owner's record is as complete: every call logged (and one row per plan definition)
    assert planned.executor.log.total == single.executor.log.total + len(planned.executor.plans)
    # fewer objects were ever stored, and the same provenance: the layer was trained on both data sets
    assert planned.store.lookup(layer1._duet_id).sources == {x1.id, y1.id}
    assert single.store.lookup(layer2._duet_id).sources == {x2.id, y2.id}


def test_kept_results_have_the_provenance_of_what_they_were_computed_from(sides: Any) -> None:
    (planned, x, y), _ = sides
    xs, ys = planned.pointer(x), planned.pointer(y)
    kept = []
    with planned.batched():
        for b in range(0, 48, 8):
            a = planned.torch.nn.functional.relu(xs[b : b + 8])
            c = planned.torch.sum(a, 1)
            labels = ys[b : b + 8] + 1
            kept.append((c * 2, labels * 2))
    assert planned.executor.plans.runs > 0
    for from_x, from_y in kept:
        assert planned.store.lookup(from_x._duet_id).sources == {x.id}
        assert planned.store.lookup(from_y._duet_id).sources == {y.id}
        assert planned.store.lookup(from_x._duet_id).tags == ("#x",)


class DryRuns:
    """Counts the dry runs the executor asks for, by path or method name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        for fn in ("dry_run_call", "dry_run_method", "dry_run_module"):
            real = getattr(guards, fn)

            def counted(*a: Any, _real: Any = real, _fn: str = fn, **k: Any) -> Any:
                self.names.append(a[1] if _fn != "dry_run_module" else "__call__")
                return _real(*a, **k)

            monkeypatch.setattr(guards, fn, counted)


def define_and_run(ex: Executor, template: list[dict[str, Any]], n_in: int, n_holes: int = 0) -> Any:
    assert ex.run_ops([{"k": "plan", "id": 1, "n": n_in, "h": n_holes, "t": template}], []) == []
    count = [0]

    def run(inputs: list[str], holes: list[Any] = (), keep: Any = None) -> tuple[list[Any], list[str]]:
        count[0] += 1
        outs = [f"s{count[0]}_{j}" for j in range(len(template))]
        keep = list(range(len(template))) if keep is None else keep
        op = {"k": "run", "id": 1, "i": inputs, "h": list(holes), "o": outs, "keep": keep}
        return ex.run_ops([op], []), outs

    return run


def rows_of(n: int) -> list[Any]:
    """A hole's value: the index ``[rows]`` (advanced indexing, which copies: it is dry-run)."""
    return ["list", ["list", *range(n)]]


def test_a_verified_run_skips_the_dry_runs_but_not_those_of_ops_with_holes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, x, _ = published()
    ex = Executor(store)
    run = define_and_run(
        ex,
        [
            {"k": "meth", "s": "#0", "n": "__getitem__", "a": ["ptr", "$0"]},
            {"k": "call", "p": "torch.nn.functional.relu", "a": ["list", ["ptr", "#1"]], "kw": ["dict"]},
            {"k": "call", "p": "torch.sum", "a": ["list", ["ptr", "#2"], 1], "kw": ["dict"]},
        ],
        n_in=1,
        n_holes=1,
    )
    dry = DryRuns(monkeypatch)
    assert run([x.id], [rows_of(8)])[0] == []
    assert dry.names == ["__getitem__", "torch.nn.functional.relu", "torch.sum"]  # the first run: all
    dry.names.clear()
    failures, outs = run([x.id], [["list", ["list", *range(8, 16)]]])
    assert failures == [] and dry.names == ["__getitem__"]  # verified: only the op with a hole
    assert torch.equal(store.lookup(outs[2]).obj, torch.relu(x.obj[8:16]).sum(1))
    dry.names.clear()
    run([x.id], [rows_of(4)])  # fewer rows: its result differs from then on
    assert dry.names == ["__getitem__", "torch.nn.functional.relu", "torch.sum"]
    assert ex.plans.verified_runs == 2


def test_a_run_whose_values_take_other_shapes_is_dry_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(Quotas(tensor_bytes=4000))
    few = store.publish(torch.tensor([0.0, 0.0, 1.0, 0.0]), name="few")
    many = store.publish(torch.tensor([1.0, 1.0, 1.0, 1.0]), name="many")
    ex = Executor(store)
    run = define_and_run(
        ex,
        [
            {"k": "meth", "s": "#0", "n": "nonzero"},  # its shape depends on the values
            {"k": "meth", "s": "#1", "n": "repeat", "a": ["list", 100, 1]},
        ],
        n_in=1,
    )
    assert run([few.id])[0] == []  # 1 x 100 int64: 800 bytes
    assert run([few.id])[0] == [] and ex.plans.verified_runs == 1
    dry = DryRuns(monkeypatch)
    failures, outs = run([many.id])  # same input signature; nonzero now makes 4 rows: 3,200 bytes
    assert dry.names == ["repeat"] and failures == []
    ex.quotas = Quotas(tensor_bytes=2000)  # and over a tighter quota the dry run refuses it...
    failures, outs = run([many.id])
    assert [(oid, e.remote_type) for oid, e in failures] == [(outs[1], "QuotaExceeded")]
    assert "would make 3,200 bytes" in failures[0][1].remote_message  # ...before making it


def test_an_op_that_uses_a_python_value_is_dry_run_on_every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's signature knows a Python value by its type only (a running loss changes every step), so the
    ops that use one are checked in full: a size that grows is refused before anything is allocated."""
    store = Store(Quotas(tensor_bytes=1 << 20))
    ex = Executor(store)
    for oid, n in (("sSmall", 1000), ("sHuge", 10**9)):
        assert ex.run_ops([{"k": "py", "n": "Int", "a": ["list", n], "o": oid}], []) == []
    run = define_and_run(
        ex,
        [
            {"k": "call", "p": "torch.zeros", "a": ["list", ["ptr", "#0"]], "kw": ["dict"]},
            {"k": "call", "p": "torch.nn.functional.relu", "a": ["list", ["ptr", "#1"]], "kw": ["dict"]},
        ],
        n_in=1,
    )
    assert run(["sSmall"])[0] == [] and run(["sSmall"])[0] == [] and ex.plans.verified_runs == 1
    dry = DryRuns(monkeypatch)
    failures, outs = run(["sHuge"])  # the same signature (an int): verified, and zeros is still dry-run
    assert ex.plans.verified_runs == 2 and dry.names == ["torch.zeros"]
    assert [(oid, e.remote_type) for oid, e in failures] == [(outs[0], "QuotaExceeded")]
    assert store.lookup(outs[1]).error is not None  # relu inherits the failure


def test_what_a_run_holds_counts_against_the_store_quota() -> None:
    """Results a run does not keep are never stored, but while it holds them they count as stored ones
    would: a plan cannot hold more than the session's store quota by never keeping anything."""
    store = Store(Quotas(store_bytes=70_000))
    ex = Executor(store)
    run = define_and_run(
        ex,
        [
            {"k": "call", "p": "torch.zeros", "a": ["list", 8000], "kw": ["dict"]},  # 32 KB
            {"k": "call", "p": "torch.add", "a": ["list", ["ptr", "#0"], 1], "kw": ["dict"]},
            {"k": "call", "p": "torch.add", "a": ["list", ["ptr", "#0"], ["ptr", "#1"]], "kw": ["dict"]},
            {"k": "meth", "s": "#2", "n": "sum"},
        ],
        n_in=0,
    )
    failures, outs = run([], keep=[3])
    assert [(oid, e.remote_type) for oid, e in failures] == [(outs[2], "QuotaExceeded")]  # 96 KB held
    assert store.lookup(outs[3]).error is not None and store.scientist_bytes == 0
    ex.quotas = Quotas(store_bytes=100_000)
    failures, outs = run([], keep=[3])
    assert failures == [] and store.lookup(outs[3]).obj == 8000.0


def test_a_verified_run_counts_what_it_holds_against_the_store_quota_as_it_grows() -> None:
    """On the fast path a tensor of the proved shape counts the proved bytes: what the store holds since the
    verifying run counts too, so the same run fails where the quota is reached."""
    store = Store(Quotas(store_bytes=100_000))
    ex = Executor(store)
    _put(ex, "sA", torch.zeros(2000))  # 8 KB
    run = define_and_run(
        ex,
        [
            {"k": "call", "p": "torch.add", "a": ["list", ["ptr", "#0"], 1.0], "kw": ["dict"]},
            {"k": "meth", "s": "#1", "n": "repeat", "a": ["list", 4]},  # 32 KB
            {"k": "call", "p": "torch.add", "a": ["list", ["ptr", "#2"], 1.0], "kw": ["dict"]},  # 32 KB
            {"k": "meth", "s": "#3", "n": "sum"},
        ],
        n_in=1,
    )
    for _ in range(2):  # verifying, then verified: 8 + 32 + 32 KB at most, with the input
        failures, outs = run(["sA"], keep=[3])
        assert failures == [] and store.lookup(outs[3]).obj == 16000.0
    fast = ex.plans.fast_ops
    # 40 KB more in the store: at the second add 8 + 40 + 32 + 32 KB (the first add let go after the repeat)
    _put(ex, "sB", torch.zeros(10_000))
    failures, outs = run(["sA"], keep=[3])
    assert [(oid, e.remote_type) for oid, e in failures] == [(outs[2], "QuotaExceeded")]
    assert ex.plans.fast_ops == fast + 2  # the add and the repeat ran on the fast path, then the second add
    assert store.lookup(outs[3]).error is not None  # the sum inherits the failure
    ex.store.release("sB")
    failures, outs = run(["sA"], keep=[3])
    assert failures == [] and store.lookup(outs[3]).obj == 16000.0


def test_retyping_a_module_or_changing_the_quotas_ends_the_verification() -> None:
    store, x, _ = published()
    ex = Executor(store)
    assert (
        ex.run_ops(
            [{"k": "call", "p": "torch.nn.Linear", "a": ["list", 5, 2], "kw": ["dict"], "o": "sL"}], []
        )
        == []
    )
    run = define_and_run(
        ex,
        [
            {"k": "meth", "s": "#1", "n": "__getitem__", "a": ["list", ["slice", 0, 4, None]]},
            {"k": "meth", "s": "#0", "n": "__call__", "a": ["list", ["ptr", "#2"]]},
        ],
        n_in=2,
    )
    for _ in range(3):
        assert run(["sL", x.id])[0] == []
    assert ex.plans.verified_runs == 2
    assert ex.run_ops([{"k": "meth", "s": "sL", "n": "double", "o": "sD"}], []) == []
    failures, _ = run(["sL", x.id])  # float64 weights on float32 data: a new signature, dry-run (and fails)
    assert ex.plans.verified_runs == 2 and failures and failures[0][1].remote_type == "RuntimeError"
    assert ex.run_ops([{"k": "meth", "s": "sL", "n": "float", "o": "sF"}], []) == []
    assert run(["sL", x.id])[0] == [] and ex.plans.verified_runs == 2
    assert run(["sL", x.id])[0] == [] and ex.plans.verified_runs == 3
    ex.quotas = Quotas(tensor_bytes=1 << 20)
    assert run(["sL", x.id])[0] == [] and ex.plans.verified_runs == 3


def test_published_data_stays_read_only_inside_a_verified_run() -> None:
    store, x, _ = published()
    ex = Executor(store)
    before = x.obj.clone()
    assert (
        ex.run_ops([{"k": "call", "p": "torch.zeros", "a": ["list", 64, 5], "kw": ["dict"], "o": "sZ"}], [])
        == []
    )
    run = define_and_run(ex, [{"k": "meth", "s": "#0", "n": "add_", "a": ["list", 1]}], n_in=1)
    assert run(["sZ"])[0] == [] and run(["sZ"])[0] == []
    failures, outs = run([x.id])  # the same signature as the verified runs: the check still runs
    assert [e.remote_type for _, e in failures] == ["PermissionDenied"]
    assert torch.equal(x.obj, before) and torch.equal(store.lookup("sZ").obj, torch.full((64, 5), 2.0))


def test_a_failing_op_is_reported_once_its_users_inherit_and_the_others_run() -> None:
    store, x, _ = published()
    ex = Executor(store)
    run = define_and_run(
        ex,
        [
            {"k": "call", "p": "torch.add", "a": ["list", ["ptr", "#0"], 1], "kw": ["dict"]},
            {"k": "meth", "s": "#1", "n": "reshape", "a": ["list", 7, 7]},  # fails: 320 elements
            {"k": "meth", "s": "#2", "n": "sum"},  # uses the failed result
            {"k": "call", "p": "torch.mul", "a": ["list", ["ptr", "#0"], 3], "kw": ["dict"]},
        ],
        n_in=1,
    )
    for _ in range(2):
        failures, outs = run([x.id])
        assert [(oid, e.remote_type) for oid, e in failures] == [(outs[1], "RuntimeError")]
        assert (
            store.lookup(outs[2]).error is not None
            and store.lookup(outs[2]).error.remote_type == "RuntimeError"
        )
        assert torch.equal(store.lookup(outs[3]).obj, x.obj * 3)
    assert ex.plans.verified_runs == 0  # a run with a failure never verifies a signature
    rows = [r for r in ex.log.rows() if r.path != "plan"]
    assert [r.status for r in rows[:4]] == ["ok", "RuntimeError", "RuntimeError", "ok"]


def test_an_unknown_input_fails_the_ops_that_use_it() -> None:
    store, x, _ = published()
    ex = Executor(store)
    run = define_and_run(
        ex,
        [
            {"k": "call", "p": "torch.add", "a": ["list", ["ptr", "#0"], 1], "kw": ["dict"]},
            {"k": "call", "p": "torch.add", "a": ["list", ["ptr", "#1"], 1], "kw": ["dict"]},
        ],
        n_in=2,
    )
    failures, outs = run([x.id, "s_gone"])
    assert [(oid, e.remote_type) for oid, e in failures] == [(outs[1], "PermissionDenied")]
    assert torch.equal(store.lookup(outs[0]).obj, x.obj + 1)


GOOD = [{"k": "call", "p": "torch.add", "a": ["list", ["ptr", "#0"], 1], "kw": ["dict"]}]


@pytest.mark.parametrize(
    "definition",
    [
        {
            "k": "plan",
            "id": 1,
            "n": 1,
            "t": [{"k": "call", "p": "torch.add", "a": ["list", ["ptr", "#1"]], "kw": ["dict"]}],
        },
        {"k": "plan", "id": 1, "n": 1, "t": [{**GOOD[0], "o": "s1"}]},
        {"k": "plan", "id": 1, "n": 1, "t": [{**GOOD[0], "b": [0, 1]}]},
        {"k": "plan", "id": 1, "n": 1, "t": [{"k": "put", "v": 1}]},
        {"k": "plan", "id": 1, "n": 1, "t": [{"k": "meth", "s": "#0", "n": "double"}]},
        {"k": "plan", "id": 1, "n": 1, "t": [{"k": "meth", "s": "x", "n": "sum"}]},
        {
            "k": "plan",
            "id": 1,
            "n": 1,
            "t": [{"k": "call", "p": "torch.add", "a": ["list", ["tensor", 0]], "kw": ["dict"]}],
        },
        {
            "k": "plan",
            "id": 1,
            "n": 1,
            "h": 1,
            "t": [{"k": "call", "p": "torch.add", "a": ["ptr", "$1"], "kw": ["dict"]}],
        },
        {"k": "plan", "id": 1, "n": 1, "t": []},
        {"k": "plan", "id": 1, "n": 1, "t": GOOD * (plans.MAX_PLAN_OPS + 1)},
        {"k": "plan", "id": "1", "n": 1, "t": GOOD},
        {"k": "plan", "id": 1, "n": -1, "t": GOOD},
        {"k": "plan", "id": 1, "n": 1, "t": "ops"},
    ],
)
def test_a_malformed_definition_is_refused_and_the_executor_goes_on(definition: dict[str, Any]) -> None:
    store, x, _ = published()
    ex = Executor(store)
    failures = ex.run_ops([definition], [])
    assert len(failures) == 1 and failures[0][0] == "" and failures[0][1].remote_type == "ProtocolError"
    assert len(ex.plans) == 0
    assert (
        ex.run_ops(
            [{"k": "call", "p": "torch.add", "a": ["list", ["ptr", x.id], 1], "kw": ["dict"], "o": "s9"}], []
        )
        == []
    )


@pytest.mark.parametrize(
    "change",
    [
        {"id": 2},
        {"i": []},
        {"i": [1]},
        {"o": ["s1", "s1"]},
        {"o": ["s1"]},
        {"o": ["p1", "s2"]},
        {"keep": [2]},
        {"keep": "all"},
        {"h": [1]},
        {"o": None},
        {"o": -1},
        {"o": True},
        {"o": 1.0},
        {"o": 10**38 - 1},
        {"o": "s1"},
    ],
)
def test_a_malformed_run_is_refused_and_stores_nothing_but_errors(change: dict[str, Any]) -> None:
    store, x, _ = published()
    ex = Executor(store)
    template = GOOD + [{"k": "meth", "s": "#1", "n": "sum"}]
    assert ex.run_ops([{"k": "plan", "id": 1, "n": 1, "t": template}], []) == []
    run = {"k": "run", "id": 1, "i": [x.id], "h": [], "o": ["s1", "s2"], "keep": [0, 1], **change}
    failures = ex.run_ops([run], [])
    assert len(failures) == 1 and failures[0][1].remote_type == "ProtocolError"
    for oid in ("s1", "s2"):
        if store.holds(oid):
            assert store.lookup(oid).error is not None and store.lookup(oid).obj is None
    ok = {"k": "run", "id": 1, "i": [x.id], "h": [], "o": ["s7", "s8"], "keep": [1]}
    assert ex.run_ops([ok], []) == [] and store.lookup("s8").obj == (x.obj + 1).sum()


def test_a_hole_cannot_name_a_pointer() -> None:
    store, x, _ = published()
    ex = Executor(store)
    run = define_and_run(
        ex, [{"k": "call", "p": "torch.add", "a": ["ptr", "$0"], "kw": ["dict"]}], n_in=0, n_holes=1
    )
    failures, outs = run([], [["list", ["ptr", x.id], 1]])
    assert failures[0][1].remote_type == "ProtocolError" and store.lookup(outs[0]).error is not None


def test_the_plans_of_a_session_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plans, "MAX_PLANS", 3)
    ex = Executor(Store())
    for pid in (1, 2, 3):
        assert ex.run_ops([{"k": "plan", "id": pid, "n": 1, "t": GOOD}], []) == []
    failures = ex.run_ops([{"k": "plan", "id": 4, "n": 1, "t": GOOD}], [])
    assert failures[0][1].remote_type == "QuotaExceeded"
    failures = ex.run_ops([{"k": "plan", "id": 2, "n": 1, "t": GOOD}], [])
    assert failures[0][1].remote_type == "ProtocolError"  # an id defined already
    assert len(ex.plans) == 3


# ---- the fast path of verified runs ----------------------------------------------------------------------


def _put(ex: Executor, oid: str, value: torch.Tensor) -> None:
    """A tensor of the scientist's, as a ``send`` stores it."""
    ex.store.put(oid, value, set())


_STEP = [
    {"k": "call", "p": "torch.mul", "a": ["list", ["ptr", "#0"], 2.0], "kw": ["dict"]},
    {"k": "call", "p": "torch.nn.functional.relu", "a": ["list", ["ptr", "#1"]], "kw": ["dict"]},
    {"k": "meth", "s": "#2", "n": "sum", "a": ["list", 1], "kw": ["dict", "keepdim", True]},
    {"k": "meth", "s": "#3", "n": "item"},
]


def _rows(ex: Executor, last: int) -> list[tuple[Any, ...]]:
    return [(r.path, r.args, r.result_type, r.result_shape, r.status) for r in ex.log.rows()[-last:]]


def test_a_verified_run_takes_the_fast_path_with_the_same_results_and_log_rows() -> None:
    ex = Executor(Store())
    _put(ex, "sA", torch.arange(-4.0, 4.0).reshape(1, 8))
    run = define_and_run(ex, [dict(op) for op in _STEP[:3]], n_in=1)
    results, rows = [], []
    for _ in range(3):
        failures, outs = run(["sA"])
        assert failures == []
        results.append(ex.store.lookup(outs[2]).obj)
        rows.append(_rows(ex, 3))
    assert ex.plans.verified_runs == 2 and ex.plans.fast_ops == 6  # runs 2 and 3, all three ops
    assert all(torch.equal(r, torch.tensor([[12.0]])) for r in results)
    assert rows[0] == rows[1] == rows[2]
    assert rows[0] == [
        ("torch.mul", "Tensor[1, 8], float", "Tensor", "[1, 8]", "ok"),
        ("torch.nn.functional.relu", "Tensor[1, 8]", "Tensor", "[1, 8]", "ok"),
        ("Tensor.sum", "int, keepdim=bool", "Tensor", "[1, 1]", "ok"),
    ]


_SLICE_STEP = [
    {"k": "meth", "s": "#1", "n": "__getitem__", "a": ["ptr", "$0"]},  # a batch's slice: a hole
    {"k": "meth", "s": "#2", "n": "sum"},
    {"k": "meth", "s": "#3", "n": "item"},  # a float
    {"k": "meth", "s": "#0", "n": "__add__", "a": ["list", ["ptr", "#4"]]},  # the running total's +
    {"k": "meth", "s": "#5", "n": "__mul__", "a": ["list", 2]},
]


def _slice_runs(
    use_plans: bool, holes: list[Any], step: list[dict[str, Any]] = _SLICE_STEP
) -> tuple[Executor, list[Any], list[Any]]:
    """The step above run once per hole value (planned, or as single ops), the total fed back each time:
    the executor, each step's results, and the log rows."""
    ex = Executor(Store())
    _put(ex, "sA", torch.arange(12.0).reshape(4, 3))
    _put(ex, "sT", 0.5)
    results: list[Any] = []
    if use_plans:
        run = define_and_run(ex, [dict(op) for op in step], n_in=2, n_holes=1)
    total = "sT"
    for b, hole in enumerate(holes):
        if use_plans:
            failures, outs = run([total, "sA"], [hole])
        else:
            outs, failures = [f"s{b}_{j}" for j in range(len(step))], []
            slots = [total, "sA", *outs]
            for j, op in enumerate(step):
                single = json.loads(json.dumps(op).replace('"$0"', '"H"'))
                single["s"] = slots[int(single["s"][1:])]
                if single.get("a") == ["ptr", "H"]:
                    single["a"] = hole
                elif single.get("a"):
                    single["a"] = [x if x != ["ptr", "#4"] else ["ptr", slots[4]] for x in single["a"]]
                failures += ex.run_ops([{**single, "o": outs[j]}], [])
        assert failures == []
        results.append([ex.store.lookup(o).obj for o in outs[1:]])
        total = outs[3]
    return ex, results, _rows(ex, len(step) * len(holes))


def test_a_batchs_slice_and_the_running_totals_arithmetic_take_the_fast_path() -> None:
    """Basic indexing by a hole (a view whatever its bounds) and arithmetic on a Python float (constant
    time) run on the fast path of a verified run, with the results and log rows of single ops."""
    holes = [["list", ["slice", b, b + 2, None]] for b in (0, 1, 2)] + [["list", 3]]
    ex, planned, rows = _slice_runs(True, holes)
    _, single, single_rows = _slice_runs(False, holes)
    assert ex.plans.verified_runs == 3
    # runs 2 and 3 all five ops; run 4's index is an int: basic indexing, on the fast path, but its result
    # (one row, not two) differs from the proved one, so the rest of that run takes the long path
    assert ex.plans.fast_ops == 11
    for a, b in zip(planned, single):
        assert all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))
    assert [r for r in rows if r[0] != "plan"] == single_rows
    assert ("Tensor.__getitem__", "slice", "Tensor", "[2, 3]", "ok") in rows
    assert ("float.__add__", "float", "float", "", "ok") in rows


def test_a_running_total_kept_with_an_augmented_assignment_takes_the_fast_path() -> None:
    """``total += loss.item()`` (notebook 03's loop) sends ``__iadd__``: on a Python float it makes a new
    float, as ``+`` does, and runs on the fast path with the results and log rows of single ops."""
    step = [dict(op) for op in _SLICE_STEP]
    step[3] = {**step[3], "n": "__iadd__"}
    holes = [["list", ["slice", b, b + 2, None]] for b in (0, 1, 2)]
    ex, planned, rows = _slice_runs(True, holes, step)
    _, single, single_rows = _slice_runs(False, holes, step)
    assert ex.plans.verified_runs == 2 and ex.plans.fast_ops == 10  # runs 2 and 3: all five ops
    for a, b in zip(planned, single, strict=True):
        assert all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))
    assert [r for r in rows if r[0] != "plan"] == single_rows
    assert ("float.__iadd__", "float", "float", "", "ok") in rows


def test_an_index_that_copies_and_python_ints_stay_on_the_long_path(monkeypatch: pytest.MonkeyPatch) -> None:
    ex = Executor(Store())
    _put(ex, "sA", torch.ones(4, 3))
    _put(ex, "sN", 3)
    template = [
        {"k": "meth", "s": "#1", "n": "__getitem__", "a": ["ptr", "$0"]},
        {"k": "meth", "s": "#0", "n": "__mul__", "a": ["list", 2]},  # an int: not on the fast path
    ]
    run = define_and_run(ex, template, n_in=2, n_holes=1)
    for _ in range(2):
        assert run(["sN", "sA"], [rows_of(2)])[0] == []
    dry = DryRuns(monkeypatch)
    failures, outs = run(["sN", "sA"], [rows_of(2)])
    assert failures == [] and ex.store.lookup(outs[1]).obj == 6
    assert ex.plans.verified_runs == 2 and ex.plans.fast_ops == 0
    assert dry.names == ["__getitem__", "__mul__"]  # both checked in full on every run


def test_a_float_op_that_fails_on_the_fast_path_is_reported_and_its_users_inherit() -> None:
    ex = Executor(Store())
    _put(ex, "sA", torch.ones(3))
    template = [
        {"k": "meth", "s": "#1", "n": "sum"},
        {"k": "meth", "s": "#2", "n": "item"},
        {"k": "meth", "s": "#3", "n": "__truediv__", "a": ["list", ["ptr", "#0"]]},
        {"k": "meth", "s": "#4", "n": "__add__", "a": ["list", 1.0]},
    ]
    for oid, v in (("sOne", 1.0), ("sZero", 0.0)):
        _put(ex, oid, v)
    run = define_and_run(ex, template, n_in=2)
    for _ in range(2):
        assert run(["sOne", "sA"])[0] == []
    fast = ex.plans.fast_ops
    failures, outs = run(["sZero", "sA"])  # the same signature (floats): verified; 3.0 / 0.0 fails
    assert ex.plans.verified_runs == 2 and ex.plans.fast_ops == fast + 2  # sum and item
    assert [(oid, e.remote_type) for oid, e in failures] == [(outs[2], "ZeroDivisionError")]
    assert ex.store.lookup(outs[3]).error is not None  # its user inherits the failure


def test_a_fast_op_still_refuses_to_change_published_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's signature knows a tensor by its type, shape and dtype, not by whether it is published: a
    verified in-place op that gets a published tensor of the same shape is refused like any other call."""
    store, x, _ = published()
    before = x.obj.clone()
    ex = Executor(store)
    _put(ex, "sMine", torch.zeros(64, 5))
    template = [
        {"k": "meth", "s": "#0", "n": "add_", "a": ["list", 1.0]},
        {"k": "call", "p": "torch.sum", "a": ["list", ["ptr", "#0"]], "kw": ["dict"]},
    ]
    run = define_and_run(ex, template, n_in=1)
    assert run(["sMine"])[0] == [] and run(["sMine"])[0] == []
    fast = ex.plans.fast_ops
    failures, outs = run([x.id])
    assert ex.plans.verified_runs == 2 and ex.plans.fast_ops == fast  # add_ was refused on the fast path
    assert [(oid, e.remote_type) for oid, e in failures] == [(outs[0], "PermissionDenied")]
    assert torch.equal(x.obj, before)
    assert ex.store.lookup(outs[1]).error is None  # torch.sum did not use add_'s result: it ran


def test_a_fast_op_over_the_time_limit_fails_and_the_ops_using_it_inherit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Allowlist.bind_function
    slow_now = [False]

    def slow(self: Allowlist, path: str) -> Any:  # (a verified run calls through its op's binding)
        call = real(self, path)
        if path != "torch.nn.functional.relu":
            return call

        def slowly(args: Any, kwargs: Any) -> Any:
            if slow_now[0]:
                time.sleep(0.5)
            return call(args, kwargs)

        return slowly

    monkeypatch.setattr(Allowlist, "bind_function", slow)
    ex = Executor(Store(Quotas(call_seconds=0.25)))
    _put(ex, "sA", torch.ones(1, 4))
    run = define_and_run(ex, [dict(op) for op in _STEP], n_in=1)
    assert run(["sA"])[0] == [] and run(["sA"])[0] == []
    slow_now[0] = True
    failures, outs = run(["sA"])
    assert ex.plans.verified_runs == 2
    assert [(oid, e.remote_type) for oid, e in failures] == [(outs[1], "QuotaExceeded")]
    assert "over the 0.25 s limit" in failures[0][1].remote_message
    for later in outs[2:]:  # they used its result: the same error, not reported again
        assert ex.store.lookup(later).error is not None
    slow_now[0] = False
    failures, outs = run(["sA"])
    assert failures == [] and ex.store.lookup(outs[3]).obj == 8.0


def test_matching_a_known_plan_directly_agrees_with_matching_its_segment() -> None:
    """The planner matches a known plan against a frame's ops without building their template: it must
    take the same ids for the same slots, and refuse what the template does not describe."""
    p = planner_on()
    o, _ = training_ops(4)
    out, _ = p.compress(copy.deepcopy(o.ops), set())
    t = next(t for known in p._templates.values() for t in known)
    n = len(t.ops)

    def step(b: int, swap: bool = False, same_slices: bool = False, later: bool = False) -> list[Any]:
        q = Ops()
        q.ops = [{}] * 1000  # fresh result ids
        xb = q.meth("pX", "__getitem__", ["slice", 8 * b, 8 * b + 8, None])
        yb = xb if same_slices else q.meth("pY", "__getitem__", ["slice", 8 * b, 8 * b + 8, None])
        q.meth("sOpt", "zero_grad")
        h = q.meth("sLayer", "__call__", ptr(xb))
        h = q.call("torch.nn.functional.relu", ptr(h))
        args = (ptr(yb), ptr(h)) if swap else (ptr(h), ptr(yb))
        loss = q.call("torch.nn.functional.cross_entropy", *args)
        q.meth(loss, "backward")
        q.meth("sOpt", "step")
        q.meth(loss, "item")
        ops = q.ops[1000:]
        if later:  # an op that uses a result made after it
            ops[3] = dict(ops[3], a=["list", ptr(ops[5]["o"])])
        return ops[:n]

    variants = [
        step(7),
        step(7, swap=True),
        step(7, same_slices=True),
        step(7, later=True),
        [dict(op, s="sLayer2") if op.get("n") == "__call__" else op for op in step(7)],  # another layer
        [dict(op, s="sOther") if op.get("n") == "zero_grad" else op for op in step(7)],  # one more input
        [dict(op, n="eval") if op.get("n") == "zero_grad" else op for op in step(7)],
    ]
    results = []
    for window in variants:
        seg = planner._Segment(window)
        holes = t.match(seg)
        want = None if holes is None else (seg.inputs, holes)
        assert t.match_ops(window) == want
        results.append(want is not None)
    assert results == [True, False, False, False, True, False, False]


# ---- a frame's unfinished step waits for the next frame -------------------------------------------------


def test_held_from_finds_the_unfinished_step_at_a_frames_end() -> None:
    p = planner_on()
    o, _ = training_ops(6)
    p.compress(copy.deepcopy(o.ops), set())  # the step's plans, known from here on
    four = training_ops(4)[0].ops
    base = four[:28]  # three steps, the last without its `+` (a frame may end anywhere)
    assert p.held_from(base) == len(base)  # it ends with `item`, which begins no plan
    for cut in (1, 2, 5, 8):  # and the first ops of the fourth step
        assert p.held_from(base + four[29 : 29 + cut]) == len(base)
    unknown = {"k": "meth", "s": "pX", "n": "mean", "o": "sZ"}
    assert p.held_from([*base, *four[29:31], unknown]) == len(base) + 3  # not a step's beginning
    p.enabled = False
    assert p.held_from(base + four[29:31]) == len(base) + 2


def _step(side: Loopback, xs: Any, ys: Any, layer: Any, opt: Any, b: int, total: Any) -> Any:
    xb, yb = xs[b : b + 8], ys[b : b + 8]
    opt.zero_grad()
    loss = side.torch.nn.functional.cross_entropy(side.torch.nn.functional.relu(layer(xb)), yb)
    loss.backward()
    opt.step()
    return loss.item() if total is None else total + loss.item()


def _four_steps(side: Loopback, x: Any, y: Any) -> tuple[Any, Any, Any, Any, Any]:
    """Four training steps in one frame (the client knows the step's plans from then on)."""
    torch.manual_seed(1)
    layer = side.torch.nn.Linear(5, 3)
    opt = side.torch.optim.SGD(layer.parameters(), lr=0.1)
    xs, ys = side.pointer(x), side.pointer(y)
    total = None
    with side.batched():
        for b in range(0, 32, 8):
            total = _step(side, xs, ys, layer, opt, b, total)
    return layer, opt, xs, ys, total


def test_a_frames_unfinished_step_waits_for_the_next_frame_and_loses_nothing(sides: Any) -> None:
    (planned, x, y), (single, x2, y2) = sides
    results = []
    for side, px, py in ((planned, x, y), (single, x2, y2)):
        layer, opt, xs, ys, total = _four_steps(side, px, py)
        a = xs * 2.0  # a result of the scientist's
        side.remote.flush()
        remote = side.remote
        remote._scheduled = True  # as while the user's thread makes a burst of calls
        total = _step(side, xs, ys, layer, opt, 32, total)
        h1, h2 = a[0:8], ys[40:48]  # what begins a step (two slices), then a's last pointer goes
        a_id = a._duet_id
        del a
        assert a_id in remote._releases
        frames = len(side.frames)
        loop.run(_async(remote._flush_burst), timeout=10)
        if side is planned:
            ops = side.frames[-1]["ops"]
            assert len(side.frames) == frames + 1 and [op["k"] for op in ops if op["k"] != "del"] == ["run"]
            held = [op["n"] for op, _ in remote._ops]  # (with the running total's `+` if a plan begins there)
            assert held[-2:] == ["__getitem__", "__getitem__"] and held[:-2] in ([], ["__add__"])
            assert a_id not in [i for op in ops if op["k"] == "del" for i in op["ids"]]  # its release too
            assert a_id in remote._releases
        results.append((side.value(total), side.value(h1), side.value(h2)))  # a blocking call sends all
        assert not remote._ops and side.failures == []
        assert a_id not in side.store._entries  # released once the ops that used it had run
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], x.obj[0:8] * 2.0) and torch.equal(results[0][2], y.obj[40:48])


def test_a_held_step_leaves_on_its_own_after_a_few_milliseconds(
    sides: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(The hold is made 0.2 s long here, so that the check that the op is held cannot race the timer on a
    loaded machine; the client's own is a few milliseconds.)"""
    (planned, x, y), _ = sides
    _, _, xs, _, _ = _four_steps(planned, x, y)
    monkeypatch.setattr(client, "_HOLD_SECONDS", 0.2)
    remote = planned.remote
    remote._scheduled = True
    head = xs[40:48]
    sent = threading.Event()  # set once a frame carries the held op
    real = planned.send

    def send(header: dict[str, Any], *args: Any, **kw: Any) -> None:
        real(header, *args, **kw)
        if any(op.get("o") == head._duet_id for op in header.get("ops", ())):
            sent.set()

    monkeypatch.setattr(planned, "send", send)
    assert remote.planner.held_from([op for op, _ in remote._ops]) == 0  # the slice begins a known step
    loop.run(_async(remote._flush_burst), timeout=10)
    assert len(remote._ops) == 1 and not sent.is_set()  # held
    assert sent.wait(5)  # no other call, no flush asked for: the timer sent it
    assert not remote._ops
    assert planned.store.lookup(head._duet_id).obj.shape == (8, 5)


async def _async(fn: Any) -> None:
    fn()


def _refs_by_stack(op: dict[str, Any]) -> list[str]:
    """The ids an op uses, by the planner's plain walk of each whole tree (the reference for
    planner._refs's flat-list shortcut)."""
    out = [op["s"]] if "s" in op else []
    for key in ("a", "kw"):
        if key in op:
            planner._walk_refs([op[key]], out)
    return out


def test_the_ids_an_op_uses_are_those_of_the_plain_walk_in_its_order() -> None:
    import random

    rng = random.Random(0)
    leaves = [
        1,
        2.5,
        "x",
        None,
        True,
        "ptr",
        ["ptr", "s1"],
        ["ptr", "s2"],
        ["ptr", 5],
        ["ptr"],
        ["ptr", "a", "b"],
    ]

    def tree(depth: int) -> Any:
        if depth > 3 or rng.random() < 0.3:
            return copy.deepcopy(rng.choice(leaves))
        return [rng.choice(["list", "tuple", "dict", "ptr", 3])] + [
            tree(depth + 1) for _ in range(rng.randint(0, 4))
        ]

    found = 0
    for i in range(20_000):
        op: dict[str, Any] = {"k": "meth", "o": f"s{i}"}
        if rng.random() < 0.5:
            op["s"] = f"s{i + 1}"
        if rng.random() < 0.8:
            op["a"] = tree(0)
        if rng.random() < 0.5:
            op["kw"] = tree(0)
        refs = planner._refs(op)
        assert refs == _refs_by_stack(op), op
        found += len(refs)
    assert found > 10_000  # the trees did hold pointers, flat and nested
    call = {
        "k": "call",
        "o": "s9",
        "p": "torch.add",
        "a": ["list", ["ptr", "s2"], 1.0, ["list", ["ptr", "s3"]]],
    }
    assert planner._refs(call) == ["s2", "s3"]


def test_a_batch_slice_hole_is_what_the_codec_makes_of_it() -> None:
    """A run's holes of the form ``["list", ["slice", a, b, c]]`` are built without the codec: the same value
    for every tree the shortcut takes, and every other tree (other bounds, other shapes) left to the codec,
    which decodes or refuses it as before."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from duet import codec

    bound = st.one_of(
        st.none(), st.integers(-(2**70), 2**70), st.booleans(), st.floats(), st.text(max_size=2)
    )
    node = st.one_of(
        st.tuples(st.just("slice"), bound, bound, bound).map(list),
        st.lists(st.one_of(st.just("slice"), bound), max_size=5),
        bound,
    )
    tree = st.one_of(
        st.tuples(st.just("list"), node).map(list), st.lists(st.one_of(st.just("list"), node), max_size=3)
    )
    taken = []

    @settings(max_examples=600, deadline=None)
    @given(tree)
    def check(t: Any) -> None:
        fast = plans._batch_slice(t)
        if fast is None:
            return
        taken.append(t)
        slow = codec.decode(t, ())  # the shortcut takes only what the codec accepts
        assert type(fast) is list and len(fast) == 1 and type(fast[0]) is slice
        assert fast == slow and [type(getattr(fast[0], a)) for a in ("start", "stop", "step")] == [
            type(getattr(slow[0], a)) for a in ("start", "stop", "step")
        ]

    check()
    assert taken  # the shortcut was exercised
    assert plans._batch_slice(["list", ["slice", 0, 32, None]]) == [slice(0, 32, None)]
    for other in (
        ["list", ["slice", 0.5, 2, None]],
        ["list", ["slice", True, 2, None]],
        ["tuple", ["slice", 0, 2, None]],
        ["list", ["slice", 0, 2]],
    ):
        assert plans._batch_slice(other) is None  # the codec's to decode or refuse


def _two_layer_epochs(
    side: Loopback, x: Any, y: Any, flip: bool, z: Any = None
) -> tuple[Pointer, Pointer, Pointer]:
    """Two epochs of a loop whose loss also uses a tensor ``w`` that does not require grad. Between them
    (single ops), with ``flip``, ``w.requires_grad_()``: the second epoch's graphs have a leaf more, in runs
    of the same signature; with ``z`` (a published tensor of 3), ``w.add_(z)``: the second epoch's losses
    come from ``z`` too."""
    torch.manual_seed(1)
    F = side.torch.nn.functional
    layer = side.torch.nn.Linear(5, 3)
    other = side.torch.nn.Linear(5, 3)  # never trained: its entry must not get the data's sources
    w = side.torch.ones(3)
    opt = side.torch.optim.SGD(layer.parameters(), lr=0.1)
    xs, ys = side.pointer(x), side.pointer(y)
    for epoch in range(2):
        if flip and epoch == 1:
            w.requires_grad_()
            side.remote.flush()
        if z is not None and epoch == 1:
            w.add_(side.pointer(z))
            side.remote.flush()
        with side.batched():
            for b in range(0, 64, 8):
                opt.zero_grad()
                loss = F.cross_entropy(layer(xs[b : b + 8]) * w, ys[b : b + 8])
                loss.backward()
                opt.step()
        side.remote.flush()
    return w, other, layer


def test_verified_runs_give_the_data_to_every_leaf_of_backward() -> None:
    """Provenance after ``backward`` in verified runs, when what the graph reaches changes between runs of
    the same signature. ``w.requires_grad_()`` between two epochs makes ``w`` a leaf of every later graph:
    its gradient comes from the data, so its entry gets the data's sources. ``w.add_(z)`` between them makes
    the later losses come from ``z`` too, so the trained layer gets ``z``. A layer never used gets nothing."""
    store, x, y = published()
    side = Loopback(store, use_plans=True)
    w, other, _ = _two_layer_epochs(side, x, y, flip=False)
    assert not side.failures
    assert store.lookup(w._duet_id).sources == frozenset()  # not a leaf: backward wrote nothing into it
    assert store.lookup(other._duet_id).sources == frozenset()

    store, x, y = published()
    side = Loopback(store, use_plans=True)
    w, other, _ = _two_layer_epochs(side, x, y, flip=True)
    assert not side.failures
    assert side.executor.plans.verified_runs >= 12  # the second epoch's runs are verified runs
    assert {x.id, y.id} <= store.lookup(w._duet_id).sources
    assert store.lookup(w._duet_id).obj.grad is not None
    assert store.lookup(other._duet_id).sources == frozenset()

    store, x, y = published()
    z = store.publish(torch.full((3,), 0.5), name="z", tags=["#z"])
    side = Loopback(store, use_plans=True)
    w, other, layer = _two_layer_epochs(side, x, y, flip=False, z=z)
    assert not side.failures
    assert {x.id, y.id, z.id} <= store.lookup(layer._duet_id).sources
    assert store.lookup(other._duet_id).sources == frozenset()


# ---- a slice's spread, skipped where it would change nothing again (plans.Plans.run, _spread_key) --------

_SLICE_SUM = [
    {"k": "meth", "s": "#0", "n": "__getitem__", "a": ["ptr", "$0"]},  # a view of the input: a spread
    {"k": "meth", "s": "#1", "n": "sum"},
    {"k": "meth", "s": "#2", "n": "item"},  # kept: a float, which the store does not index by storage
]
_HALF = ["list", ["slice", 0, 4, None]]


@contextlib.contextmanager
def _counted_spreads(store: Store) -> Iterator[list[int]]:
    """Counts the store's spreads of a tensor without an autograd graph (a slice's)."""
    count = [0]
    real = store.spread

    def spread(sources: Any, entries: Any, objects: Any) -> bool:
        objects = list(objects)
        if any(isinstance(o, torch.Tensor) and o.grad_fn is None for o in objects):
            count[0] += 1
        return real(sources, entries, objects)

    store.spread = spread  # type: ignore[method-assign]
    try:
        yield count
    finally:
        del store.spread


def test_a_slices_spread_that_changed_nothing_is_not_repeated() -> None:
    store = Store()
    x = store.publish(torch.arange(16.0).reshape(8, 2), name="x")
    ex = Executor(store)
    run = define_and_run(ex, [dict(op) for op in _SLICE_SUM], n_in=1, n_holes=1)
    with _counted_spreads(store) as spreads:
        for _ in range(2):
            assert run([x.id], [_HALF], keep=[2])[0] == []
        before = spreads[0]
        for _ in range(3):
            failures, outs = run([x.id], [_HALF], keep=[2])
            assert failures == []
            assert store.lookup(outs[2]).sources == frozenset([x.id])
            assert store.lookup(outs[2]).obj == float(torch.arange(8.0).sum())
    assert ex.plans.fast_ops >= 9
    assert before >= 1 and spreads[0] == before  # the verified runs' slices: skipped, the same sources


def test_a_slices_spread_reaches_an_entry_that_shares_the_storage_since() -> None:
    """An entry indexed under the slice's storage after the spread was last done (the owner publishes a
    view of the same tensor) gets the slice's sources, as it would from the first run."""
    store = Store()
    base = torch.arange(16.0).reshape(8, 2)
    x = store.publish(base, name="x")
    ex = Executor(store)
    run = define_and_run(ex, [dict(op) for op in _SLICE_SUM], n_in=1, n_holes=1)
    for _ in range(3):
        assert run([x.id], [_HALF], keep=[2])[0] == []
    view = store.publish(base.view(8, 2), name="x_view")
    assert view.sources == frozenset([view.id])
    assert run([x.id], [_HALF], keep=[2])[0] == []
    assert store.lookup(view.id).sources == frozenset([view.id, x.id])


def test_a_slices_spread_carries_sources_its_inputs_gained_since() -> None:
    """``a.view_as(b)`` shares ``a``'s storage and comes from ``a`` and ``b``: once ``b`` has taken in the
    data (another plan's in-place ``add_``, which indexes nothing), the next run gives ``a`` the data too."""
    store = Store()
    data = store.publish(torch.ones(4), name="data")
    ex = Executor(store)
    _put(ex, "sA", torch.zeros(4))
    _put(ex, "sB", torch.zeros(4))
    view = [{"k": "meth", "s": "#0", "n": "view_as", "a": ["list", ["ptr", "#1"]]}]
    run = define_and_run(ex, view, n_in=2)
    for _ in range(3):
        assert run(["sA", "sB"], keep=[])[0] == []
    assert store.lookup("sA").sources == frozenset()
    add = [{"k": "meth", "s": "#0", "n": "add_", "a": ["list", ["ptr", "#1"]]}]
    assert ex.run_ops([{"k": "plan", "id": 2, "n": 2, "h": 0, "t": add}], []) == []
    assert (
        ex.run_ops([{"k": "run", "id": 2, "i": ["sB", data.id], "h": [], "o": ["sAdd"], "keep": []}], [])
        == []
    )
    assert store.lookup("sB").sources == frozenset([data.id])
    assert run(["sA", "sB"], keep=[])[0] == []
    assert store.lookup("sA").sources == frozenset([data.id])

    # a single op that returns nothing (``b[0] = other[0]``) gives ``b`` what it read, indexing nothing
    other = store.publish(torch.ones(4), name="other")
    setitem = {"k": "meth", "s": "sB", "n": "__setitem__", "a": ["list", 0, ["ptr", "sO"]], "o": "sSet"}
    assert (
        ex.run_ops([{"k": "meth", "s": other.id, "n": "__getitem__", "a": ["list", 0], "o": "sO"}], []) == []
    )
    assert run(["sA", "sB"], keep=[])[0] == []  # changes nothing: what the next run would skip
    assert ex.run_ops([setitem], []) == []
    assert store.lookup("sB").sources == frozenset([data.id, other.id])
    assert run(["sA", "sB"], keep=[])[0] == []
    assert store.lookup("sA").sources == frozenset([data.id, other.id])


def test_a_slices_spread_is_done_again_for_another_entry_on_the_same_storage() -> None:
    """Two published entries on one storage (a tensor and a view of all of it): slicing the second after
    the first gives the first the second's sources, although the storage and the store are the same."""
    store = Store()
    base = torch.arange(16.0).reshape(8, 2)
    x = store.publish(base, name="x")
    alias = store.publish(base.view(8, 2), name="alias")
    ex = Executor(store)
    run = define_and_run(ex, [dict(op) for op in _SLICE_SUM], n_in=1, n_holes=1)
    for _ in range(3):
        assert run([x.id], [_HALF], keep=[2])[0] == []
    assert store.lookup(alias.id).sources == frozenset([alias.id, x.id])
    assert store.lookup(x.id).sources == frozenset([x.id])
    assert run([alias.id], [_HALF], keep=[2])[0] == []
    assert ex.plans.verified_runs >= 3
    assert store.lookup(x.id).sources == frozenset([x.id, alias.id])


_TRAIN_STEP = [  # inputs: #0 x, #1 y (published), #2 a layer, #3 its optimizer; $0 a batch's slice
    {"k": "meth", "s": "#0", "n": "__getitem__", "a": ["ptr", "$0"]},
    {"k": "meth", "s": "#1", "n": "__getitem__", "a": ["ptr", "$0"]},
    {"k": "meth", "s": "#3", "n": "zero_grad"},
    {"k": "meth", "s": "#2", "n": "__call__", "a": ["list", ["ptr", "#4"]]},
    {"k": "call", "p": "torch.nn.functional.cross_entropy", "a": ["list", ["ptr", "#7"], ["ptr", "#5"]]},
    {"k": "meth", "s": "#8", "n": "backward"},
    {"k": "meth", "s": "#3", "n": "step"},
    {"k": "meth", "s": "#8", "n": "item"},  # kept: the step's loss, a float
]


def test_a_training_steps_verified_runs_spread_only_after_backward() -> None:
    """In verified runs of a training step the slices', ``zero_grad``'s and ``step``'s spreads (which
    changed nothing after the first run) are skipped; what ``backward`` reaches is followed every run.
    The layer has the data's sources from the first run on."""
    store, x, y = published()
    ex = Executor(store)
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    store.put("sL", layer, set())
    store.put("sO", torch.optim.SGD(layer.parameters(), lr=0.1), set())
    run = define_and_run(ex, [dict(op) for op in _TRAIN_STEP], n_in=4, n_holes=1)
    kinds: list[list[str]] = []
    real = store.spread

    def spread(sources: Any, entries: Any, objects: Any) -> bool:
        objects = list(objects)
        graph = any(isinstance(o, torch.Tensor) and o.grad_fn is not None for o in objects)
        kinds[-1].append("graph" if graph else "other")
        return real(sources, entries, objects)

    store.spread = spread  # type: ignore[method-assign]
    losses = []
    for b in range(0, 64, 8):
        kinds.append([])
        failures, outs = run([x.id, y.id, "sL", "sO"], [["list", ["slice", b, b + 8, None]]], keep=[7])
        assert failures == []
        losses.append(store.lookup(outs[7]).obj)
        assert store.lookup(outs[7]).sources == {x.id, y.id}
        assert store.lookup("sL").sources == {x.id, y.id}
    assert ex.plans.verified_runs == 7 and ex.plans.fast_ops == 7 * len(_TRAIN_STEP)
    assert all(k.count("graph") == 1 for k in kinds[1:])  # backward's, every run
    assert kinds[2:] == [["graph"]] * 6  # the others: skipped once a verified run found them unchanged
    assert losses[-1] < losses[0]


def test_a_runs_first_result_id_stands_for_one_consecutive_id_per_op() -> None:
    """``"o": 7`` names s7, s8, … as the list would: the same results, kept and failed under those ids."""
    store, x, _ = published()
    ex = Executor(store)
    template = GOOD + [
        {"k": "meth", "s": "#1", "n": "sum"},
        {"k": "meth", "s": "#1", "n": "reshape", "a": ["list", 7]},
    ]
    assert ex.run_ops([{"k": "plan", "id": 1, "n": 1, "t": template}], []) == []
    listed = {"k": "run", "id": 1, "i": [x.id], "h": [], "o": ["s1", "s2", "s3"], "keep": [0, 1, 2]}
    first = {"k": "run", "id": 1, "i": [x.id], "h": [], "o": 7, "keep": [0, 1, 2]}
    failed_listed, failed_first = ex.run_ops([listed], []), ex.run_ops([first], [])
    assert [f[0] for f in failed_listed] == ["s3"] and [f[0] for f in failed_first] == ["s9"]
    assert torch.equal(store.lookup("s7").obj, store.lookup("s1").obj)
    assert store.lookup("s8").obj == store.lookup("s2").obj == (x.obj + 1).sum()
    assert store.lookup("s9").error is not None and not store.holds("s10")
    # refused as a whole (a wrong input count): the error goes under the kept ids it stands for
    bad = {"k": "run", "id": 1, "i": [], "h": [], "o": 20, "keep": [1]}
    assert ex.run_ops([bad], [])[0][0] == "s21" and store.lookup("s21").error is not None


def test_the_client_sends_a_runs_consecutive_ids_as_the_first_ones_number() -> None:
    o, _ = training_ops(4)
    p = planner_on()
    listed = p.compress(copy.deepcopy(o.ops), set(), [])[0]
    p = planner_on()
    p.first_ids = True
    first = p.compress(copy.deepcopy(o.ops), set(), [])[0]
    runs_listed = [op for op in listed if op["k"] == "run"]
    runs_first = [op for op in first if op["k"] == "run"]
    assert runs_listed and len(runs_first) == len(runs_listed)
    for a, b in zip(runs_listed, runs_first):
        assert type(b["o"]) is int and a["o"] == [f"s{b['o'] + j}" for j in range(len(a["o"]))]
        assert {k: v for k, v in a.items() if k != "o"} == {k: v for k, v in b.items() if k != "o"}
    assert p._ids(["s5", "s7"]) == ["s5", "s7"]  # not consecutive
    assert p._ids(["s05", "s6"]) == ["s05", "s6"] and p._ids(["s\u0665", "s6"]) == ["s\u0665", "s6"]
    assert p._ids(["s9", "s10", "s11"]) == 9


class _Slotted:
    """An input known by identity that takes no weak reference."""

    __slots__ = ()


def test_a_run_whose_inputs_take_no_weak_reference_or_no_hash_is_checked_in_full_every_time() -> None:
    store, x, _ = published()
    ex = Executor(store)
    store.put("sNoRef", _Slotted(), set())
    store.put("sList", [1, [2]], set())
    template = [{"k": "meth", "s": "#0", "n": "sum"}]
    run = define_and_run(ex, template, n_in=2)
    for _ in range(3):
        assert run([x.id, "sNoRef"])[0] == []
    store.put("sLong", list(range(100)), set())  # too long for a signature by value: known by identity
    for _ in range(3):
        assert run([x.id, "sLong"])[0] == []
    assert ex.plans.verified_runs == 0 and ex.plans.runs == 6
    failures, outs = run(["sMissing", "sNoRef"])
    assert failures[0][0] == outs[0] and failures[0][1].remote_type == "PermissionDenied"
    assert run([x.id, "sList"])[0] == [] and run([x.id, "sList"])[0] == []
    assert ex.plans.verified_runs == 1  # a short list's signature is its items': verified
