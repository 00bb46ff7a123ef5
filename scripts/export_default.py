#!/usr/bin/env python
"""Turn a training checkpoint into the shipped default model, ``weights/lite.safetensors``.

    python scripts/export_default.py --checkpoint runs/lite/checkpoint.pt \
        --calibrate PHOTOS/train PHOTOS/train-extra --out weights/lite.safetensors

The network was trained with five rate gains; the shipped rate points lite-1 ... lite-5
are placed at target rates (``TARGETS`` bpp) by interpolating the gain vectors
geometrically between neighbouring trained rates (Cui et al., CVPR 2021), each target
found on a grid of fractional rates over *training* photos (768x512 centre crops of
them reduced as the evaluation's Kodak-style crops are; spread over the sorted list, so
over the sources) -- never on evaluation images. The grid's rates are read off the
likelihoods (plus the container's bytes); each target takes the grid rate closest to it
in log-rate among those above the previous point's, so the five points are increasing
even where the rate is not monotone in the gain (a bisection assumed it was, and put two
points together); a rate inside the trained range is preferred to an extrapolated one
whenever it comes within 10% of the target. Each target also chooses the size the image
is coded at (``--scales``, sixteenths of each side; the file's header stores it): the
scale whose estimated (bpp, PSNR) curve on the calibration crops, resampled back to full
size, is highest at the target, a smaller one winning only by 0.05 dB or more. At the
lowest rates a smaller image at a higher rate point is worth several dB (kodak/, 22d7ff59:
lite-1's 0.0059 bpp gave 21.1 dB at full size, about 24.5 at half size), as it is for the
matched-rate baselines that downscale. Each chosen point is then measured with the real
coder. Weights are stored as float16 (the file stays under 30 MB) with the entropy
tables computed from exactly those values; the fingerprint covers the stored tensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from stablecodec.models.latent_codec import GAIN_NAMES  # noqa: E402
from stablecodec.models.lite import LiteConfig, LiteNet  # noqa: E402

TARGETS = (0.005, 0.011, 0.023, 0.048, 0.1)
CONTAINER_BYTES = 31 + 4  # header (19) + colour (12) + CRC, rounded up
EXTS = {".png", ".jpg", ".jpeg", ".webp"}


def centre_crop(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The largest centred crop of ``size``'s aspect, resized to ``size``, as float32 in [0, 1]."""
    w0, h0 = size
    w, h = im.size
    cw, ch = (h * w0 // h0, h) if w * h0 > h * w0 else (w, w * h0 // w0)
    box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
    return np.asarray(im.crop(box).resize(size, Image.LANCZOS), dtype=np.float32) / 255.0


def kodak_crop(path: Path) -> np.ndarray:
    """Centre 3:2 crop resized to 768x512, as ../shared/data/get-photos makes its kodak/ set."""
    im = Image.open(path).convert("RGB")
    im.thumbnail((2048, 2048), Image.LANCZOS)
    return centre_crop(im, (768, 512))


def gains_at(net: LiteNet, r: float) -> dict[str, torch.Tensor]:
    """Gain vectors at fractional rate r in [0, K-1] (geometric interpolation, log-linear extrapolation)."""
    c = net.codec
    k = int(np.clip(np.floor(r), 0, c.cfg.rates - 2))
    t = r - k
    out = {}
    for name in GAIN_NAMES:
        g = getattr(c, name).detach().abs().clamp_min(1e-8)
        out[name] = torch.exp((1 - t) * g[k].log() + t * g[k + 1].log())
    return out


def with_rates(net: LiteNet, points: list[dict[str, torch.Tensor]]) -> LiteNet:
    """A copy of ``net`` whose rate table holds exactly ``points``."""
    cfg = dataclasses.replace(net.cfg, codec=dataclasses.replace(net.cfg.codec, rates=len(points)))
    out = LiteNet(cfg)
    sd = {k: v for k, v in net.state_dict().items() if k.removeprefix("codec.") not in GAIN_NAMES}
    for name in GAIN_NAMES:
        sd[f"codec.{name}"] = torch.stack([p[name] for p in points])
    out.load_state_dict(sd)
    return out.eval()


class Calibration:
    """The calibration crops at one coded scale, as ``Codec.encode`` hands them to the
    network (resampled, on the 8-bit grid, padded to the stride): made once per scale,
    for every grid rate."""

    def __init__(self, images: list[np.ndarray], scale: int, stride: int):
        from stablecodec import container, imageio
        from stablecodec.api import pad_to_multiple

        self.scale = scale
        self.sizes = [(i.shape[1], i.shape[0]) for i in images]
        self.coded_sizes = [container.coded_size(w, h, scale) for w, h in self.sizes]
        self.inputs = [pad_to_multiple(torch.from_numpy(imageio.resize(i, *c).transpose(2, 0, 1).copy())[None]
                                       .mul_(255).round_().div_(255), stride)
                       for i, c in zip(images, self.coded_sizes)]
        self.references = [np.round(i * 255).astype(np.uint8) for i in images]
        self.pixels = sum(w * h for w, h in self.sizes)
        # the container's bytes per image, and the scale byte when there is one
        self.overhead_bits = 8 * (CONTAINER_BYTES + (scale < container.FULL_SCALE))


def measure_bpp(net: LiteNet, cal: Calibration) -> float:
    """Rate point 0 of ``net`` with the real coder."""
    from stablecodec.models.lite import LiteModel

    model = LiteModel(net, 0)
    bits = sum(8 * len(model.compress(x).payload) + cal.overhead_bits for x in cal.inputs)
    return bits / cal.pixels


def estimate(net: LiteNet, cal: Calibration) -> tuple[float, float]:
    """Rate point 0 of ``net``: bpp from the likelihoods of its rounded latents plus the
    container, and mean PSNR of its reconstruction resampled to the full size as
    ``Codec.decode`` does."""
    from stablecodec import imageio
    from stablecodec.metrics import psnr

    bits, psnrs = 0.0, []
    for x, ref, (w, h), (cw, ch) in zip(cal.inputs, cal.references, cal.sizes, cal.coded_sizes):
        x_hat, y_lik, z_lik = net(x, torch.zeros(1, dtype=torch.long), noise=False)
        bits += -(y_lik.log2().sum() + z_lik.log2().sum()).item() + cal.overhead_bits
        rec = x_hat[0, :, :ch, :cw].clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)
        psnrs.append(psnr(ref, np.round(imageio.resize(rec, w, h) * 255).astype(np.uint8)))
    return bits / cal.pixels, float(np.mean(psnrs))


def choose_grid_point(grid, est, target: float, rates: int, floor_rate: float = -np.inf, floor_bpp: float = 0.0) -> int:
    """Index into ``grid`` of the fractional rate for one target bpp, above a floor.

    The grid rate whose estimated bpp is closest in log-rate, among those above the floor
    in both rate and bits (by 10%), so lite-k+1 always spends more. Gains outside the
    trained range [0, rates-1] are extrapolated and untrained: part 3's lite-1 at rate
    -0.875 saved 4% of the bits of rate 0 and lost 3.5 dB on kodak/. So a trained rate is
    taken whenever one comes within 10% of the target.
    """
    def err(j: int) -> float:
        return abs(np.log(est[j] / target))

    cand = [j for j in range(len(grid)) if grid[j] > floor_rate and est[j] > floor_bpp * 1.1]
    if not cand:
        raise SystemExit(f"export_default: no rate above {floor_bpp:.4f} bpp left for {target} bpp; "
                         "widen the grid or lower TARGETS")
    inside = [j for j in cand if 0 <= grid[j] <= rates - 1]
    if inside and err(min(inside, key=err)) <= np.log(1.1):
        cand = inside
    return min(cand, key=err)


def choose_grid_points(grid, est, targets, rates: int) -> list[int]:
    """``choose_grid_point`` for each target in turn, each above the one before."""
    chosen = []
    floor_rate, floor_bpp = -np.inf, 0.0
    for target in targets:
        j = choose_grid_point(grid, est, target, rates, floor_rate, floor_bpp)
        chosen.append(j)
        floor_rate, floor_bpp = grid[j], est[j]
    return chosen


def psnr_at(bpp, psnr, target: float) -> float:
    """PSNR of a curve at ``target`` bpp, linear in log-rate between its points; -inf
    outside the curve (a scale is not chosen on an extrapolation) or where it has no point."""
    bpp, psnr = np.asarray(bpp, dtype=float), np.asarray(psnr, dtype=float)
    ok = np.isfinite(bpp)  # far past the trained rates a likelihood underflows: no estimate there
    order = np.argsort(bpp[ok])
    b, p = np.log(bpp[ok][order]), psnr[ok][order]
    t = np.log(target)
    if not len(b) or t < b[0] or t > b[-1]:
        return -np.inf
    return float(np.interp(t, b, p))


def choose_scale(curves: dict[int, tuple[list[float], list[float]]], target: float, margin: float = 0.05) -> int:
    """The coded scale (sixteenths) whose (bpp, PSNR) curve is highest at ``target``; a
    smaller scale must win by ``margin`` dB, as the calibration photos are few."""
    best = max(curves)
    at = {s: psnr_at(*curves[s], target) for s in curves}
    for s in sorted(curves, reverse=True):
        if at[s] > at[best] + (margin if at[best] > -np.inf else 0):
            best = s
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--calibrate", nargs="+", required=True, help="folders of training photos")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "weights" / "lite.safetensors"))
    ap.add_argument("--max-images", type=int, default=8)
    ap.add_argument("--grid-step", type=float, default=0.125, help="spacing of the fractional rates tried")
    ap.add_argument("--scales", type=int, nargs="+", default=[16, 14, 12, 10, 8],
                    help="coded sizes tried, in sixteenths of each side (16: full size)")
    ap.add_argument("--training", default=None, help="JSON stored as the file's training metadata (e.g. its steps)")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    ck = torch.load(a.checkpoint, map_location="cpu", weights_only=False)  # our own training checkpoint
    net = LiteNet(LiteConfig.from_dict(ck["config"]) if "config" in ck else LiteConfig())
    net.load_state_dict(ck["model"])
    net.eval()
    trained = {name: getattr(net.codec, name).detach().clone() for name in GAIN_NAMES}
    # Round to float16 first: the shipped network is the one calibrated.
    net.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in net.state_dict().items()})
    paths = sorted(p for f in a.calibrate for p in Path(f).iterdir() if p.suffix.lower() in EXTS)
    paths = paths[:: max(1, len(paths) // a.max_images)][: a.max_images]
    images = [kodak_crop(p) for p in paths]
    print(f"calibrating on {len(images)} training photos (768x512 crops), trained at step {ck['step']}")
    K = net.cfg.codec.rates
    grid = np.arange(-1.0, K - 1 + 0.5 + 1e-9, a.grid_step)  # a little extrapolation past both ends
    curves: dict[int, tuple[list[float], list[float]]] = {}
    cals = {scale: Calibration(images, scale, net.stride) for scale in a.scales}
    for scale, cal in cals.items():
        curves[scale] = tuple(map(list, zip(*(estimate(with_rates(net, [gains_at(net, r)]), cal) for r in grid))))
        print(f"scale {scale}/16, grid rate -> bpp/PSNR (estimated):",
              " ".join(f"{r:.2f}:{b:.4f}/{p:.2f}" for r, b, p in zip(grid, *curves[scale])), flush=True)
    points, rates = [], []
    floor_rate, floor_bpp, prev_scale = -np.inf, 0.0, None
    for i, target in enumerate(TARGETS):
        scale = choose_scale(curves, target)
        est = curves[scale][0]
        j = choose_grid_point(grid, est, target, K, floor_rate if scale == prev_scale else -np.inf, floor_bpp)
        floor_rate, floor_bpp, prev_scale = grid[j], est[j], scale
        r = float(grid[j])
        g = gains_at(net, r)
        bpp = measure_bpp(with_rates(net, [g]), cals[scale])
        points.append(g)
        rates.append({"name": f"lite-{i + 1}", "target_bpp": target, "train_bpp": round(bpp, 5),
                      "train_psnr": round(curves[scale][1][j], 2), "trained_rate": round(r, 3), "coded_scale": scale})
        print(rates[-1])
    final = with_rates(net, points)
    from stablecodec.weights import save_lite

    meta_rates = rates
    fp = save_lite(final, Path(a.out), meta_rates, training=json.loads(a.training) if a.training else None,
                   trained_gains=trained)
    size = Path(a.out).stat().st_size
    print(f"wrote {a.out} ({size / 1e6:.1f} MB, fingerprint {fp})")
    print(json.dumps({"step": ck["step"], "rates": rates, "bytes": size, "fingerprint": fp}))


if __name__ == "__main__":
    main()
