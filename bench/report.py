"""Turns the measurements into rows (duet figure, limits, ratio, target), the printed table and the JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import MB, SMALL_BYTES, Config

__all__ = ["Row", "build_rows", "format_table", "machine", "write_json", "expected_keys"]


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
    keys += [f"get_{mb}mb" for mb in cfg.bulk_mb] + [f"send_{mb}mb" for mb in cfg.bulk_mb]
    return keys + ["epoch", "mem_get", "mem_send", "mem_pipelined"]


def build_rows(cfg: Config, raw: dict[str, Any], du: dict[str, Any]) -> list[Row]:
    rtc, tcp = raw["aiortc"], raw["tcp"]
    rows: list[Row] = []

    def add(
        key: str, scenario: str, value: float, unit: str, limits: dict[str, float], target: str, **kw: Any
    ) -> None:
        """A row; unless given, the ratio is the duet figure over the first limit, and ``met`` is None."""
        ratio = kw.pop("ratio", value / next(iter(limits.values())))
        rows.append(
            Row(key, scenario, value, unit, limits, ratio, target, kw.pop("met", None), kw.pop("notes", []))
        )

    connect, cold = statistics.median(du["connect"]["seconds"]), du["connect"]["cold"]
    add(
        "connect",
        f"connect: launch_duet -> join_duet -> open (median of {cfg.connects})",
        connect,
        "s",
        {"raw aiortc": statistics.median(rtc["connect"])},
        "< 1 s",
        met=connect < 1.0,
        notes=[f"cold first connect {cold:.3f} s"],
    )
    rt = du["round_trip"]
    sizes = (
        f"duet request {rt['request_bytes']:.0f} B, reply {rt['reply_bytes']:.0f} B; raw echo {SMALL_BYTES} B"
    )
    for how in ("median", "p99"):
        duet_ms, rtc_ms = _ms(rt["get"], how), _ms(rtc["echo"], how)
        add(
            f"rtt_{how}",
            f"small get, handler-accepted ({how} of {cfg.round_trips})",
            duet_ms,
            "ms",
            {"raw aiortc echo": rtc_ms, "raw TCP echo": _ms(tcp["echo"], how)},
            "<= 2x raw aiortc",
            met=duet_ms <= 2 * rtc_ms,
            notes=[sizes],
        )
    add(
        "ping_median",
        f"  diagnostic: duet channel echo, d.ping() (median of {cfg.round_trips})",
        _ms(rt["ping"], "median"),
        "ms",
        {"raw aiortc echo": _ms(rtc["echo"], "median"), "raw TCP echo": _ms(tcp["echo"], "median")},
        "-",
    )
    pl, cold_calls = du["pipelined"], du["cold_calls"]
    add(
        "pipelined",
        f"pipelined: {pl['calls']:,} y = y + 1, then one get",
        pl["rate"],
        "calls/s",
        {f"raw aiortc msgs ({raw['op_size']} B)": rtc["rate"]},
        ">= 0.5x raw aiortc",
        met=pl["rate"] >= 0.5 * rtc["rate"],
        notes=[f"first {cold_calls['calls']} calls on a fresh owner: {cold_calls['rate']:.0f} calls/s"],
    )
    for mb in cfg.bulk_mb:
        got = du["get"][mb]
        add(
            f"get_{mb}mb",
            f"get of a {mb} MB tensor",
            got,
            "MB/s",
            {"raw aiortc": rtc["pull"][mb], "raw TCP": tcp["pull"][mb]},
            ">= 0.9x raw aiortc",
            met=got >= 0.9 * rtc["pull"][mb],
        )
    for mb in cfg.bulk_mb:
        sent = du["send_model"][mb]
        add(
            f"send_{mb}mb",
            f"model.send(d), {sent['bytes'] / MB:.0f} MB duet.Module",
            sent["rate"],
            "MB/s",
            {"raw aiortc": rtc["push"][mb], "raw TCP": tcp["push"][mb]},
            ">= 0.9x raw aiortc",
            met=sent["rate"] >= 0.9 * rtc["push"][mb],
            notes=[f"owner-side ms: {sent['owner_ms']}"],
        )
    ep = du["epoch"]
    add(
        "epoch",
        f"one epoch, small CNN on digits ({ep['samples']} samples, batch {ep['batch_size']})",
        ep["duet_seconds"],
        "s",
        {"same loop locally": ep["local_seconds"]},
        "<= 1.3x local",
        met=ep["duet_seconds"] <= 1.3 * ep["local_seconds"],
        notes=[f"summed loss: duet {ep['duet_loss']:.4f}, local {ep['local_loss']:.4f}"],
    )
    for key, label in (("get", "get"), ("send", "model send")):
        mem = du[f"memory_{key}"]
        before, peak = mem["before"]["rss"] / MB, mem["after"]["peak_rss"] / MB
        add(
            f"mem_{key}",
            f"owner peak RSS during the {mem['mb']} MB {label}",
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


# fmt: on


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
    }


def write_json(path: Path, payload: dict[str, Any], rows: list[Row]) -> None:
    body = {**payload, "rows": [asdict(r) for r in rows]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
