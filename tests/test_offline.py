"""Two peers on a host whose only interface is loopback (``unshare -n``), with the default settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _can_make_namespace() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here ({probe.stderr.strip() or 'not root?'})"
    return None


@pytest.mark.skipif(bool(_can_make_namespace()), reason=str(_can_make_namespace()))
def test_pairing_on_a_loopback_only_host(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "DUET_CONFIG_DIR": str(tmp_path / "cfg")}
    env.pop("DUET_SIGNALING_URL", None)
    script = f"ip link set lo up && exec {sys.executable} -u {HERE / 'peers' / 'offline_pair.py'}"
    result = subprocess.run(
        ["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("OFFLINE-OK")]
    assert line, result.stdout + result.stderr[-3000:]
    # aioice alone finds no address there; with duet's fallback the peers use 127.0.0.1
    assert "OFFLINE-OK [] ['127.0.0.1']" in line[0]
