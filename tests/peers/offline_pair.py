"""Two notebooks on an offline machine, with every default: run inside a loopback-only network namespace.

The owner (another process) launches with no signaling URL, so it starts the embedded server on the
default loopback port, and writes its session ID for ``loopback=True``; this process joins with
``join_duet(loopback=True)`` and checks the channel both ways. Prints ``OFFLINE-OK <addresses>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aioice.ice  # noqa: E402
from conftest import Peer  # noqa: E402

import duet  # noqa: E402
from duet import ice  # noqa: E402


def main() -> None:
    os.environ.pop("DUET_SIGNALING_URL", None)
    raw = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    ice.install()
    owner = Peer("owner.py", "--loopback")
    try:
        owner.expect("SESSION", 60)
        d = duet.join_duet(loopback=True, timeout=30)
        payload = os.urandom(3 << 20)
        assert d.echo(payload) == payload
        owner.send("wait-peer")
        owner.expect("CONNECTED")
        owner.send("echo 100000")
        assert owner.expect("ECHO")[1] == "True"
        d.close()
        print("OFFLINE-OK", raw, ice.host_addresses(), flush=True)
    finally:
        owner.close()


if __name__ == "__main__":
    main()
