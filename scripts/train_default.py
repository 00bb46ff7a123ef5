#!/usr/bin/env python
"""Train the default ("lite") model, in parts that can run on different days and machines.

    python scripts/train_default.py --data PHOTOS/train --val PHOTOS/val --out runs/part3 \
        --steps 6000                      # CPU; resumes from the shipped weights
    python scripts/train_default.py --data PHOTOS/train --val PHOTOS/val --out $OUT \
        --device cuda --minutes 8 --batch 32 --crop 256 --workers 8     # a GPU part

A *part* starts from a weights file (``--init``, the shipped ``weights/lite.safetensors``
by default), from an earlier part's ``best.pt`` (its trained rates kept as they are; the
shipped file's five exported points are re-spread over the trained rates, which costs
the first thousands of steps of the part), or, when ``OUT/checkpoint.pt`` exists,
continues that interrupted part exactly (model, optimisers, step, schedule; each batch is
drawn from a generator seeded by (seed, step), so a resumed part sees the batches it
would have seen). Every ``--val-every`` steps and at the end it measures the trained
rates on the validation photos; the best state is kept in ``OUT/best.pt``. At the end of
the part, if the best state is better than the weights it started from (Bjontegaard PSNR
over the common rate range > ``--min-gain`` dB), it is exported with
``scripts/export_default.py`` to ``--export`` (``weights/lite.safetensors`` by default,
or ``OUT/lite.safetensors``); if not, nothing is written there. Either way one line
describing the part (steps, data, wall time, validation RD before and after, exported or
not) is appended to ``OUT/runs.jsonl``, to be copied into ``docs/default-model.md``'s log.

Data: every image of the ``--data`` folders at several scales (the evaluation crops are
photos reduced to 768x512, so training sees photos at about that density), random square
crops and flips. Loss: per image a random rate k of five, bpp + lambda_k * 255^2 * MSE
(CompressAI's convention). The hyper-latent's quantiles have their own auxiliary loss.
Schedule per part: warm-up, constant, cosine decay over the last 30 % of the part (of its
steps, or of its ``--minutes``); y and z plus uniform noise for the first ``--noise-frac``
of the part, then rounding with a straight-through gradient, so the decoder is tuned on
what it will decode. Mixed precision: bf16 autocast for the network on CPU and CUDA
(likelihoods in float32); no loss scaling is needed with bf16.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
from export_default import centre_crop, gains_at  # noqa: E402

from stablecodec.models.latent_codec import GAIN_NAMES  # noqa: E402
from stablecodec.models.lite import LiteConfig, LiteNet  # noqa: E402

# Five rates spanning about 0.005 to 0.1 bpp on 768x512 photos (each about 5x the last).
LAMBDAS = [8e-6 * 5.28**k for k in range(LiteConfig().codec.rates)]
EXTS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
VAL_SIZE = (512, 384)


def image_paths(folders: list[str]) -> list[Path]:
    paths = sorted(p for f in folders for p in Path(f).iterdir() if p.suffix.lower() in EXTS)
    if not paths:
        raise SystemExit(f"train_default: no images in {' '.join(folders)}")
    return paths


def source_of(path: Path) -> str:
    """``get-training-photos`` names its files SOURCE__NAME."""
    return path.stem.split("__")[0] if "__" in path.stem else ""


def load_images(folders: list[str], crop: int, scales: tuple[float, ...],
                source_weights: dict[str, float]) -> tuple[list[torch.Tensor], list[float]]:
    """Every image of the folders at every scale (relative to a 1024 px longest side), as uint8 (3, H, W),
    and each copy's share of the draws (a source's weight spread over its copies)."""
    out, src = [], []
    paths = image_paths(folders)
    for p in tqdm(paths, desc="load", leave=False):
        im = Image.open(p).convert("RGB")
        base = 1024 / max(im.size)
        sizes = {(round(im.width * f), round(im.height * f), f) for f in (min(1.0, s * base) for s in scales)}
        for w, h, f in sorted(sizes):  # a photo smaller than a scale is used as it is, once
            if min(w, h) >= crop:
                arr = np.asarray(im.resize((w, h), Image.LANCZOS) if f < 1 else im)
                out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
                src.append(source_of(p))
    if not out:
        raise SystemExit(f"train_default: no image of {' '.join(folders)} is at least {crop} px at any scale")
    unknown = set(source_weights) - set(src)
    if unknown:
        raise SystemExit(f"train_default: --source-weight names no source of the data: {', '.join(sorted(unknown))}")
    # A copy's weight is its source's weight (1 by default) times the copy's pixel count:
    # big photos hold more distinct crops than small ones.
    weights = [source_weights.get(s, 1.0) * x.shape[1] * x.shape[2] for s, x in zip(src, out)]
    print(f"{len(paths)} training images, {len(out)} scaled copies")
    return out, weights


def val_images(folders: list[str], limit: int) -> torch.Tensor:
    """Centre 4:3 crops of the validation photos resized to VAL_SIZE, (N, 3, H, W) in [0, 1]."""
    xs = [centre_crop(Image.open(p).convert("RGB"), VAL_SIZE) for p in image_paths(folders)[:limit]]
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()


class Batches(torch.utils.data.Dataset):
    """Item ``step`` is that step's batch (uint8 crops and rates), drawn from a generator seeded by (seed, step).

    Indexing by step rather than drawing from one stream makes a resumed part, and any
    number of loader workers, see exactly the batches an uninterrupted part would.
    """

    def __init__(self, images: list[torch.Tensor], weights: list[float], batch: int, crop: int, seed: int, rates: int):
        self.images, self.batch, self.crop, self.seed, self.rates = images, batch, crop, seed, rates
        self.cum = list(np.cumsum(weights))

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, step: int):
        rng = random.Random(self.seed * 1_000_003 + step)
        xs = []
        for _ in range(self.batch):
            im = rng.choices(self.images, cum_weights=self.cum)[0]
            top, left = rng.randrange(im.shape[1] - self.crop + 1), rng.randrange(im.shape[2] - self.crop + 1)
            x = im[:, top : top + self.crop, left : left + self.crop]
            xs.append(x.flip(2) if rng.random() < 0.5 else x)
        rate = torch.tensor([rng.randrange(self.rates) for _ in range(self.batch)])
        return torch.stack(xs), rate


def parse_weight(text: str) -> tuple[str, float]:
    name, _, w = text.partition("=")
    try:
        return name, float(w)
    except ValueError:
        raise SystemExit(f"train_default: --source-weight wants SOURCE=W, got {text!r}") from None


def likelihood_bpp(y_lik: torch.Tensor, z_lik: torch.Tensor, npix: int) -> torch.Tensor:
    """Bits per pixel of each image, read off the likelihoods of y and z."""
    return (y_lik.log2().flatten(1).sum(1) + z_lik.log2().flatten(1).sum(1)) / -npix


def lr_at(progress: float, base: float, warmup: float) -> float:
    """Warm-up over the first ``warmup`` of the part, constant, then a cosine decay to base/10 over the last 30 %."""
    if progress < warmup:
        return base * (progress + 1e-3) / warmup
    if progress < 0.7:
        return base
    t = min(1.0, (progress - 0.7) / 0.3)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def validate(net: LiteNet, x: torch.Tensor, device: str, amp: bool) -> list[dict]:
    """bpp (from the likelihoods of the rounded latents) and mean PSNR per trained rate on the validation crops."""
    was = net.training
    net.eval()
    rows = []
    for k in range(net.cfg.codec.rates):
        bpp, psnr = [], []
        for i in range(0, len(x), 4):
            xb = x[i : i + 4].to(device)
            rate = torch.full((len(xb),), k, device=device)
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
                x_hat, y_lik, z_lik = net(xb, rate, noise=False)
            x_hat = x_hat.float().clamp(0, 1)
            bpp += likelihood_bpp(y_lik, z_lik, xb.shape[2] * xb.shape[3]).tolist()
            mse = (x_hat - xb).pow(2).flatten(1).mean(1)
            psnr += (-10 * torch.log10(mse.clamp_min(1e-10))).tolist()
        rows.append({"rate": k, "bpp": round(float(np.mean(bpp)), 5), "psnr": round(float(np.mean(psnr)), 3)})
    net.train(was)
    return rows


def bd_psnr(ref: list[dict], new: list[dict]) -> float:
    """Mean PSNR gain of ``new`` over ``ref`` across their common log-bpp range (Bjontegaard's delta PSNR).

    Piecewise-linear in log-rate rather than Bjontegaard's cubic fit: with five points
    that may be unevenly spread while a part moves the rates, the cubic can overshoot.
    """
    def curve(rows):
        r = sorted(rows, key=lambda d: d["bpp"])
        return np.log([d["bpp"] for d in r]), np.array([d["psnr"] for d in r])

    (lr, pr), (ln, pn) = curve(ref), curve(new)
    lo, hi = max(lr[0], ln[0]), min(lr[-1], ln[-1])
    if hi <= lo:
        return float("nan")
    grid = np.linspace(lo, hi, 200)
    return float(np.mean(np.interp(grid, ln, pn) - np.interp(grid, lr, pr)))


def init_gains(net: LiteNet) -> None:
    with torch.no_grad():
        k = torch.arange(net.cfg.codec.rates, dtype=torch.float32)
        g = 1.4 ** (k - 2)  # higher rates quantize finer from the start
        net.codec.gain_y.copy_(g[:, None].expand_as(net.codec.gain_y))
        net.codec.gain_y_inv.copy_((1 / g)[:, None].expand_as(net.codec.gain_y_inv))


def from_weights(path: Path) -> tuple[LiteNet, dict]:
    """A network to train, initialised from a shipped weights file.

    The shipped file holds the five *exported* rate points (interpolated between the
    trained gains) and, from 2026-12-04's exports on, the trained gains themselves
    (``training.gain_*``): with them the part resumes at its trained rates, each paired
    with its lambda as before, like ``--init best.pt`` but on any machine the package is
    on. An older file's five exported points become the five trained rates instead,
    spread a little further apart at the low end, which the part must first re-learn
    (about 0.4 dB, won back over 3000-5000 steps; see ``from_checkpoint``).
    """
    from stablecodec.weights.lite import load_lite, load_trained_gains

    shipped, fp, meta = load_lite(path)
    net = LiteNet(shipped.cfg)
    fresh = {k: v for k, v in net.state_dict().items() if k.endswith("likelihood_lower_bound.bound")}
    # The file stores buffers as float16, where the likelihood bound 1e-9 is 0: training
    # with it lets a likelihood reach 0 (an infinite loss). It plays no part in coding.
    net.load_state_dict({**shipped.state_dict(), **fresh})
    trained = load_trained_gains(path)
    gains = "re-spread" if trained is None else "trained"
    with torch.no_grad():
        if trained is None:
            spread = [gains_at(shipped, r) for r in np.linspace(-1.0, shipped.cfg.codec.rates - 1, shipped.cfg.codec.rates)]
            trained = {name: torch.stack([g[name] for g in spread]) for name in GAIN_NAMES}
        for name, g in trained.items():
            getattr(net.codec, name).copy_(g)
    lineage = json.loads(meta.get("training", "{}") or "{}")
    return net, {"init": str(path), "init_fingerprint": fp, "steps_before": int(lineage.get("steps", 0)),
                 "init_gains": gains}


def from_checkpoint(path: Path) -> tuple[LiteNet, dict]:
    """A network to train, initialised from an earlier part's ``best.pt`` or ``checkpoint.pt``.

    The trained gains are kept as they are, each still paired with its lambda. Starting from
    the shipped file instead re-spreads the five exported points over the trained rates,
    which the network must first re-learn: validation BD-PSNR against WebP went from -0.72
    dB at part 2's end to -1.16 at part 3's start, and from -0.57 to -0.95 after part 4's
    first 1000 steps.
    """
    if not path.is_file():
        raise SystemExit(f"train_default: --init {path}: no such file (an earlier part's OUT/best.pt?)")
    data = path.read_bytes()  # once, for both the fingerprint and the state
    ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)  # our own training file
    net = LiteNet(LiteConfig.from_dict(ck["config"]) if "config" in ck else LiteConfig())
    net.load_state_dict(ck["model"])
    steps = ck["lineage"]["steps_before"] + ck["state"]["step"] if "lineage" in ck else ck["step"]
    fp = hashlib.sha256(data).hexdigest()[:16]
    return net, {"init": str(path), "init_fingerprint": fp, "steps_before": int(steps)}


def grow(net: LiteNet, more: tuple[int, int]) -> tuple[LiteNet, list[str]]:
    """``net`` with ``more`` BasicBlocks added to its pixel synthesis (at 1/8, at 1/4), each
    an identity at first (the last convolution of both residual branches zeroed), so the
    grown network codes exactly as ``net`` did until training moves the new blocks.
    Returns it and the names of the new parameters."""
    e8, e4 = net.cfg.synthesis_extra
    out = LiteNet(dataclasses.replace(net.cfg, synthesis_extra=(e8 + more[0], e4 + more[1])))
    missing, unexpected = out.load_state_dict(net.state_dict(), strict=False)
    if unexpected or not all(k.startswith(("synthesis.extra1.", "synthesis.extra2.")) for k in missing):
        raise RuntimeError(f"grow: unexpected state-dict difference ({unexpected}, {missing})")
    new = {k.rsplit(".", 1)[0] for k in missing}
    with torch.no_grad():
        for name, m in out.named_modules():
            if any(k.startswith(name + ".") for k in new) and name.count(".") == 2:  # synthesis.extraN.i
                for conv in (m.blocks[0].conv2, m.blocks[1].fc2):
                    conv.weight.zero_()
                    conv.bias.zero_()
    return out, sorted(missing)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, help="folders of training photos")
    ap.add_argument("--val", nargs="+", required=True, help="folders of validation photos (never trained on)")
    ap.add_argument("--out", required=True, help="folder for checkpoint.pt, best.pt, log.jsonl, runs.jsonl")
    ap.add_argument("--init", default=str(ROOT / "weights" / "lite.safetensors"),
                    help="weights file a new part starts from, an earlier part's best.pt or checkpoint.pt "
                         "(keeps its trained rates: no re-learning), or 'scratch' for random weights")
    ap.add_argument("--export", default=str(ROOT / "weights" / "lite.safetensors"),
                    help="where improved weights are written at the end of the part; 'none' to skip")
    ap.add_argument("--steps", type=int, default=6000, help="length of this part in steps")
    ap.add_argument("--minutes", type=float, default=None,
                    help="length of this part in minutes of training instead (the schedule follows the clock)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0],
                    help="image scales, relative to a 1024 px longest side")
    ap.add_argument("--source-weight", nargs="*", default=[], metavar="SOURCE=W",
                    help="relative weight of a source's photos in the draws (default 1 each, per pixel)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=float, default=0.02, help="fraction of the part spent warming up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workers", type=int, default=0, help="data-loader processes (0: in the training process)")
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--val-images", type=int, default=48)
    ap.add_argument("--min-gain", type=float, default=0.02, help="dB of BD-PSNR needed to export")
    ap.add_argument("--noise-frac", type=float, default=0.5, help="fraction of the part trained with additive noise")
    ap.add_argument("--no-amp", action="store_true", help="train in float32 (about 1.7x slower on CPU)")
    ap.add_argument("--grow", type=int, nargs=2, default=None, metavar=("AT_8", "AT_4"),
                    help="add this many BasicBlocks to the pixel synthesis at 1/8 and at 1/4, starting as identities")
    ap.add_argument("--grow-lr", type=float, default=None,
                    help="learning rate of the added blocks (default 10x --lr: they start from zero)")
    args = ap.parse_args()

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("train_default: --device cuda, but PyTorch sees no CUDA device")
    torch.set_num_threads(args.threads)
    amp = not args.no_amp
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"

    torch.manual_seed(args.seed)
    if args.init == "scratch":
        net, lineage = LiteNet(), {"init": "scratch", "init_fingerprint": None, "steps_before": 0}
        init_gains(net)
    elif args.init.endswith(".pt"):
        net, lineage = from_checkpoint(Path(args.init))
    else:
        net, lineage = from_weights(Path(args.init))
    new_params: list[str] = []
    if args.grow:
        net, new_params = grow(net, tuple(args.grow))
        lineage["grown"] = list(args.grow)
    # On its device before the optimisers load their state: load_state_dict casts the
    # state to the parameters' device.
    net = net.to(device, memory_format=torch.channels_last).train()
    eb = net.codec.entropy_bottleneck
    named = [(n, p) for n, p in net.named_parameters() if not n.endswith("quantiles")]
    main_params = [p for _, p in named]
    grow_lr = args.grow_lr if args.grow_lr is not None else 10 * args.lr
    groups = [{"params": [p for n, p in named if n not in new_params], "base_lr": args.lr}]
    if new_params:
        groups.append({"params": [p for n, p in named if n in new_params], "base_lr": grow_lr})
    opt = torch.optim.Adam(groups, lr=args.lr)
    aux_opt = torch.optim.Adam([eb.quantiles], lr=1e-3)
    state = {"step": 0, "elapsed": 0.0, "best": None, "start_val": None, "history": []}
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        aux_opt.load_state_dict(ck["aux_opt"])
        state, lineage = ck["state"], ck["lineage"]
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed this part at step {state['step']}")
    vx = val_images(args.val, args.val_images)
    print(f"{len(vx)} validation crops {VAL_SIZE[0]}x{VAL_SIZE[1]}")
    if state["start_val"] is None:
        state["start_val"] = validate(net, vx, device, amp)
        state["best"] = {"step": 0, "bd": 0.0, "val": state["start_val"]}
        torch.save({"model": net.state_dict(), "config": dataclasses.asdict(net.cfg),
                    "step": lineage["steps_before"]}, best_path)
        print("start:", state["start_val"])
    weights = dict(parse_weight(w) for w in args.source_weight)
    images, shares = load_images(args.data, args.crop, tuple(args.scales), weights)
    data = Batches(images, shares, args.batch, args.crop, args.seed, len(LAMBDAS))
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, sampler=range(state["step"], 1 << 40), num_workers=args.workers,
        pin_memory=device.startswith("cuda"), persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers else None)
    lambdas = torch.tensor(LAMBDAS, device=device)
    log = open(out / "log.jsonl", "a")
    acc: dict[str, list[float]] = {}

    def progress() -> float:
        if args.minutes:
            return state["elapsed"] / (60 * args.minutes)
        return state["step"] / args.steps

    def save(path: Path, payload: dict) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    def checkpoint() -> None:
        save(ckpt_path, {"model": net.state_dict(), "config": dataclasses.asdict(net.cfg), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
                         "state": state, "lineage": lineage, "torch_rng": torch.get_rng_state(),
                         "args": vars(args), "lambdas": LAMBDAS})

    def validation_point() -> None:
        rows = validate(net, vx, device, amp)
        bd = bd_psnr(state["start_val"], rows)
        rec = {"step": state["step"], "val": rows, "bd_psnr_vs_start": round(bd, 4)}
        state["history"].append(rec)
        log.write(json.dumps({"validation": rec}) + "\n")
        log.flush()
        tqdm.write(f"step {state['step']}: BD-PSNR vs start {bd:+.3f} dB  " +
                   "  ".join(f"{r['bpp']:.4f}/{r['psnr']:.2f}" for r in rows))
        if not math.isnan(bd) and bd > state["best"]["bd"]:
            state["best"] = {"step": state["step"], "bd": bd, "val": rows}
            save(best_path, {"model": {k: v.cpu() for k, v in net.state_dict().items()},
                             "config": dataclasses.asdict(net.cfg),
                             "step": lineage["steps_before"] + state["step"]})

    bar = tqdm(total=None if args.minutes else args.steps, initial=state["step"], desc="train", dynamic_ncols=True)
    it = iter(loader)
    t_wall = time.time()
    while progress() < 1:
        t0 = time.time()
        p = progress()
        for g in opt.param_groups:
            g["lr"] = lr_at(p, g["base_lr"], args.warmup)
        x, rate = next(it)
        x = x.to(device, non_blocking=True).float().div_(255).contiguous(memory_format=torch.channels_last)
        rate = rate.to(device, non_blocking=True)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            x_hat, y_lik, z_lik = net(x, rate, noise=p < args.noise_frac)
        x_hat = x_hat.float()
        bpp = likelihood_bpp(y_lik, z_lik, x.shape[2] * x.shape[3])
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
        state["step"] += 1
        bar.update(1)
        if state["step"] % args.log_every == 0:
            with torch.no_grad():
                psnr = -10 * torch.log10(mse.clamp_min(1e-10))
                for k in range(len(LAMBDAS)):
                    sel = rate == k
                    if sel.any():
                        acc.setdefault(f"bpp{k}", []).extend(bpp[sel].tolist())
                        acc.setdefault(f"psnr{k}", []).extend(psnr[sel].tolist())
                acc.setdefault("loss", []).append(float(loss))
            rec = {"step": state["step"], "lr": opt.param_groups[0]["lr"], "sec": round(state["elapsed"], 1)}
            rec.update({k: round(float(np.mean(v)), 4) for k, v in sorted(acc.items())})
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=rec["loss"])
            acc = {}
        state["elapsed"] += time.time() - t0
        if state["step"] % args.val_every == 0:
            validation_point()
        if state["step"] % args.save_every == 0:
            checkpoint()
    bar.close()
    if not state["history"] or state["history"][-1]["step"] != state["step"]:
        validation_point()
    checkpoint()
    best = state["best"]
    run = {
        "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(device) if device.startswith("cuda")
        else f"cpu x{args.threads}", **lineage, "steps": state["step"], "train_minutes": round(state["elapsed"] / 60, 1),
        "wall_minutes": round((time.time() - t_wall) / 60, 1), "data": args.data, "train_images": len(image_paths(args.data)),
        "val": args.val, "val_crops": len(vx), "batch": args.batch, "crop": args.crop, "lr": args.lr,
        "lambdas": LAMBDAS, "val_start": state["start_val"], "val_best": best["val"], "best_step": best["step"],
        "bd_psnr": round(best["bd"], 4), "exported": None,
    }
    if best["bd"] > args.min_gain and args.export != "none":
        cmd = [sys.executable, str(ROOT / "scripts" / "export_default.py"), "--checkpoint", str(best_path),
               "--calibrate", *args.data, "--out", args.export,
               "--training", json.dumps({"steps": lineage["steps_before"] + best["step"]})]
        subprocess.run(cmd, check=True)
        run["exported"] = args.export
    elif args.export == "none":
        print(f"not exported (--export none); the best state: {best_path}, {best['bd']:+.3f} dB BD-PSNR from the start")
    else:
        print(f"not exported: the best state is {best['bd']:+.3f} dB BD-PSNR from the start (needs > {args.min_gain})")
    with open(out / "runs.jsonl", "a") as f:
        f.write(json.dumps(run) + "\n")
    print(json.dumps(run))


if __name__ == "__main__":
    main()
