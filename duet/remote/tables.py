"""The allowlist as the scientist's client sees it: the owner's tables, sent in its welcome, checked and bounded.

The owner describes its allowlist in the ``welcome`` that answers the scientist's ``hello`` (see
docs/protocol.md)::

    {"t": "welcome", "allowlist": {
        "functions":  ["torch.add", …, "torch.special.erf"],     dotted paths it may call
        "contexts":   ["torch.no_grad", …],                      context managers for `with`
        "methods":    {"Tensor": ["abs", …, "erfinv"], …},       method names, per kind of object
        "properties": {"Tensor": ["T", …], …}}}                  property names, per kind of object

so that an owner's :meth:`Allowlist.extend` works from the scientist's side: ``d.torch.special.erf`` passes
the local path check, ``x.erfinv()`` is sent as a method call (a name on no table would be read as a
property). The owner remains the only authority: its executor checks every call again. These tables only
let the scientist fail early (``PermissionDenied`` before anything is sent) and tell a method from a
property. The owner is not trusted to send sense either: a description that is not of this shape, or
larger than :data:`MAX_ENTRIES`, is refused by :meth:`Tables.parse`, and :func:`from_welcome` then falls
back to the default allowlist's tables (as it does for an owner that sends none).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from ..errors import PermissionDenied, ProtocolError
from .allowlist import DEFAULT_ALLOWLIST, Allowlist

__all__ = ["MAX_ENTRIES", "Tables", "default_tables", "from_welcome", "welcome"]

log = logging.getLogger("duet.tables")

MAX_ENTRIES = 16384
"""Most paths and names a welcome may describe (the default allowlist has about 700)."""
MAX_KINDS = 64
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_PATH = re.compile(r"torch(?:\.[A-Za-z][A-Za-z0-9_]{0,63}){1,12}")
_MAX_PATH = 200
_TENSOR_TYPES = frozenset({"Tensor", "Parameter"})  # the metadata's type names of objects of kind Tensor
_FIELDS = ("functions", "contexts", "methods", "properties")


def _names_by_kind(table: Mapping[str, Iterable[str]]) -> Mapping[str, frozenset[str]]:
    return MappingProxyType({kind: frozenset(names) for kind, names in table.items()})


class Tables:
    """What the scientist's client checks a call against: paths, contexts, method and property names."""

    __slots__ = ("functions", "contexts", "methods", "properties", "_prefixes", "_method_names", "_props")

    functions: frozenset[str]
    contexts: frozenset[str]
    methods: Mapping[str, frozenset[str]]
    properties: Mapping[str, frozenset[str]]

    def __init__(
        self,
        functions: Iterable[str],
        contexts: Iterable[str],
        methods: Mapping[str, Iterable[str]],
        properties: Mapping[str, Iterable[str]],
    ) -> None:
        self.functions, self.contexts = frozenset(functions), frozenset(contexts)
        self.methods, self.properties = _names_by_kind(methods), _names_by_kind(properties)
        paths = self.functions | self.contexts
        # every path and its parents (``torch.nn`` for ``torch.nn.Linear``): what d.torch.<…> may walk
        self._prefixes = frozenset(p.rsplit(".", i)[0] for p in paths for i in range(p.count(".") + 1))
        self._method_names = frozenset().union(*self.methods.values())
        self._props = frozenset().union(*self.properties.values())

    @classmethod
    def of(cls, allowlist: Allowlist) -> Tables:
        """The tables of an owner's allowlist."""
        tables = allowlist.tables()
        families = tables["functions"]
        contexts = families.get("contexts", [])
        functions = [p for family, paths in families.items() if family != "contexts" for p in paths]
        return cls(functions, contexts, tables["methods"], tables["properties"])

    def export(self) -> dict[str, Any]:
        """The welcome's ``allowlist`` field: plain sorted lists, by kind where the tables are per kind."""
        return {
            "functions": sorted(self.functions),
            "contexts": sorted(self.contexts),
            "methods": {kind: sorted(names) for kind, names in sorted(self.methods.items())},
            "properties": {kind: sorted(names) for kind, names in sorted(self.properties.items())},
        }

    def size(self) -> int:
        return (
            len(self.functions)
            + len(self.contexts)
            + sum(len(n) for n in self.methods.values())
            + sum(len(n) for n in self.properties.values())
        )

    @classmethod
    def parse(cls, data: object) -> Tables:
        """Tables from a welcome's ``allowlist`` field; ProtocolError unless it has exactly the shape
        :meth:`export` gives, with at most :data:`MAX_ENTRIES` well-formed paths and names."""
        if not isinstance(data, dict) or set(data) != set(_FIELDS):
            raise ProtocolError(
                f"the owner's allowlist is not an object with the fields {', '.join(_FIELDS)}"
            )
        budget = [MAX_ENTRIES]
        functions = _strings(data["functions"], "functions", _is_path, budget)
        contexts = _strings(data["contexts"], "contexts", _is_path, budget)
        methods = _by_kind(data["methods"], "methods", budget)
        properties = _by_kind(data["properties"], "properties", budget)
        return cls(functions, contexts, methods, properties)

    # ---- the checks the client makes -----------------------------------------------------------------

    def check_path(self, path: str) -> None:
        """PermissionDenied unless ``path`` is on the tables, or a parent of a path that is."""
        if path not in self._prefixes:
            raise PermissionDenied(f"{path} is not on the allowlist")

    def is_context(self, path: str) -> bool:
        return path in self.contexts

    def is_property(self, name: str, known_type: object, type_of: Callable[[], object]) -> bool:
        """Whether ``ptr.name`` reads an attribute (a property, a module's layer or weight) or names a method.

        ``known_type`` is the type in the pointer's cached metadata (None if it has none): for a tensor the
        tables decide alone, and a name on neither of its tables is refused here (a tensor has no attributes
        by name). ``type_of()`` asks the owner, only for a name that is a property of one kind and a method
        of another (``values``: a Tuple's property, a Dict's method).
        """
        if known_type in _TENSOR_TYPES:
            if name in self.properties.get("Tensor", ()):
                return True
            if name in self.methods.get("Tensor", ()):
                return False
            raise PermissionDenied(f"Tensor.{name} is not on the allowlist")
        if name in self._props and name in self._method_names:
            return type_of() not in ("dict", "OrderedDict")
        return name in self._props or name not in self._method_names


def _is_path(text: str) -> bool:
    return len(text) <= _MAX_PATH and _PATH.fullmatch(text) is not None


def _is_name(text: str) -> bool:
    return _NAME.fullmatch(text) is not None


def _strings(value: object, field: str, valid: Callable[[str], bool], budget: list[int]) -> list[str]:
    if not isinstance(value, list):
        raise ProtocolError(f"the owner's allowlist {field} is not a list")
    budget[0] -= len(value)
    if budget[0] < 0:
        raise ProtocolError(f"the owner's allowlist has more than {MAX_ENTRIES} entries")
    bad = [v for v in value if not isinstance(v, str) or not valid(v)]
    if bad:
        raise ProtocolError(
            f"the owner's allowlist {field} has {len(bad)} malformed entries: {str(bad[0])[:80]!r}"
        )
    return value


def _by_kind(value: object, field: str, budget: list[int]) -> dict[str, list[str]]:
    if not isinstance(value, dict) or len(value) > MAX_KINDS:
        raise ProtocolError(f"the owner's allowlist {field} is not an object of at most {MAX_KINDS} kinds")
    out: dict[str, list[str]] = {}
    for kind, names in value.items():
        if not isinstance(kind, str) or not _is_name(kind):
            raise ProtocolError(f"the owner's allowlist {field} names a malformed kind {str(kind)[:80]!r}")
        out[kind] = _strings(names, f"{field} of {kind}", _is_name, budget)
    return out


@functools.cache
def default_tables() -> Tables:
    """The default allowlist's tables: what the client checks against until (or unless) the owner says."""
    return Tables.of(DEFAULT_ALLOWLIST)


def welcome(allowlist: Allowlist) -> dict[str, Any]:
    """The owner's ``welcome`` message, describing ``allowlist`` (left out, and logged, if it is too big
    for a scientist to accept: that scientist then checks against the default tables, the owner as ever)."""
    tables = Tables.of(allowlist)
    if tables.size() > MAX_ENTRIES:
        log.warning(
            "the allowlist has %d entries, more than a welcome describes (%d): the scientist's client "
            "pre-checks calls against the default allowlist",
            tables.size(),
            MAX_ENTRIES,
        )
        return {"t": "welcome"}
    return {"t": "welcome", "allowlist": tables.export()}


def from_welcome(header: Mapping[str, Any]) -> Tables:
    """The owner's tables from its welcome: the default tables if it describes none (an older owner) or
    describes them badly (logged: the owner checks every call anyway, so the session goes on)."""
    data = header.get("allowlist")
    if data is None:
        return default_tables()
    try:
        return Tables.parse(data)
    except ProtocolError as exc:
        log.warning("%s: pre-checking calls against the default allowlist instead", exc)
        return default_tables()
