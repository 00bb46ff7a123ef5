"""How the golden files in this folder were made. Not run by the tests: run it only to
*add* golden files for a new format version, never to refresh the existing ones.

    OMP_NUM_THREADS=1 python tests/data/golden/make_golden.py [OUTPUT_DIR]    # format 1.0 (done once)
    OMP_NUM_THREADS=1 python tests/data/golden/make_golden.py --add v2-       # format 2.0 (done once)

``--add PREFIX`` codes the same images and latent with the stored model and the current
stablecodec into ``PREFIX<name>.*`` and adds them to ``golden.json``, leaving every
existing file as it is. The ``v2-`` files (format 2.0: V2 numerics, unsnapped means) were
made by the code that passes ``../shared/parity/check``: on the official implementation's
outputs for its random released-layout weights no symbol of ŷ differs (max |Δŷ| 1.7e-6
over its four images) and the images are 51.19 dB from the official ones (the rest is
the official code truncating to 8 bits where stablecodec rounds).

1. a tiny StableCodec model with random weights in the released layout
   (``stablecodec.testing.write_released(dir, tiny(), name="ft8", seed=SEED)``), converted
   once with ``stablecodec.weights.convert`` into ``stablecodec-ft8.safetensors`` (the
   name ``registry.locate`` looks for, so ``Codec("ft8", weights_dir=<this folder>)``
   loads it);
2. three images from a fixed formula (``image()`` below; no photographs), encoded with
   that model on the CPU in float32: ``<name>.scdc`` (names are width x height; the
   sizes pad to three different latent shapes). The random model's latent hardly depends
   on the image (its symbols are nearly all 0), so a fourth file, ``latent-640x384``,
   codes a synthetic latent instead (``synthetic_y()``: wide values, escapes in y and z,
   ~40 different tables per step) through the same ``LatentCodec.compress_y`` and
   container the encoder uses;
3. for each, what the decoder returned when they were made: the decoded image
   ``<name>.png`` and the decoder's latent ŷ ``<name>.y.npy`` (float64, exact multiples
   of 2**-16: the output of the fixed-point entropy-parameter path);
4. ``golden.json``: sizes, format version, model fingerprint and SHA-256 of every file.

``tests/test_golden.py`` decodes each ``.scdc`` with the stored weights and requires the
same ŷ bit for bit and the same pixels. A later format change must bump the version
byte and either keep decoding these files or refuse them with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

SEED = 6  # issue 6; a different model from the test fixtures' (seed 0)
IMAGES = {  # name (width x height): (width, height, channels, image seed)
    "rgb-64x64": (64, 64, 3, 1),
    "grey-37x300": (37, 300, 1, 2),
    "rgb-384x256": (384, 256, 3, 3),
}
LATENT = ("latent-640x384", 640, 384, (30000, 32000, 34000, 12000, 13000, 14000))


def image(h: int, w: int, seed: int, channels: int) -> np.ndarray:
    """A photo-like float32 image in [0, 1] (a frozen copy of tests/conftest.py's smooth_image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(channels):
        fy, fx, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6.28)
        base = 0.5 + 0.3 * np.sin(fy * yy / max(h, 1) * 3.14 + fx * xx / max(w, 1) * 3.14 + ph)
        out.append(base + 0.05 * rng.standard_normal((h, w)).astype(np.float32))
    return np.clip(np.stack(out, -1), 0, 1).astype(np.float32)


def synthetic_y(M: int, h: int, w: int):
    """A latent (1, M, h, w) float32 with values far outside most tables (escapes)."""
    import torch

    g = torch.Generator().manual_seed(SEED)
    y = torch.randn(1, M, h, w, generator=g) * 6
    y[0, :, 0, 0] = torch.linspace(-400, 400, M)
    return y


def decoded_y_hat(codec, data: bytes) -> np.ndarray:
    """The decoder's ŷ for a file (the latent codec's output before the image path)."""
    from stablecodec import container
    from stablecodec.models.latent_codec import rules_for_format

    header, payload = container.unpack(data)
    model = codec.get_model().model
    s = model.stride
    hp, wp = -(-header.height // s) * s, -(-header.width // s) * s
    y = model.codec.decompress(payload, header.symbol_crc, model.codec.y_shape((hp // 8, wp // 8)),
                               rules=rules_for_format(header.version[0]))
    return y.numpy()


def add(out: Path, prefix: str) -> None:
    """Code the golden inputs with the current stablecodec into ``prefix<name>`` files."""
    import torch

    import stablecodec
    from stablecodec import container

    torch.set_num_threads(1)
    manifest = json.loads((out / "golden.json").read_text())
    codec = stablecodec.Codec("ft8", weights_dir=out, device="cpu", precision="fp32")
    loaded = codec.get_model()
    assert loaded.fingerprint == manifest["fingerprint"]
    blobs = {prefix + name: codec.encode(image(h, w, seed, c)) for name, (w, h, c, seed) in IMAGES.items()}
    name, w, h, color = LATENT
    s, lc = loaded.model.stride, loaded.model.codec
    comp = lc.compress_y(synthetic_y(lc.cfg.M, *lc.y_shape((-(-h // s) * s // 8, -(-w // s) * s // 8))))
    blobs[prefix + name] = container.pack(container.Header(loaded.code, loaded.header_fingerprint, w, h,
                                                           comp.symbol_crc, color=color), comp.payload)
    for name, data in blobs.items():
        if name in manifest["files"]:
            raise SystemExit(f"{name} exists; golden files are never remade")
        header, _ = container.unpack(data)
        (out / f"{name}.scdc").write_bytes(data)
        codec.decode(data).save(out / f"{name}.png")
        np.save(out / f"{name}.y.npy", decoded_y_hat(codec, data))
        manifest["files"][name] = {"width": header.width, "height": header.height, "grey": header.grey,
                                   "bytes": len(data), "format_version": f"{data[2] >> 4}.{data[2] & 15}",
                                   "made_with": f"stablecodec {stablecodec.__version__}, torch {torch.__version__}"}
        for suffix in (".scdc", ".png", ".y.npy"):
            manifest["sha256"][name + suffix] = hashlib.sha256((out / (name + suffix)).read_bytes()).hexdigest()
    (out / "golden.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(out: Path) -> None:
    import torch

    import stablecodec
    from stablecodec import container, testing, weights

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = testing.write_released(Path(tmp), testing.tiny(), name="ft8", seed=SEED)
        fp = weights.convert(files["sd_turbo"], files["checkpoint"], files["elic"], out / "stablecodec-ft8.safetensors",
                             "ft8")
    codec = stablecodec.Codec("ft8", weights_dir=out, device="cpu", precision="fp32")
    manifest = {"made_with": f"stablecodec {stablecodec.__version__}, torch {torch.__version__}",
                "model": "ft8 (testing.tiny(), seed %d)" % SEED, "fingerprint": fp, "files": {}}
    loaded = codec.get_model()
    blobs = {name: codec.encode(image(h, w, seed, c)) for name, (w, h, c, seed) in IMAGES.items()}
    name, w, h, color = LATENT
    s, lc = loaded.model.stride, loaded.model.codec
    comp = lc.compress_y(synthetic_y(lc.cfg.M, *lc.y_shape((-(-h // s) * s // 8, -(-w // s) * s // 8))))
    blobs[name] = container.pack(container.Header(loaded.code, loaded.header_fingerprint, w, h, comp.symbol_crc,
                                                  color=color), comp.payload)
    for name, data in blobs.items():
        header, _ = container.unpack(data)
        (out / f"{name}.scdc").write_bytes(data)
        codec.decode(data).save(out / f"{name}.png")
        np.save(out / f"{name}.y.npy", decoded_y_hat(codec, data))
        manifest["files"][name] = {"width": header.width, "height": header.height, "grey": header.grey,
                                   "bytes": len(data), "format_version": f"{data[2] >> 4}.{data[2] & 15}"}
    manifest["sha256"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                          for p in sorted(out.iterdir()) if p.suffix in (".scdc", ".png", ".npy", ".safetensors")}
    (out / "golden.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--add":
        add(Path(__file__).parent, sys.argv[2])
    else:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
