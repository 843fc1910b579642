"""The compute guard: a call whose counted FLOP would take over ``call_seconds`` is refused before it runs."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
import torch
from test_executor import Owner, refused

from duet.errors import QuotaExceeded
from duet.remote import flops, guards

LIMIT = 1 << 30  # the default tensor quota


@pytest.fixture(autouse=True, scope="module")
def warm() -> None:
    guards.warm_up()  # as the owner does once a scientist connects


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def big(o: Owner, *shape: int) -> Any:
    """A tensor of ``shape`` on the owner's side that holds 4 bytes (an expanded scalar): shapes are all
    the guard looks at."""
    return o.meth(o.call("torch.zeros", 1), "expand", *shape)


def test_a_16000_square_matmul_is_refused_at_once() -> None:
    o = Owner()
    a = big(o, 16000, 16000)  # 1 GiB as the guards see it, the tensor quota's size
    held = o.store.scientist_bytes
    for build in (
        lambda: o.meth(a, "__matmul__", a),
        lambda: o.call("torch.matmul", a, a),
        lambda: o.call("torch.mm", a, a),
        lambda: o.call("torch.einsum", "ij,jk->ik", a, a),
    ):
        start = time.perf_counter()
        ref = build()
        assert time.perf_counter() - start < 0.5
        err = refused(o, ref, "QuotaExceeded", "8,192 GFLOP")
        assert "3,000 GFLOP" in err.remote_message and "60 s limit" in err.remote_message
    assert o.store.scientist_bytes == held  # nothing was made


def test_batched_and_convolution_calls_are_counted() -> None:
    o = Owner(store_bytes=16 << 30)  # the store counts an expanded view at its size, though it holds 4 bytes
    batch = big(o, 4, 8000, 8000)  # 1 GiB; its batched product with itself is 4 x 2 x 8000**3 = 4,096 GFLOP
    refused(o, o.call("torch.bmm", batch, o.meth(batch, "transpose", 1, 2)), "QuotaExceeded", "GFLOP")
    images, weight = big(o, 1, 2048, 256, 256), big(o, 2048, 2048, 3, 3)  # 4,948 GFLOP with padding 1
    conv = o.call("torch.nn.functional.conv2d", images, weight, padding=1)
    refused(o, conv, "QuotaExceeded", "torch.nn.functional.conv2d would compute about 4,948 GFLOP")
    pool = o.call("torch.nn.functional.max_pool2d", big(o, 1, 1, 16000, 16000), 8000, 1)
    refused(o, pool, "QuotaExceeded", "GFLOP")  # a small result, 64M comparisons for each element
    points = big(o, 16000, 16000)
    refused(o, o.call("torch.cdist", points, points), "QuotaExceeded", "GFLOP")


def test_a_module_forward_on_a_huge_batch_is_refused() -> None:
    o = Owner()
    conv = o.call("torch.nn.Conv2d", 1024, 1024, 3, padding=1)
    batch = big(o, 60, 1024, 64, 64)  # 1.0 GB; 60 x 2 x 1024**2 x 9 x 64**2 = 4,639 GFLOP
    start = time.perf_counter()
    ref = o.meth(conv, "__call__", batch)
    assert time.perf_counter() - start < 0.5
    refused(o, ref, "QuotaExceeded", "Conv2d.__call__ would compute about 4,639 GFLOP")
    linear = o.call("torch.nn.Linear", 8000, 8000)  # 2 x 32000 x 8000**2 = 4,096 GFLOP
    refused(o, o.meth(linear, "__call__", big(o, 32000, 8000)), "QuotaExceeded", "Linear.__call__")


@pytest.mark.parametrize(
    ("run", "gflop"),
    [
        (lambda: torch.linalg.matrix_power(meta(8000, 8000), 10**9), 40_000),
        (lambda: torch.baddbmm(meta(64, 2048, 2048), meta(64, 2048, 2048), meta(64, 2048, 2048)), 1000),
        (lambda: torch.nn.functional.scaled_dot_product_attention(*[meta(16, 16, 16384, 64)] * 3), 3000),
        (
            lambda: torch.nn.functional.bilinear(
                meta(10_000, 4000), meta(10_000, 4000), meta(10, 4000, 4000)
            ),
            3000,
        ),
    ],
)
def test_the_counter_sees_what_decomposes_into_counted_ops(run: Any, gflop: float) -> None:
    counter = flops.Counter()
    with torch.no_grad(), counter:
        run()
    assert counter.flops > gflop * 1e9


def test_a_huge_exponent_is_refused() -> None:
    x = meta(8000, 8000)  # 256 MB: 44 products of 1,024 GFLOP for an exponent of 10**9
    with pytest.raises(QuotaExceeded, match="torch.linalg.matrix_power would compute about 4[0-9],"):
        guards.dry_run_call(torch.linalg.matrix_power, "torch.linalg.matrix_power", [x, 10**9], {}, LIMIT)
    guards.dry_run_call(torch.linalg.matrix_power, "torch.linalg.matrix_power", [x, 2], {}, LIMIT)


def test_raising_call_seconds_raises_the_bound() -> None:
    a = meta(16000, 16000)
    with pytest.raises(QuotaExceeded, match="8,192 GFLOP, over the 3,000 GFLOP that the 60 s limit"):
        guards.dry_run_method(a, "__matmul__", [a], {}, LIMIT)
    guards.dry_run_method(a, "__matmul__", [a], {}, LIMIT, call_seconds=200)  # 10,000 GFLOP allowed
    with pytest.raises(QuotaExceeded, match="over the 500 GFLOP that the 10 s limit"):  # cached, not reused
        guards.dry_run_method(a, "__matmul__", [a], {}, LIMIT, call_seconds=10)
    conv = torch.nn.Conv2d(1024, 1024, 3, padding=1)
    batch = meta(60, 1024, 64, 64)
    with pytest.raises(QuotaExceeded, match="Conv2d.__call__"):
        guards.dry_run_module(conv, [batch], {}, LIMIT)
    guards.dry_run_module(conv, [batch], {}, LIMIT, call_seconds=100)
    x, w = meta(1, 2048, 256, 256), meta(2048, 2048, 3, 3)
    conv2d = torch.nn.functional.conv2d
    with pytest.raises(QuotaExceeded):
        guards.dry_run_call(conv2d, "torch.nn.functional.conv2d", [x, w], {"padding": 1}, LIMIT)
    guards.dry_run_call(conv2d, "torch.nn.functional.conv2d", [x, w], {"padding": 1}, LIMIT, 100.0)
    assert flops.FLOPS_PER_SECOND * guards.DEFAULT_CALL_SECONDS == 3e12


def test_the_tutorial_cnn_trains_as_before() -> None:
    """The digits CNN's shapes (two convolutions, two linear layers, a batch of 64) pass every guard."""
    o = Owner()
    layers = [
        o.call("torch.nn.Conv2d", 1, 32, 3, 1),
        o.call("torch.nn.Conv2d", 32, 64, 3, 1),
        o.call("torch.nn.Linear", 9216, 128),
        o.call("torch.nn.Linear", 128, 10),
    ]
    x = o.call("torch.rand", 64, 1, 28, 28)
    for i, layer in enumerate(layers):
        if i == 2:
            x = o.call("torch.flatten", o.call("torch.nn.functional.max_pool2d", x, 2), 1)
        x = o.call("torch.relu", o.meth(layer, "__call__", x))
    loss = o.call("torch.nn.functional.cross_entropy", x, o.call("torch.randint", 0, 10, (64,)))
    o.meth(loss, "backward")
    assert o.failures == []
    assert o.value(x).shape == (64, 10)
    weight = o.attr(layers[0], "weight")
    assert o.value(o.attr(weight, "grad")).shape == (32, 1, 3, 3)
    assert o.value(o.call("torch.matmul", big(o, 1000, 1000), big(o, 1000, 1000))).shape == (1000, 1000)


def test_the_cached_count_answers_a_repeated_shape() -> None:
    """A training loop's repeated call is answered from the cache: no second dry run, no counting."""
    counted: list[int] = []

    def run() -> Any:
        counted.append(1)
        return torch.mm(meta(3000, 3000), meta(3000, 3000))

    key = ("test_flops.repeat", meta(3000, 3000), [], {})
    for _ in range(3):
        assert guards._CACHE.size(key, None, run) == (36_000_000, 54_000_000_000)
    assert counted == [1]


def test_warm_up_pays_for_the_first_count() -> None:
    code = (
        "import time, torch\nfrom duet.remote import guards\nguards.warm_up()\n"
        "a, w, im = torch.empty(500, 700), torch.empty(8, 3, 5, 5), torch.empty(2, 3, 30, 30)\n"
        "start = time.perf_counter()\n"
        "guards.dry_run_method(a, 'matmul', [a.t()], {}, 1 << 30)\n"
        "guards.dry_run_call(torch.nn.functional.conv2d, 'torch.nn.functional.conv2d', [im, w], {}, 1 << 30)\n"
        "took = time.perf_counter() - start\n"
        "assert took < 0.5, f'the first counted dry runs took {took:.2f} s'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
