"""`make demo` end to end: the owner and the scientist in two processes, trained model, exit code 0."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "demo OK" in out
    accuracy = float(re.search(r"held-out data: ([\d.]+)%", out).group(1))  # type: ignore[union-attr]
    assert accuracy >= 90
    assert "asked for the raw training images: DENIED" in out
    assert re.search(r"16 MB each way in [\d.]+ s", out)
    assert "request history" in out and "peek" in out and "denied" in out
    assert "phase timings" in out
