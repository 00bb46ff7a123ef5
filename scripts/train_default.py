#!/usr/bin/env python
"""Train the default ("lite") model on CPU from folders of photographs.

    python scripts/train_default.py --data PHOTOS/train PHOTOS/train-extra --out runs/lite \
        --steps 12000

Seeded and resumable: it checkpoints to OUT/checkpoint.pt every --save-every steps and
continues from there when run again with the same OUT (raise --steps to train longer).
Logs one JSON line per --log-every steps to OUT/log.jsonl (loss, bpp and PSNR per rate)
and shows a progress bar. When done, ``scripts/export_default.py`` calibrates the rate
points on the training photos and writes ``weights/lite.safetensors``.

Data: every image of the given folders, downscaled once to several scales (the
evaluation crops are photos of about 2048 px reduced to 768x512, so training crops are
taken from photos reduced to 0.3-0.6 of that size), random 256x256 crops and flips.
Loss: for each image a random rate k, bpp + lambda_k * 255^2 * MSE (CompressAI's
convention); the hyper-latent quantiles are fit with their own auxiliary loss. The
decoder sees y plus uniform noise for the first --noise-frac of the steps (a network
trained from scratch with straight-through rounding stays stuck at the all-zero latent)
and the rounded y with a straight-through gradient afterwards, so that it is fine-tuned
on what it will decode.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from stablecodec.models.lite import LiteConfig, LiteNet  # noqa: E402

LAMBDAS = [0.00012 * 2.2**k for k in range(LiteConfig().codec.rates)]
SCALES = (0.3, 0.4, 0.5, 0.6)
EXTS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}


def load_images(folders: list[str], crop: int) -> list[torch.Tensor]:
    """Every image of the folders at every scale in SCALES, as uint8 (3, H, W) tensors."""
    paths = sorted(p for f in folders for p in Path(f).iterdir() if p.suffix.lower() in EXTS)
    if not paths:
        raise SystemExit(f"no images in {folders}")
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        for s in SCALES:
            w, h = round(im.width * s), round(im.height * s)
            if min(w, h) >= crop:
                arr = np.asarray(im.resize((w, h), Image.LANCZOS))
                out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
    print(f"{len(paths)} images, {len(out)} scaled copies")
    return out


def batch(images: list[torch.Tensor], n: int, crop: int, rng: random.Random) -> torch.Tensor:
    xs = []
    for _ in range(n):
        im = images[rng.randrange(len(images))]
        top, left = rng.randrange(im.shape[1] - crop + 1), rng.randrange(im.shape[2] - crop + 1)
        x = im[:, top : top + crop, left : left + crop]
        if rng.random() < 0.5:
            x = x.flip(2)
        xs.append(x)
    return torch.stack(xs).float().div_(255.0)


def lr_at(step: int, total: int, base: float) -> float:
    """Warm-up over 100 steps, constant, then a cosine decay to base/10 over the last 30 %."""
    if step < 100:
        return base * (step + 1) / 100
    start = int(0.7 * total)
    if step < start:
        return base
    t = (step - start) / max(1, total - start)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def init_gains(net: LiteNet) -> None:
    with torch.no_grad():
        k = torch.arange(net.cfg.codec.rates, dtype=torch.float32)
        g = 1.4 ** (k - 2)  # higher rates quantize finer from the start
        net.codec.gain_y.copy_(g[:, None].expand_as(net.codec.gain_y))
        net.codec.gain_y_inv.copy_((1 / g)[:, None].expand_as(net.codec.gain_y_inv))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, help="folders of training images")
    ap.add_argument("--out", required=True, help="folder for checkpoint.pt and log.jsonl")
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--noise-frac", type=float, default=0.7, help="fraction of steps trained with additive noise")
    ap.add_argument("--no-bf16", action="store_true", help="train in float32 (about 1.7x slower on CPU)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"

    torch.manual_seed(args.seed)
    net = LiteNet()
    init_gains(net)
    eb = net.codec.entropy_bottleneck
    main_params = [p for n, p in net.named_parameters() if not n.endswith("quantiles")]
    opt = torch.optim.Adam(main_params, lr=args.lr)
    aux_opt = torch.optim.Adam([eb.quantiles], lr=1e-3)
    step = 0
    rng = random.Random(args.seed)
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        aux_opt.load_state_dict(ck["aux_opt"])
        step = ck["step"]
        rng.setstate(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed at step {step}")
    net = net.to(memory_format=torch.channels_last).train()
    images = load_images(args.data, args.crop)
    lambdas = torch.tensor(LAMBDAS)
    log = open(out / "log.jsonl", "a")
    acc: dict[str, list[float]] = {}
    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True)
    t0 = time.time()
    while step < args.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr)
        x = batch(images, args.batch, args.crop, rng).contiguous(memory_format=torch.channels_last)
        rate = torch.randint(0, len(LAMBDAS), (args.batch,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.no_bf16):
            x_hat, y_lik, z_lik = net(x, rate, noise=step < args.noise_frac * args.steps)
        x_hat = x_hat.float()
        npix = x.shape[2] * x.shape[3]
        bpp = (y_lik.log2().flatten(1).sum(1) + z_lik.log2().flatten(1).sum(1)) / -npix
        mse = (x_hat - x).pow(2).flatten(1).mean(1)
        loss = (bpp + lambdas[rate] * 255**2 * mse).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        aux_loss = eb.loss()
        aux_opt.zero_grad(set_to_none=True)
        aux_loss.backward()
        aux_opt.step()
        step += 1
        bar.update(1)
        with torch.no_grad():
            psnr = -10 * torch.log10(mse.clamp_min(1e-10))
            for k in range(len(LAMBDAS)):
                sel = rate == k
                if sel.any():
                    acc.setdefault(f"bpp{k}", []).extend(bpp[sel].tolist())
                    acc.setdefault(f"psnr{k}", []).extend(psnr[sel].tolist())
            acc.setdefault("loss", []).append(float(loss))
            acc.setdefault("aux", []).append(float(aux_loss))
        if step % args.log_every == 0 or step == args.steps:
            rec = {"step": step, "lr": opt.param_groups[0]["lr"], "sec": round(time.time() - t0, 1)}
            rec.update({k: round(float(np.mean(v)), 4) for k, v in sorted(acc.items())})
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=rec["loss"], bpp0=rec.get("bpp0"), psnr0=rec.get("psnr0"))
            acc = {}
        if step % args.save_every == 0 or step == args.steps:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(
                {
                    "model": net.state_dict(),
                    "opt": opt.state_dict(),
                    "aux_opt": aux_opt.state_dict(),
                    "step": step,
                    "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(),
                    "args": vars(args),
                    "lambdas": LAMBDAS,
                },
                tmp,
            )
            os.replace(tmp, ckpt_path)
    bar.close()


if __name__ == "__main__":
    main()
