"""The data owner's process: its own signaling server on 127.0.0.1 port 0, and duet sessions one after another."""

from __future__ import annotations

import time
from typing import Any

from .procs import peak_rss_bytes, reset_peak_rss, rss_bytes, serve_commands

__all__ = ["owner_peer", "HANDLER_NAME"]

HANDLER_NAME = "bench"  # every request the benchmark makes carries this name; one handler accepts them


def owner_peer(conn: Any) -> None:
    """(owner process) Commands: see the table at the end; each answers the benchmark over the pipe."""
    import torch

    import duet
    from duet import loop
    from duet.signaling.server import start_server

    state: dict[str, Any] = {"d": None, "runner": None, "url": ""}

    def server() -> str:
        runner, port = loop.run(start_server("127.0.0.1", 0), timeout=30)
        state["runner"], state["url"] = runner, f"http://127.0.0.1:{port}"
        return str(state["url"])

    def launch() -> tuple[str, float]:
        """A new session; returns its ID and the moment (monotonic, shared by both processes) it started."""
        close()
        start = time.monotonic()
        d = duet.launch_duet(signaling_url=state["url"], quiet=True, timeout=60, name="bench-owner")
        state["d"] = d
        return d.session_id, start

    def wait_peer() -> float:
        d = state["d"]
        d.wait_for_peer(timeout=60)
        d.requests.add_handler(name=HANDLER_NAME, action="accept", timeout_secs=-1)
        return float(d.connect_seconds or 0.0)

    def publish(name: str, nbytes: int) -> None:
        """A float32 tensor of ``nbytes`` bytes, every page touched (so it is really resident)."""
        state["d"].store.publish(torch.ones(max(1, nbytes // 4)), name=name, tags=["#bench"])

    def remove(name: str) -> None:
        state["d"].store.remove(name)

    from .training import digits as load

    data = load()  # loaded (scikit-learn imported) before any session, as an owner's notebook would

    def digits() -> int:
        """scikit-learn's digits as X (N, 1, 8, 8) float32 in [0, 1] and y (N,) int64."""
        x, y = data
        state["d"].store.publish(x, name="digits_x")
        state["d"].store.publish(y, name="digits_y")
        return len(y)

    def stats() -> dict[str, int]:
        d = state["d"]
        owner = d._owner  # the benchmark peeks at the owner's internals for its diagnostics
        return {
            "rss": rss_bytes(),
            "peak_rss": peak_rss_bytes(),
            "store_objects": len(owner.store._entries),
            "calls": owner.log.total,
            "failed_calls": owner.log.failed,
            "torch_threads": torch.get_num_threads(),
            "bytes_sent": d._channel.bytes_sent if d._channel else 0,
            "bytes_received": d._channel.bytes_received if d._channel else 0,
        }

    def log_tail(count: int) -> list[tuple[str, float, str]]:
        """The last ``count`` rows of the activity log: (path, duration in ms, status)."""
        frame = state["d"].log.pandas.tail(count)
        return [
            (str(p), float(ms), str(st)) for p, ms, st in zip(frame.path, frame.duration_ms, frame.status)
        ]

    def close() -> None:
        d, state["d"] = state["d"], None
        if d is not None:
            d.close()

    try:
        serve_commands(
            conn,
            {
                "server": server,
                "launch": launch,
                "wait_peer": wait_peer,
                "publish": publish,
                "remove": remove,
                "digits": digits,
                "stats": stats,
                "reset_peak": reset_peak_rss,
                "log_tail": log_tail,
                "close": close,
            },
        )
    finally:
        close()
        if state["runner"] is not None:
            loop.run(state["runner"].cleanup(), timeout=10)
