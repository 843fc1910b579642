"""Two interpreter settings a session changes for speed, once per process (``DUET_TUNING=0`` leaves both).

- **Thread switch interval.** duet's event loop runs in a thread beside the notebook's (see
  :mod:`duet.loop`), and the owner's calls run in a third. While one of them computes in Python, another
  that has a message to handle waits for the GIL until CPython's switch interval passes: 5 ms by default,
  so each data-channel packet that arrives mid-computation could wait 5 ms, and a scientist's first
  pipelined call waited 5 ms before it left. duet lowers the interval to :data:`SWITCH_INTERVAL` (1 ms),
  never raises it.
- **Long-lived objects out of the garbage collector's way.** Importing torch (and the meta-device code the
  owner's guards use) leaves a few hundred thousand objects that live as long as the process. Every full
  collection walks them all: 0.1-0.3 s with every thread stopped (0.25 s in the owner of a benchmark
  epoch, about one epoch in four). Once the session is connected (the owner: after its guards' warm-up),
  duet runs one full collection, so that no garbage is kept, then ``gc.freeze()`` moves what is left to the permanent
  generation, which later collections skip. Objects made afterwards are collected as before; what was
  alive then is still freed by reference counting, only a reference *cycle* among those objects that
  becomes garbage later is not collected (call ``gc.unfreeze()`` to hand them back).
"""

from __future__ import annotations

import gc
import os
import sys
import threading

__all__ = ["SWITCH_INTERVAL", "enabled", "lower_switch_interval", "freeze_long_lived"]

SWITCH_INTERVAL = 0.001  # seconds

_lock = threading.Lock()
_frozen = False


def enabled() -> bool:
    return os.environ.get("DUET_TUNING", "1").strip().lower() not in ("0", "false", "no", "off")


def lower_switch_interval() -> None:
    """Lower CPython's thread switch interval to :data:`SWITCH_INTERVAL` (never raise it)."""
    if enabled() and sys.getswitchinterval() > SWITCH_INTERVAL:
        sys.setswitchinterval(SWITCH_INTERVAL)


def freeze_long_lived() -> bool:
    """Collect, then freeze what survives (once per process); returns whether it did so now."""
    global _frozen
    if not enabled():
        return False
    with _lock:
        if _frozen:
            return False
        _frozen = True
    gc.collect()
    gc.freeze()
    return True
