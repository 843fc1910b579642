"""``python -m bench``: measure duet beside its limits on this machine, print one table, write JSON."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from .config import FULL, QUICK
from .procs import BenchError
from .report import build_rows, format_table, machine, udp_receive_errors, write_json

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
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads in each process (default 1: the owner and the scientist share the cores)",
    )
    ap.add_argument(
        "--budget",
        type=int,
        default=0,
        help="stop (and clean up) after this many seconds (default 540, or 120 with --quick)",
    )
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.torch_threads:
        cfg = dataclasses.replace(cfg, torch_threads=args.torch_threads)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGALRM, _stop)
    signal.alarm(args.budget or BUDGET_SECONDS[cfg.quick])
    started = time.monotonic()
    host = machine()
    drops = udp_receive_errors()
    with tempfile.TemporaryDirectory(prefix="duet-bench-") as config_dir:
        # both peers get a throw-away identity (spawned processes inherit the environment)
        os.environ["DUET_CONFIG_DIR"] = config_dir
        os.environ.pop("DUET_SIGNALING_URL", None)
        os.environ["OMP_NUM_THREADS"] = str(cfg.torch_threads)  # read by torch when it is first imported
        os.environ["DUET_PROGRESS_BYTES"] = str(1 << 62)  # no progress bars: they would cost time and spam
        try:
            from duet import progress

            progress.set_threshold(1 << 62)  # in case duet.progress was imported before the variable was set
            from .scenarios import run_all

            results = run_all(cfg, _say)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        finally:
            signal.alarm(0)
    rows = build_rows(cfg, results)
    elapsed = time.monotonic() - started
    host["load_average_at_end"] = os.getloadavg()
    end_drops = udp_receive_errors()
    if drops is not None and end_drops is not None:
        host["udp_datagrams_dropped_receive_buffer_full"] = end_drops - drops
    print(format_table(rows))
    print(
        f"\n{elapsed:.0f} s on {host['cores']} cores ({host['cpu']}), Python {host['python']}, "
        f"torch {host['torch']}, aiortc {host['aiortc']}; JSON: {args.json}"
    )
    write_json(
        args.json, {"machine": host, "config": cfg.as_dict(), "elapsed_seconds": elapsed, **results}, rows
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
