"""The owner's record on disk: ``RecordDB``, one sqlite file of requests, published objects and events.

``RecordDB`` keeps one sqlite connection (stdlib ``sqlite3``, autocommit, WAL, ``synchronous=NORMAL``), so each
write is in the file's log when the call returns and a crashed or killed process loses no record (only a
crash of the machine itself may lose the last writes: an fsync per write would cost milliseconds, on the
session's loop thread, for every request a scientist sends). Every process that opens the
file is one *session* (a random id in the ``sessions`` table); rows of earlier sessions stay and are shown
again by the next session's history. Tables:

    sessions (session, started_at, ended_at)
    requests (session, id, kind, name, reason, requester, object_id, object_type, shape, tags, elements,
              timeout_secs, created_at, status, decided_by, decided_at, deny_reason)   one row per request,
              written on submission and rewritten on decision
    objects  (session, id, name, tags, description, type, shape, dtype, size_bytes, published_at,
              removed_at, extra)                                                      the store's metadata
    events   (seq, session, at, kind, detail)                                         free-form audit events

Tuples (shape, tags) are stored as JSON lists, times as ISO-8601 UTC strings. The connection is guarded by
an ``RLock`` (the request queue passes its own, so there is one lock for the whole layer).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from duet.requests.queue import Request

__all__ = ["OBJECT_FIELDS", "SCHEMA_VERSION", "RecordDB", "request_fields", "request_row"]

SCHEMA_VERSION = 1

# the request table's columns after ``session``
_REQUEST_FIELDS = [
    "id",
    "kind",
    "name",
    "reason",
    "requester",
    "object_id",
    "object_type",
    "shape",
    "tags",
    "elements",
    "timeout_secs",
    "created_at",
    "status",
    "decided_by",
    "decided_at",
    "deny_reason",
]
OBJECT_FIELDS = [
    "id",
    "name",
    "tags",
    "description",
    "type",
    "shape",
    "dtype",
    "size_bytes",
    "published_at",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY, started_at TEXT NOT NULL, ended_at TEXT);
CREATE TABLE IF NOT EXISTS requests (
    session TEXT NOT NULL, id TEXT NOT NULL, kind TEXT, name TEXT, reason TEXT, requester TEXT,
    object_id TEXT, object_type TEXT, shape TEXT, tags TEXT, elements INTEGER, timeout_secs REAL,
    created_at TEXT, status TEXT, decided_by TEXT, decided_at TEXT, deny_reason TEXT,
    PRIMARY KEY (session, id));
CREATE TABLE IF NOT EXISTS objects (
    session TEXT NOT NULL, id TEXT NOT NULL, name TEXT, tags TEXT, description TEXT, type TEXT, shape TEXT,
    dtype TEXT, size_bytes INTEGER, published_at TEXT, removed_at TEXT, extra TEXT,
    PRIMARY KEY (session, id));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL, at TEXT NOT NULL, kind TEXT NOT NULL,
    detail TEXT);
"""


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat()


def _iso(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, timezone.utc).isoformat()
    return str(value)


def _json_seq(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return json.dumps([v if isinstance(v, int | float | str) else str(v) for v in value])  # type: ignore[attr-defined]


def _tuple_or_none(text: str | None) -> tuple | None:
    return None if text is None else tuple(json.loads(text))


def request_row(req: Request) -> dict[str, object]:
    """A request as a row of the ``requests`` table (shape and tags as JSON, times as ISO strings)."""
    return {
        "id": req.id,
        "kind": req.kind,
        "name": req.name,
        "reason": req.reason,
        "requester": req.requester,
        "object_id": req.object_id,
        "object_type": req.object_type,
        "shape": None if req.shape is None else json.dumps([int(s) for s in req.shape]),
        "tags": json.dumps(list(req.tags)),
        "elements": int(req.elements),
        "timeout_secs": float(req.timeout_secs),
        "created_at": req.created_at.isoformat(),
        "status": req.status,
        "decided_by": req.decided_by,
        "decided_at": None if req.decided_at is None else req.decided_at.isoformat(),
        "deny_reason": req.deny_reason,
    }


def request_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``Request(**fields)`` of a stored row (the inverse of ``request_row``)."""
    return {
        "id": row["id"],
        "kind": row["kind"],
        "name": row["name"] or "",
        "reason": row["reason"] or "",
        "requester": row["requester"] or "",
        "object_id": row["object_id"],
        "object_type": row["object_type"],
        "shape": _tuple_or_none(row["shape"]),
        "tags": _tuple_or_none(row["tags"]) or (),
        "elements": row["elements"] or 0,
        "timeout_secs": row["timeout_secs"] if row["timeout_secs"] is not None else -1.0,
        "created_at": datetime.fromisoformat(row["created_at"]),
        "status": row["status"],
        "decided_by": row["decided_by"],
        "decided_at": None if row["decided_at"] is None else datetime.fromisoformat(row["decided_at"]),
        "deny_reason": row["deny_reason"] or "",
    }


class RecordDB:
    """One sqlite file holding the owner's request history, the store's object metadata and audit events."""

    def __init__(
        self, path: str | os.PathLike[str], *, lock: threading.RLock | None = None, session: str | None = None
    ) -> None:
        self.path = os.path.expanduser(os.fspath(path))
        self.session = session or secrets.token_hex(6)
        self._lock = lock if lock is not None else threading.RLock()
        self._closed = False
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(
                    f"{self.path}: record schema {version} is newer than this duet's ({SCHEMA_VERSION})"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute(
                "INSERT INTO sessions (session, started_at) VALUES (?, ?)", (self.session, _utcnow())
            )
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            if self._closed:
                raise ValueError(f"record database {self.path} is closed")
            return self._conn.execute(sql, params)

    # -- requests (rows are plain dicts; the queue converts Requests to and from them) -------------------

    def record_request(self, row: Mapping[str, object]) -> None:
        """Insert or rewrite one request row of this session (keys: the request table's fields)."""
        names = ", ".join(["session", *_REQUEST_FIELDS])
        marks = ", ".join("?" * (len(_REQUEST_FIELDS) + 1))
        values = (self.session, *(row.get(f) for f in _REQUEST_FIELDS))
        self._execute(f"INSERT OR REPLACE INTO requests ({names}) VALUES ({marks})", values)

    def earlier_requests(self) -> list[dict[str, Any]]:
        """Every request row written by other (earlier) sessions, in the order they were decided."""
        cur = self._execute(
            f"SELECT session, {', '.join(_REQUEST_FIELDS)} FROM requests WHERE session != ? "
            "ORDER BY COALESCE(decided_at, created_at), rowid",
            (self.session,),
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    # -- the store's object metadata --------------------------------------------------------------------

    def record_object(self, meta: Mapping[str, object]) -> None:
        """Record (or update) one published object's metadata.

        Known keys: id (required), name, tags, description, type, shape, dtype, size_bytes, published_at
        (datetime, epoch seconds or ISO string; default now). Other keys are kept as JSON in ``extra``.
        """
        if not meta.get("id"):
            raise ValueError("object metadata needs an 'id'")
        size = meta.get("size_bytes")
        extra = {k: v for k, v in meta.items() if k not in OBJECT_FIELDS}
        values = (
            self.session,
            str(meta["id"]),
            None if meta.get("name") is None else str(meta["name"]),
            _json_seq(meta.get("tags") or ()),
            None if meta.get("description") is None else str(meta["description"]),
            None if meta.get("type") is None else str(meta["type"]),
            _json_seq(meta.get("shape")),
            None if meta.get("dtype") is None else str(meta["dtype"]),
            None if size is None else int(size),  # type: ignore[call-overload]
            _iso(meta.get("published_at")) or _utcnow(),
            json.dumps(extra, default=str) if extra else None,
        )
        self._execute(
            "INSERT OR REPLACE INTO objects (session, id, name, tags, description, type, shape, dtype, "
            "size_bytes, published_at, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )

    def record_object_removed(self, object_id: str) -> None:
        """Mark an object of this session as removed from the store (its row stays)."""
        self._execute(
            "UPDATE objects SET removed_at = ? WHERE session = ? AND id = ? AND removed_at IS NULL",
            (_utcnow(), self.session, str(object_id)),
        )

    def objects(self) -> list[dict[str, Any]]:
        """Every recorded object, all sessions, oldest first; tags and shape as tuples."""
        cur = self._execute(
            "SELECT session, id, name, tags, description, type, shape, dtype, size_bytes, published_at, "
            "removed_at, extra FROM objects ORDER BY published_at, rowid"
        )
        cols = [c[0] for c in cur.description]
        out = []
        for r in cur.fetchall():
            row = dict(zip(cols, r))
            row["tags"] = _tuple_or_none(row["tags"]) or ()
            row["shape"] = _tuple_or_none(row["shape"])
            row["extra"] = json.loads(row["extra"]) if row["extra"] else {}
            out.append(row)
        return out

    # -- free-form events ---------------------------------------------------------------------------------

    def record_event(self, kind: str, detail: Mapping[str, object] | None = None) -> None:
        """Append an audit event (e.g. ``"peer_joined"``) with a JSON-serialisable detail mapping."""
        text = json.dumps(dict(detail), default=str) if detail else None
        self._execute(
            "INSERT INTO events (session, at, kind, detail) VALUES (?, ?, ?, ?)",
            (self.session, _utcnow(), str(kind), text),
        )

    def events(self) -> list[dict[str, Any]]:
        cur = self._execute("SELECT session, at, kind, detail FROM events ORDER BY seq")
        return [
            {"session": s, "at": at, "kind": k, "detail": json.loads(d) if d else {}}
            for s, at, k, d in cur.fetchall()
        ]

    def sessions(self) -> list[dict[str, Any]]:
        cur = self._execute("SELECT session, started_at, ended_at FROM sessions ORDER BY started_at, rowid")
        return [{"session": s, "started_at": a, "ended_at": b} for s, a, b in cur.fetchall()]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Mark this session ended and close the connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                self._conn.execute(
                    "UPDATE sessions SET ended_at = ? WHERE session = ?", (_utcnow(), self.session)
                )
            finally:
                self._closed = True
                self._conn.close()

    def __repr__(self) -> str:
        return f"<RecordDB {self.path!r} session={self.session}{' closed' if self._closed else ''}>"
