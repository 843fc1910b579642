"""One request for a value or to join, as the owner's queue holds it: ``Request``, ``AlreadyDecided``."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from duet.errors import DuetError
from duet.requests.handlers import JOIN

if TYPE_CHECKING:
    from duet.requests.queue import RequestQueue

__all__ = ["KINDS", "MAX_NAME", "MAX_REASON", "AlreadyDecided", "Request", "new_request_id"]

KINDS = ("value", JOIN)
MAX_NAME = 200
MAX_REASON = 2000


class AlreadyDecided(DuetError):
    """The request was already accepted, denied or expired; a request is decided once."""


def new_request_id() -> str:
    return secrets.token_hex(6)


@dataclass(eq=False)
class Request:
    """One request for a value (``kind="value"``) or to join the session (``kind="join"``, name "join")."""

    id: str = field(default_factory=new_request_id)
    kind: str = "value"
    name: str = ""
    reason: str = ""
    requester: str = ""
    object_id: str | None = None
    object_type: str | None = None
    shape: tuple | None = None
    tags: tuple[str, ...] = ()
    # the owner's tags of each published object the value was computed from (None: not known, and a tag
    # handler looks at ``tags`` alone); a tag handler must find its tags in every one of them
    sources: tuple[tuple[str, ...], ...] | None = None
    elements: int = 1
    timeout_secs: float = -1
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    status: str = "pending"
    decided_by: str | None = None
    decided_at: datetime | None = None
    deny_reason: str = ""

    def __post_init__(self) -> None:
        # plain attributes, not dataclass fields: asdict()/replace() never see the queue
        self._queue: RequestQueue | None = None
        self._deadline: float | None = None  # the queue clock's time when it expires

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    def accept(self) -> None:
        """Accept this request (as the owner): the value is sent to the scientist."""
        self._owner_queue().accept(self)

    def deny(self, reason: str = "") -> None:
        """Deny this request (as the owner); ``reason`` is shown to the scientist."""
        self._owner_queue().deny(self, reason)

    def _owner_queue(self) -> RequestQueue:
        if self._queue is None:
            raise DuetError(f"request {self.id} belongs to no request queue (from an earlier session?)")
        return self._queue

    def _dedup_key(self) -> tuple:
        return (self.kind, self.object_id, self.name, self.reason, self.requester)
