"""The allowlist: every entry resolves, the tutorial runs through it, hostile names are refused."""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from duet.errors import PermissionDenied
from duet.remote import allowlist as al
from duet.remote.allowlist import DEFAULT_ALLOWLIST as A
from duet.remote.allowlist import Allowlist

ROOT = Path(__file__).resolve().parents[1]


def _tables(**changes: object) -> dict[str, object]:
    tables: dict[str, object] = {
        "functions": al.FUNCTION_FAMILIES,
        "contexts": al.CONTEXTS,
        "methods": al.METHODS,
        "operators": al.KIND_OPERATORS,
        "properties": al.PROPERTIES,
        "python_types": al.PYTHON_TYPES,
    }
    tables.update(changes)
    return tables


def _denied(call: object, shown: str) -> None:
    """``call()`` raises PermissionDenied and the message names what was refused."""
    with pytest.raises(PermissionDenied) as info:
        call()  # type: ignore[operator]
    assert shown in str(info.value), (shown, str(info.value))


# -- every entry resolves ------------------------------------------------------------------------------


def test_nothing_missing_in_installed_torch() -> None:
    assert A.missing() == []


@pytest.mark.parametrize("path", sorted(al.FUNCTIONS | al.CONTEXTS))
def test_every_function_resolves_to_a_torch_callable(path: str) -> None:
    obj = A.resolve_function(path)
    assert callable(obj)
    assert obj.__module__ == "torch" or obj.__module__.startswith("torch.")


def test_missing_reports_entries_this_torch_lacks() -> None:
    extended = A.extend(functions=["torch.nn.NoSuchLayer"], methods={"Tensor": ["no_such_method"]})
    assert extended.missing() == ["torch.nn.NoSuchLayer", "Tensor.no_such_method"]
    _denied(lambda: extended.resolve_function("torch.nn.NoSuchLayer"), "not available in this torch version")


def test_tables_are_sorted_without_duplicates() -> None:
    blocks = [*al.FUNCTION_FAMILIES.values(), *al.METHODS.values(), *al.PROPERTIES.values()]
    for block in blocks:
        assert list(block) == sorted(set(block))
    for block in al.KIND_OPERATORS.values():
        assert len(block) == len(set(block))


# -- the PySyft Duet tutorial ----------------------------------------------------------------------------


def _fn(path: str, *args: object, **kwargs: object) -> Any:
    return A.call_function(path, args, kwargs)


def _m(obj: object, name: str, *args: object, **kwargs: object) -> Any:
    return A.call_method(obj, name, args, kwargs)


@pytest.mark.filterwarnings("ignore:dropout2d. Received a 2-D input:UserWarning")  # as the tutorial does
def test_tutorial_calls_run_through_the_allowlist() -> None:
    assert _fn("torch.cuda.is_available") in (True, False)
    _fn("torch.manual_seed", 42)
    conv1, conv2 = _fn("torch.nn.Conv2d", 1, 32, 3, 1), _fn("torch.nn.Conv2d", 32, 64, 3, 1)
    dropout = _fn("torch.nn.Dropout2d", 0.25)
    fc1, fc2 = _fn("torch.nn.Linear", 9216, 128), _fn("torch.nn.Linear", 128, 10)
    model = _fn("torch.nn.Sequential", conv1, conv2, dropout, fc1, fc2)
    _m(model, "train")
    params = _m(model, "parameters")
    assert isinstance(params, list) and len(params) == 8
    optimizer = _fn("torch.optim.Adadelta", params, lr=1.0)
    scheduler = _fn("torch.optim.lr_scheduler.StepLR", optimizer, step_size=1, gamma=0.7)
    train_loss = A.python_type("Float")(0)
    data, target = _fn("torch.randn", 2, 1, 28, 28), _fn("torch.tensor", [3, 7])
    for _ in range(2):
        _m(optimizer, "zero_grad")
        x = _fn("torch.nn.functional.relu", _m(conv1, "__call__", data))
        x = _fn("torch.nn.functional.relu", _m(conv2, "__call__", x))
        x = _m(dropout, "__call__", _fn("torch.nn.functional.max_pool2d", x, 2))
        x = _fn("torch.nn.functional.relu", _m(fc1, "__call__", _fn("torch.flatten", x, 1)))
        output = _fn(
            "torch.nn.functional.log_softmax", _m(fc2, "__call__", _m(dropout, "__call__", x)), dim=1
        )
        loss = _fn("torch.nn.functional.nll_loss", output, target)
        _m(loss, "backward")
        _m(optimizer, "step")
        train_loss = _m(train_loss, "__iadd__", _m(loss, "item"))
    _m(scheduler, "step")
    _m(model, "eval")
    assert isinstance(train_loss, float)
    assert _m(_m(data, "float"), "mean") is not None
    assert set(_m(model, "state_dict")) >= {"0.weight", "4.bias"}


def test_remote_python_types() -> None:
    assert {n: A.python_type(n) for n in ("Float", "Int", "Bool", "List", "Dict", "Tuple", "String")} == {
        "Float": float,
        "Int": int,
        "Bool": bool,
        "List": list,
        "Dict": dict,
        "Tuple": tuple,
        "String": str,
    }
    _denied(lambda: A.python_type("Object"), "python.Object")
    assert _m([1], "__add__", [2]) == [1, 2]
    assert _m({"a": 1}, "items") == [("a", 1)]
    assert _m("Ab", "upper") == "AB"


def test_kinds() -> None:
    values: tuple[object, ...] = (True, 1, 1.0, "s", [], {}, ())
    assert [A.kind_of(v) for v in values] == [
        "Bool",
        "Int",
        "Float",
        "String",
        "List",
        "Dict",
        "Tuple",
    ]
    assert A.kind_of(OrderedDict()) == "Dict" and A.kind_of(torch.Size([2])) == "Tuple"
    assert A.kind_of(torch.nn.Parameter(torch.zeros(1))) == "Tensor"
    assert A.kind_of(object()) is None and A.kind_of(torch.float32) is None


def test_module_attributes_are_its_registered_children() -> None:
    model = _fn("torch.nn.Sequential", _fn("torch.nn.Linear", 2, 2))
    layer = _m(model, "__getitem__", 0)
    assert A.get_property(layer, "weight").shape == (2, 2)
    assert A.get_property(layer, "training") is True
    _denied(lambda: A.check_property(layer, "in_features"), "Module.in_features")
    _denied(lambda: A.check_property(layer, "_parameters"), "Module._parameters")


def test_contexts_are_entered_not_called() -> None:
    assert A.is_context("torch.no_grad") and A.is_context("torch.enable_grad")
    assert not A.is_context("torch.add") and not A.is_context(None)  # type: ignore[arg-type]
    assert A.resolve_function("torch.no_grad") is torch.no_grad
    _denied(lambda: A.call_function("torch.no_grad", (), {}), "torch.no_grad is a context manager")


def test_argument_rules() -> None:
    x = torch.zeros(2)
    assert _m(x, "to", torch.float64).dtype == torch.float64
    assert _m(x, "to", dtype=torch.int32, copy=True).dtype == torch.int32
    assert _m(x, "to", "cpu") is x
    for args, kwargs in [
        (("cuda",), {}),
        ((torch.zeros(1),), {}),
        ((), {"device": "cuda"}),
        ((), {"dtype": 1}),
    ]:
        _denied(lambda a=args, k=kwargs: _m(x, "to", *a, **k), "to(")
    _denied(lambda: _fn("torch.add", x, x, out=x), "torch.add(out=...)")
    _denied(lambda: _fn("torch.zeros", 2, device="cuda"), "torch.zeros(device=...)")
    assert _fn("torch.zeros", 2, device="cpu").shape == (2,)


def test_operands_cannot_build_huge_sequences() -> None:
    _denied(lambda: _m(10, "__mul__", "a"), "Int.__mul__ with a str operand")
    _denied(lambda: _m(10, "__rmul__", [0]), "Int.__rmul__ with a list operand")
    _denied(lambda: _m(torch.tensor(10), "__rmul__", [0]), "Tensor.__rmul__ with a list operand")
    _denied(lambda: _m("a", "__add__", 1), "String.__add__ with a int operand")
    _denied(lambda: A.resolve_method(2.0, "__add__")("x"), "Float.__add__ with a str operand")
    assert _m(2, "__rsub__", 10) == 8 and _m(torch.ones(1), "__rpow__", 2).item() == 2.0


def test_mutates() -> None:
    x, model = torch.zeros(1), torch.nn.Linear(1, 1)
    assert A.mutates(x, "add_") and A.mutates(x, "__iadd__") and A.mutates(x, "__setitem__")
    assert not A.mutates(x, "add") and not A.mutates(x, "__invert__") and not A.mutates(x, "float")
    assert A.mutates(model, "float") and A.mutates([], "append") and not A.mutates([], "count")


# -- refusals --------------------------------------------------------------------------------------------

HOSTILE_PATHS = [
    "torch.__builtins__",
    "torch.Tensor.__class__",
    "torch.Tensor.__reduce_ex__",
    "torch.add.__globals__",
    "torch.Tensor.__subclasses__",
    "torch.nn.Linear.__init__",
    "torch.save",
    "torch.load",
    "torch.hub.load",
    "torch.jit.script",
    "torch.compile",
    "torch.utils.cpp_extension.load_inline",
    "torch.utils.data.DataLoader",
    "torch.ops.aten.add",
    "torch.library.Library",
    "torch.from_file",
    "torch.set_num_threads",
    "torch.set_num_interop_threads",
    "torch.Tensor.numpy",
    "torch.Tensor",
    "torch.Tensor.add",
    "os.system",
    "builtins.eval",
    "builtins.__import__",
    "torch.nn.Module.register_forward_hook",
    "torch.classes",
    "torch.distributed.init_process_group",
    "torch.multiprocessing.Process",
    "torch._C",
    "torch._C._set_grad_enabled",
    "torch.backends.cudnn",
    "torch.cuda.set_device",
    "torch.empty",
    "torch.set_grad_enabled",
    "torch.optim.lr_scheduler.LambdaLR",
    "torch.optim.LBFGS",
    "torch",
    "torch.nn",
    "torchvision.datasets.MNIST",
    "torch..add",
    "torch.add.__call__",
    "torch.add.",
    ".torch.add",
    "torch.add ",
    "torch.add\n",
    "TORCH.add",
    "",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_paths_are_refused(path: str) -> None:
    shown = path if path and path.replace(".", "").replace("_", "").isalnum() else repr(path)
    _denied(lambda: A.resolve_function(path), shown)
    _denied(lambda: A.call_function(path, (), {}), shown)
    assert not A.is_context(path)


@pytest.mark.parametrize("value", [123, None, b"torch.add", ["torch.add"], torch.add])
def test_non_string_paths_are_refused(value: object) -> None:
    _denied(lambda: A.resolve_function(value), f"<{type(value).__name__}>")  # type: ignore[arg-type]


def test_very_long_path_is_refused() -> None:
    path = "torch." + "a" * 10_000
    with pytest.raises(PermissionDenied) as info:
        A.resolve_function(path)
    assert "torch.aaaa" in str(info.value) and len(str(info.value)) < 200


_TENSOR = torch.zeros(2)
_MODULE = torch.nn.Linear(1, 1)
HOSTILE_METHODS = [
    (_TENSOR, "Tensor", name)
    for name in (
        "apply_", "map_", "map2_", "register_hook", "data_ptr", "storage", "untyped_storage", "numpy",
        "share_memory_", "pin_memory", "cuda", "set_", "resize_", "new_empty", "__reduce_ex__", "__reduce__",
        "__class__", "__init__", "__dict__", "__getattribute__", "__setattr__", "__call__", "_version",
        "__index__", "__bool__", "type",
    )
] + [
    (_MODULE, "Module", name)
    for name in ("register_forward_hook", "apply", "cuda", "__setattr__", "_apply", "add_module", "__init__")
] + [
    ("s", "String", "format"), ("s", "String", "format_map"), ("s", "String", "join"),
    ("s", "String", "ljust"),
    ("s", "String", "__mul__"), ([1], "List", "sort"), ([1], "List", "__mul__"), (2, "Int", "__pow__"),
    (2, "Int", "__lshift__"), (True, "Bool", "__invert__"), ((), "Tuple", "__mul__"),
    (torch.float32, "dtype", "to_complex"), (object(), "object", "__str__"), (torch, "module", "save"),
    (print, "builtin_function_or_method", "__call__"), (_TENSOR, "Tensor", ""),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "kind", "name"), HOSTILE_METHODS)
def test_hostile_methods_are_refused(obj: object, kind: str, name: str) -> None:
    shown = f"{kind}.{name or repr(name)}"
    _denied(lambda: A.check_method(obj, name), shown)
    _denied(lambda: A.call_method(obj, name, (), {}), shown)


@pytest.mark.parametrize(
    ("obj", "name"),
    [
        (_TENSOR, "__dict__"),
        (_TENSOR, "_cdata"),
        (_TENSOR, "grad_fn"),
        (_TENSOR, "__class__"),
        (_MODULE, "_modules"),
    ],
)
def test_hostile_properties_are_refused(obj: object, name: str) -> None:
    _denied(lambda: A.get_property(obj, name), name)


def test_non_string_names_are_refused() -> None:
    _denied(lambda: A.check_method(_TENSOR, 3), "Tensor.<int>")  # type: ignore[arg-type]
    _denied(lambda: A.check_property(_TENSOR, None), "Tensor.<NoneType>")  # type: ignore[arg-type]


# -- the NEVER guard -------------------------------------------------------------------------------------


def test_no_table_entry_matches_never() -> None:
    for path in al.FUNCTIONS | al.CONTEXTS:
        assert al._never_path(path) is None, path
    for names in (*al.METHODS.values(), *al.PROPERTIES.values(), *al.KIND_OPERATORS.values()):
        assert not set(names) & set(al.NEVER_NAMES)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"functions": {"io": ["torch.save"]}}, "torch.save"),
        ({"functions": {"io": ["torch.utils.data.DataLoader"]}}, "NEVER_PATHS['torch.utils']"),
        ({"functions": {"x": ["torch.cuda.set_device"]}}, "torch.cuda.set_device"),
        ({"functions": {"x": ["torch._C._nn.linear"]}}, "torch._C._nn.linear"),
        ({"functions": {"x": ["os.system"]}}, "os.system"),
        ({"contexts": ["torch.set_grad_enabled"]}, "torch.set_grad_enabled"),
        ({"methods": {"Tensor": ["numpy"]}}, "Tensor.numpy"),
        ({"methods": {"Tensor": ["__reduce_ex__"]}}, "Tensor.__reduce_ex__"),
        ({"properties": {"Module": ["_modules"]}}, "Module._modules"),
        ({"operators": {"Tensor": ["__reduce__"]}}, "Tensor.__reduce__"),
        ({"operators": {"Gadget": ["__add__"]}}, "Gadget: unknown kind"),
        ({"python_types": {**al.PYTHON_TYPES, "Bytes": bytearray}}, "python type Bytes"),
    ],
)
def test_building_with_a_forbidden_entry_raises(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(RuntimeError, match="allowlist review failed") as info:
        Allowlist(**_tables(**changes))  # type: ignore[arg-type]
    assert problem in str(info.value)


def test_extend_is_reviewed_and_leaves_the_original_alone() -> None:
    extended = A.extend(functions=["torch.special.erf"], methods={"Tensor": ["erfinv"]})
    assert extended.resolve_function("torch.special.erf") is torch.special.erf
    extended.check_method(_TENSOR, "erfinv")
    assert extended.families()["owner additions"] == 1
    _denied(lambda: A.resolve_function("torch.special.erf"), "torch.special.erf")
    with pytest.raises(RuntimeError, match="torch.load"):
        A.extend(functions=["torch.load"])
    with pytest.raises(AttributeError):
        A._functions = frozenset()


def test_import_fails_when_a_table_names_a_forbidden_entry(tmp_path: Path) -> None:
    source = Path(al.__file__).read_text(encoding="utf-8")
    patched = source.replace('"torch.zeros_like",', '"torch.zeros_like", "torch.load",', 1)
    assert patched != source
    target = tmp_path / "patched_allowlist.py"
    target.write_text(patched, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("patched_allowlist", target)
    assert spec is not None and spec.loader is not None
    with pytest.raises(RuntimeError, match="torch.load"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


# -- counts and docs -------------------------------------------------------------------------------------


def test_families_count_every_table() -> None:
    counts = A.families()
    for family, paths in al.FUNCTION_FAMILIES.items():
        assert counts[family] == len(paths)
    assert counts["contexts"] == 3
    assert counts["Tensor methods"] == len(al.TENSOR_METHODS)
    assert counts["Tensor operators"] == len(al.TENSOR_OPERATORS)
    assert counts["Module operators"] == 3
    assert counts["Float operators"] == len(al.PYTHON_OPERATORS["Float"])
    expected = len(al.FUNCTIONS) + len(al.CONTEXTS)
    expected += sum(
        len(v) for table in (al.METHODS, al.KIND_OPERATORS, al.PROPERTIES) for v in table.values()
    )
    assert sum(counts.values()) == expected


def test_tables_lists_every_entry() -> None:
    tables = A.tables()
    assert tables["functions"]["contexts"] == sorted(al.CONTEXTS)
    assert {p for paths in tables["functions"].values() for p in paths} == al.FUNCTIONS | al.CONTEXTS
    assert tables["properties"]["Tensor"] == sorted(al.TENSOR_PROPERTIES)


def test_docs_are_up_to_date() -> None:
    committed = (ROOT / "docs" / "allowlist.md").read_text(encoding="utf-8")
    assert committed == al.render_markdown(), "regenerate with duet.remote.allowlist.write_docs()"
    for entry in (*al.NEVER_PATHS, *al.NEVER_NAMES, "torch.nn.functional.nll_loss", "__iadd__"):
        assert f"`{entry}`" in committed


def test_bound_calls_check_and_answer_as_the_calls_themselves() -> None:
    """A plan's fast path calls through bindings made once: they must refuse and answer as call_function
    and call_method do, argument by argument."""
    x = torch.arange(6.0).reshape(2, 3)
    relu = A.bind_function("torch.nn.functional.relu")
    assert torch.equal(relu([x - 2], {}), A.call_function("torch.nn.functional.relu", [x - 2], {}))
    add = A.bind_function("torch.add")
    with pytest.raises(PermissionDenied, match="out="):
        add([x, x], {"out": torch.empty(2, 3)})
    with pytest.raises(PermissionDenied):
        A.bind_function("torch.no_grad")  # a context manager runs only as a with block
    with pytest.raises(PermissionDenied):
        A.bind_function("os.system")

    to = A.bind_method(x, "to")
    assert to(x, [torch.float64], {}).dtype == torch.float64
    with pytest.raises(PermissionDenied, match="dtypes only"):
        to(x, ["meta"], {})
    mul = A.bind_method(x, "__mul__")
    assert torch.equal(mul(x, [2], {}), A.call_method(x, "__mul__", [2], {}))
    split = A.bind_method(x, "split")
    parts, expected = split(x, [1], {}), A.call_method(x, "split", [1], {})
    assert type(parts) is type(expected) and len(parts) == len(expected) == 2
    assert all(torch.equal(a, b) for a, b in zip(parts, expected))
    with pytest.raises(PermissionDenied):
        A.bind_method(x, "__setattr__")
    with pytest.raises(PermissionDenied, match="another type"):
        mul(2.0, [2], {})  # a binding is for objects of the type it was made for
    with pytest.raises(PermissionDenied):
        mul(x, ["text"], {})  # the operand rule of arithmetic still holds
