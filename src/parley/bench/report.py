"""Numbers in, table and JSON out: percentiles, the machine, the git revision."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


def percentile(sorted_values: list[int] | list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values) / 100 - 1e-9) - 1))
    return float(sorted_values[k])


def summarize_us(values: list[int]) -> dict[str, Any]:
    """p50/p99/p99.9/max in milliseconds, and a compact CDF for plots."""
    s = sorted(values)
    out: dict[str, Any] = {"count": len(s)}
    for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)):
        v = percentile(s, q)
        out[name + "_ms"] = None if v is None else round(v / 1000, 4)
    out["max_ms"] = round(s[-1] / 1000, 4) if s else None
    if s:
        qs = [i / 200 for i in range(200)] + [0.995, 0.999, 0.9999, 1.0]
        out["cdf"] = [[round(s[min(len(s) - 1, int(q * len(s)))] / 1000, 4), q] for q in qs]
    return out


def rate_key(rate: int) -> str:
    """1000 -> "1k"; the latency and storage scenarios name their metrics by this."""
    return f"{rate // 1000}k" if rate % 1000 == 0 else str(rate)


Better = Literal["higher", "lower"]


@dataclass
class Row:
    scenario: str
    metric: str
    unit: str
    better: Better
    parley: float | None = None
    baseline: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.parley is None or self.baseline is None or self.baseline == 0:
            return None
        return self.parley / self.baseline

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "unit": self.unit,
            "better": self.better,
            "parley": self.parley,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "note": self.note,
        }


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_ratio(row: Row) -> str:
    r = row.ratio
    if r is None:
        return "-"
    return f"{r:.2f}x"


def table(rows: list[Row], skipped: dict[str, str]) -> str:
    head = ("scenario", "metric", "unit", "parley", "baseline", "ratio")
    body = [
        (r.scenario, r.metric, r.unit, _fmt(r.parley), _fmt(r.baseline), _fmt_ratio(r))
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    right = {3, 4, 5}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    out = [line(head), line(tuple("-" * w for w in widths))]
    out += [line(b) for b in body]
    out.append("")
    out.append(
        "ratio = parley / baseline (the bare relay on the same core, same load generator): "
        "for rates higher is better, for times lower is better."
    )
    for name, why in skipped.items():
        out.append(f"{name}: {why}")
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_kib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def git_revision() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[3]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {"revision": rev or None, "dirty": bool(dirty) if rev else None}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some task waited for a CPU (Linux PSI), in %."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, all) clock ticks of every CPU since boot (Linux `/proc/stat`)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of CPU time the hypervisor gave to other guests between two
    `cpu_ticks()`, in %: on a shared VM the figures move with it."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def fsync_ms(directory: str | None = None, rounds: int = 20) -> dict[str, float] | None:
    """How long a 4 KiB write + fsync takes here (what a durable commit waits for):
    p50 and max in ms. A busy disk shows up here before it shows up as latency."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=directory) as f:
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
                times.append((time.perf_counter() - t0) * 1000)
    except OSError:
        return None
    times.sort()
    return {"p50": round(times[len(times) // 2], 3), "max": round(times[-1], 3)}


def machine() -> dict[str, Any]:
    return {
        "load_average_at_start": load_average(),
        "fsync_ms_at_start": fsync_ms(),
        "cpu_pressure_pct_at_start": cpu_pressure(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_kib": _mem_total_kib(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
