"""An owner in its own process, driven by line commands on stdin; it reports on stdout (one line each)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import duet


def say(*parts: object) -> None:
    print(*parts, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=None)
    ap.add_argument("--approve-join", action="store_true")
    ap.add_argument("--db", default=None)
    ap.add_argument("--name", default="hospital")
    ap.add_argument("--loopback", action="store_true")
    args = ap.parse_args()
    d = duet.launch_duet(
        signaling_url=args.url, name=args.name, quiet=True, loopback=args.loopback, approve_join=args.approve_join, db_path=args.db
    )
    say("SESSION", d.session_id)
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        if cmd == "wait-peer":
            d.wait_for_peer(timeout=float(rest or 30))
            say("CONNECTED", d.peer.name if d.peer else "", d.peer.fingerprint if d.peer else "", d.status)
        elif cmd == "echo":
            payload = os.urandom(int(rest))
            say("ECHO", d.echo(payload) == payload)
        elif cmd == "status":
            say("STATUS", d.status)
        elif cmd == "wait-closed":
            start = time.monotonic()
            closed = d.wait_closed(timeout=float(rest or 30))
            say("CLOSED", closed, f"{time.monotonic() - start:.2f}", d.close_reason)
        elif cmd == "close":
            d.close()
            say("CLOSED", True, "0", d.close_reason)
        elif cmd == "exec":  # test-only: a statement run against `d`, `torch`, `duet` (the test's own code)
            ns = {"d": d, "duet": duet, "torch": __import__("torch"), "json": json, "say": say}
            try:
                exec(rest.replace("\\n", "\n"), ns)  # noqa: S102 - the test script drives its own owner
                say("OK")
            except Exception as exc:  # noqa: BLE001 - reported to the test
                say("ERR", type(exc).__name__, str(exc).replace("\n", " "))
        elif cmd == "exit":
            break
    d.close()
    say("BYE")


if __name__ == "__main__":
    main()
