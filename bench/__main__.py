"""``python -m bench``: measure duet beside its limits on this machine, print one table, write JSON."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from .config import FULL, QUICK
from .procs import BenchError
from .report import build_rows, format_table, machine, write_json

DEFAULT_JSON = Path(__file__).parent / "results.json"
BUDGET_SECONDS = {False: 540, True: 120}  # the whole run; past it the run stops and cleans up


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise BenchError(f"stopped by signal {signum} (over the time budget, or interrupted)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a fast smoke run: fewer repetitions, smaller sizes")
    ap.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write the results ({DEFAULT_JSON})"
    )
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGALRM, _stop)
    signal.alarm(BUDGET_SECONDS[cfg.quick])
    started = time.monotonic()
    host = machine()
    with tempfile.TemporaryDirectory(prefix="duet-bench-") as config_dir:
        # both peers get a throw-away identity (spawned processes inherit the environment)
        os.environ["DUET_CONFIG_DIR"] = config_dir
        os.environ.pop("DUET_SIGNALING_URL", None)
        try:
            from .baselines import run_baselines
            from .scenarios import op_message_size, run_duet

            op_size = op_message_size()
            raw = run_baselines(cfg, op_size, _say)
            raw["op_size"] = op_size
            du = run_duet(cfg, _say)
        finally:
            signal.alarm(0)
    rows = build_rows(cfg, raw, du)
    elapsed = time.monotonic() - started
    host["load_average_at_end"] = os.getloadavg()
    print(format_table(rows))
    print(
        f"\n{elapsed:.0f} s on {host['cores']} cores ({host['cpu']}), Python {host['python']}, "
        f"torch {host['torch']}, aiortc {host['aiortc']}; JSON: {args.json}"
    )
    write_json(
        args.json,
        {"machine": host, "config": cfg.as_dict(), "elapsed_seconds": elapsed, "limits": raw, "duet": du},
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
