"""Where the UNet loses accuracy in bf16: its output with chosen modules in float32.

    python benchmarks/precision_error.py [--cache DIR] [--size 768x512] \
        [--variants down_blocks.0 up_blocks.3 down_blocks.0+up_blocks.3 ...]

The full-size architecture (random weights in the released layouts) is loaded in float32
and in bf16. On the latent l_T that g_s makes from a synthetic image's ŷ (in float32),
the UNet's epsilon in float32 is the reference; each variant runs the bf16 UNet with the
named modules (``+`` joins several) in float32, their inputs cast up and outputs cast
back (except the UNet's ``conv_out``: epsilon may stay float32), and reports epsilon's relative L2 to the reference and the UNet's time (best of
two). ``all-bf16`` is the UNet without float32 modules, ``library`` the library's own
choice (``OneStepDenoiser.float32_modules`` less ``reduced_modules``). The decoded image's error is measured
by ``stages.py --compare``. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/stablecodec-bench/full"))
    ap.add_argument("--size", default="768x512", help="WIDTHxHEIGHT")
    ap.add_argument("--variants", nargs="+", default=[
        "all-bf16", "conv_in", "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.2", "up_blocks.3",
        "conv_norm_out+conv_out", "down_blocks.0+up_blocks.3", "library"])
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from full_size import ensure_release

    import stablecodec
    from stablecodec.models import precision

    ensure_release(Path(a.cache))
    w, h = (int(v) for v in a.size.split("x"))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.4 * np.sin(xx / 97 + c) * np.cos(yy / 71 - c) for c in range(3)], -1)
    kw = dict(weights_dir=a.cache, device="cpu")
    c32 = stablecodec.Codec("ft8", precision="fp32", **kw)
    m32 = c32.get_model().model
    m16 = stablecodec.Codec("ft8", precision="bf16", **kw).get_model().model
    comp = m32.compress(torch.from_numpy(img.transpose(2, 0, 1))[None])
    bf16 = torch.bfloat16
    u32, den16 = m32.denoiser.unet, m16.denoiser
    u16 = den16.unet
    library = den16.float32_modules()
    names32 = {id(m): n for n, m in u16.named_modules()}
    with torch.no_grad():
        l_t = m32.codec.g_s(comp.y_hat.float())
        t = torch.full((1,), 999)
        eps32 = u32(l_t, t, encoder_hidden_states=m32.denoiser.prompt_embedding.expand(1, -1, -1)).sample
        x16 = m16._layout(l_t.to(bf16))
        prompt16 = den16.prompt_embedding.to(bf16).expand(1, -1, -1)
        for variant in a.variants:
            if variant == "library":
                names = [names32[id(m)] for m in library]
            else:
                names = [] if variant == "all-bf16" else variant.split("+")
            # Everything bf16, then the variant's modules back to their float32 weights.
            precision.place(den16, "cpu", bf16, [], channels_last=True)
            handles = []
            for n in names:
                mod = u16.get_submodule(n)
                mod.to(torch.float32)
                mod.load_state_dict(u32.get_submodule(n).state_dict())
                if variant == "library":
                    continue  # its own hooks (precision.run_in_own_dtype) cast at the edges
                handles.append(mod.register_forward_pre_hook(
                    lambda m, args, kwargs: (precision.cast(args, torch.float32), precision.cast(kwargs, torch.float32)),
                    with_kwargs=True))
                if n != "conv_out":  # epsilon itself may stay float32
                    handles.append(mod.register_forward_hook(lambda m, args, out: precision.cast(out, bf16)))
            if variant == "library":
                for mod in den16.reduced_modules():
                    mod.to(bf16)
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                eps = u16(x16, t, encoder_hidden_states=prompt16).sample.float()
                times.append(time.perf_counter() - t0)
            for hd in handles:
                hd.remove()
            rel = float((eps - eps32).norm() / eps32.norm())
            print(json.dumps({"variant": variant, "float32": names, "eps_rel_l2": round(rel, 5),
                              "unet_s": round(min(times), 2), "size": a.size}), flush=True)


if __name__ == "__main__":
    main()
