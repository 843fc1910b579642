"""Runs the limit measurements (bare aiortc, bare TCP) with the same counts and sizes as the duet scenarios."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from typing import Any

from .config import MB, SMALL_BYTES, Config
from .procs import Child
from .raw import RawRtc, RawTcp, rtc_peer, tcp_peer

__all__ = ["run_baselines"]


def run_baselines(cfg: Config, op_size: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Both limits, each against a peer in its own process; ``op_size`` is one pipelined call's message."""
    with (
        Child(rtc_peer, name="bench-raw-aiortc") as rtc_peer_proc,
        Child(tcp_peer, name="bench-raw-tcp") as tcp_peer_proc,
    ):
        return asyncio.run(_run(cfg, op_size, rtc_peer_proc, tcp_peer_proc, say))


async def _run(
    cfg: Config, op_size: int, rtc_peer_proc: Child, tcp_peer_proc: Child, say: Callable[[str], None]
) -> dict[str, Any]:
    rtc = RawRtc(rtc_peer_proc)
    out: dict[str, Any] = {"aiortc": {}, "tcp": {}}
    try:
        say("raw aiortc: connect")
        await rtc.connect()  # warm-up: imports, first DTLS context
        out["aiortc"]["connect"] = [await rtc.connect() for _ in range(cfg.connects)]
        out["aiortc"]["message_size"] = rtc.max_message
        say("raw aiortc: echo")
        await rtc.echo(20, SMALL_BYTES)
        out["aiortc"]["echo"] = await rtc.echo(cfg.round_trips, SMALL_BYTES)
        say("raw aiortc: message rate")
        seconds, counted = await rtc.one_way(cfg.pipelined_calls, op_size)
        if counted != cfg.pipelined_calls:
            raise RuntimeError(f"raw aiortc: the peer counted {counted} of {cfg.pipelined_calls} messages")
        out["aiortc"]["rate"] = counted / seconds
        say("raw aiortc: bulk")
        size = rtc.max_message
        await rtc.pull(MB, size)  # warm-up: the first transfer after connecting is slow (SCTP slow start)
        out["aiortc"]["pull"], out["aiortc"]["push"] = {}, {}
        for mb in cfg.bulk_mb:
            reps = cfg.bulk_repeats_small if mb == min(cfg.bulk_mb) else 1
            pulls, pushes = [], []
            for _ in range(reps):
                pulls.append(await rtc.pull(mb * MB, size))
                seconds, _ = await rtc.one_way(mb * MB // size, size)
                pushes.append(seconds)
            out["aiortc"]["pull"][mb] = mb / statistics.median(pulls)
            out["aiortc"]["push"][mb] = mb / statistics.median(pushes)
    finally:
        await rtc.close()
        await asyncio.get_running_loop().run_in_executor(None, rtc_peer_proc.call, "close")

    say("raw TCP")
    size = out["aiortc"]["message_size"]  # the same message size as the data channel's
    tcp = RawTcp(tcp_peer_proc.call("start"))
    await tcp.connect()
    try:
        await tcp.echo(20, SMALL_BYTES)
        out["tcp"]["echo"] = await tcp.echo(cfg.round_trips, SMALL_BYTES)
        out["tcp"]["pull"], out["tcp"]["push"] = {}, {}
        for mb in cfg.bulk_mb:
            out["tcp"]["pull"][mb] = mb / statistics.median([await tcp.pull(mb * MB, size) for _ in range(3)])
            out["tcp"]["push"][mb] = mb / statistics.median(
                [await tcp.one_way(mb * MB, size) for _ in range(3)]
            )
    finally:
        await tcp.close()
    return out
