"""A request for a value the scientist is waiting on: its status, its value once decided, its pointer until then."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..errors import RequestTimeout

if TYPE_CHECKING:
    from .pointer import Pointer

__all__ = ["RequestHandle"]


class RequestHandle:
    """A request for a value: ``.status`` is pending, accepted, denied or expired; ``.wait()`` gives the value."""

    def __init__(self, name: str, reason: str, pointer: Pointer) -> None:
        self.name, self.reason = name, reason
        self.object_id = pointer._duet_id
        self.status = "pending"
        self.deny_reason = ""
        self.value: Any = None
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._pointer: Pointer | None = pointer  # the owner keeps the object until the request is settled

    def _settle(
        self, status: str, value: Any = None, reason: str = "", error: BaseException | None = None
    ) -> None:
        self.status, self.value, self.deny_reason, self._error = status, value, reason, error
        self._pointer = None
        self._done.set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until decided; returns the value (None if denied or expired)."""
        if not self._done.wait(timeout):
            raise RequestTimeout(f"request {self.name!r} not decided within {timeout} s")
        if self._error is not None:
            raise self._error
        return self.value

    def __repr__(self) -> str:
        return f"<Request {self.name!r} {self.status}>"
