"""The owner's activity log: every call the scientist ran, with argument kinds (never values) and status.

The executor logs every op, so a row is kept raw (a tuple of the time as a float, the arguments' shapes
and type names, the result's type and shape) and turned into text and datetimes only when the owner looks
(:attr:`ActivityLog.pandas`, :meth:`ActivityLog.rows`). A raw row holds only numbers, strings and tuples
of them, so Python's garbage collector stops tracking it once collections have looked at it: 100,000 rows
would otherwise be ~400,000 more objects for every full collection to walk.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ActivityLog", "ArgKinds", "LOG_COLUMNS", "Row", "kind"]

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


class ArgKinds:
    """A call's argument kinds, kept as shapes and type names and written out as :func:`kind` would only
    when the log is read (holding no argument: a tensor is kept as its shape, a container as its text).
    ``raw`` is what the log keeps, one flat tuple: the number of positional arguments, their kinds, then
    each keyword and its kind; a kind is a tuple of ints (a tensor's shape) or a string."""

    __slots__ = ("raw",)

    def __init__(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        raw: list[Any] = [len(args)]
        for a in args:
            raw.append(tuple(a.shape) if type(a) is torch.Tensor else _raw(a))
        for k, v in kwargs.items():
            raw += (k, _raw(v))
        self.raw: tuple[Any, ...] = tuple(raw)

    def __str__(self) -> str:
        return _kinds_text(self.raw)


def _raw(x: Any) -> tuple[int, ...] | str:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, (list, tuple, dict)):
        return kind(x)
    return type(x).__name__


def _text(raw: tuple[int, ...] | str) -> str:
    return raw if isinstance(raw, str) else f"Tensor{list(raw)}"


def _kinds_text(raw: tuple[Any, ...]) -> str:
    n = raw[0]
    keywords = raw[1 + n :]
    kinds = [_text(a) for a in raw[1 : 1 + n]] + [
        f"{k}={_text(v)}" for k, v in zip(keywords[::2], keywords[1::2])
    ]
    return ", ".join(kinds)[:300]


# time (seconds since the epoch), path, args, result type, result shape, status, duration (seconds)
_Raw = tuple[float, str, Any, Any, Any, str, float]


class ActivityLog:
    """Every op the scientist ran, newest last (bounded; ``total`` counts all)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._rows: collections.deque[_Raw] = collections.deque(maxlen=limit)
        self.total = 0
        self.failed = 0

    def add(self, row: Row) -> None:
        self.record(
            row.time.timestamp(),
            row.path,
            row.args,
            row.result_type,
            row.result_shape,
            row.status,
            row.duration_ms / 1000,
        )

    def record(
        self,
        when: float,
        path: str,
        args: str | ArgKinds,
        result_type: Any,
        result_shape: Any,
        status: str,
        seconds: float,
    ) -> None:
        """One row, as the executor has it: ``when`` from ``time.time()``, the result's type and shape as
        its metadata holds them (None for none; a tensor's ``torch.Size`` as it is), the call's duration in
        seconds."""
        if type(args) is ArgKinds:
            args = args.raw  # type: ignore[assignment]
        if type(result_shape) is list:
            result_shape = tuple(result_shape)
        self._rows.append((when, path, args, result_type, result_shape, status, seconds))
        self.total += 1
        self.failed += status != "ok"

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[Row]:
        """The rows kept, oldest first, as text and datetimes."""
        return [_row(r) for r in list(self._rows)]

    @property
    def pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame([r.__dict__ for r in self.rows()], columns=LOG_COLUMNS)

    def summary(self) -> dict[str, Any]:
        paths = collections.Counter(r[1] for r in list(self._rows))
        return {"calls": self.total, "failed": self.failed, "most_used": paths.most_common(5)}


def _row(raw: _Raw) -> Row:
    when, path, args, result_type, result_shape, status, seconds = raw
    return Row(
        dt.datetime.fromtimestamp(when, dt.timezone.utc),
        path,
        args if type(args) is str else _kinds_text(args),
        str(result_type or ""),
        ""
        if result_shape is None
        else str(list(result_shape) if isinstance(result_shape, tuple) else result_shape),
        status,
        round(seconds * 1000, 3),
    )


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
