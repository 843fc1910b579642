"""The owner's ipywidgets panel over the request queue: pending requests with Accept / Deny, updated live.

The panel registers a listener on the queue; the listener may run on the session's loop thread (traitlet
updates from another thread reach the kernel's comm). Rows are kept per request id, so a deny reason being
typed survives other requests arriving. Everything the scientist chose (name, reason) is HTML-escaped.
``close()`` unregisters the panel and closes its child widgets.

Besides the buttons, the panel has a small API for code (a notebook that runs unattended, a test):
``panel.wait_for(name_or_id, timeout)`` returns a pending request once it is in the panel, and
``panel.accept(request_or_name)`` / ``panel.deny(request_or_name, reason=None)`` decide it exactly as its
Accept / Deny button does (the panel's message line reports it).
"""

from __future__ import annotations

import html
import threading
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from duet.requests.queue import AlreadyDecided, Request

if TYPE_CHECKING:
    from duet.requests.queue import RequestQueue

__all__ = ["RequestPanel", "format_age"]

MAX_ROWS = 50  # rows shown; a flood of requests must not make every queue event rebuild a thousand rows


def format_age(seconds: float) -> str:
    """``"42s"``, ``"3m 05s"``, ``"2h 07m"``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


class _Row:
    """The widgets of one pending request. A row whose request left is kept and re-bound to the next
    request to show (making widgets is what costs when a thousand requests come and go)."""

    def __init__(self, panel: RequestPanel, req: Request) -> None:
        self.req = req
        self.label = widgets.HTML(layout=widgets.Layout(flex="1 1 auto"))
        self.reason = widgets.Text(placeholder="deny reason (optional)", layout=widgets.Layout(width="14em"))
        self.accept_button = widgets.Button(description="Accept", button_style="success", tooltip="Accept")
        self.deny_button = widgets.Button(description="Deny", button_style="danger", tooltip="Deny")
        self.accept_button.on_click(lambda _b: panel._decide(self.req, accept=True, reason=""))
        self.deny_button.on_click(lambda _b: panel._decide(self.req, accept=False, reason=self.reason.value))
        self.box = widgets.HBox([self.label, self.reason, self.accept_button, self.deny_button])
        self.shown_at: int | None = None

    def bind(self, req: Request) -> _Row:
        self.req = req
        self.reason.value = ""
        self.shown_at = None
        return self

    def update(self, now: float) -> None:
        """Show the request; ages are in whole seconds, so a row shown this second is left as it is."""
        if self.shown_at == int(now):
            return
        self.shown_at = int(now)
        r = self.req
        esc = html.escape
        what = r.object_type or r.kind
        shape = "" if r.shape is None else f" {esc(str(tuple(r.shape)))}"
        obj = f"{esc(what)}{shape}" + (f" <code>{esc(r.object_id[:12])}</code>" if r.object_id else "")
        age = format_age(now - r.created_at.timestamp())
        left = ""
        if r.timeout_secs >= 0:
            left = f", expires in {format_age(r.created_at.timestamp() + r.timeout_secs - now)}"
        reason = f" &mdash; {esc(r.reason)}" if r.reason else ""
        self.label.value = (
            f"<b>{esc(r.name) or '<i>(no name)</i>'}</b>{reason}<br>"
            f"<small>{obj} &middot; from {esc(r.requester)} &middot; {age} ago{left}</small>"
        )

    def close(self) -> None:
        for w in (self.box, self.label, self.reason, self.accept_button, self.deny_button):
            w.close()


class RequestPanel(widgets.VBox):
    """``d.requests.widget()``: a VBox with a header (counts), a row per pending request (the oldest
    ``max_rows``; a line counts the rest), and a message line."""

    def __init__(self, queue: RequestQueue, max_rows: int = MAX_ROWS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._queue = queue
        self.max_rows = max_rows
        self._panel_lock = threading.RLock()
        self._changed = threading.Condition(self._panel_lock)  # notified after every refresh
        self._rows: dict[str, _Row] = {}
        self._spare: list[_Row] = []  # rows whose request left, to show the next ones
        self._closed_panel = False
        self.header = widgets.HTML()
        self.message = widgets.HTML()
        self.refresh_button = widgets.Button(description="Refresh", tooltip="Update ages", icon="refresh")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self._top = widgets.HBox([self.header, self.refresh_button])
        self._empty = widgets.HTML("<i>No pending requests.</i>")
        self._more = widgets.HTML()
        queue.add_listener(self._on_event)
        self.refresh()

    @property
    def rows(self) -> dict[str, _Row]:
        """The rows shown, by request id (a copy)."""
        with self._panel_lock:
            return dict(self._rows)

    # ---- the API for code: find a pending request, decide it as its buttons do ----------------------

    def _find(self, key: Request | str) -> Request | None:
        """The pending request ``key`` (a Request, a request id, or a name: the oldest of that name)."""
        pending = list(self._queue)
        if isinstance(key, Request):
            return key if any(r is key for r in pending) else None
        for r in pending:
            if r.id == key:
                return r
        return next((r for r in pending if r.name == key), None)

    def wait_for(self, key: str, timeout: float | None = None) -> Request:
        """The pending request with this id or name (the oldest of that name), waiting up to ``timeout``
        seconds (``None``: for ever) for it to arrive; raises ``TimeoutError`` if it does not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while (found := self._find(key)) is None:
                if self._closed_panel:
                    raise RuntimeError("the panel is closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no pending request {key!r} within {timeout} s")
                # events notify; the timed wait also covers a request that came before a notification
                self._changed.wait(0.5 if left is None else min(left, 0.5))
            return found

    def accept(self, key: Request | str) -> bool:
        """Accept the pending request ``key`` (a Request, its id, or its name) as its Accept button does.
        Returns whether this call decided it (``False``: already decided, as the message line says)."""
        return self._decide(self._pending(key), accept=True, reason="")

    def deny(self, key: Request | str, reason: str | None = None) -> bool:
        """Deny the pending request ``key`` as its Deny button does, with ``reason`` (default: what is typed
        in its row's reason box). Returns whether this call decided it."""
        req = self._pending(key)
        if reason is None:
            with self._panel_lock:
                row = self._rows.get(req.id)
                reason = row.reason.value if row is not None and row.req is req else ""
        return self._decide(req, accept=False, reason=reason)

    def _pending(self, key: Request | str) -> Request:
        req = self._find(key)
        if req is not None:
            return req
        if isinstance(key, Request):
            return key  # decided already: _decide reports it as the button would
        raise KeyError(f"no pending request with id or name {key!r}")

    # ---- events and buttons --------------------------------------------------------------------------

    def _on_event(self, event: str, req: Request) -> None:
        self.refresh()

    def _decide(self, req: Request, *, accept: bool, reason: str) -> bool:
        try:
            if accept:
                self._queue.accept(req)
            else:
                self._queue.deny(req, reason)
        except AlreadyDecided as exc:
            self.message.value = f"<small>{html.escape(str(exc))}</small>"
            decided = False
        else:
            verb = "accepted" if accept else "denied"
            self.message.value = f"<small>{html.escape(req.name or req.id)} {verb}</small>"
            decided = True
        self.refresh()
        return decided

    def refresh(self) -> None:
        """Rebuild the panel from the queue (called on every queue event; safe from any thread)."""
        with self._panel_lock:
            if self._closed_panel:
                return
            pending = list(self._queue)
            shown = pending[: self.max_rows]
            counts = self._queue.history.counts()
            now = self._queue.clock()
            ids = {r.id for r in shown}
            self._spare.extend(self._rows.pop(rid) for rid in list(self._rows) if rid not in ids)
            for r in shown:
                row = self._rows.get(r.id)
                if row is None:
                    row = self._rows[r.id] = self._spare.pop().bind(r) if self._spare else _Row(self, r)
                row.update(now)
            gone, self._spare = self._spare[self.max_rows :], self._spare[: self.max_rows]
            more = len(pending) - len(shown)
            self._more.value = (
                f"<i>… and {more} more (decide these first, or use d.requests)</i>" if more else ""
            )
            decided = ", ".join(f"{n} {k}" for k, n in counts.items())
            closed = " <small>&middot; queue closed</small>" if self._queue.closed else ""
            self.header.value = (
                f"<b>Duet requests</b>: {len(pending)} pending <small>(decided: {decided})</small>{closed}"
            )
            body = [self._rows[r.id].box for r in shown] or [self._empty]
            self.children = [self._top, *body, *([self._more] if more else []), self.message]
            for row in gone:
                row.close()
            self._changed.notify_all()

    def close(self) -> None:
        """Stop following the queue and close this panel's widgets."""
        with self._panel_lock:
            if self._closed_panel:
                return
            self._closed_panel = True
            self._queue.remove_listener(self._on_event)
            for row in [*self._rows.values(), *self._spare]:
                row.close()
            self._rows.clear()
            self._spare.clear()
            for w in (self._top, self._empty, self._more, self.header, self.message, self.refresh_button):
                w.close()
            self._changed.notify_all()
        super().close()
