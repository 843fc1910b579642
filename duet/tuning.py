"""Taking long-lived objects out of the garbage collector's way, once per process (``DUET_TUNING=0``: not).

Importing torch (and the meta-device code the owner's guards use) leaves a few hundred thousand objects
that live as long as the process. Every full collection walks them all: 0.1-0.3 s with every thread
stopped (0.25 s in the owner of a benchmark epoch, about one epoch in four). Once the session is
connected (the owner: after its guards' warm-up), duet runs one full collection, so that no garbage is
kept, then ``gc.freeze()`` moves what is left to the permanent generation, which later collections skip.
Objects made afterwards are collected as before; what was alive then is still freed by reference
counting, only a reference *cycle* among those objects that becomes garbage later is not collected (call
``gc.unfreeze()`` to hand them back).
"""

from __future__ import annotations

import gc
import os
import threading

__all__ = ["enabled", "freeze_long_lived"]

_lock = threading.Lock()
_frozen = False


def enabled() -> bool:
    return os.environ.get("DUET_TUNING", "1").strip().lower() not in ("0", "false", "no", "off")


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
