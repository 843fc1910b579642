"""Every fenced block in README.md, docs/ and notebooks/README.md says how it is checked, in a
`<!-- run: KIND -->` line right above it, and is checked that way.

Kinds: ``owner``/``scientist`` (the n-th owner block runs in one process beside the n-th scientist block),
``standalone`` (a process of its own), ``offline`` (inside a network namespace with no route out, for
examples naming outside servers), ``server`` (shell commands that each start the signaling server; run in a
namespace too, then stopped), ``ci`` (set-up and test commands: each line is checked against the Makefile,
setup.cfg and the tree), ``bench`` (``python -m bench ...`` lines: their arguments must parse with the
bench's own argument parser; the bench is not run), ``ops`` (examples of wire-protocol ops: each kind is one
the owner's executor runs) and ``text`` (drawings and tables: must not be code).
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import duet

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "notebooks" / "README.md"]
MARKER = re.compile(r"^<!-- run: (\w+)[^>]*-->$")
OPENING = re.compile(r"^(\s*)```(\S*)\s*$")
PREAMBLE = "import torch\nimport duet\n"
PYTHON_KINDS = {"owner", "scientist", "standalone", "offline"}
SHELL_KINDS = {"server", "ci", "bench"}
KINDS = PYTHON_KINDS | SHELL_KINDS | {"ops", "text"}
COMMAND = re.compile(
    r"^\s*(\$ |python3?\s|pip\s|make\s|duet-signaling\s|jupyter\s|\.venv/|import \w|from \w+ import )"
)


class Block(NamedTuple):
    doc: str
    line: int  # of the opening fence, 1-based
    kind: str  # "" when the marker is missing
    lang: str
    code: str


def fences(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, with the marker on the line above it (if any)."""
    lines = path.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        opening = OPENING.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = opening.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"{path.name}:{i + 1}: a fence that is never closed"
        marker = MARKER.match(lines[i - 1].strip()) if i > 0 else None
        code = "\n".join(line[len(indent) :] for line in lines[i + 1 : end])
        found.append(Block(path.name, i + 1, marker.group(1) if marker else "", lang, code))
        i = end + 1
    return found


def blocks() -> list[Block]:
    return [b for path in DOCS for b in fences(path)]


def of_kind(kind: str) -> list[Block]:
    return [b for b in blocks() if b.kind == kind]


def command_lines(code: str) -> list[str]:
    """The lines of a shell block without their comments."""
    return [line for line in (ln.split("#")[0].strip() for ln in code.splitlines()) if line]


def netns_available() -> bool:
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return probe.returncode == 0


def test_every_block_says_how_it_is_run() -> None:
    unmarked = [(b.doc, b.line, b.code[:60]) for b in blocks() if b.kind not in KINDS]
    assert not unmarked, (
        f"fenced blocks with no `<!-- run: KIND -->` line (kinds: {sorted(KINDS)}): {unmarked}"
    )
    for b in blocks():
        where = f"{b.doc}:{b.line}"
        if b.kind in PYTHON_KINDS:
            assert b.lang == "python", where
        elif b.kind in SHELL_KINDS:
            assert b.lang in ("bash", "sh"), where
        else:
            assert b.lang == "text", f"{where}: a {b.kind} block is marked ```text"
    assert len(of_kind("owner")) == len(of_kind("scientist"))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_fence_escapes_the_parser(path: Path) -> None:
    """Every line that opens or closes a fence belongs to a block found above: none is skipped."""
    fence_lines = [ln for ln in path.read_text().splitlines() if ln.strip().startswith("```")]
    assert len(fence_lines) == 2 * len(fences(path)), fence_lines


def test_the_checked_docs_are_all_the_docs() -> None:
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= {p.name for p in DOCS}
    assert ROOT / "notebooks" / "README.md" in DOCS and ROOT / "README.md" in DOCS


def test_text_check_catches_code() -> None:
    for code in ("python -m bench --quick", "make test", "import duet"):
        assert COMMAND.match(code), code


@pytest.mark.parametrize("index", range(len(of_kind("text"))))
def test_text_blocks_are_not_code(index: int) -> None:
    b = of_kind("text")[index]
    with pytest.raises(SyntaxError):
        compile(b.code, f"{b.doc}:{b.line}", "exec")
    for line in b.code.splitlines():
        assert not COMMAND.match(line), f"{b.doc}:{b.line}: a command in a text block: {line}"


def _executor_op_kinds() -> set[str]:
    source = (ROOT / "duet" / "remote" / "executor.py").read_text()
    table = set(re.findall(r'^\s*"(\w+)": self\._\w+,$', source, re.M))
    special = set(re.findall(r'if kind == "(\w+)":', source))
    plans = re.search(r"_PLAN_KINDS = frozenset\(\{(.*?)\}\)", source)
    assert table and special and plans
    return table | special | set(re.findall(r'"(\w+)"', plans.group(1)))


@pytest.mark.parametrize("index", range(len(of_kind("ops"))))
def test_ops_blocks_name_the_ops_the_owner_runs(index: int) -> None:
    b = of_kind("ops")[index]
    documented = []
    for line in b.code.splitlines():
        kind = re.match(r'^\{"k": "(\w+)",', line.strip())
        assert kind, f"{b.doc}:{b.line}: not an op: {line}"
        documented.append(kind.group(1))
    assert sorted(documented) == sorted(_executor_op_kinds())


class _Parsed(Exception):
    """Carries the namespace bench's parser produced, out of bench's main() before it runs anything."""


def bench_arguments(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with the parser bench's main() builds, stopping main() right after it parses."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import bench.__main__ as bench_main

    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise _Parsed(original(self, args, namespace))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", capture)
        try:
            bench_main.main(argv)
        except _Parsed as parsed:
            return parsed.args[0]  # type: ignore[no-any-return]
        except SystemExit as exc:
            raise AssertionError(f"python -m bench rejects {argv}") from exc
    raise AssertionError("bench's main() ran without parsing its arguments")


def test_bench_check_refuses_a_flag_bench_lacks() -> None:
    with pytest.raises(AssertionError, match="rejects"):
        bench_arguments(["--no-such-flag"])


@pytest.mark.parametrize("index", range(len(of_kind("bench"))))
def test_bench_lines_use_flags_bench_has(index: int) -> None:
    b = of_kind("bench")[index]
    lines = command_lines(b.code)
    assert lines
    for line in lines:
        words = shlex.split(line)
        assert words[:3] == ["python", "-m", "bench"], f"{b.doc}:{b.line}: {line}"
        args = bench_arguments(words[3:])
        for flag in (w for w in words[3:] if w.startswith("--")):
            name = flag[2:].split("=")[0].replace("-", "_")
            assert hasattr(args, name), (line, flag)


def _env(tmp_path: Path, signaling_url: str | None) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "DUET_CONFIG_DIR": str(tmp_path / "cfg")}
    env.pop("DUET_SIGNALING_URL", None)
    if signaling_url:
        env["DUET_SIGNALING_URL"] = signaling_url
    return env


@pytest.mark.parametrize("index", range(len(of_kind("owner"))))
def test_owner_and_scientist_blocks_run_as_a_pair(index: int, tmp_path: Path, signaling_url: str) -> None:
    owner = of_kind("owner")[index]
    scientist = of_kind("scientist")[index]
    env = _env(tmp_path, signaling_url)
    (tmp_path / "owner.py").write_text(owner.code)
    (tmp_path / "scientist.py").write_text(scientist.code)
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
    if owner.doc == "README.md":  # the values the README promises
        assert "43.5" in sci.stdout and "None" in sci.stdout
        assert "mean_age" in rest and "accepted" in rest and "denied" in rest


@pytest.mark.parametrize("index", range(len(of_kind("standalone"))))
def test_standalone_blocks_run(index: int, tmp_path: Path, signaling_url: str) -> None:
    code = of_kind("standalone")[index].code
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
@pytest.mark.parametrize("index", range(len(of_kind("offline"))))
def test_offline_blocks_run_with_no_route_out(index: int, tmp_path: Path) -> None:
    code = of_kind("offline")[index].code
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
@pytest.mark.parametrize("index", range(len(of_kind("server"))))
def test_server_blocks_start_a_server(index: int, tmp_path: Path) -> None:
    code = of_kind("server")[index].code
    bindir = Path(sys.executable).parent
    lines = command_lines(code)
    assert lines and len(lines) == len([ln for ln in code.splitlines() if ln.strip()]), code
    for line in lines:
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


def _extras() -> dict[str, list[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    section = cfg["options.extras_require"]
    return {name: [r.strip() for r in value.strip().splitlines()] for name, value in section.items()}


def check_ci_line(line: str, comment: str, makefile: str) -> None:
    """One command of a ``ci`` block: it must be one that `make` runs, or install or run this tree."""
    words = shlex.split(line)
    if words[0] == "make":
        assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), line
    elif words[:2] == ["pip", "install"]:
        targets = [w for w in words[2:] if not w.startswith("-")]
        assert targets, line
        if "-e" in words:
            # an editable install of this directory (the README says to run it from there), as `make` does
            local = words[words.index("-e") + 1]
            spec = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", local)
            assert spec, f"{line}: installs {local!r}, not this directory"
            assert (ROOT / "setup.cfg").exists() and re.search(r"pip install .*-e '?\.", makefile), line
            named = (spec.group(1) or "").split(",") + re.findall(r"\.\[([\w-]+)\]", comment)
            missing = [e for e in named if e and e not in _extras()]
            assert not missing, f"{line}: no such extras in setup.cfg: {missing}"
        else:
            for pkg in targets:
                assert pkg in makefile, f"{line}: the Makefile does not install {pkg}"
    elif words[:2] == ["jupyter", "lab"]:
        assert any(r.startswith("jupyterlab") for reqs in _extras().values() for r in reqs), line
        for path in words[2:]:
            assert (ROOT / path).is_dir(), line
    elif words[0].endswith("python") and words[1:3] == ["-m", "pytest"]:
        assert re.search(r"^unit:.*\n\t.* -m pytest", makefile, re.M), "make test no longer runs pytest"
        for path in (w for w in words[3:] if not w.startswith("-")):
            assert (ROOT / path).exists() and Path(path).parts[0] == "tests", line
    else:
        raise AssertionError(f"a ci line this test does not know how to check: {line!r}")


def test_ci_check_catches_what_is_not_there() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for line, comment in [
        ("pip install -e ../elsewhere", ""),
        ("pip install -e .[nosuchextra]", ""),
        ("pip install -e .", "extras: .[test], .[nosuchextra]"),
        ("pip install requests", ""),
        ("make nosuchtarget", ""),
        ("jupyter lab nosuchdir/", ""),
        (".venv/bin/python -m pytest tests/test_nosuch.py", ""),
        ("rm -rf /", ""),
    ]:
        with pytest.raises(AssertionError):
            check_ci_line(line, comment, makefile)


def test_ci_blocks_are_what_the_makefile_and_ci_run() -> None:
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    checked = 0
    for b in of_kind("ci"):
        for raw in b.code.splitlines():
            line, _, comment = raw.partition("#")
            if line.strip():
                check_ci_line(line.strip(), comment, makefile)
                checked += 1
    assert checked >= 5
    assert "make test" in ci


# ---- docs/api.md against the code ---------------------------------------------------------------------

API = ROOT / "docs" / "api.md"


def test_api_lists_exactly_duet_all() -> None:
    text = API.read_text()
    sentence = re.search(r"`duet\.__all__` is exactly these names:(.*?)\.\n", text, re.S)
    assert sentence, "docs/api.md no longer lists duet.__all__"
    names = re.findall(r"`(\w+)`", sentence.group(1))
    assert len(names) == len(set(names))
    assert set(names) == set(duet.__all__)


def test_api_errors_section_names_every_exported_error() -> None:
    section = API.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    tree = re.search(r"```text\n(.*?)\n```", section, re.S)
    assert tree
    drawn = [re.search(r"(\w+)", line).group(1) for line in tree.group(1).splitlines()]  # type: ignore[union-attr]
    errors = [
        n
        for n in duet.__all__
        if isinstance(getattr(duet, n), type) and issubclass(getattr(duet, n), duet.DuetError)
    ]
    assert sorted(drawn) == sorted(errors)
    for name in drawn[1:]:
        assert getattr(duet, name).__mro__[1] is duet.DuetError, name
    warnings_ = [
        n
        for n in duet.__all__
        if isinstance(getattr(duet, n), type) and issubclass(getattr(duet, n), Warning)
    ]
    assert warnings_ and all(f"`duet.{n}`" in section for n in warnings_)


def documented_columns(call: str) -> list[str]:
    """The column list in the row of docs/api.md's tables that documents ``call``."""
    rows = [ln for ln in API.read_text().splitlines() if ln.startswith(f"| `{call}` |")]
    assert len(rows) == 1, f"docs/api.md documents {call} in {len(rows)} table rows"
    cell = rows[0].split(" | ", 1)[1]
    lists = [span for span in re.findall(r"`([^`]*)`", cell) if ", " in span]
    assert lists, rows[0]
    return lists[0].split(", ")


def test_api_column_lists_are_the_code_s() -> None:
    from duet.remote.activity import LOG_COLUMNS
    from duet.remote.store import STORE_COLUMNS
    from duet.requests import RequestQueue
    from duet.requests.handlers import HANDLER_COLUMNS
    from duet.requests.history import HISTORY_COLUMNS, REQUEST_COLUMNS

    assert documented_columns("d.requests.pandas") == REQUEST_COLUMNS
    assert documented_columns("d.requests.history.pandas") == HISTORY_COLUMNS
    assert documented_columns("d.requests.handlers.pandas") == HANDLER_COLUMNS
    assert documented_columns("d.store.pandas") == STORE_COLUMNS
    assert documented_columns("d.log.pandas") == LOG_COLUMNS
    # and the tables the owner sees are built from those constants
    queue = RequestQueue(on_decided=lambda r: None)
    queue.add_handler(name="mean", action="accept", element_quota=3)
    assert list(queue.handlers.pandas.columns) == HANDLER_COLUMNS
    assert list(queue.history.pandas.columns) == HISTORY_COLUMNS
    assert list(queue.pandas.columns) == REQUEST_COLUMNS


# the options of launch_duet that ../shared/design/API.md names; every other one is a difference
BINDING_LAUNCH_OPTIONS = {"signaling_url", "loopback", "ice_servers", "timeout", "name", "approve_join"}


def test_api_documents_the_launch_options() -> None:
    import inspect

    text = API.read_text()
    pairing = text.split("## Pairing", 1)[1].split("\n## ", 1)[0]
    differences = text.split("## Differences from", 1)[1]
    for name in inspect.signature(duet.launch_duet).parameters:
        assert f"`{name}" in pairing, f"launch_duet's {name}= is not in docs/api.md's Pairing section"
        if name not in BINDING_LAUNCH_OPTIONS:
            assert f"{name}=" in differences, f"launch_duet's {name}= is not in the differences list"
