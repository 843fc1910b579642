"""The allowlist as the scientist's client sees it: the owner's welcome describes its tables, the client checks
them for shape and size, and uses them to fail early and to tell a method from a property."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from duet.errors import PermissionDenied, ProtocolError
from duet.remote.allowlist import DEFAULT_ALLOWLIST
from duet.remote.tables import MAX_ENTRIES, Tables, default_tables, from_welcome, welcome

EXTENDED = DEFAULT_ALLOWLIST.extend(
    functions=["torch.special.erf"],
    contexts=["torch.autograd.grad_mode.no_grad"],
    methods={"Tensor": ["erfinv"]},
    properties={"Tensor": ["nbytes"]},
)


def described(allowlist: Any = DEFAULT_ALLOWLIST) -> dict[str, Any]:
    return json.loads(json.dumps(welcome(allowlist)))  # as it crosses the wire


def test_the_default_tables_are_the_default_allowlists() -> None:
    t = default_tables()
    tables = DEFAULT_ALLOWLIST.tables()
    assert t.contexts == frozenset(tables["functions"]["contexts"]) and "torch.no_grad" in t.contexts
    assert "torch.nn.Linear" in t.functions and "torch.no_grad" not in t.functions
    assert t.methods["Tensor"] == frozenset(tables["methods"]["Tensor"])
    assert t.properties["Module"] == frozenset({"training"})
    for path in ("torch", "torch.nn", "torch.nn.functional", "torch.optim.lr_scheduler", "torch.no_grad"):
        t.check_path(path)  # a path on the tables, or the parent of one
    for path in ("torch.special", "torch.special.erf", "torch.save", "torch.nn.functional.foo"):
        with pytest.raises(PermissionDenied, match=f"{path} is not on the allowlist"):
            t.check_path(path)


def test_a_welcome_describes_the_owners_additions_and_round_trips() -> None:
    header = described(EXTENDED)
    assert header["t"] == "welcome" and "torch.special.erf" in header["allowlist"]["functions"]
    assert "erfinv" in header["allowlist"]["methods"]["Tensor"]
    assert len(json.dumps(header)) < 16_000  # the whole default allowlist is about 9 KB
    t = from_welcome(header)
    assert t.export() == Tables.of(EXTENDED).export()
    t.check_path("torch.special")
    t.check_path("torch.special.erf")
    assert t.is_context("torch.autograd.grad_mode.no_grad")
    assert not default_tables().is_context("torch.autograd.grad_mode.no_grad")
    assert from_welcome(described()).export() == default_tables().export()


def test_an_owner_that_describes_nothing_gets_the_default_tables() -> None:
    assert from_welcome({"t": "welcome"}) is default_tables()


def _bad(field: str, value: Any) -> dict[str, Any]:
    data = described()["allowlist"]
    data[field] = value
    return data


BAD: dict[str, Any] = {
    "not an object": ["torch.add"],
    "a field missing": {k: v for k, v in described()["allowlist"].items() if k != "contexts"},
    "an extra field": {**described()["allowlist"], "operators": {}},
    "functions not a list": _bad("functions", "torch.add"),
    "a path outside torch": _bad("functions", ["os.system"]),
    "a private path": _bad("functions", ["torch._C._nn"]),
    "an empty part": _bad("functions", ["torch..add"]),
    "a path that is not text": _bad("functions", [7]),
    "an overlong path": _bad("functions", ["torch." + ".".join(["a" * 60] * 5)]),
    "methods not an object": _bad("methods", [["Tensor", "abs"]]),
    "a dunder method": _bad("methods", {"Tensor": ["__class__"]}),
    "a private property": _bad("properties", {"Tensor": ["_base"]}),
    "a malformed kind": _bad("methods", {"Tensor.x": ["abs"]}),
    "names not a list": _bad("properties", {"Tensor": "T"}),
    "too many kinds": _bad("methods", {f"K{i}": ["abs"] for i in range(65)}),
    "too many entries": _bad("functions", ["torch.add"] * (MAX_ENTRIES + 1)),
    "too many over all fields": _bad("methods", {f"K{i}": ["abs"] * (MAX_ENTRIES // 60) for i in range(64)}),
}


@pytest.mark.parametrize("data", BAD.values(), ids=BAD.keys())
def test_a_bad_description_is_refused(data: Any) -> None:
    with pytest.raises(ProtocolError, match="the owner's allowlist"):
        Tables.parse(data)


@pytest.mark.parametrize("data", list(BAD.values())[:4], ids=list(BAD.keys())[:4])
def test_a_bad_welcome_falls_back_to_the_default_tables(data: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="duet.tables"):
        assert from_welcome({"t": "welcome", "allowlist": data}) is default_tables()
    assert "pre-checking calls against the default allowlist" in caplog.text


def test_an_allowlist_too_big_to_describe_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    huge = DEFAULT_ALLOWLIST.extend(methods={"Tensor": [f"m{i}" for i in range(MAX_ENTRIES)]})
    with caplog.at_level(logging.WARNING, logger="duet.tables"):
        assert welcome(huge) == {"t": "welcome"}
    assert "more than a welcome describes" in caplog.text


# ---- method or property ----------------------------------------------------------------------------------


def _never() -> object:
    raise AssertionError("asked the owner for the type")


def test_a_tensors_names_are_decided_by_the_tensor_tables() -> None:
    default, extended = default_tables(), Tables.of(EXTENDED)
    assert default.is_property("T", "Tensor", _never) and not default.is_property("sum", "Parameter", _never)
    assert not extended.is_property("erfinv", "Tensor", _never) and extended.is_property(
        "nbytes", "Tensor", _never
    )
    for name in ("erfinv", "nbytes", "parameters", "training"):  # not a tensor's (the last two: a module's)
        with pytest.raises(PermissionDenied, match=f"Tensor.{name} is not on the allowlist"):
            default.is_property(name, "Tensor", _never)


def test_without_metadata_an_unknown_name_is_a_property_read() -> None:
    t = default_tables()
    assert t.is_property("fc1", None, _never) and t.is_property(
        "weight", "Linear", _never
    )  # a module's layer
    assert t.is_property("erfinv", None, _never)  # the owner refuses it (reading it as a property)
    assert not Tables.of(EXTENDED).is_property("erfinv", None, _never)
    assert not t.is_property("parameters", "Linear", _never)


def test_a_name_both_a_property_and_a_method_asks_the_type() -> None:
    t = default_tables()
    assert "values" in t.properties["Tuple"] and "values" in t.methods["Dict"]
    assert not t.is_property("values", None, lambda: "dict")
    assert t.is_property("values", None, lambda: "return_types.max")
