"""AEIC beside StableCodec (issue 20): the released layouts, the exact entropy path with
AEIC's own rules, the light sender, the CLI. Tiny random configurations in the released
file layouts (``testing.write_released_aeic``); the full-size ones are ``slow``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import DATA, save_png, smooth_image
from stablecodec import Codec, container, registry, testing
from stablecodec.cli import cli
from stablecodec.errors import WeightsError
from stablecodec.models import aeic
from stablecodec.models.latent_codec import quadtree_masks


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _tsv(name):
    rows = [line.split("\t") for line in (DATA / name).read_text().splitlines() if line.strip()]
    return {r[0]: tuple(int(v) for v in r[1].strip("()").split(",") if v.strip()) for r in rows}


@pytest.fixture(scope="module", params=["SE", "ME"])
def release(request, tmp_path_factory):
    """Tiny AEIC weights in the released layout; SE with the distillation key spelling."""
    v = request.param
    d = tmp_path_factory.mktemp(f"aeic_{v}")
    files = testing.write_released_aeic(d, testing.aeic_tiny(v), spelling="student" if v == "SE" else "plain")
    files["dir"], files["variant"] = d, v
    return files


def _codec(release, **kw):
    return Codec(sd_turbo=release["sd_turbo"], checkpoint=release["checkpoint"], half_decoder=release["half_decoder"],
                 device="cpu", precision="fp32", **kw)


def _y_hat(codec, data):
    from stablecodec.models.latent_codec import rules_for_format

    h, payload = container.unpack(data)
    m = codec.get_model().model
    hp, wp = -(-h.height // m.stride) * m.stride, -(-h.width // m.stride) * m.stride
    return m.codec.decompress(payload, h.symbol_crc, m.y_shape((hp, wp)), rules=rules_for_format(h.version[0]))


# ---------------------------------------------------------------------------------------
# The released layouts


@pytest.mark.parametrize("variant,params", [("SE", 83_434_408), ("ME", 123_396_752)])
def test_codec_state_has_the_released_layout(variant, params):
    cfg = aeic.se() if variant == "SE" else aeic.me()
    sd = testing.aeic_codec_state(cfg)
    assert {k: tuple(v.shape) for k, v in sd.items()} == _tsv(f"aeic-{variant.lower()}-codec-keys.tsv")
    assert sum(v.numel() for k, v in sd.items() if v.is_floating_point() and "bound" not in k and k.split(".")[-1]
               not in ("target",)) == params


def test_g_a_of_the_shallow_encoder_has_094_m_parameters():
    assert sum(p.numel() for p in aeic.AEICCodec(aeic.se()).g_a.parameters()) == 940_296
    assert sum(p.numel() for p in aeic.AEICCodec(aeic.me()).g_a.parameters()) == 3_094_272


def test_half_decoder_has_the_released_layout():
    from diffusers.models.autoencoders.vae import Decoder

    from stablecodec.weights.aeic import HALF_DECODER_CONFIG

    dec = Decoder(**HALF_DECODER_CONFIG)
    assert {f"decoder.{k}": tuple(v.shape) for k, v in dec.state_dict().items()} == _tsv("aeic-halfdecoder-keys.tsv")
    assert sum(p.numel() for p in dec.parameters()) == 12_387_459


def test_registry_lists_both_variants_at_their_rates():
    names = {m.name: m for m in registry.MODELS if m.family == "aeic"}
    assert len(names) == 10 and names["aeic-se-ft32"].bpp == 0.0041 and names["aeic-me-ft2"].bpp == 0.0376
    assert names["aeic-se-ft2"].checkpoint == "AEIC_SE_ft2.pkl"
    assert len({m.code for m in registry.MODELS}) == len(registry.MODELS)
    r = run("models", "--json")
    assert any(row["name"] == "aeic-me-ft8" and row["family"] == "aeic" for row in json.loads(r.stdout)["models"])


# ---------------------------------------------------------------------------------------
# Coding


@pytest.mark.parametrize("hw", [(64, 64), (217, 333), (130, 96)])
def test_decoder_gets_the_encoders_y_hat_exactly_at_odd_sizes(release, hw):
    from stablecodec.tiling import pad_to_multiple

    codec = _codec(release)
    m = codec.get_model().model
    x = pad_to_multiple(torch.from_numpy(smooth_image(*hw, seed=3)).permute(2, 0, 1)[None].contiguous(), m.stride)
    comp = m.compress(x.mul_(255).round_().div_(255))  # the 8-bit values, as Codec.encode codes them
    assert torch.equal(m.codec.decompress(comp.payload, comp.symbol_crc, m.y_shape(tuple(x.shape[2:]))), comp.y_hat)
    data = codec.encode(smooth_image(*hw, seed=3))
    assert torch.equal(_y_hat(codec, data), comp.y_hat)
    img = codec.decode_array(data)
    assert img.shape == (*hw, 3) and np.isfinite(img).all()


def test_encoder_and_decoder_agree_on_skipped_elements(release):
    """Scales below 0.08 are not coded; the encoder continues from ŷ = mean there too."""
    codec = _codec(release)
    c = codec.get_model().model.codec
    with torch.no_grad():
        for i in range(4):  # half the channels get scales around 0.05 (skipped), half around 1
            c.adapter_out[i].branch2.bias[c.cfg.M : c.cfg.M + c.cfg.M // 2] -= 50.0
    c.reset_caches()
    y = torch.randn(1, c.cfg.M, 4, 6) * 3
    comp = c.compress_y(y)
    back = c.decompress(comp.payload, comp.symbol_crc, comp.y_shape)
    assert torch.equal(back, comp.y_hat)
    # the skipped half is exactly the means: no symbol, so not y rounded
    assert not torch.allclose(comp.y_hat[:, : c.cfg.M // 2].round(), y[:, : c.cfg.M // 2].double().round())
    with torch.no_grad():
        for i in range(4):
            c.adapter_out[i].branch2.bias[c.cfg.M : c.cfg.M + c.cfg.M // 2] += 50.0
    c.reset_caches()


def test_the_sender_loads_only_the_codec(release, tmp_path):
    codec = _codec(release)
    m = codec.get_model().model
    codec.encode(smooth_image(64, 96))
    assert not any(m.stage_loaded(s) for s in ("synthesis", "denoiser", "decoder"))
    assert m.resident_bytes(False) < m.resident_bytes(True)
    codec.decode(codec.encode(smooth_image(64, 96)))
    assert all(m.stage_loaded(s) for s in ("synthesis", "denoiser", "decoder"))


def test_entropy_path_stays_exact_in_bf16(release):
    data = _codec(release).encode(smooth_image(96, 128, seed=1))
    b = Codec(sd_turbo=release["sd_turbo"], checkpoint=release["checkpoint"], half_decoder=release["half_decoder"],
              device="cpu", precision="bf16")
    model = b.get_model().model
    assert all(p.dtype == torch.float32 for mod in model.codec.parameter_modules() for p in mod.parameters())
    assert torch.equal(_y_hat(b, data), _y_hat(_codec(release), data))
    assert np.isfinite(b.decode_array(data)).all()


def test_cli_round_trip_with_named_model_and_no_flags_on_decode(release, tmp_path):
    v = release["variant"].lower()
    img = save_png(tmp_path / "a.png", smooth_image(100, 140, seed=2))
    r = run("encode", img, "-o", tmp_path / "a.scdc", "-m", f"aeic-{v}-ft8", "--weights-dir", release["dir"],
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    h, _ = container.unpack((tmp_path / "a.scdc").read_bytes())
    assert registry.by_code(h.model_code).name == f"aeic-{v}-ft8"
    r = run("decode", tmp_path / "a.scdc", "-o", tmp_path / "b.png", "--weights-dir", release["dir"], "--device", "cpu")
    assert r.exit_code == 0, r.output
    info = json.loads(run("info", tmp_path / "a.scdc", "--json").stdout)
    assert info["model"] == f"aeic-{v}-ft8"


def test_converted_file_decodes_like_the_released_files(release, tmp_path):
    v = release["variant"].lower()
    out = tmp_path / f"aeic-{v}-ft8.safetensors"
    r = run("convert", "--sd-turbo", release["sd_turbo"], "--checkpoint", release["checkpoint"], "--half-decoder",
            release["half_decoder"], "--name", f"aeic-{v}-ft8", "-o", out)
    assert r.exit_code == 0, r.output
    released = Codec(f"aeic-{v}-ft8", weights_dir=release["dir"], device="cpu", precision="fp32")
    converted = Codec(f"aeic-{v}-ft8", weights_dir=tmp_path, device="cpu", precision="fp32")
    data = released.encode(smooth_image(64, 96, seed=5))
    assert converted.encode(smooth_image(64, 96, seed=5)) == data
    assert np.array_equal(released.decode_array(data), converted.decode_array(data))


def test_wrong_weights_are_refused(release, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    files = testing.write_released_aeic(other, testing.aeic_tiny(release["variant"]), seed=9)
    data = _codec(release).encode(smooth_image(64, 64))
    with pytest.raises(WeightsError, match="decode with the weights that encoded it"):
        Codec(**{k: files[k] for k in ("sd_turbo", "checkpoint", "half_decoder")}, device="cpu").decode(data)


# ---------------------------------------------------------------------------------------
# halfDecoder.ckpt as a Lightning checkpoint


class LightningStuff:  # what a Lightning checkpoint's hyper-parameters might unpickle to
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_lightning_half_decoder_is_refused_then_converted_without_running_it(release, tmp_path):
    ck = torch.load(release["half_decoder"], weights_only=True)
    marker = tmp_path / "ran"
    lightning = tmp_path / "halfDecoder.ckpt"
    torch.save({"state_dict": ck["state_dict"], "hyper_parameters": LightningStuff(marker), "epoch": 3}, lightning)
    with pytest.raises(WeightsError, match=r"stablecodec convert --half-decoder"):
        Codec(sd_turbo=release["sd_turbo"], checkpoint=release["checkpoint"], half_decoder=lightning,
              device="cpu").decode(_codec(release).encode(smooth_image(64, 64)))
    r = run("convert", "--half-decoder", lightning)
    assert r.exit_code == 0, r.output
    assert not marker.exists() and (tmp_path / "halfDecoder.safetensors").is_file()
    data = _codec(release).encode(smooth_image(64, 64))
    again = Codec(sd_turbo=release["sd_turbo"], checkpoint=release["checkpoint"], half_decoder=lightning, device="cpu",
                  precision="fp32")
    assert np.array_equal(again.decode_array(data), _codec(release).decode_array(data))


def test_the_quadtree_is_shared():
    assert len(quadtree_masks(16, 4, 4)) == 4


# ---------------------------------------------------------------------------------------
# Full size (slow): random weights in the released layouts through the public path


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["SE", "ME"])
def test_full_size_round_trip_through_the_cli(variant, tmp_path):
    files = testing.write_released_aeic(tmp_path, testing.aeic_full(variant), spelling="student" if variant == "SE"
                                        else "plain")
    sd = torch.load(files["checkpoint"], weights_only=True)["state_dict_unet"]
    want = _tsv("aeic-unet-keys.tsv")
    got = {k.replace(".student_unet_lora.", ".default.").removeprefix("student_"): tuple(v.shape) for k, v in sd.items()}
    assert got == want
    img = save_png(tmp_path / "in.png", smooth_image(512, 768, seed=1))
    flags = ["--sd-turbo", files["sd_turbo"], "--checkpoint", files["checkpoint"], "--half-decoder",
             files["half_decoder"], "--device", "cpu"]
    assert run("encode", img, "-o", tmp_path / "a.scdc", *flags).exit_code == 0
    r = run("decode", tmp_path / "a.scdc", "-o", tmp_path / "b.png", *flags)
    assert r.exit_code == 0, r.output
    from PIL import Image

    assert Image.open(tmp_path / "b.png").size == (768, 512)
