"""The dry-run cache's module side: results kept per module and by module structure, and forgotten when a
module's dtype changes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from duet.remote import guards
from tests.test_executor import Owner

LIMIT = 1 << 30


@pytest.fixture
def dry_runs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every dry run that really runs (a cache miss), in order."""
    ran: list[Any] = []
    measure = guards._measure

    def counted(run: Any) -> Any:
        ran.append(run)
        return measure(run)

    monkeypatch.setattr(guards, "_measure", counted)
    monkeypatch.setattr(guards, "_CACHE", guards._DryRunCache())
    return ran


def forward(module: torch.nn.Module, x: torch.Tensor) -> None:
    guards.dry_run_module(module, [x], {}, LIMIT)


def test_a_module_of_the_same_structure_reuses_the_dry_run(dry_runs: list[Any]) -> None:
    x = torch.zeros(32, 1, 8, 8)
    first, second = torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(1, 8, 3)
    forward(first, x)
    forward(first, x)
    assert len(dry_runs) == 1
    forward(second, x)  # another module, the same structure: no dry run of its own
    assert len(dry_runs) == 1
    forward(second, torch.zeros(5, 1, 8, 8))  # a new input shape is a new signature
    assert len(dry_runs) == 2


@pytest.mark.parametrize(
    "other",
    [
        lambda: torch.nn.Conv2d(1, 8, 3, stride=2),  # an attribute differs
        lambda: torch.nn.Conv2d(1, 8, 3, padding=1),
        lambda: torch.nn.Conv2d(1, 8, 3, bias=False),  # a parameter is missing
        lambda: torch.nn.Conv2d(1, 8, 3).double(),  # the parameters' dtype differs
        lambda: torch.nn.Conv2d(1, 16, 3),  # the parameters' shapes differ
    ],
)
def test_a_different_structure_gets_its_own_dry_run(dry_runs: list[Any], other: Any) -> None:
    x = torch.zeros(4, 1, 8, 8)
    forward(torch.nn.Conv2d(1, 8, 3), x)
    module = other()
    assert guards.module_structure(module) != guards.module_structure(torch.nn.Conv2d(1, 8, 3))
    forward(module, x.to(next(module.parameters()).dtype))
    assert len(dry_runs) == 2


def test_training_mode_and_children_are_part_of_the_structure() -> None:
    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))

    assert guards.module_structure(net()) == guards.module_structure(net())
    assert guards.module_structure(net().eval()) != guards.module_structure(net())
    other = net()
    other[1].p = 0.1
    assert guards.module_structure(other) != guards.module_structure(net())
    assert guards.module_structure(torch.nn.Sequential(torch.nn.Linear(4, 8))) != guards.module_structure(
        torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    )


def test_modules_with_forward_hooks_or_odd_attributes_have_no_structure() -> None:
    hooked = torch.nn.Linear(4, 4)
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    assert guards.module_structure(hooked) is None
    odd = torch.nn.Linear(4, 4)
    odd.table = {"a": 1}  # not a plain value: who knows what forward does with it
    assert guards.module_structure(odd) is None
    assert guards.module_structure(torch.nn.LazyLinear(4)) is None
    parent = torch.nn.Sequential(hooked)
    assert guards.module_structure(parent) is None  # a child without a structure spoils its parents'


def test_a_module_without_structure_is_still_cached_per_module(dry_runs: list[Any]) -> None:
    x = torch.zeros(2, 4)
    hooked = torch.nn.Linear(4, 4)
    hooked.register_forward_pre_hook(lambda m, i: None)
    forward(hooked, x)
    forward(hooked, x)
    assert len(dry_runs) == 1
    other = torch.nn.Linear(4, 4)
    other.register_forward_pre_hook(lambda m, i: None)
    forward(other, x)
    assert len(dry_runs) == 2


def test_a_dtype_change_through_the_executor_forgets_the_module(dry_runs: list[Any]) -> None:
    """An embedding's output dtype is its weight's, not its input's: after ``emb.double()`` the same call
    signature makes float64, so the cached float32 figure must not answer it."""
    o = Owner()
    emb = o.call("torch.nn.Embedding", 100, 64)
    idx = o.call("torch.zeros", 16, dtype=torch.int64)
    o.value(o.meth(emb, "__call__", idx))
    before = len(dry_runs)
    o.value(o.meth(emb, "__call__", idx))
    assert len(dry_runs) == before  # cached
    o.meth(emb, "double")
    out = o.meth(emb, "__call__", idx)
    assert o.failures == []
    assert o.value(out).dtype == torch.float64
    assert len(dry_runs) == before + 1  # forgotten, so run again
    size, _ = guards._CACHE.size((True, [o.value(idx)], {}), o.value(emb), lambda: None)
    assert size == 16 * 64 * 8


def test_a_doubled_result_over_quota_is_refused_by_the_dry_run(dry_runs: list[Any]) -> None:
    """The tensor quota lets the float32 output through and not the float64 one: the second is refused
    by its dry run before it runs, not measured by the figure cached for the float32 module."""
    o = Owner(tensor_bytes=100_000)  # float32 out 65,536 B fits; float64 out 131,072 B does not
    emb = o.call("torch.nn.Embedding", 100, 64)
    idx = o.call("torch.zeros", 256, dtype=torch.int64)
    assert o.value(o.meth(emb, "__call__", idx)).shape == (256, 64)
    o.meth(emb, "double")
    before = len(dry_runs)
    out = o.meth(emb, "__call__", idx)
    assert len(dry_runs) == before + 1
    err = o.error(out)
    assert err.remote_type == "QuotaExceeded" and "Embedding.__call__ would make" in err.remote_message
