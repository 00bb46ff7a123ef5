#!/usr/bin/env python
"""How far a training part's validation curves are from JPEG and WebP, at each validation point.

    python scripts/val_trend.py --part runs/part --val PHOTOS/val --out docs/results/val-trend.json
    python scripts/val_trend.py --part runs/part3 --val PHOTOS/val --previous docs/results/val-trend.json \
        --out docs/results/val-trend.json    # a later part, the earlier ones and their baselines kept

train_default.py validates on the first 48 val photos' 512x384 centre crops, with the
rate read off the likelihoods. This script puts the classic baselines on the same crops
(each at its best setting under the bit budget, downscaled when needed: the matched-rate
search of ``stablecodec eval``, stablecodec.baselines) over a grid of budgets, adds the
container's bytes to the model's rates, and gives for every validation point the
BD-PSNR against each baseline (train_default.bd_psnr: piecewise-linear in log-rate over
the common range). The slope per thousand steps is what estimates the remaining compute.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from export_default import CONTAINER_BYTES  # noqa: E402
from train_default import VAL_SIZE, bd_psnr, val_images  # noqa: E402

from stablecodec.baselines import BASELINES, MatchedRate  # noqa: E402
from stablecodec.metrics import psnr  # noqa: E402

BUDGETS = np.geomspace(0.004, 0.3, 16)


def baseline_curve(name: str, crops: list[Image.Image]) -> list[dict]:
    """Mean bpp and PSNR over the crops at every budget all of them can meet."""
    searches = [MatchedRate(c) for c in crops]
    rows = []
    for t in BUDGETS:
        matches = [(s, s.search(BASELINES[name], float(t))) for s in searches]
        if any(m.bpp is None for _, m in matches):
            continue
        rows.append({"target": round(float(t), 5), "bpp": float(np.mean([m.bpp for _, m in matches])),
                     "psnr": float(np.mean([psnr(s.reference, m.reconstruction) for s, m in matches]))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", required=True, nargs="+", help="train_default --out folders, in order")
    ap.add_argument("--val", required=True, nargs="+", help="the validation folders the part used")
    ap.add_argument("--val-images", type=int, default=48)
    ap.add_argument("--baselines", default="jpeg,webp")
    ap.add_argument("--out", default=None, help="JSON file for the curves and the table")
    ap.add_argument("--previous", default=None,
                    help="an earlier --out on the same crops: its baseline curves are reused (their search "
                         "is the slow half) and its points kept, so the parts of other machines stay in the table")
    a = ap.parse_args()
    x = val_images(a.val, a.val_images)
    crops = [Image.fromarray((c.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for c in x]
    points = []
    if a.previous:
        prev = json.loads(Path(a.previous).read_text())
        if prev["val_crops"] != len(crops) or prev["container_bytes"] != CONTAINER_BYTES:
            raise SystemExit(f"val_trend: --previous {a.previous} was measured on {prev['val_crops']} crops "
                             f"with {prev['container_bytes']} container bytes, not {len(crops)} and {CONTAINER_BYTES}")
        curves = {n: prev["baselines"][n] for n in a.baselines.split(",")}
        done = {p.name for p in map(Path, a.part)}
        points = [p for p in prev["points"] if p["part"] not in done]
    else:
        curves = {n: baseline_curve(n, crops) for n in a.baselines.split(",")}
    for n, c in curves.items():
        print(n, " ".join(f"{r['bpp']:.4f}/{r['psnr']:.2f}" for r in c))
    overhead = 8 * CONTAINER_BYTES / (VAL_SIZE[0] * VAL_SIZE[1])
    for part in map(Path, a.part):
        recs = []
        if (part / "runs.jsonl").exists():  # the part's starting point
            run = json.loads((part / "runs.jsonl").read_text().splitlines()[0])
            recs.append({"step": 0, "val": run["val_start"]})
        recs += [r["validation"] for r in map(json.loads, (part / "log.jsonl").read_text().splitlines())
                 if "validation" in r]
        for rec in recs:
            rows = [{**r, "bpp": r["bpp"] + overhead} for r in rec["val"]]
            points.append({"part": part.name, "step": rec["step"],
                           **{f"bd_vs_{n}": round(bd_psnr(c, rows), 3) for n, c in curves.items()}})
    print("part  step  " + "  ".join(f"BD vs {n:5s}" for n in curves))
    for p in points:
        print(f"{p['part']}  {p['step']:5d}  " + "  ".join(f"{p[f'bd_vs_{n}']:+9.2f}" for n in curves))
    if a.out:
        Path(a.out).write_text(json.dumps({"val_crops": len(crops), "container_bytes": CONTAINER_BYTES,
                                           "baselines": curves, "points": points}, indent=1) + "\n")


if __name__ == "__main__":
    main()
