"""An owner in its own process, driven by line commands on stdin; it reports on stdout (one line each).

Test-only commands beyond the session's own: ``exec CODE`` runs statements and ``eval EXPR`` prints
``VAL <json>``, both in one namespace kept for the whole process (``d``, ``torch``, ``duet``, ``json``, ``say``
and whatever earlier code defined); ``wait SECONDS EXPR`` blocks until EXPR is true, re-checked on every
event of the request queue (no polling), and prints ``WAITED True|False``; ``relaunch`` closes the session
and launches a new one with the same options in this process (prints ``SESSION <id>``).
``--extend-allowlist JSON`` launches with ``DEFAULT_ALLOWLIST.extend(**JSON)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import torch

import duet
from duet.remote.allowlist import DEFAULT_ALLOWLIST


def say(*parts: object) -> None:
    print(*parts, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=None)
    ap.add_argument("--approve-join", action="store_true")
    ap.add_argument("--db", default=None)
    ap.add_argument("--name", default="hospital")
    ap.add_argument("--loopback", action="store_true")
    ap.add_argument("--extend-allowlist", default=None, help="JSON keyword arguments of Allowlist.extend()")
    args = ap.parse_args()
    allowlist = (
        DEFAULT_ALLOWLIST.extend(**json.loads(args.extend_allowlist)) if args.extend_allowlist else None
    )
    changed = threading.Condition()

    def on_queue_event(_event: str, _req: Any) -> None:
        with changed:
            changed.notify_all()

    def launch() -> duet.Duet:
        d = duet.launch_duet(
            signaling_url=args.url,
            name=args.name,
            quiet=True,
            loopback=args.loopback,
            approve_join=args.approve_join,
            db_path=args.db,
            allowlist=allowlist,
        )
        d.requests.add_listener(on_queue_event)
        ns["d"] = d
        say("SESSION", d.session_id)
        return d

    ns: dict[str, Any] = {"duet": duet, "torch": torch, "json": json, "say": say}
    d = launch()
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        if cmd == "relaunch":
            d.close()
            d = launch()
        elif cmd == "wait-peer":
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
        elif cmd in ("exec", "eval"):  # test-only: the test's own code, run against `d`
            code = rest.replace("\\n", "\n")
            try:
                if cmd == "exec":
                    exec(code, ns)  # noqa: S102 - the test script drives its own owner
                    say("OK")
                else:
                    say("VAL", json.dumps(eval(code, ns), default=str))  # noqa: S307 - as above
            except Exception as exc:  # noqa: BLE001 - reported to the test
                say("ERR", type(exc).__name__, str(exc).replace("\n", " "))
        elif cmd == "wait":  # wait SECONDS EXPR: until EXPR holds, re-checked on each request-queue event
            seconds, _, expr = rest.partition(" ")
            with changed:
                ok = changed.wait_for(lambda e=expr: bool(eval(e, ns)), float(seconds))  # noqa: S307
            say("WAITED", ok)
        elif cmd == "exit":
            break
    d.close()
    say("BYE")


if __name__ == "__main__":
    main()
