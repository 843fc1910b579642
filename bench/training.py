"""The training scenario: one epoch of the CNN `make demo` trains (duet.demo.DigitsCNN;
notebook 03 trains the same with a wider hidden layer) on scikit-learn's digits, locally and over duet."""

from __future__ import annotations

import time
from typing import Any

import torch

import duet
from duet.demo import DigitsCNN

from .owner import HANDLER_NAME

__all__ = ["run_epoch", "digits", "local_epoch", "duet_epoch"]


def run_epoch(model: Any, th: Any, x: Any, y: Any, n: int, batch: int) -> Any:
    """The same loop for both sides: ``th`` is ``torch`` or ``d.torch``; returns the summed loss."""
    opt = th.optim.SGD(model.parameters(), lr=0.1)
    total = None
    for i in range(0, n, batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        opt.zero_grad()
        loss = th.nn.functional.nll_loss(model(xb), yb)
        loss.backward()
        opt.step()
        total = loss.item() if total is None else total + loss.item()
    return total


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as x (N, 1, 8, 8) float32 in [0, 1] and y (N,) int64 (the owner publishes the same)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16, torch.tensor(y)


def local_epoch(x: torch.Tensor, y: torch.Tensor, n: int, batch: int) -> tuple[float, float]:
    """Seconds for one local epoch of a fresh model, and its summed loss."""
    torch.manual_seed(0)
    model = DigitsCNN(torch)
    start = time.perf_counter()
    loss = float(run_epoch(model, torch, x, y, n, batch))
    return time.perf_counter() - start, loss


def duet_epoch(s: duet.Duet, x: Any, y: Any, n: int, batch: int) -> tuple[float, float]:
    """The same over duet, the data being the owner's: a fresh model is sent first (not timed); the clock
    runs from the first call to the ``get`` of the summed loss, which waits for every call of the epoch."""
    torch.manual_seed(0)
    model = DigitsCNN(torch).send(s)
    len(model.parameters())  # a blocking call: the model is on the owner before the clock starts
    start = time.perf_counter()
    result = run_epoch(model, s.torch, x, y, n, batch)
    loss = float(result.get(request_block=True, name=HANDLER_NAME, strict=True, timeout_secs=120))
    return time.perf_counter() - start, loss
