"""The compute guard: a call's floating-point operations, counted in its meta-device dry run, bounded by time.

A running torch op cannot be interrupted, so ``Quotas.call_seconds`` alone only drops a slow call's result
after it ran; ``a @ a`` on two 16000x16000 floats (1 GiB each, under the tensor quota) would hold the
executor thread for minutes. :mod:`duet.remote.guards` therefore counts, in the dry run it already makes,
the FLOP of every op that ``torch.utils.flop_counter`` has a formula for (``mm``, ``addmm``, ``bmm``,
``baddbmm``, convolutions, scaled-dot-product attention; and what decomposes into them: ``matmul``,
``einsum``, ``linear``, ``linalg.matrix_power``, RNN layers, a module's forward), plus formulas of ours for
the allowlisted ops whose cost their result's size does not bound (max/avg pooling with a large window,
``cdist``, ``bilinear``), and refuses a call whose count is over ``call_seconds * FLOPS_PER_SECOND`` before
it runs. The count is cached with the dry run's bytes, so a training loop's repeated shapes pay for it once.

``FLOPS_PER_SECOND = 5e10``: what one CPU core sustains on large float32 GEMMs and convolutions (AVX2/FMA at
~3 GHz: 50-100 GFLOP/s; float64 about half), so the default 60 s allows 3 TFLOP, which takes the owner
between half a minute and a few minutes on one core, less on several. It is an order-of-magnitude bound
against calls that would run for many minutes or forever, not a stopwatch: ``call_seconds`` is still
checked when a call returns. Raising ``call_seconds`` raises the bound in proportion.

Not counted, and left to the tensor quota (and the time check after the call): every other op (elementwise
ops, reductions, sorts, ``unique``, ``mv``, ``dot``, interpolation): its cost is a small multiple (or
``log n``) of its operands' and result's size, so the 1 GiB bound on one tensor bounds it to seconds. An op
whose cost is not so bounded and that no formula here models (e.g. ``linalg.svd``/``inv``, should they ever
be allowlisted) could still run up to what its size bound allows.

``backward`` is not dry-run: it costs about twice the forward of the ops in its graph, each of which was
admitted here, so it is bounded by (twice) the calls the scientist already waited for.

The counting is ``torch.utils.flop_counter.FlopCounterMode``'s (its formulas, ``flop_registry``, and its
rule of decomposing an op it has no formula for), in a dispatch mode of our own: ``FlopCounterMode`` also
installs process-global module hooks while it counts (its ``ModuleTracker``), which would reach the owner's
own modules running in the notebook's thread. A dispatch mode is thread-local.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ..errors import QuotaExceeded

__all__ = ["DEFAULT_CALL_SECONDS", "FLOPS_PER_SECOND", "Counter", "check_flops", "warm_up"]

FLOPS_PER_SECOND = 5e10  # one CPU core's sustained float32 GEMM rate, conservatively (see above)
DEFAULT_CALL_SECONDS = 60.0  # the bound when the caller does not pass Quotas.call_seconds (its default)


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else ()


def _numel(out: Any) -> int:
    return math.prod(_shape_of(out[0] if isinstance(out, (tuple, list)) else out))


def _pool(x: Any, kernel_size: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    """A max or average pool: one op per output element and kernel element (stride 1 makes it quadratic)."""
    kernel = kernel_size if isinstance(kernel_size, (list, tuple)) else [kernel_size]
    return _numel(out_val) * math.prod(int(k) for k in kernel)


def _pairwise(x1: Any, x2: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    """``cdist``: each of the N x M distances reads D coordinates of both points."""
    return 2 * _numel(out_val) * (_shape_of(x1) or (1,))[-1]


def _trilinear(
    i1: Any, i2: Any, i3: Any, e1: Any, e2: Any, e3: Any, *args: Any, out_val: Any = None, **kwargs: Any
) -> int:
    """``bilinear``: a multiply-add for every element of the three operands' broadcast product."""
    shapes = []
    for x, expand in ((i1, e1), (i2, e2), (i3, e3)):
        shape = list(_shape_of(x))
        for dim in sorted(expand):
            shape.insert(dim, 1)
        shapes.append(shape)
    return 2 * math.prod(max(sizes) for sizes in zip(*shapes))


# FlopCounterMode's formulas, and the allowlisted ops whose cost their output's size does not bound
_aten = torch.ops.aten
_REGISTRY: dict[Any, Callable[..., int]] = {
    **flop_registry,
    _aten.max_pool2d_with_indices: _pool,
    _aten.max_pool2d: _pool,
    _aten.avg_pool2d: _pool,
    _aten._cdist_forward: _pairwise,
    _aten._euclidean_dist: _pairwise,
    _aten._trilinear: _trilinear,
}


class Counter(TorchDispatchMode):
    """Adds up the FLOP of the ops run under it (as ``FlopCounterMode`` counts them); ``flops`` is the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Any = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        formula = _REGISTRY.get(func._overloadpacket)
        if formula is None:
            with self:  # an op with no formula may decompose into ops with one (FlopCounterMode's rule)
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def check_flops(flops: int, call_seconds: float, what: str) -> None:
    """Refuse a call whose counted FLOP would take over ``call_seconds`` at ``FLOPS_PER_SECOND``."""
    if flops > call_seconds * FLOPS_PER_SECOND:
        raise QuotaExceeded(
            f"{what} would compute about {flops / 1e9:,.0f} GFLOP, over the "
            f"{call_seconds * FLOPS_PER_SECOND / 1e9:,.0f} GFLOP that the {call_seconds:g} s limit for one "
            f"call allows (at {FLOPS_PER_SECOND / 1e9:g} GFLOP/s)"
        )


def warm_up() -> None:
    """Import the counter's formulas' code now (about 1.5 s the first time a meta ``mm`` is counted)."""
    x, image = torch.empty(1, 1, device="meta"), torch.empty(1, 1, 1, 1, device="meta")
    with torch.no_grad(), Counter():
        torch.nn.functional.linear(x, x)
        torch.nn.functional.conv2d(image, image)
