"""What one benchmark run measures: repetitions and sizes, for the full run and for the quick smoke run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Config", "FULL", "QUICK", "SMALL_BYTES", "MB"]

MB = 1 << 20
SMALL_BYTES = 128  # the raw echo's message: about the size of a small get's request and reply


@dataclass(frozen=True)
class Config:
    connects: int = 10
    round_trips: int = 500
    pipelined_calls: int = 10_000
    bulk_mb: tuple[int, ...] = (1, 16, 64)
    bulk_repeats_small: int = 3  # transfers of the smallest size (median); larger sizes run once
    train_samples: int | None = None  # None: the whole digits set (1797 samples)
    batch_size: int = 32
    quick: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Config()
QUICK = Config(
    connects=3,
    round_trips=50,
    pipelined_calls=1000,
    bulk_mb=(1, 2, 4),
    bulk_repeats_small=1,
    train_samples=320,
    quick=True,
)
