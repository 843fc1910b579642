"""Smoke test of the benchmark: ``python -m bench --quick`` finishes, reports every row, and leaves no process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _processes_with(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (the benchmark's peers inherit it); Linux /proc."""
    needle = f"DUET_BENCH_TEST_MARK={marker}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_quick_benchmark_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    marker = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "DUET_BENCH_TEST_MARK": marker},
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert _processes_with(marker) == [], "the benchmark left peer processes running"

    results = json.loads(out.read_text())
    assert results["config"]["quick"] is True
    sizes = [f"{mb:g}mb" for mb in results["config"]["bulk_mb"]]
    expected = [
        "connect",
        "rtt_median",
        "rtt_p99",
        "ping_median",
        "pipelined",
        *(f"get_{s}" for s in sizes),
        *(f"send_{s}" for s in sizes),
        "epoch",
        "epoch_no_plans",
        "epoch_notebook",
        "mem_get",
        "mem_send",
        "mem_pipelined",
    ]
    rows = {row["key"]: row for row in results["rows"]}
    assert list(rows) == expected
    # notebook 03's training: the same model trained on both sides sums the same loss epoch after epoch
    notebook = results["notebook_epoch"]
    assert notebook["same_losses"] and len(notebook["losses"]["duet"]) == 2

    table = done.stdout
    for key, row in rows.items():
        assert isinstance(row["duet"], float) and math.isfinite(row["duet"]) and row["duet"] > 0, key
        assert isinstance(row["ratio"], float) and math.isfinite(row["ratio"]), key
        assert row["limits"], key
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in row["limits"].values()), key
        assert row["met"] in (True, False, None), key
        assert row["scenario"] in table, f"{key} is not in the printed table"
    assert all(
        rows[k]["met"] is not None for k in expected if not k.startswith(("mem_", "ping_", "epoch_no"))
    )


def test_the_replay_trains_as_the_local_loop_and_reports_each_call() -> None:
    """``python -m bench.replay``: the owner's executor alone replays a recorded session; the replayed
    epoch trains exactly as the local one (the same summed loss), and the report lists its calls."""
    from bench import replay, training

    x, y = training.digits()
    rec = replay.record(x, y, 3, 96)
    assert len(rec.marks) == 4 and rec.marks[-1] == len(rec.frames)
    rows: dict[str, list[tuple[float, float]]] = {}
    seconds, fast, loss = replay.replay(rec, x, y, rows)
    _, local_loss = training.local_epoch(x, y, 96, replay.BATCH)
    assert loss == local_loss
    assert seconds > 0 and fast > 0  # the last epoch's runs are verified: calls take the fast path
    assert len(rows["Tensor.backward"]) == 3 and all(d >= inside > 0 for d, inside in rows["Tensor.backward"])
    done = subprocess.run(
        [sys.executable, "-m", "bench.replay", "--pairs", "1", "--samples", "96"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Tensor.backward" in done.stdout and "ratio" in done.stdout


def test_the_replay_of_notebook_03s_training_sums_the_local_trainings_third_epoch() -> None:
    """``--loop notebook``: one model trained on, epoch after epoch; the replayed third epoch's calls run on
    the fast path and sum the loss of the local training's third epoch."""
    from bench import replay, training

    x, y = training.digits()
    rec = replay.record(x, y, 3, 192, loop="notebook")
    seconds, fast, loss = replay.replay(rec, x, y)
    local = training.NotebookTraining(None, x, y, 192)
    assert loss == [local.epoch()[1] for _ in range(3)][-1]
    assert seconds > 0 and fast >= 2 * 19  # the third epoch's three runs: all but the first verified
    done = subprocess.run(
        [sys.executable, "-m", "bench.replay", "--loop", "notebook", "--pairs", "1", "--samples", "192"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Adam.step" in done.stdout and "ratio" in done.stdout
