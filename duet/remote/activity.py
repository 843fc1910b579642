"""The owner's activity log: every call the scientist ran, with argument kinds (never values) and status."""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ActivityLog", "LOG_COLUMNS", "Row", "kind"]

LOG_COLUMNS = ["time", "path", "args", "result_type", "result_shape", "status", "duration_ms"]


@dataclass
class Row:
    """One call: when, what, on which kinds of argument, what it made, how it ended, how long it took."""

    time: dt.datetime
    path: str
    args: str
    result_type: str
    result_shape: str
    status: str
    duration_ms: float


class ActivityLog:
    """Every op the scientist ran, newest last (bounded; ``total`` counts all)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._rows: collections.deque[Row] = collections.deque(maxlen=limit)
        self.total = 0
        self.failed = 0

    def add(self, row: Row) -> None:
        self._rows.append(row)
        self.total += 1
        self.failed += row.status != "ok"

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame([r.__dict__ for r in list(self._rows)], columns=LOG_COLUMNS)

    def summary(self) -> dict[str, Any]:
        paths = collections.Counter(r.path for r in list(self._rows))
        return {"calls": self.total, "failed": self.failed, "most_used": paths.most_common(5)}


def kind(x: Any, depth: int = 0) -> str:
    """An argument as the activity log shows it: its type and shape, never its value."""
    if isinstance(x, torch.Tensor):
        return f"Tensor{list(x.shape)}"
    if isinstance(x, (list, tuple)):
        if depth >= 2:
            return f"{type(x).__name__}[{len(x)}]"
        items = ",".join(kind(v, depth + 1) for v in x[:4]) + (",…" if len(x) > 4 else "")
        return f"{type(x).__name__}[{items}]"
    if isinstance(x, dict):
        return f"dict[{len(x)}]"
    return type(x).__name__
