"""The library API end to end on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stablecodec
from conftest import smooth_image
from stablecodec import api, container
from stablecodec.errors import FormatError, WeightsError


def test_decode_reconstructs_the_encoders_y_hat(tiny_codec):
    model = tiny_codec.get_model().model
    x = torch.from_numpy(smooth_image(256, 256).transpose(2, 0, 1))[None]
    comp = model.compress(x)
    y_dec = model.codec.decompress(comp.payload, comp.symbol_crc, comp.y_shape)
    assert torch.equal(y_dec, comp.y_hat)


def test_stage_timings_cover_the_pipeline(tiny_codec):
    """The per-stage times the benchmarks report come from the run itself, per call."""
    model = tiny_codec.get_model().model
    data = tiny_codec.encode(smooth_image(64, 96))
    assert set(model.last_timings) == {"VAE encoder", "ELIC encoder", "latent codec (g_a, h_a, entropy encoding)"}
    tiny_codec.decode(data)
    assert set(model.last_timings) == {"entropy decoding", "g_s + auxiliary decoder", "UNet", "VAE decoder"}
    assert all(v >= 0 for v in model.last_timings.values())


@pytest.mark.parametrize("h,w", [(1, 1), (17, 300), (64, 64), (300, 17)])
def test_any_size_round_trips(tiny_codec, h, w):
    img = smooth_image(h, w, seed=h + w)
    data = tiny_codec.encode(img)
    out = tiny_codec.decode(data)
    assert out.size == (w, h) and out.mode == "RGB"
    assert container.unpack(data)[0].width == w


def test_color_fix_restores_the_statistics(tiny_codec):
    img = smooth_image(96, 128, seed=5)
    data = tiny_codec.encode(img)
    fixed = np.asarray(tiny_codec.decode(data), dtype=np.float64) / 255
    plain = api.Codec("ft8", weights_dir=tiny_codec.weights_dir, color_fix=False, device="cpu", precision="fp32")
    raw = np.asarray(plain.decode(data), dtype=np.float64) / 255
    want = img.reshape(-1, 3).mean(0)
    assert np.abs(fixed.reshape(-1, 3).mean(0) - want).max() < 0.01
    assert np.abs(raw - fixed).max() > 0.01


def test_greyscale_round_trip(tiny_codec):
    img = smooth_image(40, 50, channels=1)
    data = tiny_codec.encode(img)
    assert container.unpack(data)[0].grey
    out = tiny_codec.decode(data)
    assert out.mode == "L" and out.size == (50, 40)


def test_other_weights_are_refused(tiny_codec, tmp_path):
    from stablecodec import testing

    testing.write_released(tmp_path, testing.tiny(), name="ft8", seed=7, with_text_encoder=True)
    data = tiny_codec.encode(smooth_image(32, 32))
    other = api.Codec("ft8", weights_dir=tmp_path, device="cpu", precision="fp32")
    with pytest.raises(WeightsError, match="decode with the weights that encoded it"):
        other.decode(data)


def test_corrupt_data_is_a_format_error(tiny_codec):
    data = bytearray(tiny_codec.encode(smooth_image(32, 32)))
    data[len(data) // 2] ^= 0x40
    with pytest.raises(FormatError):
        tiny_codec.decode(bytes(data))


def test_info_needs_no_model(tiny_codec):
    d = stablecodec.info(tiny_codec.encode(smooth_image(32, 48)))
    assert d["model"] == "ft8" and (d["width"], d["height"]) == (48, 32) and d["crc_ok"]


def test_bad_arguments_name_themselves():
    from stablecodec.errors import ConfigError

    with pytest.raises(ConfigError, match="--device"):
        api.Codec(device="tpu")
    with pytest.raises(ConfigError, match="--precision"):
        api.Codec(precision="int8")
    with pytest.raises(ConfigError, match="either a model name or a target bpp"):
        api.Codec("lite-1", bpp=0.1)


def test_stage_timings_describe_the_last_call_only(tiny_codec):
    model = tiny_codec.get_model().model
    comp = model.compress(torch.from_numpy(smooth_image(256, 256).transpose(2, 0, 1))[None])
    model.decompress(comp.payload, comp.symbol_crc, (256, 256))
    assert "entropy decoding" in model.last_timings
    model.reconstruct(comp.y_hat)  # called directly: its own stages, not added to the last decode's
    assert set(model.last_timings) == {"g_s + auxiliary decoder", "UNet", "VAE decoder"}
