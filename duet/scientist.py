"""The scientist's side of a session: the store as pointers, remote torch and Python, its own requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .remote.client import Remote, RequestHandle
from .remote.planner import enabled_by_env
from .remote.pointer import Pointer, RemoteNamespace, RemotePython
from .remote.store import STORE_COLUMNS
from .remote.tables import from_welcome

if TYPE_CHECKING:
    from .transport import Channel, Message

__all__ = ["ScientistService", "StoreView", "OwnRequests"]


class StoreView:
    """``d.store`` on the scientist's side: the owner's published objects (metadata only) as pointers."""

    def __init__(self, remote: Remote) -> None:
        self._remote = remote

    def _items(self) -> list[dict[str, Any]]:
        return self._remote.store_listing()

    @property
    def pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [{k: i.get(k) for k in STORE_COLUMNS} for i in self._items()], columns=STORE_COLUMNS
        )

    def _pointer(self, item: dict[str, Any]) -> Pointer:
        return Pointer(self._remote, str(item["id"]), meta=item, owned=False)

    def __getitem__(self, key: str | int) -> Pointer:
        items = self._items()
        if isinstance(key, int) and not isinstance(key, bool):
            try:
                return self._pointer(items[key])
            except IndexError:
                raise KeyError(f"no published object at position {key} ({len(items)} published)") from None
        for match in (
            lambda i: i.get("name") == key,
            lambda i: key in (i.get("tags") or []),
            lambda i: len(str(key)) >= 6 and str(i.get("id", "")).startswith(str(key)),
        ):
            found = [i for i in items if match(i)]
            if len(found) == 1:
                return self._pointer(found[0])
            if len(found) > 1:
                raise KeyError(f"{key!r} matches {len(found)} objects: use a name or an id prefix")
        raise KeyError(f"the owner has published nothing named, tagged or with an id starting {key!r}")

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self) -> Iterator[Pointer]:
        return iter([self._pointer(i) for i in self._items()])

    def __repr__(self) -> str:
        return f"<owner's store: {len(self)} published objects>"


class OwnRequests(list[RequestHandle]):
    """``d.requests`` on the scientist's side: its own requests and their status, the latest ``limit`` of
    them (a training loop's ``loss.get()`` per batch must not grow it, nor keep every value, forever)."""

    def __init__(self, limit: int = 1000) -> None:
        super().__init__()
        self.limit = limit

    def append(self, handle: RequestHandle) -> None:
        super().append(handle)
        if len(self) > self.limit:
            del self[: len(self) - self.limit]

    @property
    def pandas(self) -> Any:
        import pandas as pd

        cols = ["name", "reason", "object_id", "status", "deny_reason"]
        return pd.DataFrame([{c: getattr(r, c) for c in cols} for r in self], columns=cols)


class ScientistService:
    """The scientist's parts of a session: the owner's store as pointers, remote torch and Python, requests."""

    def __init__(self, channel_of: Callable[[], Channel], peer_name: Callable[[], str]) -> None:
        self.remote = Remote(channel_of, peer_name)
        self.remote.requests = self.requests = OwnRequests()
        self.torch = RemoteNamespace(self.remote, "torch")
        self.python = RemotePython(self.remote)
        self.store = StoreView(self.remote)

    def handlers(self) -> dict[str, Callable[[Message], Any]]:
        return {"failed": self.remote.on_failed}

    def welcomed(self, header: dict[str, Any]) -> None:
        """The owner let us in: check calls early against the allowlist its welcome describes (its
        extensions included), or the default one if it describes none or describes it badly."""
        self.remote.tables = from_welcome(header)
        self.remote.planner.enabled = header.get("plans") is True and enabled_by_env()
        self.remote.planner.first_ids = header.get("run_ids") == "first"
