"""Progress bars for transfers worth waiting for (tqdm.auto: a widget in Jupyter, text in a terminal).

A value or model a request brings home (``receiving <name>``, in the scientist's notebook) and a value the
owner sends (``sending <name>``, on the owner's side) show a bar once the transfer is at least the threshold:
4 MiB by default, or the environment variable ``DUET_PROGRESS_BYTES`` read when duet is imported, or what
:func:`set_threshold` sets at run time (``duet.progress.set_threshold(0)``: a bar for every transfer that
travels in more than one data-channel message; a frame that fits one message arrives at once, with no bar).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["THRESHOLD", "get_threshold", "set_threshold", "transfer_bar"]

#: transfers smaller than this (in bytes) show no bar; change it with set_threshold()
THRESHOLD = int(os.environ.get("DUET_PROGRESS_BYTES", 4 << 20))

Progress = Callable[[int, int], None]


def get_threshold() -> int:
    """The size in bytes from which a transfer shows a bar."""
    return THRESHOLD


def set_threshold(nbytes: int) -> int:
    """Show a bar for every transfer of at least ``nbytes`` bytes from now on (in this process); returns
    the previous threshold. ``0`` shows one for every transfer that comes in parts."""
    global THRESHOLD
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"the threshold is a number of bytes >= 0, not {nbytes!r}")
    previous, THRESHOLD = THRESHOLD, nbytes
    return previous


def transfer_bar(description: str, threshold: int | None = None) -> Progress:
    """A callback ``(done, total)`` that shows a bar once it learns the transfer is large, and closes it.

    ``threshold`` defaults to the module's threshold when the callback is made."""
    limit = THRESHOLD if threshold is None else threshold
    state: dict[str, Any] = {"bar": None, "done": 0, "off": False}

    def update(done: int, total: int) -> None:
        if state["off"] or total < limit:
            return
        bar = state["bar"]
        if bar is None:
            try:
                from tqdm.auto import tqdm

                bar = state["bar"] = tqdm(
                    total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, leave=False
                )
            except Exception:  # noqa: BLE001 - no display available: transfer without a bar
                state["off"] = True
                return
        bar.update(done - state["done"])
        state["done"] = done
        if done >= total:
            bar.close()
            state["off"] = True

    return update
