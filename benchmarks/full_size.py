"""Full-size StableCodec architecture with random weights: wall time and peak memory.

    python benchmarks/full_size.py --sizes 768x512 [2048x1365 3840x2160] --precision fp32 \
        [--cache ~/.cache/stablecodec-bench] [--out docs/results/full_size.json] [--device cuda]

Writes the released layouts once (SD-Turbo folder, stablecodec_ft8.pkl, elic_official.pth
with random weights, about 5 GB) into --cache, then runs each encode and each decode in
its own process (benchmarks/_child.py) so peak RSS is the whole process's, model
loading included. The image is a smooth synthetic one (content does not change the
compute).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import machine  # noqa: E402


def ensure_release(cache: Path) -> Path:
    marker = cache / "READY"
    if not marker.exists():
        from stablecodec import testing

        t = time.time()
        cache.mkdir(parents=True, exist_ok=True)
        testing.write_released(cache, testing.full(), name="ft8")
        marker.write_text("ok\n")
        print(f"wrote full-size random weights to {cache} in {time.time() - t:.0f} s", file=sys.stderr)
    return cache


def test_image(path: Path, w: int, h: int) -> Path:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.4 * np.sin(xx / 97 + c) * np.cos(yy / 71 - c) for c in range(3)], -1)
    Image.fromarray((img * 255).clip(0, 255).astype(np.uint8)).save(path)
    return path


def child(*args: str) -> dict:
    r = subprocess.run([sys.executable, str(HERE / "_child.py"), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"child failed: {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["768x512"])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--max-memory", default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda: untested, no GPU on the project's machine)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/stablecodec-bench/full"))
    ap.add_argument("--out", default=None, help="append results as JSON lines here")
    a = ap.parse_args()
    cache = ensure_release(Path(a.cache))
    work = cache / "runs"
    work.mkdir(exist_ok=True)
    results = []
    for size in a.sizes:
        w, h = (int(v) for v in size.split("x"))
        src = test_image(work / f"in_{size}.png", w, h)
        common = ["--model", "ft8", "--weights-dir", str(cache), "--precision", a.precision, "--device", a.device]
        if a.max_memory:
            common += ["--max-memory", a.max_memory]
        enc = child("encode", str(src), str(work / f"{size}.scdc"), *common)
        dec = child("decode", str(work / f"{size}.scdc"), str(work / f"out_{size}.png"), *common)
        row = {"size": size, "precision": a.precision, "encode": enc, "decode": dec,
               "bpp": round(enc["bytes"] * 8 / (w * h), 5), "machine": os.uname().nodename, "cpus": os.cpu_count(),
               "cpu": machine()}
        results.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
