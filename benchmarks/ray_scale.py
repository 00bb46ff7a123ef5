"""Images per second: the plain CLI batch against Ray Data with 1 and 2 workers (issue 17).

Default model, 768x512 crops of photos (``--images DIR``: every PNG/JPEG in it, centre-
cropped and resized to 768x512 once into a scratch folder). Each configuration encodes the
whole folder into a fresh output folder, timed from the command's start (process start,
model loads and Ray's start included, as a user sees it), and Ray's fixed cost is timed
apart (``ray.init`` on a fresh local instance, then a one-file job). Per-worker peak memory
is each actor's peak RSS, reported by the actors themselves.

    python benchmarks/ray_scale.py --images /work/data/photos/train --out docs/results/ray_scale.jsonl
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import stablecodec  # noqa: E402,F401
from _machine import append_rows  # noqa: E402
from stablecodec import raydata  # noqa: E402


class MeasuredWorker(raydata.CodecWorker):
    """Adds the actor's pid and peak RSS to every status row."""

    def __call__(self, batch):
        import os

        rows = super().__call__(batch)
        rows["pid"] = [os.getpid()] * len(rows["input"])
        rows["peak_rss_mb"] = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024] * len(rows["input"])
        return rows


def prepare(src: Path, dst: Path, n: int) -> int:
    from PIL import Image, ImageOps

    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
    for p in files:
        with Image.open(p) as im:
            ImageOps.fit(im.convert("RGB"), (768, 512), Image.Resampling.LANCZOS).save(dst / f"{p.stem}.png")
    return len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import ray

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        n = prepare(Path(a.images), tmp / "in", a.count)

        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "stablecodec", "encode", str(tmp / "in"), "-o", str(tmp / "cli"),
                            "-q", "--device", "cpu"], capture_output=True, text=True)
        wall = time.perf_counter() - t
        assert p.returncode == 0, p.stderr
        rows.append({"engine": "cli", "workers": 1, "images": n, "seconds": round(wall, 2),
                     "images_per_s": round(n / wall, 3)})
        print(json.dumps(rows[-1]), flush=True)

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        init_s = time.perf_counter() - t
        (tmp / "one").mkdir()
        shutil.copy(next((tmp / "in").iterdir()), tmp / "one")
        t = time.perf_counter()
        raydata.encode_dataset(tmp / "one", tmp / "one-out", codec_kwargs={"device": "cpu"}, workers=1)
        one_s = time.perf_counter() - t
        rows.append({"engine": "ray-startup", "ray_init_s": round(init_s, 2), "one_file_job_s": round(one_s, 2)})
        print(json.dumps(rows[-1]), flush=True)
        for workers in (1, 2):
            t = time.perf_counter()
            out = raydata.encode_dataset(tmp / "in", tmp / f"ray{workers}", codec_kwargs={"device": "cpu"},
                                         workers=workers, batch_size=4, worker=MeasuredWorker)
            wall = time.perf_counter() - t
            peaks = {}
            for r in out:
                peaks[r["pid"]] = max(peaks.get(r["pid"], 0), r["peak_rss_mb"])
            same = all((tmp / f"ray{workers}" / f"{Path(r['input']).stem}.scdc").read_bytes()
                       == (tmp / "cli" / f"{Path(r['input']).stem}.scdc").read_bytes() for r in out)
            rows.append({"engine": "ray", "workers": workers, "images": n, "seconds": round(wall, 2),
                         "images_per_s": round(n / wall, 3), "worker_peak_rss_mb": sorted(round(v) for v in peaks.values()),
                         "bytes_equal_cli": same, "errors": sum(1 for r in out if r["error"])})
            print(json.dumps(rows[-1]), flush=True)
        ray.shutdown()
    append_rows(a.out, rows)


if __name__ == "__main__":
    main()
