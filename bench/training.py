"""The training scenario: one epoch of the CNN `make demo` trains (duet.demo.DigitsCNN;
notebook 03 trains the same with a wider hidden layer) on scikit-learn's digits, locally and over duet."""

from __future__ import annotations

import time
from typing import Any

import torch

import duet
from duet.demo import DigitsCNN

from .owner import HANDLER_NAME

__all__ = ["run_epoch", "digits", "local_epoch", "duet_epoch", "NotebookTraining"]


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


NOTEBOOK_HIDDEN, NOTEBOOK_BATCH = 512, 64  # notebook 03's CNN and batch


def notebook_epoch(model: Any, th: Any, opt: Any, scheduler: Any, x: Any, y: Any, n: int, zero: Any) -> Any:
    """One epoch of notebook 03's loop (without its progress bars): the same model and optimizer from one
    epoch to the next, the running loss starting from ``zero()``; returns the summed loss."""
    model.train()
    total = zero()
    for start in range(0, n, NOTEBOOK_BATCH):
        xb, yb = x[start : start + NOTEBOOK_BATCH], y[start : start + NOTEBOOK_BATCH]
        opt.zero_grad()
        loss = th.nn.functional.nll_loss(model(xb), yb)
        loss.backward()
        opt.step()
        total += loss.item()
    scheduler.step()
    return total


def notebook_optimizer(th: Any, model: Any) -> tuple[Any, Any]:
    """Notebook 03's optimizer and learning-rate schedule for ``model`` (``th``: ``torch`` or ``d.torch``)."""
    opt = th.optim.Adam(model.parameters(), lr=0.01)
    return opt, th.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


class NotebookTraining:
    """Notebook 03's training, as its scientist runs it: the CNN with a 512-wide hidden layer, sent once,
    Adam (lr 0.01) and a StepLR schedule made once, then epoch after epoch of batches of 64; locally
    (``session`` None) or over duet, the data being the owner's. Both start from the same weights, so epoch
    k sums the same loss on both sides."""

    def __init__(self, session: duet.Duet | None, x: Any, y: Any, n: int) -> None:
        self.session, self.x, self.y, self.n = session, x, y, n
        torch.manual_seed(0)
        model = DigitsCNN(torch, hidden=NOTEBOOK_HIDDEN)
        self.th: Any = torch if session is None else session.torch
        self.model = model if session is None else model.send(session)
        self.opt, self.scheduler = notebook_optimizer(self.th, self.model)
        if session is not None:
            len(self.model.parameters())  # a blocking call: the model and optimizer are on the owner

    def epoch(self) -> tuple[float, float]:
        """Seconds for the next epoch (over duet: from its first call to the ``get`` of its summed loss), and
        that loss."""
        s = self.session
        zero: Any = (lambda: 0.0) if s is None else (lambda: s.python.Float(0.0))
        start = time.perf_counter()
        total = notebook_epoch(self.model, self.th, self.opt, self.scheduler, self.x, self.y, self.n, zero)
        if s is not None:
            total = total.get(request_block=True, name=HANDLER_NAME, strict=True, timeout_secs=120)
        return time.perf_counter() - start, float(total)
