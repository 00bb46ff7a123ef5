#!/usr/bin/env python
"""Pack get-training-photos' output small enough to carry to a GPU machine (<= ~50 MiB).

    python scripts/pack_training_photos.py PHOTOS runs/gpu-pack

The device tool carries at most 64 MiB of ignored files, wheels included; the PNGs of
``train/`` are ~310 MB. WebP at quality 85 keeps every photo at its size (~47 MiB for the
922 training photos; its artefacts are far below what the model reconstructs at 0.1 bpp)
and 24 of the validation photos, spread over the sources. File names (SOURCE__NAME) are
kept, so ``--source-weight`` means the same.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", type=Path, help="get-training-photos' DEST")
    ap.add_argument("out", type=Path)
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--val", type=int, default=24, help="validation photos to keep")
    a = ap.parse_args()
    for split in ("train", "val"):
        src = sorted(p for p in (a.photos / split).iterdir() if p.suffix == ".png")
        if split == "val":
            src = src[:: max(1, len(src) // a.val)][: a.val]
        (a.out / split).mkdir(parents=True, exist_ok=True)
        for p in src:
            Image.open(p).convert("RGB").save(a.out / split / (p.stem + ".webp"), "WEBP", quality=a.quality, method=4)
    size = sum(f.stat().st_size for f in a.out.rglob("*.webp"))
    print(f"{a.out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
