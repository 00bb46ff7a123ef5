"""Files decode to the encoder's ŷ across processes, thread counts and precisions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import save_png, smooth_image

SCRIPT = r"""
import sys, json, torch, numpy as np
threads, mode, wdir, src, dst, yout, precision = sys.argv[1:8]
torch.set_num_threads(int(threads))
import stablecodec
codec = stablecodec.Codec("ft8", weights_dir=wdir, device="cpu", precision=precision)
model = codec.get_model().model
if mode == "encode":
    data = codec.encode(src)
    open(dst, "wb").write(data)
    from stablecodec import container
    h, payload = container.unpack(data)
    stride = model.stride
    x = None
else:
    data = open(src, "rb").read()
    img = codec.decode(data)
    img.save(dst)
from stablecodec import container
h, payload = container.unpack(data)
stride = model.stride
hp, wp = -(-h.height // stride) * stride, -(-h.width // stride) * stride
y = model.codec.decompress(payload, h.symbol_crc, model.codec.y_shape((hp // 8, wp // 8)))
torch.save(y, yout)
"""


def _run(*args):
    r = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("enc_precision,dec_precision", [("fp32", "fp32"), ("bf16", "fp32")])
def test_encode_2_threads_decode_1_thread_in_other_processes(tiny_release, tmp_path, enc_precision, dec_precision):
    src = save_png(tmp_path / "in.png", smooth_image(200, 300, seed=11))
    f = tmp_path / "a.scdc"
    _run(2, "encode", tiny_release["dir"], src, f, tmp_path / "y_enc.pt", enc_precision)
    _run(1, "decode", tiny_release["dir"], f, tmp_path / "out1.png", tmp_path / "y_dec1.pt", dec_precision)
    _run(2, "decode", tiny_release["dir"], f, tmp_path / "out2.png", tmp_path / "y_dec2.pt", dec_precision)
    y_enc = torch.load(tmp_path / "y_enc.pt")
    assert torch.equal(y_enc, torch.load(tmp_path / "y_dec1.pt"))
    assert torch.equal(y_enc, torch.load(tmp_path / "y_dec2.pt"))
    a, b = (np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / n)) for n in ("out1.png", "out2.png"))
    # ŷ is identical; the image path is float, so thread counts may move a pixel by one level
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_encode_cpu_decode(tiny_release, tmp_path):
    import stablecodec

    img = smooth_image(128, 128)
    gpu = stablecodec.Codec("ft8", weights_dir=tiny_release["dir"], device="cuda")
    cpu = stablecodec.Codec("ft8", weights_dir=tiny_release["dir"], device="cpu")
    data = gpu.encode(img)
    assert cpu.decode(data).size == (128, 128)
