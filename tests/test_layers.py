"""The layers, losses, optimizers and scheduler the allowlist names, run through the executor (no network).

Each layer is built by its allowlisted constructor, called (``__call__``) on an input, and a loss of its
output is back-propagated, all as the scientist's ops; each optimizer steps a model with StepLR.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_executor import Owner

from duet.codec import PointerRef

LAYERS: dict[str, tuple[tuple[Any, ...], dict[str, Any], str]] = {
    # constructor path: (args, kwargs, input kind)
    "torch.nn.LSTM": ((4, 3), {"batch_first": True}, "seq"),
    "torch.nn.GRU": ((4, 3), {"num_layers": 2}, "seq"),
    "torch.nn.Embedding": ((10, 3), {}, "ids"),
    "torch.nn.BatchNorm1d": ((4,), {}, "flat"),
    "torch.nn.BatchNorm2d": ((2,), {}, "image"),
    "torch.nn.Dropout2d": ((0.5,), {}, "image"),
    "torch.nn.MaxPool2d": ((2,), {}, "image"),
    "torch.nn.AvgPool2d": ((2,), {"stride": 1}, "image"),
    "torch.nn.Conv1d": ((4, 2, 3), {}, "signal"),
}

SHAPES = {"seq": (5, 6, 4), "flat": (8, 4), "image": (3, 2, 6, 6), "signal": (3, 4, 9)}


def make_input(o: Owner, kind: str) -> PointerRef:
    if kind == "ids":
        return o.call("torch.tensor", [[1, 2, 3], [9, 0, 2]])
    return o.call("torch.randn", *SHAPES[kind], requires_grad=True)


@pytest.mark.parametrize("path", list(LAYERS))
def test_layer_constructs_calls_and_backpropagates(path: str) -> None:
    o = Owner()
    torch.manual_seed(0)
    args, kwargs, kind = LAYERS[path]
    layer = o.call(path, *args, **kwargs)
    x = make_input(o, kind)
    out = o.meth(layer, "__call__", x)
    if path in ("torch.nn.LSTM", "torch.nn.GRU"):
        output, hidden = o.meth(out, "__getitem__", 0), o.meth(out, "__getitem__", 1)
        assert isinstance(o.value(hidden), tuple if path.endswith("LSTM") else torch.Tensor)
        out = output
    loss = o.meth(o.meth(out, "pow", 2), "sum")
    o.meth(loss, "backward")
    assert o.failures == []
    module = o.value(layer)
    assert type(module).__name__ == path.rsplit(".", 1)[1]
    value = o.value(out)
    assert isinstance(value, torch.Tensor) and value.requires_grad
    params = list(module.parameters())
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0, path
    if kind != "ids":
        grad = o.value(x).grad
        assert grad is not None and grad.shape == SHAPES[kind]
        if path != "torch.nn.Dropout2d":  # dropout may zero a whole small input
            assert grad.abs().sum() > 0
    else:
        assert params  # the embedding's weight is what learns
    if path == "torch.nn.BatchNorm1d":
        assert not torch.equal(module.running_mean, torch.zeros(4))  # train mode: running stats moved


@pytest.mark.parametrize(
    ("path", "make_target"),
    [
        ("torch.nn.CrossEntropyLoss", lambda o: o.call("torch.tensor", [0, 2, 1, 2])),
        ("torch.nn.MSELoss", lambda o: o.call("torch.randn", 4, 3)),
    ],
)
def test_loss_modules_construct_call_and_backpropagate(path: str, make_target: Any) -> None:
    o = Owner()
    torch.manual_seed(0)
    criterion = o.call(path)
    logits = o.call("torch.randn", 4, 3, requires_grad=True)
    loss = o.meth(criterion, "__call__", logits, make_target(o))
    o.meth(loss, "backward")
    assert o.failures == []
    assert o.value(loss).ndim == 0 and o.value(loss).item() > 0
    assert o.value(logits).grad is not None and o.value(logits).grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("path", "lr"),
    [
        ("torch.optim.SGD", 0.1),
        ("torch.optim.Adam", 0.01),
        ("torch.optim.AdamW", 0.01),
        ("torch.optim.Adadelta", 1.0),
        ("torch.optim.RMSprop", 0.01),
    ],
)
def test_optimizer_with_step_lr_changes_the_parameters(path: str, lr: float) -> None:
    o = Owner()
    torch.manual_seed(0)
    x = o.publish(torch.randn(16, 4), "x")
    y = o.publish(torch.randn(16, 1), "y")
    model = o.call("torch.nn.Linear", 4, 1)
    initial = [p.detach().clone() for p in o.value(model).parameters()]
    opt = o.call(path, o.meth(model, "parameters"), lr=lr)
    sched = o.call("torch.optim.lr_scheduler.StepLR", opt, step_size=1, gamma=0.5)
    for _ in range(3):
        o.meth(opt, "zero_grad")
        loss = o.meth(o.call("torch.nn.MSELoss"), "__call__", o.meth(model, "__call__", x), y)
        o.meth(loss, "backward")
        o.meth(opt, "step")
        o.meth(sched, "step")
    assert o.failures == []
    assert type(o.value(opt)).__name__ == path.rsplit(".", 1)[1]
    after = list(o.value(model).parameters())
    assert all(not torch.equal(a, b) for a, b in zip(initial, after)), path
    assert o.value(o.meth(sched, "get_last_lr")) == [pytest.approx(lr * 0.5**3)]
