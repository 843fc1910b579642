"""``python -m bench.replay``: the owner's executor alone, without the network: where a training epoch's
time goes on the owner's side.

A real client records the frames of a session that sends the demo CNN and trains it for three epochs on
the digits (its frames go straight to an owner's ``Executor`` in this process, as in ``tests/test_plans.py``).
Each repetition then builds a fresh store and executor, replays the frames up to the last epoch (the model,
two epochs: plans defined and verified), and times the last epoch's frames; a local epoch of the same loop
runs just before it, in the same process and thread. Printed: both epochs and their ratio (medians), and
the owner's own cost per call beyond the torch call itself, by call, from the activity log's durations and
the time spent inside the allowlist's calls.

``--loop demo`` (the default) is the bench's demo epoch: a fresh model and optimizer each epoch, batches of
32. ``--loop notebook`` is notebook 03's training (see :class:`bench.training.NotebookTraining`): the model
sent once, Adam and its schedule made once, batches of 64; its local epochs continue one training.

This is the executor's ceiling: a session adds the network, the scientist's processes and their threads on
the same cores (``python -m bench`` measures that).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from duet.demo import DigitsCNN
from duet.remote import activity, allowlist
from duet.remote.client import Remote
from duet.remote.executor import Executor
from duet.remote.pointer import Pointer, RemoteNamespace, RemotePython
from duet.remote.store import Store

from . import training

__all__ = ["main", "record", "replay", "Recording"]

BATCH = 32
Frame = tuple[list[dict[str, Any]], list[bytes]]


class _Recorder:
    """A client whose frames go straight to an executor; keeps a copy of each frame of ops."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.frames: list[Frame] = []
        self.remote = Remote(lambda: self, lambda: "owner")  # type: ignore[arg-type,return-value]
        self.remote.planner.enabled = True  # as after an owner's welcome that says it runs plans
        self.remote.planner.first_ids = True  # and reads a run's consecutive ids as one number
        self.torch = RemoteNamespace(self.remote, "torch")
        self.python = RemotePython(self.remote)

    def send(self, header: dict[str, Any], buffers: Any = (), **kw: Any) -> None:
        if header["t"] != "ops":
            return
        bufs = [bytes(memoryview(b).cast("B")) for b in buffers]
        self.frames.append((copy.deepcopy(header["ops"]), bufs))
        failures = self.executor.run_ops(header["ops"], [memoryview(b) for b in bufs])
        if failures:
            raise RuntimeError(f"recording: the executor refused {failures[:3]}")


def _owner(x: torch.Tensor, y: torch.Tensor) -> tuple[Store, Executor, str, str]:
    store = Store()
    px, py = store.publish(x, name="digits_x"), store.publish(y, name="digits_y")
    return store, Executor(store), px.id, py.id


@dataclasses.dataclass
class Recording:
    frames: list[Frame]
    marks: list[int]  # the index of each epoch's first frame, and of the end
    ids: tuple[str, str]  # the published ids the frames name (digits_x, digits_y)
    total: str  # the result id of the last epoch's summed loss


def record(x: torch.Tensor, y: torch.Tensor, epochs: int, n: int, loop: str = "demo") -> Recording:
    """The frames of ``epochs`` epochs of the bench's training loop: the demo's, a fresh model sent before
    each (as the bench's demo epoch does), or notebook 03's (``loop="notebook"``), one model trained on."""
    store, ex, px, py = _owner(x, y)
    rec = _Recorder(ex)
    xs, ys = Pointer(rec.remote, px, owned=False), Pointer(rec.remote, py, owned=False)
    marks = []
    if loop == "notebook":
        torch.manual_seed(0)
        model = DigitsCNN(torch, hidden=training.NOTEBOOK_HIDDEN).send(rec)
        opt, scheduler = training.notebook_optimizer(rec.torch, model)
    for _ in range(epochs):
        if loop != "notebook":
            torch.manual_seed(0)
            model = DigitsCNN(torch).send(rec)
        rec.remote.flush()
        marks.append(len(rec.frames))
        rec.remote._scheduled = True  # the epoch's calls leave as one frame (as a fast loop's calls travel)
        if loop == "notebook":
            zero = lambda: rec.python.Float(0.0)  # noqa: E731
            total = training.notebook_epoch(model, rec.torch, opt, scheduler, xs, ys, n, zero)
        else:
            total = training.run_epoch(model, rec.torch, xs, ys, n, BATCH)
        rec.remote.flush()
    marks.append(len(rec.frames))
    return Recording(rec.frames, marks, (px, py), total._duet_id)


def _renamed(obj: Any, names: dict[str, str]) -> Any:
    if type(obj) is str:
        return names.get(obj, obj)
    if type(obj) is list:
        return [_renamed(v, names) for v in obj]
    if type(obj) is dict:
        return {k: _renamed(v, names) for k, v in obj.items()}
    return obj


def replay(
    rec: Recording, x: torch.Tensor, y: torch.Tensor, rows: dict[str, list[tuple[float, float]]] | None = None
) -> tuple[float, int, float]:
    """A fresh owner replays every epoch but the last, then the last one timed: its seconds, how many of its
    calls ran on a verified run's fast path, and its summed loss. With ``rows``, the timed epoch's calls are
    measured into it (see _per_call)."""
    store, ex, px, py = _owner(x, y)
    frames, marks = rec.frames, rec.marks
    names = {rec.ids[0]: px, rec.ids[1]: py}
    active = [False]  # rows are measured in the timed epoch only (the bindings are made before it)
    with _per_call(rows, active) if rows is not None else contextlib.nullcontext():
        for ops, bufs in frames[: marks[-2]]:
            ex.run_ops(_renamed(ops, names), [memoryview(b) for b in bufs])
        work = [(_renamed(ops, names), [memoryview(b) for b in bufs]) for ops, bufs in frames[marks[-2] :]]
        fast = ex.plans.fast_ops
        active[0] = True
        start = time.perf_counter()
        for ops, views in work:
            failures = ex.run_ops(ops, views)
            if failures:
                raise RuntimeError(f"replay: the executor refused {failures[:3]}")
        seconds = time.perf_counter() - start
        active[0] = False
    return seconds, ex.plans.fast_ops - fast, float(store.lookup(rec.total).obj)


@contextlib.contextmanager
def _per_call(rows: dict[str, list[tuple[float, float]]], active: list[bool]) -> Iterator[None]:
    """Each logged call's (duration, time inside the allowlist's call) into ``rows`` by path, while the
    block runs and ``active[0]`` is set. The allowlist's calls are timed both where the executor calls them
    directly and through the bindings a plan's fast ops call."""
    inside = [0.0]
    A = allowlist.Allowlist
    real = {
        name: getattr(A, name) for name in ("call_method", "call_function", "bind_method", "bind_function")
    }
    real_record = activity.ActivityLog.record

    def timed(call: Any) -> Any:
        def timed_call(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return call(*args)
            finally:
                inside[0] += time.perf_counter() - start

        return timed_call

    def binder(bind: Any) -> Any:
        return lambda self, *args: timed(bind(self, *args))

    def record_row(self: Any, when: float, path: str, *rest: Any) -> None:
        if active[0]:
            rows.setdefault(path, []).append((rest[-1], inside[0]))
        inside[0] = 0.0
        real_record(self, when, path, *rest)

    A.call_method = timed(real["call_method"])  # type: ignore[method-assign]
    A.call_function = timed(real["call_function"])  # type: ignore[method-assign]
    A.bind_method = binder(real["bind_method"])  # type: ignore[method-assign]
    A.bind_function = binder(real["bind_function"])  # type: ignore[method-assign]
    activity.ActivityLog.record = record_row  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        for name, fn in real.items():
            setattr(A, name, fn)
        activity.ActivityLog.record = real_record  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=15, help="local and replayed epochs, alternating (15)")
    ap.add_argument("--samples", type=int, default=0, help="digits to train on (0: all 1797)")
    ap.add_argument(
        "--loop", choices=("demo", "notebook"), default="demo", help="the training loop (see above; demo)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x, y = training.digits()
    n = min(len(y), args.samples or len(y))
    rec = record(x, y, 3, n, args.loop)
    if args.loop == "notebook":  # the replayed epoch is a training's third: so is the loss it must sum
        check = training.NotebookTraining(None, x, y, n)
        local_loss = [check.epoch()[1] for _ in range(3)][-1]
        nb = training.NotebookTraining(None, x, y, n)  # (timed: one training, epoch after epoch)
    local, remote = [], []
    for _ in range(args.pairs):
        if args.loop == "notebook":
            local_seconds = nb.epoch()[0]
        else:
            local_seconds, local_loss = training.local_epoch(x, y, n, BATCH)
        replay_seconds, _, replay_loss = replay(rec, x, y)
        if replay_loss != local_loss:
            raise RuntimeError(f"the replayed epoch's loss {replay_loss} differs from the local {local_loss}")
        local.append(local_seconds)
        remote.append(replay_seconds)
    ratios = [r / lo for r, lo in zip(remote, local)]
    rows: dict[str, list[tuple[float, float]]] = {}
    seconds, fast, _ = replay(rec, x, y, rows)
    calls = sum(len(v) for v in rows.values())
    print(f"frames recorded: {len(rec.frames)}; the timed epoch: {calls} calls, {fast} on the fast path")
    print(
        f"local epoch {statistics.median(local) * 1e3:.1f} ms, replayed {statistics.median(remote) * 1e3:.1f} ms "
        f"(medians of {args.pairs}); ratio {statistics.median(ratios):.2f}x (median of the pairs), "
        f"{min(remote) / min(local):.2f}x (fastest over fastest)"
    )
    print(f"{'call':44s} {'calls':>6s} {'duet us/call':>12s} {'inside us/call':>14s} {'duet ms':>8s}")
    total = 0.0
    by_cost = sorted(rows.items(), key=lambda kv: -sum(d - i for d, i in kv[1]))
    for path, v in by_cost:
        own = [d - i for d, i in v]
        total += sum(own)
        print(
            f"{path[:44]:44s} {len(v):6d} {statistics.median(own) * 1e6:12.1f} "
            f"{statistics.median(i for _, i in v) * 1e6:14.1f} {sum(own) * 1e3:8.2f}"
        )
    in_rows = sum(d for v in rows.values() for d, _ in v)
    print(
        f"duet's own time in the calls' rows {total * 1e3:.2f} ms; outside them (runs' set-up, kept results, "
        f"frames) {(seconds - in_rows) * 1e3:.2f} ms; of an epoch of {seconds * 1e3:.1f} ms (instrumented)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
