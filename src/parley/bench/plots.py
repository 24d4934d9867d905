"""PNG plots from a bench report: latency CDFs and throughput over time.

matplotlib is imported lazily (it is in the `bench` and `dev` extras), so the
bench itself runs without it and only `--plots` asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"parley": "tab:blue", "baseline": "tab:gray"}


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit(
            "parley bench --plots needs matplotlib: pip install -e '.[bench]' (or '.[dev]')"
        ) from None


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax: Any, summary: dict[str, Any], label: str, color: str, style: str = "-") -> None:
    points = summary.get("cdf") or []
    if not points:
        return
    xs = [max(p[0], 0.001) for p in points]
    ys = [p[1] for p in points]
    ax.plot(xs, ys, style, color=color, label=label, linewidth=1.4)


def write_plots(data: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    res = data["results"]
    written: list[Path] = []
    rev = str(data.get("git", {}).get("revision") or "")[:10]

    # latency CDF: send->deliver at every offered rate, parley solid, baseline dashed
    rates = sorted(
        {r for t in res.values() for r in t.get("latency", {}).get("rates", {})}, key=int
    )
    if rates:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        cmap = plt.get_cmap("viridis")
        for ax, what in zip(axes, ("ack", "deliver"), strict=True):
            for i, rate in enumerate(rates):
                color = cmap(i / max(1, len(rates) - 1) * 0.85)
                for t, style in (("parley", "-"), ("baseline", "--")):
                    summary = res.get(t, {}).get("latency", {}).get("rates", {}).get(rate)
                    if summary:
                        _cdf(ax, summary[what], f"{t} @ {int(rate):,}/s", color, style)
            ax.set_xscale("log")
            ax.set_xlabel(f"send -> {what} latency (ms, log)")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"send -> {what}")
        axes[0].set_ylabel("fraction of messages")
        axes[1].legend(fontsize=8, loc="lower right")
        fig.suptitle(f"parley bench: latency CDF (open loop; dashed = bare relay) {rev}")
        fig.tight_layout()
        path = out_dir / "latency_cdf.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # throughput over time, 100 ms buckets
    series = {
        t: v["throughput"]["per_second"]
        for t, v in res.items()
        if "per_second" in v.get("throughput", {})
    }
    if series:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        for t, ys in series.items():
            while ys and ys[-1] == 0:
                ys = ys[:-1]
            xs = [i / 10 for i in range(len(ys))]
            ax.plot(xs, ys, color=COLORS.get(t), label=t, linewidth=1.2)
        warm = data.get("sizes", {}).get("warmup")
        if warm:
            ax.axvline(warm, color="k", linestyle=":", linewidth=1, label="measuring starts")
        ax.set_xlabel("seconds")
        ax.set_ylabel("messages fully done per second")
        ax.set_title(f"parley bench: 1:1 throughput over time (100 ms buckets) {rev}")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
