"""Every code block in README.md and docs/ is run: each says how, in a `<!-- run: KIND -->` line above it.

Kinds: ``owner``/``scientist`` (the n-th owner block runs in one process beside the n-th scientist block),
``standalone`` (a process of its own), ``offline`` (inside a network namespace with no route out, for
examples naming outside servers), ``server`` (a shell command that starts the signaling server; run in a
namespace too, then stopped), ``ci`` (the set-up commands that `make`, and so CI, run themselves).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!-- run: (\w+)[^>]*-->\n)?```(\w+)\n(.*?)\n```", re.S)
PREAMBLE = "import torch\nimport duet\n"
KINDS = {"owner", "scientist", "standalone", "offline", "server", "ci"}


def blocks() -> list[tuple[str, str, str, str]]:
    found = []
    for path in DOCS:
        for m in FENCE.finditer(path.read_text()):
            kind, lang, code = m.group(1), m.group(2), m.group(3)
            if lang in ("python", "bash", "sh"):
                found.append((path.name, kind or "", lang, code))
    return found


def netns_available() -> bool:
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return probe.returncode == 0


def test_every_block_says_how_it_is_run() -> None:
    unmarked = [(name, code[:60]) for name, kind, _, code in blocks() if kind not in KINDS]
    assert not unmarked, f"code blocks with no `<!-- run: KIND -->` line: {unmarked}"
    kinds = [kind for _, kind, _, _ in blocks()]
    assert kinds.count("owner") == kinds.count("scientist")


def _env(tmp_path: Path, signaling_url: str | None) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "DUET_CONFIG_DIR": str(tmp_path / "cfg")}
    env.pop("DUET_SIGNALING_URL", None)
    if signaling_url:
        env["DUET_SIGNALING_URL"] = signaling_url
    return env


@pytest.mark.parametrize("index", range(sum(1 for b in blocks() if b[1] == "owner")))
def test_owner_and_scientist_blocks_run_as_a_pair(index: int, tmp_path: Path, signaling_url: str) -> None:
    owner = [b for b in blocks() if b[1] == "owner"][index]
    scientist = [b for b in blocks() if b[1] == "scientist"][index]
    env = _env(tmp_path, signaling_url)
    (tmp_path / "owner.py").write_text(owner[3])
    (tmp_path / "scientist.py").write_text(scientist[3])
    own = subprocess.Popen(
        [sys.executable, "-u", "owner.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert own.stdout is not None
        first = own.stdout.readline()  # the launch line: the session is waiting
        assert "waiting for a scientist" in first, first
        sci = subprocess.run(
            [sys.executable, "scientist.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sci.returncode == 0, sci.stderr[-3000:]
        rest = own.stdout.read()
        assert own.wait(60) == 0, rest[-3000:]
    finally:
        if own.poll() is None:
            own.kill()
    if owner[0] == "README.md":  # the values the README promises
        assert "43.5" in sci.stdout and "None" in sci.stdout
        assert "mean_age" in rest and "accepted" in rest and "denied" in rest


@pytest.mark.parametrize("index", range(sum(1 for b in blocks() if b[1] == "standalone")))
def test_standalone_blocks_run(index: int, tmp_path: Path, signaling_url: str) -> None:
    code = [b for b in blocks() if b[1] == "standalone"][index][3]
    result = subprocess.run(
        [sys.executable, "-c", PREAMBLE + code],
        cwd=tmp_path,
        env=_env(tmp_path, signaling_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(not netns_available(), reason="cannot create a network namespace here (not root?)")
@pytest.mark.parametrize("index", range(sum(1 for b in blocks() if b[1] == "offline")))
def test_offline_blocks_run_with_no_route_out(index: int, tmp_path: Path) -> None:
    code = [b for b in blocks() if b[1] == "offline"][index][3]
    (tmp_path / "block.py").write_text(PREAMBLE + code)
    script = f"ip link set lo up && exec {shlex.quote(sys.executable)} block.py"
    result = subprocess.run(
        ["unshare", "-n", "sh", "-c", script],
        cwd=tmp_path,
        env=_env(tmp_path, None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(not netns_available(), reason="cannot create a network namespace here (not root?)")
@pytest.mark.parametrize("index", range(sum(1 for b in blocks() if b[1] == "server")))
def test_server_blocks_start_a_server(index: int, tmp_path: Path) -> None:
    code = [b for b in blocks() if b[1] == "server"][index][3]
    bindir = Path(sys.executable).parent
    for line in [ln.split("#")[0].strip() for ln in code.splitlines()]:
        if not line:
            continue
        probe = (
            "import time, urllib.request\n"
            "for _ in range(100):\n"
            "    try:\n"
            "        print(urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=1).status); break\n"
            "    except OSError: time.sleep(0.1)\n"
        )
        script = (
            f"ip link set lo up && export PATH={shlex.quote(str(bindir))}:$PATH && "
            f"cd {shlex.quote(str(ROOT))} && ({line} & echo $! > {tmp_path}/pid) && "
            f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}; kill $(cat {tmp_path}/pid)"
        )
        result = subprocess.run(
            ["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=60
        )
        assert "200" in result.stdout, (line, result.stdout, result.stderr[-2000:])


def test_ci_blocks_are_what_the_makefile_and_ci_run() -> None:
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for _name, kind, _, code in blocks():
        if kind != "ci":
            continue
        for line in [ln.split("#")[0].strip() for ln in code.splitlines() if ln.strip()]:
            if line.startswith("make "):
                assert re.search(rf"^{line.split()[1]}:", makefile, re.M), line
            elif line.startswith("pip install"):
                pkg = line.split()[-1]
                assert pkg in makefile or pkg.strip(".") == "" or "-e" in line, line
    assert "make test" in ci
