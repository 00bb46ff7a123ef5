"""Measure the activation memory of each stage, per pixel, for the memory planner.

    python benchmarks/calibrate_memory.py [--size 512x768] [--precision fp32]

Each stage runs in a fresh process with random full-size weights; the figure is the
peak resident memory during the stage minus the resident memory just before it,
divided by the number of image pixels. The constants in ``stablecodec/tiling.py``
(``plan_memory``) come from this script's output (docs/memory.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, gc, torch
stage, h, w, prec = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[prec]
torch.manual_seed(0)
from stablecodec import testing
from stablecodec.models.vae import TiledVAE, VAEPlan
arch = testing.full()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
with torch.no_grad():
    if stage.startswith("vae"):
        from diffusers import AutoencoderKL
        m = AutoencoderKL(**arch.vae).eval().to(dtype)
        tv = TiledVAE(m)
        if stage == "vae_enc":
            x = torch.rand(1, 3, h, w, dtype=dtype)
            fn = lambda: tv.encode(x)
        elif stage == "vae_enc_band":
            x = torch.rand(1, 3, h, w, dtype=dtype)
            fn = lambda: tv.encode(x, VAEPlan(band_elems=2_000_000, attn_tile=10_000))
        elif stage == "vae_dec":
            z = torch.randn(1, 4, h // 8, w // 8, dtype=dtype)
            fn = lambda: tv.decode(z)
        elif stage == "vae_dec_band":
            z = torch.randn(1, 4, h // 8, w // 8, dtype=dtype)
            fn = lambda: tv.decode(z, VAEPlan(band_elems=2_000_000, attn_tile=10_000))
    elif stage == "unet":
        from diffusers import UNet2DConditionModel
        u = UNet2DConditionModel(**{**arch.unet, "in_channels": 320}).eval().to(dtype)
        x = torch.randn(1, 320, h // 8, w // 8, dtype=dtype)
        ctx = torch.randn(1, 77, 1024, dtype=dtype)
        fn = lambda: u(x, torch.tensor([999]), encoder_hidden_states=ctx).sample
    elif stage == "elic":
        from stablecodec.models.encoder import ElicAnalysis
        e = ElicAnalysis().eval().to(dtype)
        x = torch.rand(1, 3, h, w, dtype=dtype)
        fn = lambda: e(x)
    elif stage == "gs_aux":
        from stablecodec.models.latent_codec import LatentCodec
        c = LatentCodec().eval()
        c.g_s.to(dtype); c.aux.to(dtype)
        y = torch.randn(1, 320, h // 64, w // 64, dtype=dtype)
        fn = lambda: (c.g_s(y), c.aux(y))
    elif stage == "exact":
        from stablecodec.models.latent_codec import LatentCodec
        c = LatentCodec().eval()
        c.exact_ops(); c.tables()
        y = torch.randn(1, 320, h // 64, w // 64) * 3
        fn = lambda: c.compress_y(y)
    gc.collect()
    before = rss()
    import resource as r
    fn()
    peak = r.getrusage(r.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"stage": stage, "bytes": max(0, peak - before), "before": before}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="512x768")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--stages", nargs="+", default=["vae_enc", "vae_enc_band", "vae_dec", "vae_dec_band", "unet", "elic", "gs_aux", "exact"])
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    for stage in a.stages:
        r = subprocess.run([sys.executable, "-c", CHILD, stage, str(h), str(w), a.precision], capture_output=True, text=True)
        if r.returncode:
            print(json.dumps({"stage": stage, "error": r.stderr[-500:]}))
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        d["bytes_per_px"] = round(d["bytes"] / (h * w), 1)
        d["size"], d["precision"] = a.size, a.precision
        print(json.dumps(d), flush=True)


if __name__ == "__main__":
    main()
