"""The full-size architecture with random weights, in the released layouts (slow: minutes, ~7 GB)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_png, smooth_image

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data"


def _reference(name):
    rows = [line.split("\t") for line in (DATA / name).read_text().splitlines() if line.strip()]
    return {r[0]: tuple(int(v) for v in r[1].strip("()").split(",") if v.strip()) for r in rows}


@pytest.fixture(scope="module")
def full_release(tmp_path_factory):
    from stablecodec import testing

    cache = os.environ.get("STABLECODEC_FULL_CACHE")
    if cache and (Path(cache) / "READY").exists():
        d = Path(cache)
        return {"dir": d, "sd_turbo": d / "sd-turbo", "checkpoint": d / "stablecodec_ft8.pkl", "elic": d / "elic_official.pth"}
    d = tmp_path_factory.mktemp("full")
    files = testing.write_released(d, testing.full(), name="ft8")
    files["dir"] = d
    return files


def test_released_checkpoint_layout(full_release):
    ck = torch.load(full_release["checkpoint"], map_location="cpu", weights_only=True)
    for key, ref in (("state_dict_unet", "checkpoint-unet-keys.tsv"), ("state_dict_vae", "checkpoint-vae-lora-keys.tsv"),
                     ("state_dict_codec", "checkpoint-codec-keys.tsv")):
        got = {k: tuple(v.shape) for k, v in ck[key].items()}
        assert got == _reference(ref), key


def test_full_size_encode_decode_768x512(full_release, tmp_path):
    import stablecodec
    from stablecodec import container

    src = save_png(tmp_path / "in.png", smooth_image(512, 768, seed=3))
    codec = stablecodec.Codec("ft8", weights_dir=full_release["dir"], device="cpu", precision="fp32")
    data = codec.encode(src)
    header, payload = container.unpack(data)
    assert header.header_bytes == 19 and len(data) == 19 + 12 + len(payload)
    model = codec.get_model().model
    assert model.codec.cfg.M == 320 and model.denoiser.unet.conv_in.in_channels == 320
    y = model.codec.decompress(payload, header.symbol_crc, (8, 12))
    x = torch.from_numpy(np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(src), dtype=np.float32) / 255)
    comp = model.compress(x.permute(2, 0, 1)[None])
    assert torch.equal(y, comp.y_hat)
    out = codec.decode(data)
    assert out.size == (768, 512)
