"""Run an owner/scientist notebook pair in two real Jupyter kernels at the same time, as two people would.

The owner's notebook starts first. Once it has run its cell tagged ``ready`` (the session is launched, the
data published and the handlers set: where a person would switch to the scientist's notebook), the
scientist's kernel starts; from then on both run side by side, each cell after the other in its own
notebook. Both clients live in one asyncio loop: an owner cell that blocks (``d.wait_for_peer()``, waiting
for a request) only blocks its own kernel. If either side fails, the other is cancelled and both kernels are
shut down, and the error names the notebook and the cell.

Helpers read outputs back: :func:`text` gives the text of the cells carrying a tag (or of the whole
notebook), which the tests search.
"""

from __future__ import annotations

import asyncio
import html.parser
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from ipykernel.kernelspec import RESOURCES, get_kernel_dict
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from nbformat import NotebookNode

__all__ = ["PairError", "PairResult", "run_pair", "table", "tagged", "text"]

READY_TAG = "ready"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ThisPython(KernelSpecManager):
    """Kernel specs in which ``python3`` is always this interpreter, whatever kernelspecs the machine has
    installed: the kernels must import the duet (and torch) of the environment running the tests."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == "python3":
            return KernelSpec(resource_dir=RESOURCES, name="python3", **get_kernel_dict())
        return super().get_kernel_spec(kernel_name)


class PairError(AssertionError):
    """One notebook of the pair failed; the message names it and carries the cell's error."""


@dataclass
class PairResult:
    owner: NotebookNode
    scientist: NotebookNode
    seconds: float  # wall time from the owner's kernel start to both notebooks done


@dataclass
class _Side:
    label: str
    nb: NotebookNode
    env: dict[str, str]
    log: Path  # the kernel process's own stdout and stderr (not the cells' outputs)


async def _run(
    side: _Side, cwd: Path, cell_timeout: float, start: asyncio.Event | None, ready: asyncio.Event | None
) -> None:
    if start is not None:
        await start.wait()
    client = NotebookClient(
        side.nb,
        km=AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisPython()),
        timeout=cell_timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
        shutdown_kernel="immediate",
    )
    with side.log.open("w") as log:
        async with client.async_setup_kernel(env=side.env, stdout=log, stderr=log):
            for index, cell in enumerate(side.nb.cells):
                try:
                    await client.async_execute_cell(cell, index)
                except (CellExecutionError, CellTimeoutError) as exc:
                    message = _ANSI.sub("", str(exc))
                    raise PairError(
                        f"{side.label} notebook, cell {index}:\n{message}{_tail(side.log)}"
                    ) from None
                if ready is not None and READY_TAG in cell.metadata.get("tags", []):
                    ready.set()
    if ready is not None and not ready.is_set():
        raise PairError(f"the {side.label} notebook has no cell tagged {READY_TAG!r}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- {log.name} (last {lines} lines) ---\n" + "\n".join(text) if text else ""


async def _pair(owner: _Side, scientist: _Side, cwd: Path, cell_timeout: float) -> None:
    ready = asyncio.Event()
    tasks = [
        asyncio.ensure_future(_run(owner, cwd, cell_timeout, start=None, ready=ready)),
        asyncio.ensure_future(_run(scientist, cwd, cell_timeout, start=ready, ready=None)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # the first failure, if any
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run_pair(
    owner: Path,
    scientist: Path,
    *,
    owner_env: dict[str, str],
    scientist_env: dict[str, str],
    log_dir: Path,
    cwd: Path | None = None,
    cell_timeout: float = 120,
    timeout: float = 180,
) -> PairResult:
    """Execute both notebooks (read from disk, not modified there) and return them with their outputs.

    The envs are each kernel's whole environment; the kernels' own output goes to ``log_dir`` (quoted in a
    failure). Raises :class:`PairError` if a cell fails or the pair takes longer than ``timeout`` seconds.
    """
    sides = [
        _Side(label, nbformat.read(path, as_version=4), env, log_dir / f"{path.stem}.kernel.log")
        for label, path, env in (("owner", owner, owner_env), ("scientist", scientist, scientist_env))
    ]
    started = time.perf_counter()

    async def main() -> None:
        try:
            await asyncio.wait_for(_pair(*sides, cwd or owner.parent, cell_timeout), timeout)
        except asyncio.TimeoutError:
            raise PairError(f"{owner.name} + {scientist.name} did not finish within {timeout} s") from None

    asyncio.run(main())
    return PairResult(sides[0].nb, sides[1].nb, time.perf_counter() - started)


# ---- reading outputs ------------------------------------------------------------------------------------


def tagged(nb: NotebookNode, tag: str) -> list[NotebookNode]:
    """The cells carrying ``tag`` (fails if there is none: a test must not assert on nothing)."""
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert cells, f"no cell tagged {tag!r}"
    return cells


def _output_text(output: NotebookNode) -> Iterable[str]:
    if output.output_type == "stream":
        yield output.text
    elif output.output_type in ("execute_result", "display_data"):
        plain = output.get("data", {}).get("text/plain")
        if plain:
            yield plain if isinstance(plain, str) else "".join(plain)
    elif output.output_type == "error":
        yield f"{output.ename}: {output.evalue}"


def text(nb: NotebookNode, tag: str | None = None, *, stream: str | None = None) -> str:
    """The text outputs (streams, plain-text results) of the cells tagged ``tag``, or of every cell.

    ``stream="stdout"`` or ``"stderr"`` keeps only that stream (warnings go to stderr)."""
    cells = tagged(nb, tag) if tag is not None else [c for c in nb.cells if c.cell_type == "code"]
    parts = []
    for cell in cells:
        for output in cell.get("outputs", []):
            if stream is not None and (output.output_type != "stream" or output.name != stream):
                continue
            parts.extend(_output_text(output))
    return "".join(parts)


class _TableParser(html.parser.HTMLParser):
    """The header and body rows of the first ``<table>`` in a pandas ``text/html`` output."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._tables = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self._tables += 1
        elif self._tables == 1 and tag == "tr":
            self.rows.append([])
        elif self._tables == 1 and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table(nb: NotebookNode, tag: str) -> list[dict[str, str]]:
    """The DataFrame a cell tagged ``tag`` displayed, as one dict per row (column name to the text shown;
    the index column is ``""``). Read from the ``text/html`` output, which pandas never wraps."""
    for cell in tagged(nb, tag):
        for output in cell.get("outputs", []):
            markup = output.get("data", {}).get("text/html")
            if output.output_type in ("execute_result", "display_data") and markup and "<table" in markup:
                parser = _TableParser()
                parser.feed(markup if isinstance(markup, str) else "".join(markup))
                header, *body = parser.rows
                return [dict(zip(header, row)) for row in body]
    raise AssertionError(f"no cell tagged {tag!r} displayed a table")
