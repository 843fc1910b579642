"""The duet scenarios, measured in this process (the scientist) against an owner in its own process."""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import duet
from duet import codec, wire

from . import training
from .config import MB, Config
from .owner import HANDLER_NAME, owner_peer
from .procs import Child

__all__ = ["run_duet", "op_message_size", "BigModel"]

Say = Callable[[str], None]
_PART_HEADER = 5  # duet's per-message part header (flags + stream id), see duet/transport.py


def op_message_size() -> int:
    """Bytes on the data channel of one ``y = y + 1`` call sent alone (frame + part header)."""
    buffers: list[Any] = []
    op = {"k": "meth", "s": "s10000", "n": "__add__", "a": codec.encode([1], buffers), "o": "s10001"}
    return len(wire.pack({"t": "ops", "ops": [op]}, buffers)) + _PART_HEADER


class BigModel(duet.Module):
    """One ``n`` x ``n`` linear layer: ``4 n (n + 1)`` bytes of weights."""

    def __init__(self, torch_ref: Any, n: int) -> None:
        super().__init__(torch_ref)
        self.fc = self.torch_ref.nn.Linear(n, n)

    def forward(self, x: Any) -> Any:
        return self.fc(x)


def _get(ptr: Any, timeout: float = 120) -> Any:
    return ptr.get(request_block=True, name=HANDLER_NAME, timeout_secs=timeout, strict=True)


def run_duet(cfg: Config, say: Say) -> dict[str, Any]:
    """Every duet scenario; the owner process serves one session after another, then the last for the rest."""
    logging.getLogger("duet").setLevel(logging.ERROR)  # "session ended" notices are expected here
    out: dict[str, Any] = {}
    with Child(owner_peer, name="bench-owner") as owner:
        url = owner.call("server", timeout=60)
        say("duet: connect")
        s = _connects(owner, url, cfg, out)
        try:
            for name, scenario in (
                ("round trip", _round_trips),
                ("pipelined calls", _pipelined),
                ("bulk get", _bulk_get),
                ("model send", _model_send),
                ("training", _training),
            ):
                say(f"duet: {name}")
                scenario(s, owner, cfg, out)
            out["owner_final"] = owner.call("stats")
        finally:
            s.close()
            owner.call("close", timeout=30)
    return out


def _connect(owner: Child, url: str) -> tuple[duet.Duet, float, float]:
    session_id, started = owner.call("launch", timeout=60)
    join_start = time.monotonic()
    s = duet.join_duet(session_id, signaling_url=url, timeout=60, name="bench-scientist")
    done = time.monotonic()
    owner.call("wait_peer", timeout=60)
    return s, done - started, done - join_start


def _connects(owner: Child, url: str, cfg: Config, out: dict[str, Any]) -> duet.Duet:
    """``launch_duet`` (owner) to ``join_duet`` returning with the channel open (scientist), on one clock."""
    totals, joins = [], []
    s, cold, _ = _connect(owner, url)  # the first one pays for imports and first-use set-up
    for _ in range(cfg.connects):
        s.close()
        owner.call("close", timeout=30)
        s, total, join = _connect(owner, url)
        totals.append(total)
        joins.append(join)
    out["connect"] = {"cold": cold, "seconds": totals, "join_seconds": joins}
    return s


def _round_trips(s: duet.Duet, owner: Child, cfg: Config, out: dict[str, Any]) -> None:
    """A small ``get`` the owner's handler accepts, and duet's own channel echo (``d.ping``) for comparison."""
    owner.call("publish", "small", 4)
    ptr = s.store["small"]
    for _ in range(20):
        _get(ptr)
    before = owner.call("stats")
    times = []
    for _ in range(cfg.round_trips):
        start = time.perf_counter()
        _get(ptr)
        times.append(time.perf_counter() - start)
    after = owner.call("stats")
    pings = [s.ping() for _ in range(cfg.round_trips)]
    n = cfg.round_trips
    out["round_trip"] = {
        "get": times,
        "ping": pings,
        "request_bytes": (after["bytes_received"] - before["bytes_received"]) / n,
        "reply_bytes": (after["bytes_sent"] - before["bytes_sent"]) / n,
    }


def _pipelined(s: duet.Duet, owner: Child, cfg: Config, out: dict[str, Any]) -> None:
    """``y = y + 1`` n times, then one ``get``; the owner's memory before and after."""
    ptr = s.store["small"]
    cold = min(200, cfg.pipelined_calls)
    start = time.perf_counter()
    y = ptr
    for _ in range(cold):  # the owner's first calls pay for one-time set-up: measured apart, as a warm-up
        y = y + 1
    _get(y)
    out["cold_calls"] = {"calls": cold, "rate": cold / (time.perf_counter() - start)}
    owner.call("reset_peak")
    before = owner.call("stats")
    n = cfg.pipelined_calls
    start = time.perf_counter()
    y = ptr
    for _ in range(n):
        y = y + 1
    queued = time.perf_counter() - start
    value = _get(y)
    elapsed = time.perf_counter() - start
    del y
    after = owner.call("stats")
    if float(value.item()) != 1.0 + n:
        raise RuntimeError(f"pipelined calls: got {value.item()}, expected {1 + n}")
    out["pipelined"] = {
        "calls": n,
        "seconds": elapsed,
        "queue_seconds": queued,
        "rate": n / elapsed,
        "owner_before": before,
        "owner_after": after,
        "owner_call_ms": [ms for _, ms, _ in owner.call("log_tail", min(n, 2000))],
    }


def _bulk_get(s: duet.Duet, owner: Child, cfg: Config, out: dict[str, Any]) -> None:
    """``get`` of a float32 tensor of each size; the owner's peak RSS during the largest."""
    owner.call("publish", "warm", MB)
    _get(s.store["warm"])  # warm-up, as for the raw channel: the first transfer after connecting is slow
    owner.call("remove", "warm")
    out["get"], largest = {}, max(cfg.bulk_mb)
    for mb in cfg.bulk_mb:
        name = f"bulk{mb}"
        owner.call("publish", name, mb * MB)
        ptr = s.store[name]
        reps = cfg.bulk_repeats_small if mb == min(cfg.bulk_mb) else 1
        times = []
        for _ in range(reps):
            if mb == largest:
                owner.call("reset_peak")
                before = owner.call("stats")
            start = time.perf_counter()
            value = _get(ptr, timeout=300)
            times.append(time.perf_counter() - start)
            if value.numel() * 4 != mb * MB:
                raise RuntimeError(f"bulk get: {value.numel() * 4} bytes, expected {mb * MB}")
            del value
        if mb == largest:
            out["memory_get"] = {"mb": mb, "before": before, "after": owner.call("stats")}
        owner.call("remove", name)
        out["get"][mb] = mb / statistics.median(times)


def _model_send(s: duet.Duet, owner: Child, cfg: Config, out: dict[str, Any]) -> None:
    """``local_model.send(d)`` of a one-layer duet.Module of each size, until the owner holds it."""
    out["send_model"], largest = {}, max(cfg.bulk_mb)
    for mb in cfg.bulk_mb:
        n = math.isqrt(mb * MB // 4)
        local = BigModel(torch, n)
        reps = cfg.bulk_repeats_small if mb == min(cfg.bulk_mb) else 1
        times = []
        for _ in range(reps):
            if mb == largest:
                owner.call("reset_peak")
                before = owner.call("stats")
            start = time.perf_counter()
            remote = local.send(s)
            len(remote.parameters())  # a blocking call the owner answers after every call before it
            times.append(time.perf_counter() - start)
            del remote
        rows = owner.call("log_tail", 4)
        nbytes = sum(p.numel() * 4 for p in local.parameters())
        out["send_model"][mb] = {
            "bytes": nbytes,
            "rate": nbytes / MB / statistics.median(times),
            "owner_ms": {path: ms for path, ms, _ in rows},
        }
        if mb == largest:
            out["memory_send"] = {"mb": mb, "before": before, "after": owner.call("stats")}


def _training(s: duet.Duet, owner: Child, cfg: Config, out: dict[str, Any]) -> None:
    repeats = 1 if cfg.quick else 3
    local, local_loss, n = training.local_epochs(cfg, repeats)
    remote, remote_loss, _ = training.duet_epochs(s, owner, cfg, repeats)
    out["epoch"] = {
        "samples": n,
        "batch_size": cfg.batch_size,
        "local_seconds": local,
        "duet_seconds": remote,
        "local_loss": local_loss,
        "duet_loss": remote_loss,
    }
