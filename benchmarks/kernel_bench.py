"""Kernel rates at the full-size model's shapes (768x512), float32 against bf16.

    python benchmarks/kernel_bench.py [--out FILE]

* ``attention``: the attention core at the UNet's and the VAE's shapes, PyTorch's
  ``scaled_dot_product_attention`` (its CPU flash kernel) against
  :func:`stablecodec.models.attention.sdpa` (bf16: queries in blocks), with the relative
  L2 of each to a float64 reference;
* ``conv``: the 3x3 convolutions that dominate the VAE decoder and the UNet, float32
  contiguous, float32 channels-last and bf16 channels-last;
* ``gemm``: a 4096^3 matmul per dtype (what stages.py calls the floor's rate).

GFLOP/s count 2 per multiply-add (attention: 4 * heads * n^2 * d). Best of three after a
warm-up. Prints JSON lines and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from stablecodec.models import attention

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402
from stages import best_seconds  # noqa: E402

ATTENTION = [  # (heads, tokens, head dim): UNet levels 0-2 at 768x512, the VAE's mid-block
    ("UNet full resolution", 5, 6144, 64), ("UNet 1/2", 10, 1536, 64), ("UNet 1/4", 20, 384, 64),
    ("VAE mid-block", 1, 6144, 512)]
CONV = [  # (in, out, h, w)
    ("VAE decoder 1/1", 128, 128, 512, 768), ("VAE decoder 1/2", 256, 256, 256, 384),
    ("VAE decoder 1/4", 512, 512, 128, 192), ("UNet 1/1", 320, 320, 64, 96), ("UNet 1/2", 640, 640, 32, 48),
    ("UNet 1/4", 1280, 1280, 16, 24)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="append JSON lines here")
    a = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for name, h, n, d in ATTENTION:
            q, k, v = (torch.randn(1, h, n, d) for _ in range(3))
            ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
            flop = 4 * h * n * n * d
            for dtype, kernel, fn in [
                (torch.float32, "PyTorch", F.scaled_dot_product_attention),
                (torch.bfloat16, "PyTorch", F.scaled_dot_product_attention),
                (torch.bfloat16, "stablecodec (query blocks)", attention.sdpa)]:
                qq, kk, vv = (t.to(dtype) for t in (q, k, v))
                sec = best_seconds(lambda: fn(qq, kk, vv))
                rows.append({"kind": "attention", "shape": f"{name}: {h}x{n}x{d}", "dtype": str(dtype)[6:],
                             "kernel": kernel, "ms": round(sec * 1e3, 1), "gflops": round(flop / sec / 1e9),
                             "rel_l2": float(f"{rel(fn(qq, kk, vv), ref):.2e}")})
        for name, ci, co, hh, ww in CONV:
            flop = 2 * hh * ww * ci * co * 9
            for dtype, fmt in [(torch.float32, torch.contiguous_format), (torch.float32, torch.channels_last),
                               (torch.bfloat16, torch.channels_last)]:
                conv = torch.nn.Conv2d(ci, co, 3, padding=1).to(dtype=dtype, memory_format=fmt)
                x = torch.randn(1, ci, hh, ww).to(dtype=dtype, memory_format=fmt)
                sec = best_seconds(lambda: conv(x))
                rows.append({"kind": "conv", "shape": f"{name}: {ci}->{co} at {hh}x{ww}", "dtype": str(dtype)[6:],
                             "kernel": "channels-last" if fmt == torch.channels_last else "contiguous",
                             "ms": round(sec * 1e3, 1), "gflops": round(flop / sec / 1e9)})
        for dtype in (torch.float32, torch.bfloat16):
            m = torch.randn(4096, 4096).to(dtype)
            sec = best_seconds(lambda: m @ m, reps=5)
            rows.append({"kind": "gemm", "shape": "4096^3", "dtype": str(dtype)[6:], "kernel": "matmul",
                         "ms": round(sec * 1e3, 1), "gflops": round(2 * 4096**3 / sec / 1e9)})
    for r in rows:
        r["threads"] = torch.get_num_threads()
        r["machine"] = machine()
        print(json.dumps(r))
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(r) + "\n")
    print("\n| kind | shape | dtype | kernel | ms | GFLOP/s | rel. L2 |\n|---|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['shape']} | {r['dtype']} | {r['kernel']} | {r['ms']} | {r['gflops']} | {r.get('rel_l2', '')} |")


if __name__ == "__main__":
    main()
