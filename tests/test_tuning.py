"""duet.tuning: the one-time freeze of long-lived objects, each case in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

SESSION = """
import gc, sys, duet
url = sys.argv[1]
owner = duet.launch_duet(signaling_url=url, quiet=True)
assert gc.get_freeze_count() == 0, "frozen before any session connected"
scientist = duet.join_duet(owner.session_id, signaling_url=url, timeout=30)
owner.wait_for_peer(timeout=30)
print("frozen after join", gc.get_freeze_count() > 0)
owner.requests.add_handler(name="t", action="accept", timeout_secs=-1)
x = scientist.torch.ones(3) * 2
assert x.get(request_block=True, timeout_secs=30, name="t").tolist() == [2.0, 2.0, 2.0]
scientist.close(); owner.close()
"""


def run(code: str, *args: str, tuning: str | None = None) -> str:
    env = dict(os.environ)
    env.pop("DUET_TUNING", None)
    if tuning is not None:
        env["DUET_TUNING"] = tuning
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_freeze_collects_first_and_runs_once_per_process() -> None:
    code = (
        "import gc\nfrom duet import tuning\n"
        "class Cycle:\n    pass\n"
        "a = Cycle(); a.me = a; del a\n"  # cyclic garbage: collected, not frozen
        "print(tuning.freeze_long_lived(), tuning.freeze_long_lived())\n"
        "print(gc.get_freeze_count() > 1000)\n"
        "print(any(type(o).__name__ == 'Cycle' for o in gc.get_objects(2)))\n"
        "gc.unfreeze()\nprint(any(type(o).__name__ == 'Cycle' for o in gc.get_objects()))\n"
    )
    assert run(code).split() == ["True", "False", "True", "False", "False"]
    # left alone, the cycle is still there (garbage, not yet collected): the freeze's collect is what freed it
    assert run(code, tuning="off").split() == ["False", "False", "False", "False", "True"]


def test_a_session_freezes_once_connected(signaling_url: str) -> None:
    assert "frozen after join True" in run(SESSION, signaling_url)
    assert "frozen after join False" in run(SESSION, signaling_url, tuning="0")


def test_the_owner_freezes_after_its_guards_warm_up() -> None:
    code = (
        "import gc, sys\nfrom duet import owner\nassert 'torch._dynamo' not in sys.modules\n"
        "owner._warm_up()\nprint('torch._dynamo' in sys.modules, gc.get_freeze_count() > 1000)\n"
    )
    assert run(code).split() == ["True", "True"]
    assert run(code, tuning="0").split() == ["True", "False"]
