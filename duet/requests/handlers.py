"""Owner-defined rules that decide requests automatically: Handler, matching, quotas, expiry, the pandas view.

Matching rules (API.md, "Owner: the request queue"):

- handlers are tried in the order added; the first that matches decides;
- a handler matches on every criterion it names: ``name`` (equal to the request's name), ``tags`` (see
  below), ``element_quota`` (an accept handler whose remaining quota is smaller than the request's element
  count does not match; released elements are counted only when the handler accepts);
- a handler past its ``timeout_secs`` (counted from when it was added; -1 never) no longer matches.

Tags are matched on the side of caution, so mixing data cannot widen a grant nor dodge a refusal. An
*accept* handler's tags must be among the owner's tags of *every* published object the value was computed
from (``Request.sources``): ``tags=["#ages"]`` grants ``x.mean()`` of an ``#ages`` object but not
``x * 0 + y`` of another, nor anything computed from no published object. A *deny* handler's tags need
only be among the tags of all of them together (``Request.tags`` and the sources'): ``tags=["#ages"]``
refuses everything that touched ``#ages`` data. A request that does not know its sources (``None``) is
matched on its ``tags`` alone.

One stricter rule keeps admission and release apart: a handler named ``"join"`` matches only join requests,
and a join request is matched only by a handler named ``"join"``. So a catch-all accept handler never lets
a peer in, and a value request a scientist names "join" never passes the owner's join handler.

The list does not lock by itself when used by the queue: the queue passes its own ``RLock`` so that matching,
quota counting and the request's decision happen under one lock.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from duet.requests.queue import Request

__all__ = ["ACTIONS", "JOIN", "Handler", "HandlerList", "print_local"]

ACTIONS = ("accept", "deny")
JOIN = "join"

HANDLER_COLUMNS = [
    "order",
    "key",
    "name",
    "tags",
    "action",
    "timeout_secs",
    "remaining_secs",
    "element_quota",
    "elements_released",
    "remaining_quota",
    "print_local",
    "status",
]


@dataclass(eq=False)
class Handler:
    """One rule. ``added_at`` is the queue clock's time (seconds) when it was added."""

    key: str
    name: str | None
    tags: tuple[str, ...]
    action: str
    timeout_secs: float
    print_local: bool
    element_quota: int | None
    added_at: float
    elements_released: int = 0

    def expired(self, now: float) -> bool:
        return self.timeout_secs >= 0 and now >= self.added_at + self.timeout_secs

    def remaining_secs(self, now: float) -> float | None:
        """Seconds until the handler expires; None when it never does."""
        if self.timeout_secs < 0:
            return None
        return max(0.0, self.added_at + self.timeout_secs - now)

    @property
    def remaining_quota(self) -> int | None:
        if self.element_quota is None:
            return None
        return max(0, self.element_quota - self.elements_released)

    def status(self, now: float) -> str:
        """``active``, ``expired`` (past its timeout) or ``exhausted`` (quota used up)."""
        if self.expired(now):
            return "expired"
        if self.remaining_quota == 0:
            return "exhausted"
        return "active"

    def matches(self, req: Request, now: float) -> bool:
        if self.expired(now):
            return False
        if (self.name == JOIN) != (req.kind == JOIN):
            return False
        if self.name is not None and self.name != req.name:
            return False
        if self.tags and not _tags_cover(set(self.tags), req, self.action):
            return False
        remaining = self.remaining_quota
        return not (self.action == "accept" and remaining is not None and req.elements > remaining)


def _tags_cover(tags: set[str], req: Request, action: str) -> bool:
    if req.sources is None:
        return tags <= set(req.tags)
    if action == "deny":
        return tags <= set(req.tags).union(*req.sources)
    return bool(req.sources) and all(tags <= set(src) for src in req.sources)


def print_local(req: Request, handler: Handler, value_of: Callable[[Request], object] | None) -> None:
    """A ``print_local`` handler's output in the owner's notebook: the request's name and its value."""
    if req.kind == JOIN:
        value: object = f"join request from {req.requester}"
    elif value_of is None:
        value = "<value not available>"
    else:
        try:
            value = value_of(req)
        except Exception as exc:
            value = f"<value not available: {type(exc).__name__}: {exc}>"
    print(f"[duet] {req.name!r} {req.status} by handler {handler.key} for {req.requester}: {value}")


def _check_args(
    name: str | None,
    tags: Sequence[str] | str | None,
    action: str,
    timeout_secs: float,
    element_quota: int | None,
) -> tuple[str, ...]:
    if name is not None and not isinstance(name, str):
        raise TypeError(f"handler name must be a str or None, not {type(name).__name__}")
    if action not in ACTIONS:
        raise ValueError(f"handler action must be one of {ACTIONS}, not {action!r}")
    if isinstance(timeout_secs, bool) or not isinstance(timeout_secs, int | float):
        raise TypeError("timeout_secs must be a number (-1: never expires)")
    if math.isnan(timeout_secs) or (timeout_secs < 0 and timeout_secs != -1):
        raise ValueError(f"timeout_secs must be >= 0, or -1 for never, not {timeout_secs!r}")
    if element_quota is not None:
        if isinstance(element_quota, bool) or not isinstance(element_quota, int) or element_quota < 0:
            raise ValueError(f"element_quota must be an int >= 0 or None, not {element_quota!r}")
        if action != "accept":
            raise ValueError("element_quota limits what a handler releases, so it needs action='accept'")
    if tags is None:
        return ()
    if isinstance(tags, str):
        tags = [tags]
    out = tuple(tags)
    if not all(isinstance(t, str) for t in out):
        raise TypeError("handler tags must be strings")
    return out


class HandlerList:
    """The owner's handlers in match order (``d.requests.handlers``): list-like, with ``.pandas``."""

    def __init__(self, clock: Callable[[], float], lock: threading.RLock | None = None) -> None:
        self._clock = clock
        self._lock = lock if lock is not None else threading.RLock()
        self._handlers: list[Handler] = []

    def add(
        self,
        *,
        name: str | None = None,
        tags: Sequence[str] | str | None = None,
        action: str = "accept",
        timeout_secs: float = -1,
        print_local: bool = False,
        element_quota: int | None = None,
    ) -> Handler:
        """Append a handler (validated) and return it."""
        tag_tuple = _check_args(name, tags, action, timeout_secs, element_quota)
        with self._lock:
            keys = {h.key for h in self._handlers}
            key = secrets.token_hex(4)
            while key in keys:
                key = secrets.token_hex(4)
            handler = Handler(
                key=key,
                name=name,
                tags=tag_tuple,
                action=action,
                timeout_secs=float(timeout_secs),
                print_local=bool(print_local),
                element_quota=element_quota,
                added_at=self._clock(),
            )
            self._handlers.append(handler)
            return handler

    def remove(self, key: str) -> None:
        """Remove the handler with this key; ``KeyError`` if there is none."""
        with self._lock:
            for i, h in enumerate(self._handlers):
                if h.key == key:
                    del self._handlers[i]
                    return
        raise KeyError(f"no handler with key {key!r}")

    def clear(self) -> None:
        with self._lock:
            self._handlers.clear()

    def first_match(self, req: Request) -> Handler | None:
        """The first handler that matches ``req`` now, or None. The caller holds the lock."""
        with self._lock:
            now = self._clock()
            for h in self._handlers:
                if h.matches(req, now):
                    return h
            return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._handlers)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[Handler]:
        with self._lock:
            return iter(list(self._handlers))

    def __getitem__(self, index: int | str) -> Handler:
        with self._lock:
            if isinstance(index, str):
                for h in self._handlers:
                    if h.key == index:
                        return h
                raise KeyError(f"no handler with key {index!r}")
            return self._handlers[index]

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self._clock()
            return [
                {
                    "order": i,
                    "key": h.key,
                    "name": h.name,
                    "tags": h.tags,
                    "action": h.action,
                    "timeout_secs": h.timeout_secs,
                    "remaining_secs": h.remaining_secs(now),
                    "element_quota": h.element_quota,
                    "elements_released": h.elements_released,
                    "remaining_quota": h.remaining_quota,
                    "print_local": h.print_local,
                    "status": h.status(now),
                }
                for i, h in enumerate(self._handlers)
            ]

    @property
    def pandas(self) -> Any:
        """DataFrame of the handlers in match order, with remaining time and quota and a status column."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=HANDLER_COLUMNS)

    def __repr__(self) -> str:
        rows = self.rows()
        if not rows:
            return "<handlers: none>"
        lines = [f"<handlers: {len(rows)}>"]
        for r in rows:
            crit = ", ".join(
                part
                for part in (
                    f"name={r['name']!r}" if r["name"] is not None else "",
                    f"tags={list(r['tags'])}" if r["tags"] else "",
                    f"quota {r['remaining_quota']}/{r['element_quota']}"
                    if r["element_quota"] is not None
                    else "",
                )
                if part
            )
            lines.append(f"  {r['order']}. [{r['key']}] {r['action']} {crit or '(any)'} ({r['status']})")
        return "\n".join(lines)
