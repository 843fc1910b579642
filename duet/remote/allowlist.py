"""The allowlist: reviewed tables of every torch call, method and property a scientist may run remotely.

The owner runs a peer's call only if these tables name it. Three kinds of entry:

- *functions*: dotted paths under ``torch.`` (``torch.add``, ``torch.nn.Linear``, ``torch.optim.SGD``),
  grouped in families; ``CONTEXTS`` are the context managers the executor enters for a ``with`` block.
- *methods and properties*, per kind of object: ``Tensor``, ``Module``, ``Optimizer``, ``Scheduler`` and
  the remote Python types (``Float``, ``Int``, ``Bool``, ``String``, ``List``, ``Dict``, ``Tuple``).
- *operators*: the only dunders ever run, the Python syntax the executor maps to a method
  (``x + y`` → ``__add__``); each runs through the ``operator`` module, so reflection and the in-place
  fallback behave exactly as in Python.

Nothing is a wildcard. Private and dunder names are refused by shape before any table lookup, and a
path is walked from the ``torch`` module only after it was found in a table. ``NEVER_PATHS`` and
``NEVER_NAMES`` are a safety net for code review: building an ``Allowlist`` (and so importing this
module) raises ``RuntimeError`` if any table names one of them.

Every remote call passes through ``call_function`` or ``call_method``, which check the name, the
arguments (``check_arguments``) and the operands of operators before running anything.
"""

from __future__ import annotations

import functools
import inspect
import operator
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from duet.errors import PermissionDenied

__all__ = [
    "Allowlist",
    "CONTEXTS",
    "DEFAULT_ALLOWLIST",
    "FUNCTION_FAMILIES",
    "FUNCTIONS",
    "KIND_OPERATORS",
    "METHODS",
    "NEVER_EXCEPTIONS",
    "NEVER_NAMES",
    "NEVER_PATHS",
    "OPERATORS",
    "PROPERTIES",
    "PYTHON_TYPES",
    "render_markdown",
    "write_docs",
]

# ---------------------------------------------------------------------------------------------------------
# Functions: dotted paths a scientist may call, one family per block, sorted.
# ---------------------------------------------------------------------------------------------------------

# fmt: off
CREATION = (
    "torch.arange", "torch.as_tensor", "torch.bernoulli", "torch.eye", "torch.full", "torch.full_like",
    "torch.linspace", "torch.logspace", "torch.multinomial", "torch.normal", "torch.ones", "torch.ones_like",
    "torch.poisson", "torch.rand", "torch.rand_like", "torch.randint", "torch.randint_like", "torch.randn",
    "torch.randn_like", "torch.randperm", "torch.tensor", "torch.zeros", "torch.zeros_like",
)

MATH = (
    "torch.abs", "torch.add", "torch.addmm", "torch.all", "torch.allclose", "torch.amax", "torch.amin",
    "torch.any", "torch.argmax", "torch.argmin", "torch.argsort", "torch.bmm", "torch.cdist", "torch.ceil",
    "torch.clamp", "torch.clip", "torch.cos", "torch.cosh", "torch.count_nonzero", "torch.cumprod",
    "torch.cumsum", "torch.dist", "torch.div", "torch.dot", "torch.einsum", "torch.eq", "torch.equal",
    "torch.erf", "torch.exp", "torch.expm1", "torch.floor", "torch.floor_divide", "torch.fmod", "torch.ge",
    "torch.gt", "torch.isclose", "torch.isfinite", "torch.isinf", "torch.isnan", "torch.kthvalue",
    "torch.le", "torch.lerp", "torch.log", "torch.log10", "torch.log1p", "torch.log2", "torch.log_softmax",
    "torch.logical_and", "torch.logical_not", "torch.logical_or", "torch.logical_xor", "torch.logsumexp",
    "torch.lt", "torch.matmul", "torch.max", "torch.maximum", "torch.mean", "torch.median", "torch.min",
    "torch.minimum", "torch.mm", "torch.mul", "torch.mv", "torch.nan_to_num", "torch.nanmean",
    "torch.nansum", "torch.ne", "torch.neg", "torch.norm", "torch.outer", "torch.pow", "torch.prod",
    "torch.quantile", "torch.reciprocal", "torch.relu", "torch.remainder", "torch.round", "torch.rsqrt",
    "torch.sigmoid", "torch.sign", "torch.sin", "torch.sinh", "torch.softmax", "torch.sort", "torch.sqrt",
    "torch.square", "torch.std", "torch.std_mean", "torch.sub", "torch.sum", "torch.tan", "torch.tanh",
    "torch.topk", "torch.trace", "torch.true_divide", "torch.trunc", "torch.unique", "torch.var",
    "torch.var_mean", "torch.where",
)

SHAPES = (
    "torch.argwhere", "torch.broadcast_to", "torch.cat", "torch.chunk", "torch.clone", "torch.detach",
    "torch.diag", "torch.flatten", "torch.flip", "torch.gather", "torch.hstack", "torch.index_select",
    "torch.masked_fill", "torch.masked_select", "torch.movedim", "torch.narrow", "torch.nonzero",
    "torch.permute", "torch.reshape", "torch.roll", "torch.scatter", "torch.split", "torch.squeeze",
    "torch.stack", "torch.t", "torch.take", "torch.transpose", "torch.tril", "torch.triu", "torch.unbind",
    "torch.unsqueeze", "torch.vstack",
)

NN_FUNCTIONAL = tuple(
    "torch.nn.functional." + name
    for name in (
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool1d", "avg_pool2d",
        "batch_norm", "binary_cross_entropy", "binary_cross_entropy_with_logits", "conv1d", "conv2d",
        "conv3d", "conv_transpose2d", "cosine_similarity", "cross_entropy", "dropout", "dropout1d",
        "dropout2d", "elu", "embedding", "gelu", "glu", "group_norm", "hardswish", "hardtanh", "huber_loss",
        "interpolate", "kl_div", "l1_loss", "layer_norm", "leaky_relu", "linear", "log_softmax", "logsigmoid",
        "max_pool1d", "max_pool2d", "mish", "mse_loss", "nll_loss", "normalize", "one_hot", "pad",
        "pairwise_distance", "relu", "relu6", "selu", "sigmoid", "silu", "smooth_l1_loss", "softmax",
        "softmin", "softplus", "tanh",
    )
)

NN_LAYERS = tuple(
    "torch.nn." + name
    for name in (
        "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool1d", "AvgPool2d", "BCELoss",
        "BCEWithLogitsLoss", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Bilinear", "Conv1d", "Conv2d",
        "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "CosineSimilarity", "CrossEntropyLoss", "Dropout",
        "Dropout1d", "Dropout2d", "ELU", "Embedding", "Flatten", "GELU", "GRU", "GroupNorm", "Hardtanh",
        "HuberLoss", "Identity", "KLDivLoss", "L1Loss", "LSTM", "LayerNorm", "LeakyReLU", "Linear",
        "LogSigmoid", "LogSoftmax", "MSELoss", "MaxPool1d", "MaxPool2d", "Mish", "ModuleList", "NLLLoss",
        "PReLU", "RNN", "ReLU", "ReLU6", "SELU", "Sequential", "SiLU", "Sigmoid", "SmoothL1Loss", "Softmax",
        "Softplus", "Tanh", "Unflatten",
    )
)

OPTIMIZERS = tuple(
    "torch.optim." + name
    for name in (
        "Adadelta", "Adagrad", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop", "SGD",
    )
)  # LBFGS is not here: its step() needs a closure, and peers cannot send code

SCHEDULERS = tuple(
    "torch.optim.lr_scheduler." + name
    for name in (
        "ConstantLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "ExponentialLR", "LinearLR",
        "MultiStepLR", "OneCycleLR", "ReduceLROnPlateau", "StepLR",
    )
)  # LambdaLR, MultiplicativeLR and CyclicLR take Python callables: never

RUNTIME = (
    "torch.cuda.is_available", "torch.get_default_dtype", "torch.is_floating_point", "torch.is_grad_enabled",
    "torch.is_tensor", "torch.manual_seed", "torch.numel",
)

FUNCTION_FAMILIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "tensor creation": CREATION,
        "math and reductions": MATH,
        "shapes and indexing": SHAPES,
        "nn.functional": NN_FUNCTIONAL,
        "nn layers": NN_LAYERS,
        "optimizers": OPTIMIZERS,
        "lr schedulers": SCHEDULERS,
        "runtime": RUNTIME,
    }
)
FUNCTIONS: frozenset[str] = frozenset().union(*FUNCTION_FAMILIES.values())

# Entered by the executor around a `with` block; constructing one changes nothing until it is entered.
# (torch.set_grad_enabled is not here: it flips grad mode when constructed.)
CONTEXTS: frozenset[str] = frozenset({"torch.enable_grad", "torch.inference_mode", "torch.no_grad"})

# ---------------------------------------------------------------------------------------------------------
# Operators: the only dunders duet runs; each maps Python syntax to the `operator` function implementing it.
# ---------------------------------------------------------------------------------------------------------


def _reflected(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``__radd__(self, other)`` is ``other + self``."""

    def call(self: Any, other: Any) -> Any:
        return fn(other, self)

    return call


def _call(self: Any, *args: Any, **kwargs: Any) -> Any:
    return self(*args, **kwargs)


OPERATORS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {
        "__abs__": operator.abs, "__add__": operator.add, "__and__": operator.and_, "__call__": _call,
        "__contains__": operator.contains, "__eq__": operator.eq, "__floordiv__": operator.floordiv,
        "__ge__": operator.ge, "__getitem__": operator.getitem, "__gt__": operator.gt,
        "__iadd__": operator.iadd, "__iand__": operator.iand, "__ifloordiv__": operator.ifloordiv,
        "__imul__": operator.imul, "__invert__": operator.invert, "__ior__": operator.ior,
        "__isub__": operator.isub, "__itruediv__": operator.itruediv, "__ixor__": operator.ixor,
        "__le__": operator.le, "__len__": len, "__lt__": operator.lt, "__matmul__": operator.matmul,
        "__mod__": operator.mod, "__mul__": operator.mul, "__ne__": operator.ne, "__neg__": operator.neg,
        "__or__": operator.or_, "__pow__": operator.pow, "__radd__": _reflected(operator.add),
        "__rand__": _reflected(operator.and_), "__rfloordiv__": _reflected(operator.floordiv),
        "__rmatmul__": _reflected(operator.matmul), "__rmod__": _reflected(operator.mod),
        "__rmul__": _reflected(operator.mul), "__ror__": _reflected(operator.or_),
        "__rpow__": _reflected(operator.pow), "__rsub__": _reflected(operator.sub),
        "__rtruediv__": _reflected(operator.truediv), "__rxor__": _reflected(operator.xor),
        "__setitem__": operator.setitem, "__sub__": operator.sub, "__truediv__": operator.truediv,
        "__xor__": operator.xor,
    }
)

# Operators whose other operand must be a number or a tensor (for String/List/Tuple: the same type), so
# that `Int * "a"` or `[0] * tensor(10**9)` cannot build a huge sequence through Python's reflection.
ARITHMETIC = frozenset(
    {"__add__", "__and__", "__floordiv__", "__iadd__", "__iand__", "__ifloordiv__", "__imul__", "__ior__",
     "__isub__", "__itruediv__", "__ixor__", "__matmul__", "__mod__", "__mul__", "__or__", "__pow__",
     "__radd__", "__rand__", "__rfloordiv__", "__rmatmul__", "__rmod__", "__rmul__", "__ror__", "__rpow__",
     "__rsub__", "__rtruediv__", "__rxor__", "__sub__", "__truediv__", "__xor__"}
)

_COMPARE = ("__eq__", "__ge__", "__gt__", "__le__", "__lt__", "__ne__")
_NUMBER_OPS = (
    "__abs__", "__add__", "__floordiv__", "__iadd__", "__ifloordiv__", "__imul__", "__isub__",
    "__itruediv__", "__mod__", "__mul__", "__neg__", "__radd__", "__rfloordiv__", "__rmod__", "__rmul__",
    "__rsub__", "__rtruediv__", "__sub__", "__truediv__",
)
_BIT_OPS = (
    "__and__", "__iand__", "__ior__", "__ixor__", "__or__", "__rand__", "__ror__", "__rxor__", "__xor__",
)

# ---------------------------------------------------------------------------------------------------------
# Methods, operators and properties, per kind of object a pointer can point at.
# ---------------------------------------------------------------------------------------------------------

TENSOR_METHODS = (
    "abs", "add", "add_", "all", "allclose", "amax", "amin", "any", "argmax", "argmin", "argsort",
    "argwhere", "backward", "bmm", "bool", "ceil", "chunk", "clamp", "clamp_", "clip", "clone", "contiguous",
    "copy_", "cos", "count_nonzero", "cpu", "cumprod", "cumsum", "detach", "diag", "dim", "div", "div_",
    "dot", "double", "eq", "equal", "exp", "expand", "expand_as", "fill_", "flatten", "flip", "float",
    "floor", "floor_divide", "fmod", "gather", "ge", "gt", "half", "index_select", "int", "is_contiguous",
    "is_floating_point", "isfinite", "isinf", "isnan", "item", "kthvalue", "le", "lerp", "log", "log1p",
    "log_softmax", "logsumexp", "long", "lt", "masked_fill", "masked_fill_", "masked_select", "matmul",
    "max", "mean", "median", "min", "mm", "mul", "mul_", "mv", "nan_to_num", "narrow", "ne", "neg",
    "new_full", "new_ones", "new_tensor", "new_zeros", "nonzero", "norm", "normal_", "numel", "outer",
    "permute", "pow", "prod", "reciprocal", "relu", "relu_", "remainder", "repeat", "requires_grad_",
    "reshape", "reshape_as", "retain_grad", "roll", "round", "rsqrt", "scatter", "sigmoid", "sigmoid_",
    "sign", "sin", "size", "softmax", "sort", "split", "sqrt", "square", "squeeze", "std", "sub", "sub_",
    "sum", "t", "tanh", "to", "tolist", "topk", "transpose", "true_divide", "trunc", "type_as", "unbind",
    "uniform_", "unique", "unsqueeze", "var", "view", "view_as", "where", "zero_",
)
TENSOR_OPERATORS = (
    *_COMPARE, *_NUMBER_OPS, *_BIT_OPS, "__contains__", "__getitem__", "__invert__", "__len__", "__matmul__",
    "__pow__", "__rmatmul__", "__rpow__", "__setitem__",
)
TENSOR_PROPERTIES = (
    "T", "data", "device", "dtype", "grad", "is_leaf", "mT", "ndim", "requires_grad", "shape",
)

MODULE_METHODS = (
    "buffers", "children", "cpu", "double", "eval", "float", "forward", "half", "load_state_dict",
    "named_buffers", "named_children", "named_parameters", "parameters", "requires_grad_", "state_dict", "to",
    "train", "zero_grad",
)
MODULE_OPERATORS = ("__call__", "__getitem__", "__len__")
# Plus, on each module, the names of its own registered submodules, parameters and buffers.
MODULE_PROPERTIES = ("training",)

OPTIMIZER_METHODS = ("state_dict", "step", "zero_grad")
OPTIMIZER_PROPERTIES = ("param_groups",)
SCHEDULER_METHODS = ("get_last_lr", "state_dict", "step")  # not load_state_dict: it updates __dict__
SCHEDULER_PROPERTIES = ("last_epoch",)

# Remote Python values: `d.python.Float(0)` builds a float on the owner's side.
PYTHON_TYPES: Mapping[str, type] = MappingProxyType(
    {"Bool": bool, "Dict": dict, "Float": float, "Int": int, "List": list, "String": str, "Tuple": tuple}
)
PYTHON_METHODS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Bool": (),
        "Dict": ("copy", "get", "items", "keys", "pop", "update", "values"),
        "Float": ("is_integer",),
        "Int": ("bit_length",),
        "List": ("append", "copy", "count", "extend", "index", "insert", "pop", "remove", "reverse"),
        # No format/format_map (attribute traversal), join/replace/center/ljust/zfill (unbounded growth).
        "String": ("capitalize", "endswith", "isalpha", "isdigit", "lower", "lstrip", "rstrip", "split",
                   "startswith", "strip", "title", "upper"),
        "Tuple": ("count", "index"),
    }
)
PYTHON_OPERATORS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Bool": (*_COMPARE, "__and__", "__or__", "__xor__"),
        "Dict": ("__contains__", "__eq__", "__getitem__", "__len__", "__ne__", "__setitem__"),
        "Float": (*_COMPARE, *_NUMBER_OPS, "__pow__", "__rpow__"),
        "Int": (*_COMPARE, *_NUMBER_OPS, *_BIT_OPS, "__invert__"),  # no __pow__/__lshift__: huge ints
        "List": (*_COMPARE, "__add__", "__contains__", "__getitem__", "__iadd__", "__len__", "__setitem__"),
        "String": (*_COMPARE, "__add__", "__contains__", "__getitem__", "__len__"),  # no __mul__, __mod__
        "Tuple": (*_COMPARE, "__add__", "__contains__", "__getitem__", "__len__"),  # no __mul__
    }
)
PYTHON_PROPERTIES: Mapping[str, tuple[str, ...]] = MappingProxyType({"Tuple": ("indices", "values")})

METHODS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Tensor": TENSOR_METHODS,
        "Module": MODULE_METHODS,
        "Optimizer": OPTIMIZER_METHODS,
        "Scheduler": SCHEDULER_METHODS,
        **PYTHON_METHODS,
    }
)
KIND_OPERATORS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"Tensor": TENSOR_OPERATORS, "Module": MODULE_OPERATORS, **PYTHON_OPERATORS}
)
PROPERTIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Tensor": TENSOR_PROPERTIES,
        "Module": MODULE_PROPERTIES,
        "Optimizer": OPTIMIZER_PROPERTIES,
        "Scheduler": SCHEDULER_PROPERTIES,
        **PYTHON_PROPERTIES,
    }
)

# Methods that return a generator or a view are run to a list, so the result is a List the scientist can use.
LIST_RESULTS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "Module": frozenset({"buffers", "children", "named_buffers", "named_children", "named_parameters",
                             "parameters"}),
        "Dict": frozenset({"items", "keys", "values"}),
    }
)

# Ordinary methods that change the object they are called on, besides names ending in "_" and in-place
# operators; an executor that protects published objects asks `mutates()`.
MUTATORS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "Module": frozenset({"cpu", "double", "eval", "float", "half", "load_state_dict", "to", "train",
                             "zero_grad"}),
        "Optimizer": frozenset({"step", "zero_grad"}),
        "Scheduler": frozenset({"step"}),
        "List": frozenset({"append", "extend", "insert", "pop", "remove", "reverse"}),
        "Dict": frozenset({"pop", "update"}),
    }
)

# ---------------------------------------------------------------------------------------------------------
# NEVER: what no table may name (checked when an Allowlist is built), with the reason.
# ---------------------------------------------------------------------------------------------------------

NEVER_PATHS: Mapping[str, str] = MappingProxyType(
    {
        "builtins": "open, eval, exec, compile, getattr, __import__: files and code execution",
        "importlib": "imports code",
        "os": "files, processes, environment",
        "pickle": "unpickling runs code",
        "subprocess": "starts processes",
        "sys": "the interpreter's state",
        "torch.Tensor": "methods are reached through a tensor pointer; torch.Tensor(n) is uninitialised",
        "torch._C": "raw C++ bindings (every torch._* name is refused by shape anyway)",
        "torch._dynamo": "compiles code",
        "torch.backends": "process-wide backend switches",
        "torch.classes": "registered TorchScript classes",
        "torch.compile": "compiles code and writes caches",
        "torch.cuda": "device memory outside the quotas, process-wide CUDA state (only is_available)",
        "torch.distributed": "network communication",
        "torch.empty": "uninitialised memory can hold freed values of the owner's private tensors",
        "torch.empty_like": "uninitialised memory",
        "torch.empty_strided": "uninitialised memory",
        "torch.export": "traces and serialises programs",
        "torch.from_file": "maps a file into a tensor",
        "torch.hub": "downloads and runs code",
        "torch.jit": "compiles, saves and loads code",
        "torch.library": "registers new operators",
        "torch.load": "reads files and unpickles: runs code",
        "torch.multiprocessing": "starts processes",
        "torch.nn.Module": "module methods are reached through a module pointer, never by path",
        "torch.ops": "the raw operator registry, custom and unsafe ops included",
        "torch.package": "imports pickled code",
        "torch.save": "writes files",
        "torch.set_default_device": "changes the owner's process-wide defaults",
        "torch.set_default_dtype": "changes the owner's process-wide defaults",
        "torch.set_grad_enabled": "flips grad mode as soon as it is constructed",
        "torch.set_num_interop_threads": "changes the owner's process-wide thread pools",
        "torch.set_num_threads": "changes the owner's process-wide thread pools",
        "torch.use_deterministic_algorithms": "changes the owner's process-wide settings",
        "torch.utils": "cpp_extension compiles native code, DataLoader starts processes, model_zoo downloads",
    }
)
NEVER_EXCEPTIONS: Mapping[str, str] = MappingProxyType(
    {"torch.cuda.is_available": "the tutorial asks for it; it reads one flag"}
)
NEVER_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "__builtins__": "interpreter internals",
        "__class__": "interpreter internals",
        "__closure__": "interpreter internals",
        "__code__": "interpreter internals",
        "__del__": "interpreter internals",
        "__delattr__": "interpreter internals",
        "__dict__": "interpreter internals",
        "__getattr__": "interpreter internals",
        "__getattribute__": "interpreter internals",
        "__getstate__": "pickle protocol",
        "__globals__": "interpreter internals",
        "__import__": "imports code",
        "__init__": "interpreter internals",
        "__init_subclass__": "interpreter internals",
        "__new__": "interpreter internals",
        "__reduce__": "pickle protocol",
        "__reduce_ex__": "pickle protocol",
        "__setattr__": "interpreter internals",
        "__setstate__": "pickle protocol",
        "__subclasses__": "interpreter internals",
        "apply": "takes a Python callable",
        "apply_": "takes a Python callable",
        "cuda": "device memory outside the quotas; the owner computes on CPU",
        "data_ptr": "leaks a memory address",
        "format": "format strings traverse attributes ('{0.__class__}')",
        "format_map": "format strings traverse attributes",
        "map2_": "takes a Python callable",
        "map_": "takes a Python callable",
        "new_empty": "uninitialised memory",
        "numpy": "a numpy array shares the tensor's memory outside duet's store and quotas",
        "pin_memory": "page-locked memory outside the quotas",
        "register_backward_hook": "takes a Python callable",
        "register_forward_hook": "takes a Python callable",
        "register_forward_pre_hook": "takes a Python callable",
        "register_full_backward_hook": "takes a Python callable",
        "register_hook": "takes a Python callable",
        "resize_": "uninitialised memory",
        "resize_as_": "uninitialised memory",
        "set_": "re-points the tensor at other memory",
        "share_memory_": "shares memory with other processes",
        "storage": "raw memory",
        "untyped_storage": "raw memory",
    }
)

# fmt: on

# ---------------------------------------------------------------------------------------------------------
# The checks.
# ---------------------------------------------------------------------------------------------------------

MAX_PATH_LENGTH = 200
_PUBLIC = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_DUNDER = re.compile(r"__[a-z]+__")
_SHOWABLE = re.compile(r"[A-Za-z0-9_.]{1,80}")
_OBJECT_KINDS: tuple[tuple[str, type], ...] = (
    ("Tensor", torch.Tensor),
    ("Module", torch.nn.Module),
    ("Optimizer", torch.optim.Optimizer),
    ("Scheduler", torch.optim.lr_scheduler.LRScheduler),  # ReduceLROnPlateau included
)
_CONTAINERS = (dict, list, tuple)  # subclasses count: OrderedDict state dicts, torch.Size, torch.return_types
_NUMBERS = (bool, int, float)
_SEQUENCES: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {"List": (list,), "String": (str,), "Tuple": (tuple,)}
)
_TO_KEYWORDS = frozenset({"copy", "device", "dtype", "non_blocking"})


def _show(text: object) -> str:
    """A peer-sent name, safe to put in a message: plain names as they are, anything else repr'd and cut."""
    if not isinstance(text, str):
        return f"<{type(text).__name__}>"
    if _SHOWABLE.fullmatch(text):
        return text
    return repr(text[:60]) + "..." if len(text) > 60 else repr(text)


def _refuse(what: str, why: str = "is not on the allowlist") -> PermissionDenied:
    return PermissionDenied(f"{what} {why}")


def _never_path(path: str) -> str | None:
    """The NEVER_PATHS entry that covers ``path``, if any."""
    if path in NEVER_EXCEPTIONS:
        return None
    for entry in NEVER_PATHS:
        if path == entry or path.startswith(entry + "."):
            return entry
    return None


def _is_torch_object(obj: object) -> bool:
    module = getattr(obj, "__module__", None)
    return callable(obj) and isinstance(module, str) and (module == "torch" or module.startswith("torch."))


def _is_cpu(device: object) -> bool:
    return device is None or (isinstance(device, str) and device == "cpu")


def _review(
    paths: Iterable[str],
    names: Mapping[str, Iterable[str]],
    operators: Mapping[str, Iterable[str]],
    python_types: Mapping[str, type],
) -> None:
    """The code-review guard: raise RuntimeError naming every entry that breaks the allowlist's rules."""
    problems: list[str] = []
    for path in sorted(paths):
        parts = path.split(".")
        if parts[0] != "torch" or len(parts) < 2 or not all(_PUBLIC.fullmatch(p) for p in parts):
            problems.append(f"{path!r}: not a public dotted path under torch.")
        elif (entry := _never_path(path)) is not None:
            problems.append(f"{path!r}: forbidden by NEVER_PATHS[{entry!r}] ({NEVER_PATHS[entry]})")
    for kind, kind_names in names.items():
        bad = [n for n in kind_names if not _PUBLIC.fullmatch(n) or n in NEVER_NAMES]
        problems.extend(f"{kind}.{n}: private, malformed or forbidden by NEVER_NAMES" for n in sorted(bad))
    for kind, kind_operators in operators.items():
        bad = [n for n in kind_operators if n not in OPERATORS or n in NEVER_NAMES]
        problems.extend(f"{kind}.{n}: not an operator in OPERATORS" for n in sorted(bad))
    for kind, typ in python_types.items():
        if typ not in (*_NUMBERS, str, *_CONTAINERS):
            problems.append(f"python type {kind}: {typ!r} is not a plain builtin value type")
    unknown = {*names, *operators} - {k for k, _ in _OBJECT_KINDS} - set(python_types)
    problems.extend(f"{kind}: unknown kind of object" for kind in sorted(unknown))
    if problems:
        raise RuntimeError("allowlist review failed:\n  " + "\n  ".join(problems))


_MEMO_LIMIT = 4096


class _Memo:
    """What an Allowlist found once and can reuse (its tables never change): resolved paths, the kind of
    each type, allowed (kind, method) pairs, whether a (kind, method) mutates."""

    __slots__ = ("functions", "kinds", "methods", "mutates")

    def __init__(self) -> None:
        self.functions: dict[str, Callable[..., Any]] = {}
        self.kinds: dict[type, str | None] = {}
        self.methods: set[tuple[str, str]] = set()
        self.mutates: dict[tuple[str | None, str], bool] = {}


def _frozen(table: Mapping[str, Iterable[str]]) -> Mapping[str, frozenset[str]]:
    return MappingProxyType({key: frozenset(values) for key, values in table.items()})


def _merged(base: Mapping[str, frozenset[str]], extra: Mapping[str, Iterable[str]] | None) -> dict:
    extra = extra or {}
    return {k: base.get(k, frozenset()) | frozenset(extra.get(k, ())) for k in {*base, *extra}}


class Allowlist:
    """An immutable view over the allowlist tables; every remote call and attribute access is checked here."""

    __slots__ = (
        "_families",
        "_functions",
        "_contexts",
        "_methods",
        "_operators",
        "_properties",
        "_types",
        "_memo",
    )
    _families: Mapping[str, frozenset[str]]
    _functions: frozenset[str]
    _contexts: frozenset[str]
    _methods: Mapping[str, frozenset[str]]
    _operators: Mapping[str, frozenset[str]]
    _properties: Mapping[str, frozenset[str]]
    _types: Mapping[str, type]
    _memo: _Memo

    def __init__(
        self,
        *,
        functions: Mapping[str, Iterable[str]],
        contexts: Iterable[str],
        methods: Mapping[str, Iterable[str]],
        operators: Mapping[str, Iterable[str]],
        properties: Mapping[str, Iterable[str]],
        python_types: Mapping[str, type],
    ) -> None:
        """Build from tables: ``functions`` maps a family to its paths, the others map a kind to its names."""
        families, frozen_contexts = _frozen(functions), frozenset(contexts)
        every_path = frozenset().union(frozen_contexts, *families.values())
        all_names = {k: [*methods.get(k, ()), *properties.get(k, ())] for k in {*methods, *properties}}
        _review(every_path, all_names, operators, python_types)
        values = {
            "_families": families,
            "_functions": frozenset().union(*families.values()),
            "_contexts": frozen_contexts,
            "_methods": _frozen(methods),
            "_operators": _frozen(operators),
            "_properties": _frozen(properties),
            "_types": MappingProxyType(dict(python_types)),
            "_memo": _Memo(),
        }
        for slot, value in values.items():
            object.__setattr__(self, slot, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("an Allowlist is immutable: build a new one with extend()")

    def extend(
        self,
        *,
        functions: Iterable[str] = (),
        contexts: Iterable[str] = (),
        methods: Mapping[str, Iterable[str]] | None = None,
        properties: Mapping[str, Iterable[str]] | None = None,
    ) -> Allowlist:
        """A new allowlist with the owner's additions (family "owner additions"), reviewed like the rest."""
        families = dict(self._families)
        added = families.get("owner additions", frozenset()) | frozenset(functions)
        if added:
            families["owner additions"] = added
        return Allowlist(
            functions=families,
            contexts=self._contexts | frozenset(contexts),
            methods=_merged(self._methods, methods),
            operators=self._operators,
            properties=_merged(self._properties, properties),
            python_types=self._types,
        )

    # -- functions ----------------------------------------------------------------------------------------

    def _check_path(self, path: object) -> str:
        if not isinstance(path, str):
            raise _refuse(_show(path), "is not on the allowlist: a path must be a string")
        if len(path) > MAX_PATH_LENGTH:
            raise _refuse(_show(path), f"is not on the allowlist: longer than {MAX_PATH_LENGTH} characters")
        if not all(_PUBLIC.fullmatch(part) for part in path.split(".")):
            raise _refuse(_show(path), "is not on the allowlist (private, dunder or malformed name)")
        if path not in self._functions and path not in self._contexts:
            raise _refuse(path)
        return path

    def resolve_function(self, path: str) -> Callable[..., Any]:
        """The torch function or class ``path`` names, once the tables allow it (contexts included)."""
        if type(path) is str and (fn := self._memo.functions.get(path)) is not None:
            return fn  # found and checked before: the tables do not change
        parts = self._check_path(path).split(".")
        obj: Any = torch
        try:
            for part in parts[1:]:  # only now: the path is on a reviewed table and every part is public
                obj = getattr(obj, part)
        except AttributeError:
            raise _refuse(path, "is not available in this torch version") from None
        if not _is_torch_object(obj):
            raise _refuse(path, "is not available in this torch version (not a torch callable)")
        self._memo.functions[path] = obj  # bounded: only paths on the tables get here
        return obj

    def is_context(self, path: str) -> bool:
        """Whether ``path`` is a context manager the executor may enter (``torch.no_grad`` …)."""
        return isinstance(path, str) and path in self._contexts

    def call_function(self, path: str, args: Sequence[object], kwargs: Mapping[str, object]) -> Any:
        """Check and run one function call; context managers are refused here (they run as ``with``)."""
        fn = self.resolve_function(path)
        if path in self._contexts:
            raise _refuse(path, "is a context manager: it runs only as a `with` block")
        self.check_arguments(path, args, kwargs)
        return fn(*args, **kwargs)

    # -- methods and properties ---------------------------------------------------------------------------

    def kind_of(self, obj: object) -> str | None:
        """The kind (``Tensor``, ``Module``, ``Float`` …) the tables know ``obj`` as, or None."""
        kinds = self._memo.kinds
        typ = type(obj)
        if typ in kinds:  # the kind depends on the type alone (no class here overrides isinstance)
            return kinds[typ]
        kind = self._kind_of(obj)
        if len(kinds) < _MEMO_LIMIT:
            kinds[typ] = kind
        return kind

    def _kind_of(self, obj: object) -> str | None:
        for kind, cls in _OBJECT_KINDS:
            if isinstance(obj, cls):
                return kind
        for kind, typ in self._types.items():
            if type(obj) is typ or (typ in _CONTAINERS and isinstance(obj, typ)):
                return kind
        return None

    def _kind(self, obj: object, name: object, what: str) -> tuple[str, str]:
        kind = self.kind_of(obj)
        label = kind or type(obj).__name__
        if not isinstance(name, str) or len(name) > 64:
            raise _refuse(f"{label}.{_show(name)}", f"is not on the allowlist: not a {what} name")
        if kind is None:
            raise _refuse(
                f"{label}.{_show(name)}", f"is not on the allowlist: {label} objects have no {what}s"
            )
        return kind, name

    def check_method(self, obj: object, name: str) -> None:
        """Raise PermissionDenied unless ``obj``'s kind allows the method (or operator dunder) ``name``."""
        self._method_kind(obj, name)

    def _method_kind(self, obj: object, name: str) -> str:
        """check_method, returning the kind of ``obj``."""
        kind = self.kind_of(obj)
        if kind is not None and type(name) is str and (kind, name) in self._memo.methods:
            return kind  # allowed before (only allowed pairs are kept, so the memo is bounded by the tables)
        kind, name = self._kind(obj, name, "method")
        if _DUNDER.fullmatch(name):
            allowed = name in OPERATORS and name in self._operators.get(kind, ())
        else:
            allowed = bool(_PUBLIC.fullmatch(name)) and name in self._methods.get(kind, ())
        if not allowed:
            raise _refuse(f"{kind}.{_show(name)}")
        self._memo.methods.add((kind, name))
        return kind

    def check_property(self, obj: object, name: str) -> None:
        """Raise PermissionDenied unless ``obj``'s kind allows reading the attribute ``name``.

        On a module, the names of its own registered submodules, parameters and buffers are readable too.
        """
        kind, name = self._kind(obj, name, "property")
        if _PUBLIC.fullmatch(name):
            if name in self._properties.get(kind, ()):
                return
            if isinstance(obj, torch.nn.Module) and name in _registered_names(obj):
                return
        raise _refuse(f"{kind}.{_show(name)}")

    def get_property(self, obj: object, name: str) -> Any:
        """Check, then read, the attribute ``name`` of ``obj``."""
        self.check_property(obj, name)
        return getattr(obj, name)

    def resolve_method(self, obj: object, name: str) -> Callable[..., Any]:
        """Check, then bind, ``obj.name``; an operator binds the ``operator`` function implementing it,
        with the operand rule of ``ARITHMETIC`` checked when it is called."""
        self.check_method(obj, name)
        if not _DUNDER.fullmatch(name):
            return getattr(obj, name)
        run = functools.partial(OPERATORS[name], obj)
        if name not in ARITHMETIC:
            return run
        kind = self.kind_of(obj) or ""

        def checked(*args: Any, **kwargs: Any) -> Any:
            _check_operand(kind, obj, name, args)
            return run(*args, **kwargs)

        return checked

    def call_method(
        self, obj: object, name: str, args: Sequence[object], kwargs: Mapping[str, object]
    ) -> Any:
        """Check and run one method call; generators and dict views come back as lists."""
        kind = self._method_kind(obj, name)
        # an allowed name in OPERATORS is an operator dunder; every other allowed name is a public method
        operator_fn = OPERATORS.get(name)
        method = getattr(obj, name) if operator_fn is None else None
        self.check_arguments(name, args, kwargs)
        if operator_fn is None:
            result = method(*args, **kwargs)  # type: ignore[misc]
        else:
            if name in ARITHMETIC:
                _check_operand(kind, obj, name, args)
            result = operator_fn(obj, *args, **kwargs)
        return list(result) if name in LIST_RESULTS.get(kind, ()) else result

    def bind_function(self, path: str) -> Callable[[Sequence[object], Mapping[str, object]], Any]:
        """``call_function(path, ...)`` with the checks that depend on ``path`` alone done now: the returned
        ``call(args, kwargs)`` checks the arguments and runs the call (for a caller that runs one path many
        times: a plan's op)."""
        fn = self.resolve_function(path)
        if path in self._contexts:
            raise _refuse(path, "is a context manager: it runs only as a `with` block")
        check = self.check_arguments

        def call(args: Sequence[object], kwargs: Mapping[str, object]) -> Any:
            if kwargs or path == "to":
                check(path, args, kwargs)
            return fn(*args, **kwargs)

        return call

    def bind_method(
        self, obj: object, name: str
    ) -> Callable[[Any, Sequence[object], Mapping[str, object]], Any]:
        """``call_method(obj, name, ...)`` with the checks that depend on ``type(obj)`` and ``name`` alone done
        now: the returned ``call(obj, args, kwargs)`` is for objects of exactly that type (what the tables
        allow depends on the type only; see :meth:`kind_of`), and checks the arguments and operands."""
        kind = self._method_kind(obj, name)
        typ, check = type(obj), self.check_arguments
        listed = name in LIST_RESULTS.get(kind, ())
        operator_fn = OPERATORS.get(name)
        arithmetic = name in ARITHMETIC

        def call(target: Any, args: Sequence[object], kwargs: Mapping[str, object]) -> Any:
            if type(target) is not typ:  # (a caller's bug: refuse rather than skip the kind's check)
                raise _refuse(
                    f"{type(target).__name__}.{_show(name)}", "called through another type's binding"
                )
            if kwargs or name == "to":
                check(name, args, kwargs)
            if operator_fn is None:
                result = getattr(target, name)(*args, **kwargs)
            else:
                if arithmetic:
                    _check_operand(kind, target, name, args)
                result = operator_fn(target, *args, **kwargs)
            return list(result) if listed else result

        return call

    def mutates(self, obj: object, name: str) -> bool:
        """Whether the method ``name`` changes ``obj`` itself (in place, ``__setitem__``, ``append`` …)."""
        key = (self.kind_of(obj), name)
        known = self._memo.mutates.get(key)
        if known is None:
            known = self._mutates(obj, name)
            if len(self._memo.mutates) < _MEMO_LIMIT:
                self._memo.mutates[key] = known
        return known

    def _mutates(self, obj: object, name: str) -> bool:
        if _DUNDER.fullmatch(name):
            return name == "__setitem__" or (name.startswith("__i") and name in ARITHMETIC)
        return name.endswith("_") or name in MUTATORS.get(self.kind_of(obj) or "", ())

    def check_arguments(self, name: str, args: Sequence[object], kwargs: Mapping[str, object]) -> None:
        """Argument rules for a call of ``name`` (a path or a method name): no ``out=`` (it writes into an
        existing object), devices are ``"cpu"`` only, and ``to()`` converts dtypes only."""
        if kwargs:  # (without any, both rules hold)
            if "out" in kwargs:
                raise _refuse(
                    f"{_show(name)}(out=...)", "is not on the allowlist: it writes into an existing object"
                )
            if not _is_cpu(kwargs.get("device")):
                raise _refuse(
                    f"{_show(name)}(device=...)", "is not on the allowlist: the owner computes on CPU"
                )
        if name == "to" and not _is_dtype_conversion(args, kwargs):
            raise _refuse("to() with these arguments", "is not on the allowlist: it converts dtypes only")

    # -- python types, start-up report, docs ---------------------------------------------------------------

    def python_type(self, name: str) -> type:
        """The builtin type behind ``d.python.<name>`` (``"Float"`` → ``float``)."""
        if not isinstance(name, str) or name not in self._types:
            raise _refuse(f"python.{_show(name)}")
        return self._types[name]

    def missing(self) -> list[str]:
        """Entries the installed torch lacks: checked at start-up, reported, not fatal."""
        gone = []
        for path in sorted(self._functions | self._contexts):
            try:
                self.resolve_function(path)
            except PermissionDenied:
                gone.append(path)
        samples = _samples(self._types)
        for table in (self._methods, self._properties):
            for kind, names in sorted(table.items()):
                gone.extend(f"{kind}.{n}" for n in sorted(names) if not _has_attribute(samples.get(kind), n))
        return gone

    def families(self) -> dict[str, int]:
        """How many entries each family holds (for the docs and the start-up report)."""
        return {family: len(names) for family, names in self._groups()}

    def tables(self) -> dict[str, dict[str, list[str]]]:
        """Every entry, sorted: ``functions`` by family (contexts as family "contexts"), then ``methods``,
        ``operators`` and ``properties`` by kind of object."""
        functions = {family: sorted(paths) for family, paths in self._families.items()}
        functions["contexts"] = sorted(self._contexts)
        grouped = {"functions": functions}
        for label, table in (("methods", self._methods), ("operators", self._operators)):
            grouped[label] = {kind: sorted(names) for kind, names in table.items() if names}
        grouped["properties"] = {kind: sorted(names) for kind, names in self._properties.items() if names}
        return grouped

    def _groups(self) -> list[tuple[str, frozenset[str]]]:
        groups = [*self._families.items(), ("contexts", self._contexts)]
        for kind in (*(k for k, _ in _OBJECT_KINDS), *self._types):
            for label, table in (("methods", self._methods), ("operators", self._operators)):
                groups.append((f"{kind} {label}", table.get(kind, frozenset())))
            groups.append((f"{kind} properties", self._properties.get(kind, frozenset())))
        return [(label, names) for label, names in groups if names]


def _registered_names(module: torch.nn.Module) -> set[str]:
    named = [
        *module.named_children(),
        *module.named_parameters(recurse=False),
        *module.named_buffers(recurse=False),
    ]
    return {name for name, _ in named}


def _is_dtype_conversion(args: Sequence[object], kwargs: Mapping[str, object]) -> bool:
    """``to(dtype)``, ``to(dtype=…)``, ``to("cpu")``, with ``copy``/``non_blocking`` flags: nothing else."""
    dtypes = [a for a in args if isinstance(a, torch.dtype)] + (
        [kwargs["dtype"]] if "dtype" in kwargs else []
    )
    return (
        all(isinstance(a, torch.dtype) or _is_cpu(a) for a in args)
        and set(kwargs) <= _TO_KEYWORDS
        and len(dtypes) <= 1
        and all(isinstance(d, torch.dtype) for d in dtypes)
        and all(type(kwargs.get(flag, False)) is bool for flag in ("copy", "non_blocking"))
    )


def _check_operand(kind: str, obj: object, name: str, args: Sequence[object]) -> None:
    """Arithmetic takes numbers and tensors; a sequence concatenates only with its own type."""
    other = args[0] if args else None
    if kind in _SEQUENCES:
        ok = isinstance(other, (list, tuple) if name == "__iadd__" else _SEQUENCES[kind])
    else:
        ok = type(other) in _NUMBERS or isinstance(other, torch.Tensor)
    if not ok:
        raise _refuse(f"{kind}.{name} with a {type(other).__name__} operand")


def _has_attribute(sample: object, name: str) -> bool:
    marker = object()
    return sample is not None and inspect.getattr_static(sample, name, marker) is not marker


def _samples(python_types: Mapping[str, type]) -> dict[str, object]:
    """One live object per kind for `missing()`, so instance attributes (Module.training) are seen too."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    samples: dict[str, object] = {kind: typ() for kind, typ in python_types.items()}
    samples.update({kind: torch.zeros(2).max(0) for kind, typ in python_types.items() if typ is tuple})
    samples.update(
        Tensor=torch.zeros(1, 1),
        Module=torch.nn.Linear(1, 1),
        Optimizer=optimizer,
        Scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1),
    )
    return samples


DEFAULT_ALLOWLIST = Allowlist(
    functions=FUNCTION_FAMILIES,
    contexts=CONTEXTS,
    methods=METHODS,
    operators=KIND_OPERATORS,
    properties=PROPERTIES,
    python_types=PYTHON_TYPES,
)

# ---------------------------------------------------------------------------------------------------------
# docs/allowlist.md, generated (a test checks the committed file is up to date).
# ---------------------------------------------------------------------------------------------------------

_DOCS_INTRO = """\
# The allowlist

<!-- Generated by duet.remote.allowlist.render_markdown(): do not edit by hand, a test compares them. -->
<!-- Regenerate: .venv/bin/python -c "import duet.remote.allowlist as a; a.write_docs()" -->

The owner's side runs a scientist's call only if this allowlist names it; everything else raises
`duet.PermissionDenied` naming the refused path. The tables live in one module,
`duet/remote/allowlist.py`, as plain sorted data, so a change to them is a reviewable diff.

Rules that hold for every entry:

- **Nothing is a wildcard.** A function is a full dotted path under `torch.`; a method or property is a
  name allowed for one kind of object (`Tensor`, `Module`, `Optimizer`, `Scheduler`, or a remote Python
  type). A path is looked up in the table first, and only then walked from the `torch` module; the object
  found must be a torch callable (`__module__` under `torch`).
- **No private or dunder names**, refused by their shape before any lookup. The only dunders run are the
  *operators*: Python syntax mapped to a method (`x + y` → `__add__`, `model(x)` → `__call__`), each
  implemented by the `operator` module, so reflection and the in-place fallback behave as in Python.
- **Arithmetic operands are numbers or tensors** (a `String`/`List`/`Tuple` concatenates only with its
  own type), so `Int * "a"` or `[0] * tensor(10**9)` cannot build a huge sequence by reflection.
- **Arguments:** `out=` is refused (it writes into an existing object); `device=` must be `"cpu"`;
  `to()` converts dtypes only (`to(torch.float64)`, `to(dtype=…)`, `to("cpu")`). The owner computes on
  CPU: `cuda()` is never allowed, `torch.cuda.is_available()` is.
- **Generators and views come back as lists** (`Module.parameters()`, `Dict.items()` …).
- **Module attributes:** besides `training`, a module's own registered submodules, parameters and
  buffers can be read by name (`model.fc1.weight`).
- **Not here on purpose:** functions that take a Python callable (`LambdaLR`, `Tensor.apply_`, hooks),
  uninitialised memory (`torch.empty`, `new_empty`), string methods that grow without bound (`join`,
  `replace`, `ljust` …) or traverse attributes (`format`), `int ** int` and `<<`, sequence repetition.

## Reviewing and extending it

The tables are reviewed like code: every addition is a one-line diff in `duet/remote/allowlist.py`, and
this page is regenerated from them. An owner who needs more for one session builds an extended copy and
passes it to the session:

<!-- run: standalone -->
```python
from duet.remote.allowlist import DEFAULT_ALLOWLIST
mine = DEFAULT_ALLOWLIST.extend(functions=["torch.special.erf"], methods={"Tensor": ["erfinv"]})
mine.missing()   # entries your installed torch lacks (also reported at start-up)
d = duet.launch_duet(allowlist=mine)
d.close()
```

The owner's welcome message describes its tables to the scientist's client (see docs/protocol.md), so
with this owner `d.torch.special.erf(x)` and `x.erfinv()` work on the scientist's side; a scientist of a
default owner gets `PermissionDenied` for them before anything is sent.

Additions land in the family "owner additions" and go through the same review as the built-in tables:
an entry that is private, not under `torch.`, or covered by the NEVER tables below raises `RuntimeError`
when the allowlist is built. The NEVER tables are a safety net, not the rule: what is not listed above
is refused anyway.
"""


def _wrapped(names: Iterable[str]) -> str:
    return textwrap.fill(", ".join(f"`{n}`" for n in sorted(names)), width=110, break_long_words=False)


def render_markdown(allowlist: Allowlist = DEFAULT_ALLOWLIST) -> str:
    """docs/allowlist.md: counts per family, every entry, the NEVER tables and why."""
    groups = allowlist._groups()
    total = sum(len(names) for _, names in groups)
    lines = [_DOCS_INTRO, "## Counts", "", "| family | entries |", "|---|---:|"]
    lines += [f"| {label} | {len(names)} |" for label, names in groups] + [f"| **total** | **{total}** |", ""]
    lines += ["## Entries", ""]
    for label, names in groups:
        lines += [f"### {label} ({len(names)})", "", _wrapped(names), ""]
    lines += ["## NEVER", "", "No table may name these; building an `Allowlist` that does raises.", ""]
    lines += ["| path (and everything under it) | why |", "|---|---|"]
    lines += [f"| `{path}` | {why} |" for path, why in sorted(NEVER_PATHS.items())]
    lines += ["", "Exceptions:", ""]
    lines += [f"- `{path}`: {why}" for path, why in sorted(NEVER_EXCEPTIONS.items())]
    lines += ["", "| method or property name | why |", "|---|---|"]
    lines += [f"| `{name}` | {why} |" for name, why in sorted(NEVER_NAMES.items())]
    return "\n".join(lines) + "\n"


DOCS_PATH = Path(__file__).resolve().parents[2] / "docs" / "allowlist.md"


def write_docs(path: str | Path = DOCS_PATH) -> None:
    """Regenerate docs/allowlist.md from the tables."""
    Path(path).write_text(render_markdown(), encoding="utf-8")
