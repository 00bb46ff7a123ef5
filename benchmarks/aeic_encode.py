"""AEIC's light sender (issue 20): encode wall time, peak memory and FLOPs per pixel.

Writes full-size random weights in AEIC's released layouts (``testing.write_released_aeic``
with ``aeic_full``) once into ``--cache``, then for each variant and size runs, in a fresh
process each, the public path an encoding device would run: ``Codec(sd_turbo=...,
checkpoint=..., half_decoder=...).encode(image)`` (the model load included and reported
apart), and records wall time and the process's peak RSS. FLOPs are counted with
``torch.utils.flop_counter`` on the float network: g_a (the analysis transform), h_a, and
the entropy-parameter network (h_s and the four context steps) evaluated in float32 --
what the exact fixed-point path computes, in the float-equivalent operation count.

    python benchmarks/aeic_encode.py --cache /work/cache/aeic --sizes 768x512 1920x1080 \\
        --out docs/results/aeic_encode.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import stablecodec  # noqa: E402,F401
from _machine import append_rows  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import numpy as np
t0 = time.perf_counter()
from stablecodec import Codec
sd, ck, hd, w, h, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
codec = Codec(sd_turbo=sd, checkpoint=ck, half_decoder=hd, device="cpu", precision=sys.argv[7])
codec.get_model()
t_load = time.perf_counter() - t0
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
img = np.clip(np.stack([0.5 + 0.3 * np.sin(xx / 40 + c) * np.cos(yy / 55) for c in range(3)], -1)
              + 0.03 * rng.standard_normal((h, w, 3)).astype(np.float32), 0, 1)
times = []
for _ in range(reps):
    t = time.perf_counter(); data = codec.encode(img); times.append(time.perf_counter() - t)
m = codec.get_model().model
print(json.dumps({"load_s": round(t_load, 2), "encode_s": [round(v, 3) for v in times], "bytes": len(data),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                  "stages": m.last_timings, "decoder_side_loaded": [s for s in ("synthesis", "denoiser", "decoder")
                                                                  if m.stage_loaded(s)]}))
"""


def flops_per_pixel(variant: str, w: int, h: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stablecodec.models import aeic

    cfg = aeic.se() if variant == "SE" else aeic.me()
    codec = aeic.AEICCodec(cfg).eval()
    px = w * h
    w, h = -(-w // 64) * 64, -(-h // 64) * 64  # padded as the codec pads
    x = torch.rand(1, 3, h, w) * 2 - 1
    out = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            y = codec.g_a(x)
        out["g_a"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            z = codec.h_a(aeic._pad_reflect(y, 4))
        out["h_a"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            base = codec.h_s(torch.round(z))[:, :, : y.shape[2], : y.shape[3]]
            for i in range(4):
                codec._step_params(base, i)
        out["entropy_parameters"] = fc.get_total_flops()
    return {k: round(v / px, 1) for k, v in out.items()} | {"total": round(sum(out.values()) / px, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--sizes", nargs="+", default=["768x512", "1920x1080"])
    ap.add_argument("--variants", nargs="+", default=["SE", "ME"])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from stablecodec import testing

    rows = []
    for v in a.variants:
        d = Path(a.cache) / v
        files = {"sd_turbo": d / "sd-turbo", "checkpoint": d / f"AEIC_{v}_ft8.pkl", "half_decoder": d / "halfDecoder.ckpt"}
        if not (d / "done").exists():
            t = time.perf_counter()
            testing.write_released_aeic(d, testing.aeic_full(v), spelling="student" if v == "SE" else "plain")
            (d / "done").write_text("")
            print(f"wrote {v} weights in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        for size in a.sizes:
            w, h = (int(s) for s in size.split("x"))
            p = subprocess.run([sys.executable, "-c", CHILD, str(files["sd_turbo"]), str(files["checkpoint"]),
                                str(files["half_decoder"]), str(w), str(h), str(a.reps), a.precision],
                               capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(p.stderr[-2000:])
            row = {"variant": v, "size": size, "precision": a.precision, **json.loads(p.stdout.strip().splitlines()[-1]),
                   "flops_per_px": flops_per_pixel(v, w, h)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    append_rows(a.out, rows)


if __name__ == "__main__":
    main()
