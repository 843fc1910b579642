"""`make demo` end to end: the owner and the scientist in two processes, trained model, exit code 0."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_SECONDS = 300  # the demo's own limit; pytest-timeout's (below) leaves room to report a failure


@pytest.mark.timeout(DEMO_SECONDS + 60)
def test_demo_trains_a_model_on_data_it_never_sees(tmp_path: Path, signaling_url: str) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "DUET_CONFIG_DIR": str(tmp_path / "cfg")}
    command = [sys.executable, "-m", "duet.demo"]
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        # as on an offline laptop: the embedded signaling server on its default port, loopback only
        env.pop("DUET_SIGNALING_URL", None)
        script = "ip link set lo up && exec " + " ".join(shlex.quote(c) for c in command)
        command = ["unshare", "-n", "sh", "-c", script]
    else:
        env["DUET_SIGNALING_URL"] = signaling_url
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=DEMO_SECONDS)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "demo OK" in out
    accuracy = float(re.search(r"held-out data: ([\d.]+)%", out).group(1))  # type: ignore[union-attr]
    assert accuracy >= 90
    assert "asked for the raw training images: DENIED" in out
    assert re.search(r"16 MB each way in [\d.]+ s", out)
    assert "request history" in out and "peek" in out and "denied" in out
    assert re.search(r"connected to digits-hospital in [\d.]+ s", out)
    phases = re.search(r"phase timings \(s\): (.*)", out)
    assert phases, out[-3000:]
    timed = dict(
        (m.group(1), float(m.group(2)))
        for m in re.finditer(r"([a-z ()]+?) ([\d.]+)(?:, |$)", phases.group(1))
    )
    assert list(timed) == [
        "launch (owner)",
        "publish (owner)",
        "connect",
        "channel check",
        "send model",
        "train",
        "evaluate",
        "get model",
        "total",
    ], phases.group(0)
    assert timed["send model"] > 0  # ends with a blocking call, so it is not the time to queue the calls
    assert timed["total"] >= sum(
        v for k, v in timed.items() if k not in ("total", "launch (owner)", "publish (owner)")
    )
    history = out[out.index("request history") :]
    assert re.search(r"\bloss\b.*accepted", history) and "probe" not in out
