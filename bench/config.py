"""What one benchmark run measures: repetitions and sizes, for the full run and for the quick smoke run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Config", "FULL", "QUICK", "SMALL_BYTES", "MB", "nbytes"]

MB = 1 << 20
SMALL_BYTES = 128  # the raw echo's message: about the size of a small get's request and reply


def nbytes(mb: float) -> int:
    return int(mb * MB)


@dataclass(frozen=True)
class Config:
    connects: int = 10
    round_trips: int = 500
    pipelined_calls: int = 10_000
    bulk_mb: tuple[float, ...] = (1, 16, 64)
    bulk_repeats: tuple[int, ...] = (9, 5, 3)  # duet transfers of each kind and size (see _bulk)
    epoch_repeats: int = 25  # timed epochs on each side, alternating, after one warm-up each (see _training);
    # pairs spread 1.2x-2.7x on a shared 2-core machine: nine gave medians 0.1x apart from run to run
    train_samples: int | None = None  # None: the whole digits set (1797 samples)
    batch_size: int = 32
    torch_threads: int = 1  # intra-op threads in each process: two peers share the machine's cores
    quick: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Config()
QUICK = Config(
    connects=2,
    round_trips=50,
    pipelined_calls=1000,
    bulk_mb=(0.25, 0.5, 1),
    bulk_repeats=(1, 1, 1),
    epoch_repeats=1,
    train_samples=320,
    quick=True,
)
