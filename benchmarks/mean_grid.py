"""How often a symbol of ŷ differs between the exact parameter path and a float implementation.

The official StableCodec code computes the entropy parameters in float32 and codes
round(y - mean). stablecodec computes them in fixed point (``models/fixedpoint.py``) so
that every machine gets the same integers; a symbol then differs from the float code's
wherever y - mean lies between the two means' roundings of a half-integer. This script
counts those symbols, step by step, teacher-forced (every path is fed the same decoded
ŷ, so one flip is not carried into the later steps), for:

* ``v2``: format 2.x (V2 numerics, means unsnapped), what stablecodec writes;
* ``v1``: format 1.x (V1 numerics, means snapped to 2**-8);
* ``f32``: the float32 network itself on float inputs (the official code's numerics),
  against a float64 evaluation of the same network (``f64``), the reference for all.

    python benchmarks/mean_grid.py --sd-turbo W/sd-turbo --checkpoint W/stablecodec_fake.pkl \\
        --elic W/elic_fake.pth IMAGES... [--crop 768x512] [--out docs/results/mean_grid.jsonl]

With ``--truncation`` it also decodes each image and reports the PSNR between rounding
and truncating the same float image to 8 bits (the official code truncates).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import stablecodec  # noqa: E402,F401  (before the first tensor, as the other benchmarks)
from _machine import machine  # noqa: E402


def _crop(img, size):
    from PIL import Image

    w, h = size
    s = max(w / img.width, h / img.height)
    img = img.resize((max(w, round(img.width * s)), max(h, round(img.height * s))), Image.Resampling.LANCZOS)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def count_flips(codec_model, y):
    """Per step: symbols where each path's round(y - mean) differs from the float64 one's."""
    import torch

    from stablecodec.models import latent_codec as lcm

    c = codec_model
    c64 = lcm.LatentCodec(c.cfg)
    c64.load_state_dict(c.state_dict())
    c64 = c64.double().eval()
    with torch.no_grad():
        z = c.h_a(y)
        _, _, med = c.tables()
        med = med.double()[None, :, None, None]
        z_hat = torch.round(z.double() - med) + med
        paths = {}
        for major in (1, 2):
            rules = lcm.rules_for_format(major)
            ops = c.exact_ops(rules.numerics)
            paths[f"v{major}"] = (rules, ops, c.h_s(ops.to_fixed(z_hat), ops))
        # The decoded ŷ that every path is fed: the format-2 encoder's.
        rules2, ops2, _ = paths["v2"]
        comp = c.compress_y(y.clamp(-lcm.Y_LIMIT, lcm.Y_LIMIT), rules=rules2)
        y_hat = comp.y_hat
        masks = lcm.quadtree_masks(*y.shape[1:])
        base64 = c64.h_s(z_hat)
        base32 = c.h_s(z_hat.float())
        rows = []
        yd = y.double()
        for i, m in enumerate(masks):
            ref_mean = c64._step_params(base64, i)[0]
            f32_mean = c._step_params(base32, i)[0].double()
            ref_sym = torch.round(yd - ref_mean)[0][m]
            row = {"step": i, "symbols": int(m.sum())}
            for name, (rules, ops, base) in paths.items():
                mq, sq = c._step_params(base, i, ops)
                mean_k, _ = lcm.snap(*lcm.parameter_outputs(mq[0], sq[0], rules), rules)
                mean = mean_k.double() * 2.0 ** -rules.mean_bits
                sym = torch.round(yd[0] - mean)[m]
                row[f"{name}_vs_f64"] = int((sym != ref_sym).sum())
                row[f"{name}_vs_f32"] = int((sym != torch.round(yd - f32_mean)[0][m]).sum())
                row[f"{name}_mean_rms"] = float((mean - ref_mean[0]).pow(2).mean().sqrt())
            row["f32_vs_f64"] = int((torch.round(yd - f32_mean)[0][m] != ref_sym).sum())
            row["f32_mean_rms"] = float((f32_mean - ref_mean).pow(2).mean().sqrt())
            rows.append(row)
            # teacher forcing: every path continues from the same decoded ŷ at this step's elements
            yh = y_hat.clone()
            for name, (rules, ops, base) in paths.items():
                b = ops.from_fixed(base)
                b[0][m] = yh[0][m]
                paths[name] = (rules, ops, ops.to_fixed(b))
            base64 = base64.clone()
            base64[0][m] = yh[0][m]
            base32 = base32.clone()
            base32[0][m] = yh[0][m].float()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--sd-turbo", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--elic", required=True)
    ap.add_argument("--crop", default=None, help="WxH: centre-crop (after resizing) every image to this size")
    ap.add_argument("--truncation", action="store_true", help="also decode and compare rounding with truncation")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import torch
    from PIL import Image

    from stablecodec import api

    codec = api.Codec(sd_turbo=a.sd_turbo, checkpoint=a.checkpoint, elic=a.elic, device="cpu", precision="fp32",
                      color_fix=False)
    loaded = codec.get_model()
    m = loaded.model
    size = tuple(int(v) for v in a.crop.split("x")) if a.crop else None
    totals: dict[str, int] = {}
    out = []
    for path in a.images:
        t0 = time.perf_counter()
        img = Image.open(path).convert("RGB")
        if size:
            img = _crop(img, size)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
        x = api.pad_to_multiple(x, m.stride)
        codec._plan(loaded, x.shape[2], x.shape[3])
        with torch.no_grad():
            l_sd = m.vae.encode(x * 2 - 1, m.vae_plan(False)) * m.scaling_factor
            y = m.codec.analyse(l_sd, m.elic(x))
        rows = count_flips(m.codec, y)
        rec = {"image": Path(path).name, "size": f"{img.width}x{img.height}", "label": a.label,
               "symbols": sum(r["symbols"] for r in rows)}
        for k in rows[0]:
            if k.endswith(("_vs_f64", "_vs_f32")):
                rec[k] = sum(r[k] for r in rows)
                totals[k] = totals.get(k, 0) + rec[k]
            elif k.endswith("_rms"):
                rec[k] = max(r[k] for r in rows)
        totals["symbols"] = totals.get("symbols", 0) + rec["symbols"]
        if a.truncation:
            data = codec.encode(img)
            header, payload = stablecodec.container.unpack(data)
            hp, wp = x.shape[2], x.shape[3]
            with torch.no_grad():
                xf = m.decompress(payload, header.symbol_crc, (hp, wp))[0, :, : img.height, : img.width]
            xf = xf.permute(1, 2, 0).cpu().numpy().astype(np.float64)
            rounded, truncated = np.clip(np.round(xf * 255), 0, 255), np.floor(np.clip(xf, 0, 1) * 255)
            mse = float(np.mean((rounded - truncated) ** 2))
            rec["psnr_round_vs_trunc"] = round(10 * np.log10(255**2 / mse), 3) if mse else 99.0
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        out.append(rec)
        print(json.dumps(rec), flush=True)
    summary = {"summary": True, "label": a.label, "images": len(out), **totals,
               "command": " ".join(sys.argv), "machine": machine()}
    print(json.dumps(summary))
    if a.out:
        with open(a.out, "a") as f:
            for r in out + [summary]:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
