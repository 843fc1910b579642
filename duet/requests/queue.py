"""The owner's request queue (``d.requests``): Request, submission, handlers, decisions, expiry, history.

Pure logic, no networking. The session calls ``submit`` and ``expire_due`` from its event-loop thread; the
owner calls ``accept``/``deny``/``add_handler`` from the notebook thread; one ``RLock`` guards all state
(the handler list, the history and the RecordDB share it). Callbacks (``on_decided``, listeners, the
``print_local`` output) run after the lock is released, so they may call back into the queue.

Decisions others rely on:

- ``on_decided(req)`` is called exactly once per request, when it leaves ``pending``; a failing callback is
  logged (logger ``duet.requests``), never raised into the decider.
- Deciding a request that is already decided raises ``AlreadyDecided`` (also when the owner clicks after
  the request's deadline: it is expired first, then refused). Expiry and ``close`` never raise.
- ``submit`` stamps ``created_at`` with the queue's clock (arrival on the owner's side), truncates the
  scientist's ``name``/``reason``, treats a negative or non-finite ``timeout_secs`` as -1 (never), and
  returns the existing request for a duplicate of a pending one (same kind, object_id, name, reason,
  requester): the session must then follow the returned request, not the one it built. A request that
  may not wait (``wait=False``) is decided within ``submit``: by a handler, else denied (``"auto"``).
- ``max_pending`` bounds the requests waiting for the owner; a request a handler decides at once does not
  count, so a flood of undecided requests never blocks what the owner's handlers grant.
- Adding a handler also applies the handler list to the requests already pending.
- ``close`` expires every pending request (``decided_by="close"``) so the record has no loose ends.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from duet.errors import DuetError, QuotaExceeded
from duet.requests.handlers import JOIN, Handler, HandlerList, print_local
from duet.requests.history import History, requests_frame
from duet.requests.record import RecordDB, request_fields, request_row
from duet.requests.request import KINDS, MAX_NAME, MAX_REASON, AlreadyDecided, Request, new_request_id

__all__ = ["AlreadyDecided", "MAX_NAME", "MAX_REASON", "Request", "RequestQueue", "new_request_id"]

log = logging.getLogger("duet.requests")

MAX_PENDING = 1000

Listener = Callable[[str, "Request"], None]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


# a decision made under the lock, whose side effects (print_local, on_decided, listeners) run after it
_Outcome = tuple[Request, Handler | None]


class RequestQueue:
    """Pending requests, list-like (``d.requests[0].accept()``), with handlers, history and a widget."""

    def __init__(
        self,
        *,
        on_decided: Callable[[Request], None],
        value_of: Callable[[Request], object] | None = None,
        db_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._lock = threading.RLock()
        self._on_decided = on_decided
        self._value_of = value_of
        self.clock = clock
        self.max_pending = max_pending
        self._pending: list[Request] = []
        self._by_key: dict[tuple, Request] = {}  # pending requests by dedup key (a flood must not cost n²)
        self._known: dict[str, Request] = {}
        self._listeners: list[Listener] = []
        self._closed = False
        self._handlers = HandlerList(clock, self._lock)
        self._db = RecordDB(db_path, lock=self._lock) if db_path is not None else None
        self._history = History(self._db.session if self._db else secrets.token_hex(6), self._lock)
        if self._db is not None:
            for row in self._db.earlier_requests():
                self._history.append(Request(**request_fields(row)), session=row["session"])

    # -- properties ---------------------------------------------------------------------------------------

    @property
    def db(self) -> RecordDB | None:
        """The sqlite record (None without ``db_path``); the store records object metadata through it."""
        return self._db

    @property
    def history(self) -> History:
        return self._history

    @property
    def handlers(self) -> HandlerList:
        return self._handlers

    @property
    def closed(self) -> bool:
        return self._closed

    # -- list-like over pending requests ------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[Request]:
        with self._lock:
            return iter(list(self._pending))

    def __getitem__(self, index: int | str) -> Request:
        """A pending request by position or by id."""
        with self._lock:
            if isinstance(index, str):
                for r in self._pending:
                    if r.id == index:
                        return r
                raise KeyError(f"no pending request with id {index!r}")
            return self._pending[index]

    @property
    def pandas(self) -> Any:
        """DataFrame of the pending requests: id, name, reason, requester, object_id, object_type, shape,
        status, created_at."""
        return requests_frame(list(self))

    def __repr__(self) -> str:
        pending = list(self)
        counts = f"{len(pending)} pending, {len(self._history)} decided, {len(self._handlers)} handlers"
        lines = [f"<requests: {counts}>"]
        for i, r in enumerate(pending):
            shape = "" if r.shape is None else f" {tuple(r.shape)}"
            lines.append(f"  [{i}] {r.id} {r.name!r} {r.object_type or r.kind}{shape} from {r.requester}")
        return "\n".join(lines)

    # -- submission, decisions, expiry --------------------------------------------------------------------

    def submit(self, req: Request, *, wait: bool = True, decline: str = "") -> Request:
        """Queue a request (called by the session); handlers decide it at once if one matches.

        Returns ``req``, or the already pending identical request. With ``wait=False`` (a ``get`` without
        ``request_block``) the request never waits for the owner: no handler matching means it is denied at
        once (``decided_by="auto"``, reason ``decline``), and it is never merged with a pending one. Raises
        ``QuotaExceeded`` when ``max_pending`` requests are waiting and this one would wait too (a request a
        handler decides at once is never refused so), ``DuetError`` after ``close``, ``ValueError`` for a
        bad kind, a non-pending status or an id this queue already knows.
        """
        if req.kind not in KINDS:
            raise ValueError(f"request kind must be one of {KINDS}, not {req.kind!r}")
        if req.status != "pending" or req._queue is not None:
            raise ValueError(f"request {req.id} was already submitted or decided")
        outcomes: list[_Outcome] = []
        with self._lock:
            if self._closed:
                raise DuetError("the request queue is closed")
            self._sanitize(req)
            key = req._dedup_key()
            if wait and key in self._by_key:
                return self._by_key[key]
            if req.id in self._known:
                raise ValueError(f"request id {req.id!r} is already in use")
            handler = self._handlers.first_match(req)
            if handler is None and wait and len(self._pending) >= self.max_pending:
                raise QuotaExceeded(f"too many pending requests ({self.max_pending}); wait for the owner")
            now = self.clock()
            req.created_at = _utc(now)
            req._deadline = None if req.timeout_secs < 0 else now + req.timeout_secs
            if self._db is not None and handler is None and wait:  # one decided at once: one row, below
                self._db.record_request(request_row(req))
            req._queue = self
            self._known[req.id] = req
            self._pending.append(req)
            self._by_key.setdefault(key, req)
            if handler is not None:
                outcomes.append(self._decide_by_handler(req, handler))
            elif not wait:
                self._decide(req, "denied", "auto", str(decline))
                outcomes.append((req, None))
        self._notify("submitted", req)
        self._finish(outcomes)
        return req

    @staticmethod
    def _sanitize(req: Request) -> None:
        req.name = str(req.name)[:MAX_NAME]
        req.reason = str(req.reason)[:MAX_REASON]
        req.tags = tuple(str(t) for t in req.tags)
        if req.sources is not None:
            req.sources = tuple(tuple(str(t) for t in src) for src in req.sources)
        req.elements = max(0, int(req.elements))
        t = float(req.timeout_secs)
        req.timeout_secs = t if math.isfinite(t) and t >= 0 else -1.0
        if req.kind == JOIN:
            req.name = JOIN

    def accept(self, req_or_id: Request | str, *, by: str = "owner") -> Request:
        """Accept a pending request (object or id). Raises ``AlreadyDecided`` if it was decided."""
        return self._decide_by_owner(req_or_id, "accepted", "", by)

    def deny(self, req_or_id: Request | str, reason: str = "", *, by: str = "owner") -> Request:
        """Deny a pending request (object or id). Raises ``AlreadyDecided`` if it was decided."""
        return self._decide_by_owner(req_or_id, "denied", str(reason), by)

    def _decide_by_owner(self, req_or_id: Request | str, status: str, reason: str, by: str) -> Request:
        with self._lock:
            req = self._lookup(req_or_id)
            before = req.status
            if before == "pending" and self._is_due(req, self.clock()):
                self._decide(req, "expired", "timeout")
            elif before == "pending":
                self._decide(req, status, by, reason)
        if before != "pending":
            raise AlreadyDecided(
                f"request {req.id} ({req.name!r}) was already {req.status} by {req.decided_by}"
            )
        self._finish([(req, None)])
        if req.status != status:
            raise AlreadyDecided(f"request {req.id} ({req.name!r}) expired before it was {status}")
        return req

    def _lookup(self, req_or_id: Request | str) -> Request:
        if isinstance(req_or_id, Request):
            if req_or_id._queue is not self:
                raise ValueError(f"request {req_or_id.id} does not belong to this queue")
            return req_or_id
        try:
            return self._known[req_or_id]
        except KeyError:
            raise KeyError(f"no request with id {req_or_id!r}") from None

    @staticmethod
    def _is_due(req: Request, now: float) -> bool:
        return req._deadline is not None and now >= req._deadline

    def expire_due(self) -> list[Request]:
        """Expire every pending request past its ``timeout_secs`` (the session calls this every ~0.5 s)."""
        with self._lock:
            now = self.clock()
            due = [r for r in self._pending if self._is_due(r, now)]
            for r in due:
                self._decide(r, "expired", "timeout")
        self._finish([(r, None) for r in due])
        return due

    def expire_all(self, by: str) -> list[Request]:
        """Expire every pending request now, recorded as decided ``by`` (e.g. "disconnected")."""
        with self._lock:
            left = list(self._pending)
            for r in left:
                self._decide(r, "expired", by)
        self._finish([(r, None) for r in left])
        return left

    def _decide_by_handler(self, req: Request, handler: Handler) -> _Outcome:
        status = "accepted" if handler.action == "accept" else "denied"
        self._decide(req, status, f"handler:{handler.key}")
        if status == "accepted":
            handler.elements_released += req.elements
        return req, handler

    def _decide(self, req: Request, status: str, by: str, reason: str = "") -> None:
        """Move a pending request to ``status``; the caller holds the lock. The disk record comes first:
        if it fails, nothing changes."""
        decided_at = _utc(self.clock())
        if self._db is not None:
            row = request_row(req) | {
                "status": status,
                "decided_by": by,
                "decided_at": decided_at.isoformat(),
                "deny_reason": reason,
            }
            self._db.record_request(row)
        req.status, req.decided_by, req.decided_at, req.deny_reason = status, by, decided_at, reason
        self._pending.remove(req)
        if self._by_key.get(req._dedup_key()) is req:
            del self._by_key[req._dedup_key()]
        self._history.append(req)

    def _finish(self, outcomes: Sequence[_Outcome]) -> None:
        """Side effects of decisions, outside the lock: print_local, on_decided, listeners."""
        for req, handler in outcomes:
            if handler is not None and handler.print_local:
                print_local(req, handler, self._value_of)
            try:
                self._on_decided(req)
            except Exception:
                log.exception("on_decided failed for request %s", req.id)
            self._notify("decided", req)

    # -- handlers ----------------------------------------------------------------------------------------

    def add_handler(
        self,
        *,
        name: str | None = None,
        tags: Sequence[str] | None = None,
        action: str = "accept",
        timeout_secs: float = -1,
        print_local: bool = False,
        element_quota: int | None = None,
    ) -> str:
        """Add a handler (tried after the existing ones) and apply the handlers to pending requests.
        Returns the handler's key."""
        outcomes: list[_Outcome] = []
        with self._lock:
            handler = self._handlers.add(
                name=name,
                tags=tags,
                action=action,
                timeout_secs=timeout_secs,
                print_local=print_local,
                element_quota=element_quota,
            )
            for req in list(self._pending):
                match = self._handlers.first_match(req)
                if match is not None:
                    outcomes.append(self._decide_by_handler(req, match))
        self._finish(outcomes)
        return handler.key

    def remove_handler(self, key: str) -> None:
        self._handlers.remove(key)

    def clear_handlers(self) -> None:
        self._handlers.clear()

    # -- listeners, widget, close -------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event, request)`` after each change; event is "submitted" or "decided". It runs
        outside the lock, on whichever thread made the change (often the session's loop thread)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self, event: str, req: Request) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event, req)
            except Exception:
                log.exception("request listener failed on %s of %s", event, req.id)

    def widget(self) -> Any:
        """An ipywidgets panel of the pending requests with Accept / Deny buttons, updating live."""
        from duet.requests.widget import RequestPanel

        return RequestPanel(self)

    def close(self) -> None:
        """Expire what is pending (``decided_by="close"``), then close the record database. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            left = list(self._pending)
            for r in left:
                self._decide(r, "expired", "close")
        self._finish([(r, None) for r in left])
        with self._lock:
            if self._db is not None:
                self._db.close()
            self._listeners.clear()

    def __enter__(self) -> RequestQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
