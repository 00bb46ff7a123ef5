"""What ``stablecodec eval`` reports: the result rows, their per-model summary, and the
renderings -- a terminal table, CSV, JSON and rate-distortion plots.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import registry
from .baselines import BASELINES, SCALES
from .metrics import HIGHER_IS_BETTER, METRIC_LABELS, METRICS

COLUMNS = ("image", "width", "height", "codec", "setting", "target_bpp", "bpp", "bytes", "psnr", "ms_ssim", "lpips",
           "dists", "scale", "quality", "note")

@dataclasses.dataclass
class Result:
    """One image coded by one codec at one rate: a CSV row."""

    image: str
    width: int
    height: int
    codec: str  # "lite" / "stablecodec" (registry family) or "jpeg" / "webp" / "avif"
    setting: str  # model name, or the baseline's "q=N[ @1/s]"
    target_bpp: float | None
    bpp: float | None
    bytes: int | None
    psnr: float | None = None
    ms_ssim: float | None = None
    lpips: float | None = None
    dists: float | None = None
    scale: float | None = None  # 1.0, or the downscale factor a baseline needed
    quality: int | None = None
    note: str = ""
    group: str = dataclasses.field(default="", repr=False)  # summary key: model name or codec@target

    def row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in COLUMNS}


@dataclasses.dataclass
class Report:
    images: list[str]
    results: list[Result]
    summary: list[dict[str, Any]]
    notes: list[str]
    errors: list[str]
    settings: dict[str, Any]
    available: dict[str, bool]
    interrupted: bool = False


# ---------------------------------------------------------------------------------------
# Summaries and reports


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _range(prefix: str, values: list[int]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    return f"{prefix}{lo}" if lo == hi else f"{prefix}{lo}..{hi}"


def summarize(results: Sequence[Result], dataset: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Per codec x rate: means over the images it reached (unreachable rows are counted, not averaged)."""
    dataset = dataset or {}
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    out = []
    for group, rows in groups.items():
        reached = [r for r in rows if r.bpp is not None]
        first = rows[0]
        model = first.codec in registry.FAMILIES
        qualities = [r.quality for r in reached if r.quality is not None]
        scales = sorted({r.scale for r in reached if r.scale is not None})
        labels = {f: s for s, f in SCALES}
        entry: dict[str, Any] = {
            "codec": first.codec,
            "setting": first.setting if model else _range("q=", qualities),
            "target_bpp": first.target_bpp,
            "images": len(rows),
            "reached": len(reached),
            "bpp": _mean([r.bpp for r in reached]),
            **{m: _mean([getattr(r, m) for r in reached]) for m in ("psnr", "ms_ssim", "lpips", "dists")},
            "fid": dataset.get(group, {}).get("fid"),
            "kid": dataset.get(group, {}).get("kid"),
            "kid_std": dataset.get(group, {}).get("kid_std"),
            "patches": dataset.get(group, {}).get("patches"),
            "scales": [labels.get(s, f"{s:g}") for s in reversed(scales)],
        }
        if any(r.psnr == math.inf for r in reached):
            entry["note"] = "some reconstructions are identical to the original (PSNR inf)"
        out.append(entry)
    return out


def _fmt(x: Any, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def format_table(report: Report) -> str:
    """The terminal table: one line per codec x rate, averages over the images reached."""
    cols = [("codec", 11, None), ("setting", 11, None), ("target_bpp", 7, 4), ("n", 5, None), ("bpp", 7, 4),
            ("psnr", 6, 2), ("ms_ssim", 7, 4)]
    for m, digits in (("lpips", 4), ("dists", 4), ("fid", 2), ("kid", 4)):
        if report.available.get(m):
            cols.append((m, 7, digits))
    cols.append(("scale", 12, None))
    head = {"target_bpp": "target", "n": "n", "psnr": "PSNR", "ms_ssim": "MS-SSIM", "lpips": "LPIPS", "dists": "DISTS",
            "fid": "FID", "kid": "KID", "scale": "scale"}
    lines = ["  ".join(f"{head.get(c, c):<{w}}" if d is None else f"{head.get(c, c):>{w}}" for c, w, d in cols)]
    order = {name: i for i, name in enumerate((*registry.FAMILIES, *BASELINES))}

    def key(e: dict[str, Any]) -> tuple:
        # Models first (by rate), then each baseline in the usual order, by target.
        return order.get(e["codec"], len(order)), e["target_bpp"] or 0, e["bpp"] or 0

    for s in sorted(report.summary, key=key):
        cells = []
        for c, w, d in cols:
            if c == "n":
                v = f"{s['reached']}/{s['images']}"
            elif c == "scale":
                sc = s["scales"]
                v = "-" if not sc else sc[0] if len(sc) == 1 else f"{sc[-1]}..{sc[0]}"
            elif d is None:
                v = str(s[c]) or "-"
            else:
                v = _fmt(s[c], d)
            cells.append(f"{v:<{w}}" if d is None and c != "n" else f"{v:>{w}}")
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _csv_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.6g}" if abs(v) >= 1e4 else f"{round(v, 6)}"
    return str(v)


def to_csv(results: Sequence[Result]) -> str:
    """One row per image x codec x rate; empty cells for metrics not computed or undefined."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in results:
        w.writerow([_csv_value(v) for v in r.row().values()])
    return buf.getvalue()


def _json_safe(x: Any) -> Any:
    # Strict JSON: NaN (undefined or not computed) becomes null, infinite PSNR the string "inf".
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def to_json(report: Report) -> str:
    doc = {"images": report.images, "settings": report.settings, "metrics_available": report.available,
           "summary": report.summary, "results": [r.row() for r in report.results], "notes": report.notes,
           "errors": report.errors, "interrupted": report.interrupted}
    return json.dumps(_json_safe(doc), indent=2, allow_nan=False)


def plot_files(report: Report) -> dict[str, bytes]:
    """One PNG per metric that has values, bpp on a log x axis: ``{"rd_psnr.png": data, ...}``.

    Raises ImportError without matplotlib (``pip install 'stablecodec[eval]'``).
    """
    from matplotlib.figure import Figure

    out: dict[str, bytes] = {}
    for metric in METRICS:
        lines: dict[str, list[tuple[float, float, str]]] = {}
        for s in report.summary:
            y = s.get(metric)
            if s["bpp"] is None or y is None or not math.isfinite(y):
                continue
            label = s["setting"] if s["codec"] in registry.FAMILIES else ""
            if s["reached"] < s["images"]:
                # A mean over fewer images is not comparable with its neighbours: say so on the point.
                label = f"{label} ({s['reached']}/{s['images']} images)".strip()
            lines.setdefault(s["codec"], []).append((s["bpp"], y, label))
        if not lines:
            continue
        fig = Figure(figsize=(6, 4.2), dpi=120)
        ax = fig.subplots()
        for codec, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=codec)
            for x, y, label in pts:
                if label:
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_title(f"{len(report.images)} images", fontsize=9)
        ax.set_xlabel("bits per pixel")
        better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        ax.set_ylabel(f"{METRIC_LABELS[metric]} ({better} is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out[f"rd_{metric}.png"] = buf.getvalue()
    return out
