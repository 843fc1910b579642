"""Turns the measurements into rows (duet figure, limits, ratio, target), the printed table and the JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import MB, SMALL_BYTES, Config

__all__ = [
    "Row",
    "build_rows",
    "format_table",
    "machine",
    "udp_receive_errors",
    "write_json",
    "expected_keys",
]


@dataclass
class Row:
    key: str  # stable identifier (the smoke test looks rows up by it)
    scenario: str
    duet: float
    unit: str
    limits: dict[
        str, float
    ]  # limit name -> figure, in the row's unit; the first one is what ratio divides by
    ratio: float
    target: str
    met: bool | None  # None: no target, shown for information
    notes: list[str] = field(default_factory=list)


def _p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[98]


def _ms(xs: list[float], how: str) -> float:
    return 1000 * (statistics.median(xs) if how == "median" else _p99(xs))


def expected_keys(cfg: Config) -> list[str]:
    """Every row a complete run produces for ``cfg``."""
    keys = ["connect", "rtt_median", "rtt_p99", "ping_median", "pipelined"]
    keys += [f"get_{mb:g}mb" for mb in cfg.bulk_mb] + [f"send_{mb:g}mb" for mb in cfg.bulk_mb]
    return [*keys, "epoch", "epoch_no_plans", "epoch_notebook", "mem_get", "mem_send", "mem_pipelined"]


def build_rows(cfg: Config, res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []

    def add(
        key: str, scenario: str, value: float, unit: str, limits: dict[str, float], target: str, **kw: Any
    ) -> None:
        """A row; unless given, the ratio is the duet figure over the first limit, and ``met`` is None."""
        ratio = kw.pop("ratio", value / next(iter(limits.values())))
        rows.append(
            Row(key, scenario, value, unit, limits, ratio, target, kw.pop("met", None), kw.pop("notes", []))
        )

    con = res["connect"]
    connect = statistics.median(con["duet"])
    add(
        "connect",
        f"connect: launch_duet -> join_duet -> open (median of {len(con['duet'])})",
        connect,
        "s",
        {"raw aiortc": statistics.median(con["raw"])},
        "< 1 s",
        met=connect < 1.0,
        notes=[
            f"first (cold) session {con['cold']:.3f} s; join_duet alone {statistics.median(con['join']):.3f} s"
        ],
    )
    rt = res["round_trip"]
    sizes = f"duet request {rt['request_bytes']:.0f} B, reply {rt['reply_bytes']:.0f} B; bare echo {SMALL_BYTES} B"
    for how in ("median", "p99"):
        duet_ms, raw_ms = _ms(rt["get"], how), _ms(rt["raw"], how)
        add(
            f"rtt_{how}",
            f"small get, accepted by a handler ({how} of {len(rt['get'])})",
            duet_ms,
            "ms",
            {"aiortc echo": raw_ms, "TCP echo": _ms(rt["tcp"], how)},
            "<= 2x aiortc echo",
            met=duet_ms <= 2 * raw_ms,
            notes=[sizes],
        )
    add(
        "ping_median",
        f"  (diagnostic) duet channel echo, d.ping() (median of {len(rt['ping'])})",
        _ms(rt["ping"], "median"),
        "ms",
        {"aiortc echo": _ms(rt["raw"], "median"), "TCP echo": _ms(rt["tcp"], "median")},
        "-",
    )
    pl = res["pipelined"]
    add(
        "pipelined",
        f"pipelined: {pl['calls']:,} x y = y + 1, then one get",
        pl["rate"],
        "calls/s",
        {f"aiortc, {pl['raw_size']} B msgs": pl["raw_rate"]},
        ">= 0.5x aiortc",
        met=pl["rate"] >= 0.5 * pl["raw_rate"],
        notes=[f"the first {pl['cold_calls']} calls on a fresh owner: {pl['cold_rate']:.0f} calls/s"],
    )
    bulk = res["bulk"]
    kinds = (
        ("get", "get of a {} MB tensor", "raw_pull", "tcp_pull"),
        ("send", "model.send(d), {} MB duet.Module", "raw_push", "tcp_push"),
    )
    for kind, label, raw_key, tcp_key in kinds:
        for mb in cfg.bulk_mb:
            b = bulk[mb]
            shown = mb if kind == "get" else round(b["model_bytes"] / MB, 2)
            add(
                f"{kind}_{mb:g}mb",
                label.format(f"{shown:g}") + (f" (median of {b['reps']})" if b["reps"] > 1 else ""),
                b[kind],
                "MB/s",
                {"aiortc": b[raw_key], "TCP": b[tcp_key]},
                ">= 0.9x aiortc",
                ratio=b[f"{kind}_ratio"],
                met=b[f"{kind}_ratio"] >= 0.9,
                notes=[f"owner-side ms of the last send's calls: {b['owner_ms']}"] if kind == "send" else [],
            )
    ep = res["epoch"]
    add(
        "epoch",
        f"epoch, demo CNN ({ep['samples']} digits, batch {ep['batch_size']}; median of {len(ep['duet_all'])})",
        ep["duet_seconds"],
        "s",
        {"same loop, local": ep["local_seconds"]},
        "<= 1.3x local",
        ratio=ep["ratio"],
        met=ep["ratio"] <= 1.3,
        notes=[f"summed loss: duet {ep['duet_loss']:.4f}, local {ep['local_loss']:.4f}"],
    )
    add(
        "epoch_no_plans",
        "  (diagnostic) the same epoch, plans off (DUET_PLANS=0)",
        ep["no_plans_seconds"],
        "s",
        {"same loop, local": ep["local_seconds"]},
        "-",
        ratio=ep["no_plans_ratio"],
        notes=[f"summed loss {ep['no_plans_loss']:.4f}"],
    )
    nb = res["notebook_epoch"]
    add(
        "epoch_notebook",
        f"epoch, notebook 03's training (hidden {nb['hidden']}, Adam, batch {nb['batch_size']}; "
        f"median of {len(nb['duet_all'])})",
        nb["duet_seconds"],
        "s",
        {"same loop, local": nb["local_seconds"]},
        "<= 1.3x local",
        ratio=nb["ratio"],
        met=nb["ratio"] <= 1.3,
        notes=[
            "every epoch summed the same loss on both sides"
            if nb["same_losses"]
            else f"summed losses differ: duet {nb['losses']['duet']}, local {nb['losses']['local']}"
        ],
    )
    for key, label in (("get", "get"), ("send", "model send")):
        mem = res[f"memory_{key}"]
        before, peak = mem["before"]["rss"] / MB, mem["after"]["peak_rss"] / MB
        add(
            f"mem_{key}",
            f"owner peak RSS during the {mem['mb']:g} MB {label}",
            peak,
            "MB",
            {"RSS before": before},
            "- (ratio: growth / payload)",
            ratio=(peak - before) / mem["mb"],
        )
    before, after = pl["owner_before"], pl["owner_after"]
    add(
        "mem_pipelined",
        f"owner RSS after {pl['calls']:,} pipelined calls",
        after["rss"] / MB,
        "MB",
        {"RSS before": before["rss"] / MB},
        "- (ratio: after / before)",
        notes=[
            f"peak {after['peak_rss'] / MB:.0f} MB; owner store objects {before['store_objects']} -> "
            f"{after['store_objects']}"
        ],
    )
    return rows


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "calls/s":
        return f"{value:,.0f}/s"
    return f"{value:,.1f} {unit}"


def format_table(rows: list[Row]) -> str:
    head = ["scenario", "duet", "limit(s)", "ratio", "target", "result"]
    lines = []
    for r in rows:
        limits = "; ".join(f"{name} {_fmt(v, r.unit)}" for name, v in r.limits.items())
        result = "-" if r.met is None else ("met" if r.met else "MISSED")
        lines.append([r.scenario, _fmt(r.duet, r.unit), limits, f"{r.ratio:.2f}x", r.target, result])
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    out = [" | ".join(h.ljust(w) for h, w in zip(head, widths)), "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "cores": os.cpu_count(),
        "cpu": model or platform.processor(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        **{dist: version(dist) for dist in ("torch", "aiortc", "aioice")},
        "load_average_at_start": os.getloadavg(),
        "duet_commit": _git("rev-parse", "--short", "HEAD"),
        "duet_uncommitted_changes": bool(_git("status", "--porcelain", "--", "duet")),
    }


def _git(*args: str) -> str:
    """The duet checkout's state, so a figure can be traced to the code it measured ('' if not a git tree)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def udp_receive_errors() -> int | None:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (all processes), or None."""
    try:
        with open("/proc/net/snmp") as f:
            udp = [line.split() for line in f if line.startswith("Udp:")]
        return int(udp[1][udp[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None


def write_json(path: Path, payload: dict[str, Any], rows: list[Row]) -> None:
    body = {**payload, "rows": [asdict(r) for r in rows]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
