"""A scientist in its own process: joins, reports, then follows line commands on stdin."""

from __future__ import annotations

import argparse
import sys

import duet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=None)
    ap.add_argument("--session", default=None)
    ap.add_argument("--loopback", action="store_true")
    args = ap.parse_args()
    d = duet.join_duet(args.session, signaling_url=args.url, loopback=args.loopback, name="bob")
    print("JOINED", d.status, d.peer.fingerprint if d.peer else "", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "ping":
            print("PONG", d.ping(), flush=True)
        elif cmd == "exit":
            break
    d.close()
    print("BYE", flush=True)


if __name__ == "__main__":
    main()
