"""Requests layer: the owner's request queue, handlers, decision history and its sqlite record.

The ipywidgets panel lives in ``duet.requests.widget`` (imported on first ``RequestQueue.widget()`` call).
"""

from duet.requests.handlers import Handler, HandlerList
from duet.requests.history import History
from duet.requests.queue import AlreadyDecided, Request, RequestQueue, new_request_id
from duet.requests.record import RecordDB

__all__ = [
    "AlreadyDecided",
    "Handler",
    "HandlerList",
    "History",
    "RecordDB",
    "Request",
    "RequestQueue",
    "new_request_id",
]
