"""The signaling server's two launchers as real processes: options, env vars, /healthz, clean stop."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).parent / "duet-signaling"
LAUNCHERS = {
    "console script": [str(CONSOLE_SCRIPT)],
    "signaling_server.py": [sys.executable, str(ROOT / "signaling_server.py")],
}

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Server:
    """A launched server process; ``url`` is read from its 'listening on' log line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, **env}
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def listening(self, timeout: float = 20) -> tuple[str, int]:
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
            if found := re.search(r"listening on http://([0-9.]+):(\d+)", line):
                return found.group(1), int(found.group(2))
        raise AssertionError(f"the server exited without listening: {self.seen}")

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def health(host: str, port: int) -> tuple[int, object]:
    async def get() -> tuple[int, object]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/healthz", timeout=aiohttp.ClientTimeout(10)) as resp:
                return resp.status, await resp.json()

    return asyncio.run(get())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_launcher_with_host_and_port_serves_healthz_and_stops_cleanly(
    launcher: str, sig: signal.Signals
) -> None:
    assert CONSOLE_SCRIPT.exists(), "the console script duet-signaling is not installed in this venv"
    server = Server(
        [*LAUNCHERS[launcher], "--host", "127.0.0.1", "--port", "0"], {"DUET_SIGNALING_PORT": "1"}
    )
    try:
        host, port = server.listening()
        assert host == "127.0.0.1" and port not in (0, 1, 8765)  # --port wins over the env var
        assert health(host, port) == (200, {"status": "ok", "pending": 0})
        assert server.stop(sig) == 0
        assert any("shutting down" in line for line in drain(server)), server.seen
    finally:
        server.kill()


def drain(server: Server) -> list[str]:
    lines = []
    while (line := server.lines.get(timeout=10)) is not None:
        lines.append(line)
    return lines


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_host_and_port_come_from_the_environment(launcher: str) -> None:
    env = {"DUET_SIGNALING_HOST": "127.0.0.2", "DUET_SIGNALING_PORT": "0"}
    server = Server(LAUNCHERS[launcher], env)
    try:
        host, port = server.listening()
        assert host == "127.0.0.2"
        assert health("127.0.0.2", port)[0] == 200
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.kill()


def test_the_signaling_server_imports_without_torch_or_pandas() -> None:
    code = (
        "import sys, duet.signaling.server, duet.errors, duet\n"
        "heavy = sorted(m for m in ('torch', 'pandas', 'numpy', 'aiortc') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert duet.DuetError and duet.SignalingError\n"
        "assert 'torch' not in sys.modules\n"
        "import duet as sy\n"
        "assert sy.Module.__module__ == 'duet.remote.module' and 'torch' in sys.modules\n"
        "assert sy.launch_duet is sy.launch.launch_duet and 'Module' in dir(sy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
