"""The owner's store: every object the scientist can point at, its metadata, tags, and the quotas on it.

Provenance: every entry knows the published objects its value was computed from (``Entry.sources``), so a
tag handler can grant a value only when *all* of them carry its tags (mixing ``#public`` with ``#secret``
data gives a value ``#public`` does not cover). The executor reads an op's inputs with :meth:`Store.get`
and stores its result with :meth:`Store.put`, in one thread, op after op; the store takes the sources of
everything read since the last ``put`` (so the executor needs no part in it). Whatever an op may have
written into gets the op's sources too: every entry sharing storage with its result (``x.add_(y)``
returns ``x``; a view changed in place changes what it views), and, for an op that returns nothing
(``x[0] = y``, ``loss.backward()``), its inputs, what shares their storage, and the leaves of a loss's
autograd graph (the parameters ``backward`` writes gradients into, which ``opt.step()`` then applies).
Sources only grow; an object derived from no published data has none, and no tag handler grants it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..codec import describe
from ..errors import PermissionDenied, ProtocolError, QuotaExceeded, RemoteError
from .dtypes import DTYPE_TO_NAME, check_publishable
from .storages import _graph_leaves, _storages, _storages_of_all, _trainable

_SERIALS = itertools.count(1)  # Entry.serial

__all__ = ["Entry", "Store", "Quotas", "STORE_COLUMNS"]

_NO_IDS: frozenset[Any] = frozenset()  # what an index lookup that finds nothing adds (no set built for it)

STORE_COLUMNS = ["id", "name", "tags", "description", "type", "shape", "dtype", "size_bytes"]


@dataclass(frozen=True)
class Quotas:
    """Per-session limits on what the scientist's calls may make the owner hold or do."""

    store_bytes: int = 4 << 30  # everything the scientist's calls keep in the store
    tensor_bytes: int = 1 << 30  # one tensor created by a call or sent by the scientist
    objects: int = 100_000  # objects the scientist's calls keep alive
    call_seconds: float = 60.0  # one call's time
    requests: int = 100_000  # requests for values (and joins) one session may make; each is kept on record
    error_detail: bool = True  # False: the scientist sees the remote exception's type only


@dataclass(slots=True)
class Entry:
    """One object in the store, with what the scientist may know of it."""

    id: str
    obj: Any
    name: str = ""
    tags: tuple[str, ...] = ()
    description: str = ""
    published: bool = False
    error: RemoteError | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    sources: frozenset[str] = frozenset()  # the published objects the value was computed from
    created: float = field(default_factory=time.time)  # when it was stored (seconds since the epoch)
    # a number never reused, unlike ids (see Store.generation)
    serial: int = field(default_factory=lambda: next(_SERIALS))

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.created, dt.timezone.utc)

    @property
    def nbytes(self) -> int:
        return int(self.meta.get("size_bytes", 0))

    def public(self) -> dict[str, Any]:
        """The metadata the scientist sees: never the value."""
        return {
            "id": self.id,
            "name": self.name,
            "tags": list(self.tags),
            "description": self.description,
            "type": self.meta.get("type"),
            "shape": self.meta.get("shape"),
            "dtype": self.meta.get("dtype"),
            "size_bytes": self.nbytes,
            "numel": self.meta.get("numel", 0),
            "requires_grad": self.meta.get("requires_grad"),
            "published": self.published,
        }

    def __repr__(self) -> str:
        tags = " ".join(self.tags)
        return f"<Entry {self.id[:8]} {self.name!r} {self.meta.get('type')} {self.meta.get('shape')} {tags}>"


def _union(sets: list[frozenset[str]]) -> frozenset[str]:
    """The union of the inputs' sources; shared as it is when only one input has any (they never change
    in place: an entry's sources grow by replacement)."""
    nonempty = [s for s in sets if s]
    if len(nonempty) == 1:
        return nonempty[0]
    return frozenset().union(*nonempty)


def _meta(obj: Any) -> dict[str, Any]:
    if type(obj) is torch.Tensor:  # what describe gives (with requires_grad), without its type walk
        numel, dtype = obj.numel(), obj.dtype
        return {
            "type": "Tensor",
            "shape": list(obj.shape),
            "dtype": DTYPE_TO_NAME.get(dtype) or str(dtype),
            "size_bytes": numel * obj.element_size(),
            "numel": numel,
            "requires_grad": obj.requires_grad,
        }
    meta = describe(obj)  # a fresh dict
    if isinstance(obj, torch.Tensor):
        meta["requires_grad"] = bool(obj.requires_grad)
    elif isinstance(obj, torch.nn.Module):
        meta["type"] = getattr(obj, "label", None) or type(obj).__name__
        meta["size_bytes"] = sum(p.numel() * p.element_size() for p in obj.parameters())
        meta["numel"] = sum(p.numel() for p in obj.parameters())
    return meta


class Store:
    """Objects by id. Published objects are the owner's; the rest were made by the scientist's calls."""

    def __init__(
        self,
        quotas: Quotas | None = None,
        on_publish: Callable[[Entry], None] | None = None,
        on_remove: Callable[[Entry], None] | None = None,
    ) -> None:
        self.quotas = quotas or Quotas()
        self._entries: dict[str, Entry] = {}
        self._published: dict[str, Entry] = {}  # the published ones among them, in publishing order
        self._lock = threading.RLock()
        self._scientist_bytes = 0
        self._scientist_count = 0
        self._on_publish = on_publish
        self._on_remove = on_remove
        self._reads = threading.local()  # entries read by this thread since its last put (provenance)
        self._by_storage: dict[int, set[str]] = {}  # storage address -> ids of entries that use it
        self._storage_of: dict[str, set[int]] = {}
        # counts the changes that can make a spread reach more than it did: an entry indexed by storage,
        # and any entry's sources growing (they never shrink). A spread that changed nothing changes
        # nothing again, while the generation is the same, for the same sources, entries (by serial) and
        # storages: Plans.run skips such repeats of a slice's or an optimizer's spread.
        self.generation = 0
        self._published_objects: list[Any] | None = None  # (see published_objects)

    # ---- owner API ---------------------------------------------------------------------------------

    def publish(self, obj: Any, name: str = "", tags: Iterable[str] = (), description: str = "") -> Entry:
        """Make ``obj`` visible to the scientist (metadata only) under ``name`` and ``tags``."""
        if isinstance(tags, str):
            tags = [tags]
        check_publishable(obj)
        meta = _meta(obj)
        tag_tuple = tuple(dict.fromkeys(str(t) for t in tags))  # in the owner's order, each once
        oid = "p" + secrets.token_hex(8)
        entry = Entry(
            oid, obj, str(name), tag_tuple, str(description), True, meta=meta, sources=frozenset([oid])
        )
        with self._lock:
            if name and any(e.published and e.name == name for e in self._entries.values()):
                raise ValueError(f"an object named {name!r} is already published: remove it first")
            self._entries[entry.id] = entry
            self._published[entry.id] = entry
            self._published_objects = None
            self._index(entry)
        if self._on_publish is not None:
            self._on_publish(entry)
        return entry

    def remove(self, key: str | int) -> None:
        """Unpublish an object (by name, tag, position or id prefix): the scientist no longer sees or reaches
        it. What the scientist computed from it stays until released."""
        entry = self.entry(key)
        with self._lock:
            self._published.pop(entry.id, None)
            self._published_objects = None
            if self._entries.pop(entry.id, None) is None:
                return
            self._unindex(entry.id)
        if self._on_remove is not None:
            self._on_remove(entry)

    def entry(self, key: str | int) -> Entry:
        """A published entry by name, tag, integer position or an id prefix of 6+ characters."""
        published = self.published()
        if isinstance(key, int) and not isinstance(key, bool):
            try:
                return published[key]
            except IndexError:
                raise KeyError(f"no published object at position {key} ({len(published)} in all)") from None
        for match in (
            lambda e: e.name == key,
            lambda e: key in e.tags,
            lambda e: len(str(key)) >= 6 and e.id.startswith(str(key)),
        ):
            found = [e for e in published if match(e)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise KeyError(f"{key!r} matches {len(found)} objects: use a name or an id prefix")
        raise KeyError(f"no published object named, tagged or with an id starting {key!r}")

    def __getitem__(self, key: str | int) -> Any:
        return self.entry(key).obj

    def __len__(self) -> int:
        return len(self.published())

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.published())

    def published(self) -> list[Entry]:
        with self._lock:
            return list(self._published.values())

    def published_objects(self) -> list[Any]:
        """The published objects, as one list that stays the same object until something is published or
        removed (the executor's read-only check asks for it on every call that changes something; it can
        then reuse what it found in it). Not to be changed by the caller."""
        objs = self._published_objects
        if objs is None:
            with self._lock:
                objs = self._published_objects = [e.obj for e in self._published.values()]
        return objs

    @property
    def pandas(self) -> Any:
        import pandas as pd

        rows = [{k: e.public()[k] for k in STORE_COLUMNS} for e in self.published()]
        return pd.DataFrame(rows, columns=STORE_COLUMNS)

    def __repr__(self) -> str:
        return f"<Store {len(self)} published, {self.scientist_objects} made by calls>"

    # ---- executor API ------------------------------------------------------------------------------

    @property
    def scientist_objects(self) -> int:
        return self._scientist_count

    @property
    def scientist_bytes(self) -> int:
        return self._scientist_bytes

    def holds(self, oid: str) -> bool:
        """True if an object (published or made by a call) has this exact id."""
        with self._lock:
            return oid in self._entries

    def lookup(self, oid: Any) -> Entry:
        """The entry a pointer names; refuses ids the scientist was never given."""
        if not isinstance(oid, str):
            raise ProtocolError("an object id must be a string")
        with self._lock:
            entry = self._entries.get(oid)
        if entry is None:
            raise PermissionDenied(f"no object with id {oid[:40]!r} in the owner's store")
        return entry

    def entries_of(self, oids: list[str]) -> list[Entry | None]:
        """The entries of ids already checked to be strings, None for an id the store does not hold (one dict
        read each, atomic: no lock needed to see an entry or none)."""
        get = self._entries.get
        return [get(oid) for oid in oids]

    def get(self, oid: Any) -> Entry:
        """An op's input: :meth:`lookup`, and remembered as a source of the op's result (see the module)."""
        if not isinstance(oid, str):
            raise ProtocolError("an object id must be a string")
        entry = self._entries.get(oid)  # one dict read is atomic: no lock needed to see an entry or none
        if entry is None:
            raise PermissionDenied(f"no object with id {oid[:40]!r} in the owner's store")
        reads: dict[str, Entry] | None = getattr(self._reads, "entries", None)
        if reads is None or len(reads) > 10_000:  # a thread that reads and never puts keeps a bounded set
            reads = self._reads.entries = {}
        reads[entry.id] = entry
        return entry

    def source_tags(self, entry: Entry) -> tuple[tuple[str, ...], ...]:
        """The owner's tags of each published object the entry's value may come from (``()`` for one removed
        since): a tag handler grants the value only if it finds its tags in every one of them."""
        with self._lock:
            return tuple(
                self._entries[oid].tags if oid in self._entries else () for oid in sorted(entry.sources)
            )

    def _spread(self, result: Entry, inputs: list[Entry]) -> None:
        """(lock held) Give the op's sources to everything it may have written into (see the module)."""
        sources = result.sources
        if not sources:
            return
        keys: Iterable[int] = self._storage_of.get(result.id, ())
        if result.obj is not None or result.error is not None:
            by_storage = self._by_storage
            for key in keys:
                if len(by_storage.get(key, ())) > 1:
                    break
            else:  # no other entry shares the result's storage: nothing to give sources to
                return
        touched: set[str] = set()
        if result.obj is None and result.error is None:
            keys = set(keys)
            for e in inputs:
                touched.add(e.id)
                keys |= self._storage_of.get(e.id, set())
                if isinstance(e.obj, torch.Tensor) and e.obj.grad_fn is not None:
                    leaves = _graph_leaves(e.obj)
                    if leaves is None:  # too big to follow: whatever could be a leaf
                        touched |= {o for o, x in self._entries.items() if _trainable(x.obj)}
                    else:
                        keys |= _storages_of_all(leaves)
        for key in keys:
            ids = self._by_storage.get(key)
            if ids:
                touched |= ids
        touched.discard(result.id)  # (the result is the entry stored under its id)
        for oid in touched:
            other = self._entries.get(oid)
            if other is not None and not sources <= other.sources:
                other.sources |= sources
                self.generation += 1

    def spread(self, sources: frozenset[str], entries: Iterable[Entry], objects: Iterable[Any]) -> bool:
        """Give ``sources`` to whatever an op of a plan may have written into (the plan's own results are
        not entries): the ``entries`` it read, every entry sharing storage with them or with ``objects``
        (values it read or returned), and the entries holding the leaves of their autograd graphs. The same
        rule as :meth:`put` applies to an op's result (see the module). Returns whether an entry's sources
        grew."""
        if not sources:
            return False
        storage_of, by_storage = self._storage_of, self._by_storage
        with self._lock:
            touched = {e.id for e in entries}
            keys: set[int] = set()
            for oid in touched:
                keys |= storage_of.get(oid, _NO_IDS)
            for obj in objects:
                if type(obj) is torch.Tensor:  # (the usual object: _storages without its set of one)
                    try:
                        ptr = obj.untyped_storage().data_ptr()
                    except (RuntimeError, NotImplementedError):
                        ptr = 0
                    if ptr:
                        keys.add(ptr)
                else:
                    keys |= _storages(obj)
                if isinstance(obj, torch.Tensor) and obj.grad_fn is not None:
                    leaves = _graph_leaves(obj)
                    if leaves is None:  # too big to follow: whatever could be a leaf
                        touched |= {o for o, x in self._entries.items() if _trainable(x.obj)}
                    else:
                        keys |= _storages_of_all(leaves)
            for key in keys:
                touched |= by_storage.get(key, _NO_IDS)
            grew = False
            for oid in touched:
                other = self._entries.get(oid)
                if other is not None and not sources <= other.sources:
                    other.sources |= sources
                    grew = True
            if grew:
                self.generation += 1
            return grew

    def shares_storage(self, obj: Any) -> bool:
        """Whether a tensor uses the storage of an entry (a view of one, or the entry itself)."""
        return self.shared_storage(obj) != 0

    def shared_storage(self, obj: Any) -> int:
        """The address of a tensor's storage if an entry uses it too (a view of one, or the entry itself);
        else 0."""
        try:
            ptr = obj.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError, AttributeError):
            return 0
        return ptr if ptr and ptr in self._by_storage else 0

    def _index(self, entry: Entry) -> None:
        obj = entry.obj
        if obj is None or type(obj) is float:
            return
        if type(obj) is torch.Tensor:  # _storages(obj), without the set of one
            try:
                ptr = obj.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):
                return
            if ptr:
                self.generation += 1
                self._storage_of[entry.id] = {ptr}
                ids = self._by_storage.get(ptr)
                if ids is None:
                    self._by_storage[ptr] = {entry.id}
                else:
                    ids.add(entry.id)
            return
        keys = _storages(obj)
        if keys:
            self.generation += 1
            self._storage_of[entry.id] = keys
            for key in keys:
                self._by_storage.setdefault(key, set()).add(entry.id)

    def _unindex(self, oid: str) -> None:
        # (no new generation: an entry that leaves the index only narrows what a spread reaches)
        for key in self._storage_of.pop(oid, ()):
            ids = self._by_storage.get(key)
            if ids is not None:
                ids.discard(oid)
                if not ids:
                    del self._by_storage[key]

    def put(
        self,
        oid: Any,
        obj: Any,
        tags: Iterable[str] = (),
        error: RemoteError | None = None,
        inputs: list[Entry] | None = None,
    ) -> Entry:
        """Store a result under the id the scientist chose (never replacing an existing object). Its sources
        are those of the entries read since the last put, or of ``inputs`` when given (a plan's result,
        whose inputs the plan runner tracks itself)."""
        if not isinstance(oid, str) or not oid.startswith("s") or len(oid) > 40:
            raise ProtocolError("result ids are strings the scientist allocates, starting with 's'")
        reads: dict[str, Entry] | None = getattr(self._reads, "entries", None)
        self._reads.entries = {}
        if inputs is not None:
            reads = {e.id: e for e in inputs}
        if reads:
            inputs = list(reads.values())
            sources = inputs[0].sources if len(inputs) == 1 else _union([e.sources for e in inputs])
        else:
            inputs, sources = [], frozenset()
        meta: dict[str, Any] = _meta(obj) if error is None else {"type": None}
        size = int(meta.get("size_bytes", 0))
        q = self.quotas
        with self._lock:
            if oid in self._entries:
                raise ProtocolError(f"object id {oid!r} is already in use")
            if error is None and self._scientist_count + 1 > q.objects:
                raise QuotaExceeded(f"the session may keep at most {q.objects} objects: delete some pointers")
            if error is None and self._scientist_bytes + size > q.store_bytes:
                raise QuotaExceeded(
                    f"the session's store quota of {q.store_bytes} bytes is spent "
                    f"({self._scientist_bytes} held, {size} more asked)"
                )
            tag_tuple = tuple(sorted(set(tags))) if tags else ()
            entry = Entry(oid, obj, "", tag_tuple, "", False, error, meta, sources, time.time())
            self._entries[oid] = entry
            self._index(entry)
            self._scientist_bytes += size  # entry.nbytes
            self._scientist_count += 1
            if sources:
                self._spread(entry, inputs)
        return entry

    def release(self, oid: Any) -> bool:
        """Free an object the scientist made (published objects are never freed this way)."""
        with self._lock:
            return self._release(oid)

    def release_many(self, oids: Iterable[Any]) -> int:
        """:meth:`release` each id (under one lock); returns how many were freed."""
        with self._lock:
            return sum([self._release(oid) for oid in oids])

    def _release(self, oid: Any) -> bool:
        entry = self._entries.get(oid) if isinstance(oid, str) else None
        if entry is None or entry.published:
            return False
        del self._entries[oid]
        if oid in self._storage_of:
            self._unindex(oid)
        self._scientist_bytes -= entry.nbytes
        self._scientist_count -= 1
        return True

    def release_all_scientist(self) -> None:
        with self._lock:
            for oid in [k for k, e in self._entries.items() if not e.published]:
                self.release(oid)
