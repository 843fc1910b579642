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
        "mem_get",
        "mem_send",
        "mem_pipelined",
    ]
    rows = {row["key"]: row for row in results["rows"]}
    assert list(rows) == expected

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
