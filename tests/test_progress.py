"""duet.progress.transfer_bar: no bar below the threshold, one bar above it, updated to the total and closed."""

from __future__ import annotations

from typing import Any

import pytest
import tqdm.auto

from duet import progress


class FakeBar:
    made: list[FakeBar] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.n = 0
        self.closed = False
        FakeBar.made.append(self)

    def update(self, n: int) -> None:
        assert not self.closed
        self.n += n

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list[FakeBar]:
    FakeBar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    return FakeBar.made


@pytest.fixture(autouse=True)
def keep_threshold() -> Any:
    before = progress.get_threshold()
    yield
    progress.set_threshold(before)


def test_no_bar_below_the_threshold(bars: list[FakeBar]) -> None:
    update = progress.transfer_bar("receiving small", threshold=1000)
    for done in (300, 600, 999):
        update(done, 999)
    assert bars == []


def test_one_bar_above_the_threshold_updated_to_the_total_and_closed(bars: list[FakeBar]) -> None:
    update = progress.transfer_bar("receiving model", threshold=1000)
    for done in (256, 512, 768, 1000, 1200):
        update(done, 1200)
    assert len(bars) == 1
    bar = bars[0]
    assert bar.kwargs["desc"] == "receiving model" and bar.kwargs["total"] == 1200
    assert bar.kwargs["unit"] == "B"
    assert bar.n == 1200 and bar.closed
    update(1200, 1200)  # a late call after the end changes nothing
    assert len(bars) == 1 and bar.n == 1200


def test_the_bar_is_not_closed_before_the_end(bars: list[FakeBar]) -> None:
    update = progress.transfer_bar("sending x", threshold=0)
    update(10, 30)
    update(20, 30)
    assert len(bars) == 1 and bars[0].n == 20 and not bars[0].closed
    update(30, 30)
    assert bars[0].closed


def test_set_threshold_changes_the_default_for_new_bars(bars: list[FakeBar]) -> None:
    progress.set_threshold(10 << 20)
    quiet = progress.transfer_bar("receiving a")
    quiet(5 << 20, 5 << 20)
    assert bars == []
    assert progress.set_threshold(4096) == 10 << 20
    assert progress.get_threshold() == 4096
    shown = progress.transfer_bar("receiving b")
    shown(5000, 5000)
    assert len(bars) == 1 and bars[0].closed and bars[0].n == 5000
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(ValueError):
            progress.set_threshold(bad)  # type: ignore[arg-type]


def test_the_environment_variable_sets_the_default(tmp_path: Any) -> None:
    import subprocess
    import sys

    code = "from duet import progress; print(progress.get_threshold())"
    env = {"DUET_PROGRESS_BYTES": "12345", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "12345"


def test_no_display_means_no_bar_and_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("no display")

    monkeypatch.setattr(tqdm.auto, "tqdm", broken)
    update = progress.transfer_bar("receiving x", threshold=0)
    update(5, 10)
    update(10, 10)  # no exception
