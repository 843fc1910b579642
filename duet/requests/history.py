"""The owner's decided-request history (``d.requests.history``): in memory, with pandas; on disk through
:class:`~duet.requests.record.RecordDB` when the queue has a ``db_path``."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from duet.requests.record import OBJECT_FIELDS, RecordDB, request_fields, request_row

if TYPE_CHECKING:
    from duet.requests.queue import Request

__all__ = [
    "REQUEST_COLUMNS",
    "HISTORY_COLUMNS",
    "OBJECT_FIELDS",
    "History",
    "RecordDB",
    "request_fields",
    "request_row",
    "requests_frame",
]

# d.requests.pandas (API.md) and d.requests.history.pandas
REQUEST_COLUMNS = [
    "id",
    "name",
    "reason",
    "requester",
    "object_id",
    "object_type",
    "shape",
    "status",
    "created_at",
]
HISTORY_COLUMNS = REQUEST_COLUMNS + ["decision", "decided_by", "decided_at", "deny_reason", "session"]


def requests_frame(reqs: Iterable[Request], extra: Sequence[str] = (), sessions: Sequence[str] = ()) -> Any:
    """DataFrame of requests: ``REQUEST_COLUMNS`` + ``extra`` (attribute names, or "decision"/"session")."""
    import pandas as pd

    rows = []
    for i, r in enumerate(reqs):
        row = {c: getattr(r, c) for c in REQUEST_COLUMNS}
        for c in extra:
            if c == "decision":
                row[c] = r.status if r.status != "pending" else "session ended"
            elif c == "session":
                row[c] = sessions[i]
            else:
                row[c] = getattr(r, c)
        rows.append(row)
    df = pd.DataFrame(rows, columns=REQUEST_COLUMNS + list(extra))
    for col in ("created_at", "decided_at"):
        if col in df:
            df[col] = pd.to_datetime(df[col], utc=True)
    return df


class History:
    """Decided requests, oldest first (``d.requests.history``): list-like over Requests, with ``.pandas``.

    Holds this session's decisions and, when the queue has a RecordDB, the requests of earlier sessions read
    at start-up. An earlier session's request that was never decided (the process ended first) keeps status
    ``pending`` and shows decision ``session ended``.
    """

    def __init__(self, session: str, lock: threading.RLock | None = None) -> None:
        self.session = session
        self._lock = lock if lock is not None else threading.RLock()
        self._entries: list[tuple[str, Request]] = []
        self._counts: Counter[str] = Counter()  # this session's, kept as entries come (the panel asks often)

    def append(self, req: Request, session: str | None = None) -> None:
        with self._lock:
            self._entries.append((session or self.session, req))
            if (session or self.session) == self.session:
                self._counts[req.status] += 1

    def counts(self, *, all_sessions: bool = False) -> dict[str, int]:
        """How many requests were accepted, denied and expired (this session unless ``all_sessions``)."""
        with self._lock:
            if all_sessions:
                c = Counter(r.status for _, r in self._entries)
            else:
                c = self._counts.copy()
        return {k: c.get(k, 0) for k in ("accepted", "denied", "expired")}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[Request]:
        with self._lock:
            return iter([r for _, r in self._entries])

    def __getitem__(self, index: int | str) -> Request:
        with self._lock:
            if isinstance(index, str):
                for _, r in reversed(self._entries):
                    if r.id == index:
                        return r
                raise KeyError(f"no decided request with id {index!r}")
            return self._entries[index][1]

    @property
    def pandas(self) -> Any:
        """DataFrame of every decided request: the pending-queue columns plus decision, decided_by,
        decided_at, deny_reason and session."""
        with self._lock:
            entries = list(self._entries)
        return requests_frame(
            [r for _, r in entries], HISTORY_COLUMNS[len(REQUEST_COLUMNS) :], [s for s, _ in entries]
        )

    def __repr__(self) -> str:
        c = self.counts()
        return f"<request history: {len(self)} decided ({c['accepted']} accepted, {c['denied']} denied, " + (
            f"{c['expired']} expired this session)>"
        )
