"""The scenarios: each duet figure measured interleaved with its limits, so both see the same machine load."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from . import training
from .config import MB, SMALL_BYTES, Config, nbytes
from .duet_side import DuetSide, frame_size, get, op_message_size
from .limits import Limits

__all__ = ["run_all"]

Say = Callable[[str], None]
BLOCK = 50  # round trips measured back to back before switching to the other side


def run_all(cfg: Config, say: Say) -> dict[str, Any]:
    """Every scenario, in order; the peer processes are stopped whatever happens."""
    out: dict[str, Any] = {}
    with Limits() as limits, DuetSide() as side:
        say("starting the peer processes")
        limits.start()
        side.start()
        for name, scenario in (
            ("connect", _connect),
            ("round trip", _round_trip),
            ("pipelined calls", _pipelined),
            ("bulk transfers", _bulk),
            ("training", _training),
            ("notebook 03's training", _notebook_training),
        ):
            say(name)
            scenario(limits, side, cfg, out)
        out["owner_final"] = side.stats()
    return out


def _connect(limits: Limits, side: DuetSide, cfg: Config, out: dict[str, Any]) -> None:
    """``launch_duet`` (owner) to ``join_duet`` returning with the channel open (scientist); the last session
    stays open for the other scenarios."""
    cold, _ = side.connect()  # the first session pays for first-use set-up in both processes
    raw, total, join = [], [], []
    for _ in range(cfg.connects):
        raw.append(limits.connect())
        t, j = side.connect()
        total.append(t)
        join.append(j)
    out["connect"] = {"raw": raw, "duet": total, "join": join, "cold": cold}


def _round_trip(limits: Limits, side: DuetSide, cfg: Config, out: dict[str, Any]) -> None:
    """A small ``get`` the owner's handler accepts; duet's channel echo (``d.ping``); bare echoes."""
    side.owner.call("publish", "small", 4)
    ptr = side.s.store["small"]
    # a call waits in the owner's executor thread behind its one-time warm-up (guards.warm_up imports
    # torch._dynamo once a scientist connects, seconds of CPU that slow the owner's loop meanwhile)
    side.chain(ptr, 1)
    limits.echo(20, SMALL_BYTES)
    limits.tcp_echo(20, SMALL_BYTES)
    side.timed_gets(ptr, 20)
    side.pings(20)
    res: dict[str, list[float]] = {"raw": [], "tcp": [], "get": [], "ping": []}
    before = side.stats()
    for _ in range(max(1, cfg.round_trips // BLOCK)):
        n = min(BLOCK, cfg.round_trips)
        res["raw"] += limits.echo(n, SMALL_BYTES)
        res["tcp"] += limits.tcp_echo(n, SMALL_BYTES)
        res["get"] += side.timed_gets(ptr, n)
        res["ping"] += side.pings(n)
    after = side.stats()
    # the bytes of one get on duet's channel, each way: the pings' are taken out, heartbeats are negligible
    gets, pings = len(res["get"]), len(res["ping"]) * frame_size({"t": "echo", "id": 1000})
    out["round_trip"] = {
        **res,
        "request_bytes": (after["bytes_received"] - before["bytes_received"] - pings) / gets,
        "reply_bytes": (after["bytes_sent"] - before["bytes_sent"] - pings) / gets,
    }


def _pipelined(limits: Limits, side: DuetSide, cfg: Config, out: dict[str, Any]) -> None:
    """``y = y + 1`` n times then one ``get``, beside as many bare messages of one call's size."""
    ptr = side.s.store["small"]
    cold = min(200, cfg.pipelined_calls)
    cold_seconds, _ = side.chain(ptr, cold)  # the owner's first calls: measured apart, and a warm-up
    size = op_message_size()
    raw_rate = limits.rate(cfg.pipelined_calls, size)
    side.owner.call("reset_peak")
    before = side.stats()
    seconds, queued = side.chain(ptr, cfg.pipelined_calls)
    after = side.stats()
    out["pipelined"] = {
        "calls": cfg.pipelined_calls,
        "rate": cfg.pipelined_calls / seconds,
        "seconds": seconds,
        "queue_seconds": queued,
        "raw_rate": raw_rate,
        "raw_size": size,
        "cold_calls": cold,
        "cold_rate": cold / cold_seconds,
        "owner_before": before,
        "owner_after": after,
        "owner_call_ms": [ms for _, ms, _ in side.owner.call("log_tail", min(cfg.pipelined_calls, 2000))],
    }


def _bulk(limits: Limits, side: DuetSide, cfg: Config, out: dict[str, Any]) -> None:
    """Per size: bare pull, duet get, bare push, duet model send, alternating; the owner's peak RSS during
    the last get and the last send of the largest size."""
    warm = nbytes(min(cfg.bulk_mb))
    side.owner.call("publish", "warm", warm)
    limits.pull(warm)  # the first transfer after connecting is slow on both: warm both up
    get(side.s.store["warm"])
    side.owner.call("remove", "warm")
    largest, bulk = max(cfg.bulk_mb), {}
    for mb, reps in zip(cfg.bulk_mb, cfg.bulk_repeats):
        size = nbytes(mb)
        side.owner.call("publish", f"bulk{mb}", size)
        ptr = side.s.store[f"bulk{mb}"]
        model = side.big_model(size)
        model_bytes = sum(p.numel() * 4 for p in model.parameters())
        times: dict[str, list[float]] = {"raw_pull": [], "get": [], "raw_push": [], "send": []}
        for rep in range(reps):
            watch = mb == largest and rep == reps - 1
            times["raw_pull"].append(limits.pull(size))
            times["get"].append(_watched(side, out, "memory_get", mb, watch, side.get_tensor, ptr, size))
            times["raw_push"].append(limits.push(model_bytes))
            times["send"].append(_watched(side, out, "memory_send", mb, watch, side.send_model, model))
        times["raw_pull"].append(limits.pull(size))  # so that every duet transfer has a bare one on each side
        times["raw_push"].append(limits.push(model_bytes))
        owner_ms = {path: ms for path, ms, _ in side.owner.call("log_tail", 6)}  # the last send's calls
        side.owner.call("remove", f"bulk{mb}")
        tcp_pull = statistics.median(limits.tcp_pull(size) for _ in range(3))
        tcp_push = statistics.median(limits.tcp_push(model_bytes) for _ in range(3))
        bulk[mb] = {
            "raw_pull": size / MB / statistics.median(times["raw_pull"]),
            "get": size / MB / statistics.median(times["get"]),
            "get_ratio": _paired_ratio(times["get"], times["raw_pull"]),
            "tcp_pull": size / MB / tcp_pull,
            "raw_push": model_bytes / MB / statistics.median(times["raw_push"]),
            "send": model_bytes / MB / statistics.median(times["send"]),
            "send_ratio": _paired_ratio(times["send"], times["raw_push"]),
            "tcp_push": model_bytes / MB / tcp_push,
            "times": times,
            "model_bytes": model_bytes,
            "owner_ms": owner_ms,
            "reps": reps,
        }
    out["bulk"] = bulk


def _paired_ratio(duet: list[float], bare: list[float]) -> float:
    """The median over transfers of duet's rate over the bare rate measured right before and right after
    it (the mean of the two): each ratio compares transfers that saw the same load on the machine."""
    return statistics.median(2 / (d / b0 + d / b1) for d, b0, b1 in zip(duet, bare, bare[1:]))


def _watched(
    side: DuetSide,
    out: dict[str, Any],
    key: str,
    mb: float,
    watch: bool,
    run: Callable[..., float],
    *args: Any,
) -> float:
    """Run a transfer; if ``watch``, record the owner's RSS before it and its peak during it under ``key``."""
    if not watch:
        return run(*args)
    side.owner.call("reset_peak")
    before = side.stats()
    seconds = run(*args)
    out[key] = {"mb": mb, "before": before, "after": side.stats()}
    return seconds


def _training(limits: Limits, side: DuetSide, cfg: Config, out: dict[str, Any]) -> None:
    """One epoch locally and over duet, alternating, after one warm-up epoch of each."""
    x, y = training.digits()
    side.owner.call("digits")
    xp, yp = side.s.store["digits_x"], side.s.store["digits_y"]
    n = min(len(y), cfg.train_samples or len(y))
    local, remote, single = [], [], []
    planner = side.s._scientist.remote.planner  # type: ignore[union-attr]
    for rep in range(cfg.epoch_repeats + 1):
        local_seconds, local_loss = training.local_epoch(x, y, n, cfg.batch_size)
        duet_seconds, duet_loss = training.duet_epoch(side.s, xp, yp, n, cfg.batch_size)
        planner.enabled = False  # the same epoch with every call on its own (DUET_PLANS=0), for comparison
        try:
            single_seconds, single_loss = training.duet_epoch(side.s, xp, yp, n, cfg.batch_size)
        finally:
            planner.enabled = True
        if rep:  # the first of each is the warm-up
            local.append(local_seconds)
            remote.append(duet_seconds)
            single.append(single_seconds)
    out["epoch"] = {
        "torch_threads": {"scientist": torch.get_num_threads(), "owner": side.stats()["torch_threads"]},
        "samples": n,
        "batch_size": cfg.batch_size,
        "local_seconds": statistics.median(local),
        "duet_seconds": statistics.median(remote),
        "local_all": local,
        "duet_all": remote,
        "ratio": statistics.median(
            d / lo for d, lo in zip(remote, local)
        ),  # each epoch over the local one before it
        "no_plans_seconds": statistics.median(single),
        "no_plans_all": single,
        "no_plans_ratio": statistics.median(d / lo for d, lo in zip(single, local)),
        "no_plans_loss": single_loss,
        "local_loss": local_loss,
        "duet_loss": duet_loss,
    }


def _notebook_training(limits: Limits, side: DuetSide, cfg: Config, out: dict[str, Any]) -> None:
    """Notebook 03's training, locally and over duet, an epoch of each in turn, after one warm-up epoch of
    each (the digits are published by _training)."""
    x, y = training.digits()
    n = min(len(y), cfg.train_samples or len(y))
    local = training.NotebookTraining(None, x, y, n)
    remote = training.NotebookTraining(side.s, side.s.store["digits_x"], side.s.store["digits_y"], n)
    times: dict[str, list[float]] = {"local": [], "duet": []}
    losses: dict[str, list[float]] = {"local": [], "duet": []}
    for rep in range(cfg.epoch_repeats + 1):
        for key, run in (("local", local), ("duet", remote)):
            seconds, loss = run.epoch()
            losses[key].append(loss)
            if rep:  # the first of each is the warm-up
                times[key].append(seconds)
    out["notebook_epoch"] = {
        "samples": n,
        "batch_size": training.NOTEBOOK_BATCH,
        "hidden": training.NOTEBOOK_HIDDEN,
        "local_seconds": statistics.median(times["local"]),
        "duet_seconds": statistics.median(times["duet"]),
        "local_all": times["local"],
        "duet_all": times["duet"],
        "ratio": statistics.median(d / lo for d, lo in zip(times["duet"], times["local"])),
        "same_losses": losses["duet"] == losses["local"],
        "losses": losses,
    }
