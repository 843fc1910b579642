"""Progress bars for transfers worth waiting for (tqdm.auto: a widget in Jupyter, text in a terminal)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["THRESHOLD", "transfer_bar"]

#: transfers smaller than this show no bar
THRESHOLD = int(os.environ.get("DUET_PROGRESS_BYTES", 4 << 20))

Progress = Callable[[int, int], None]


def transfer_bar(description: str, threshold: int | None = None) -> Progress:
    """A callback ``(done, total)`` that shows a bar once it learns the transfer is large, and closes it."""
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
