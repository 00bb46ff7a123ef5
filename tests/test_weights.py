"""Loading the released layouts, LoRA merging, conversion, safety of pickles."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch

from stablecodec import api, testing, weights
from stablecodec.errors import WeightsError


def test_merge_lora_matches_peft(tmp_path):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model

    arch = testing.tiny()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**arch.unet).eval()
    lora = testing._lora_tensors(copy.deepcopy(unet), testing.UNET_LORA_TARGETS, 4, "default", seed=1)
    with_peft = copy.deepcopy(unet)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=testing.UNET_LORA_TARGETS), with_peft, adapter_name="default")
    missing = with_peft.load_state_dict(lora, strict=False)
    assert not missing.unexpected_keys
    merged = copy.deepcopy(unet)
    n = weights.merge_lora(merged, lora, "default")
    assert n == len(lora) // 2
    x = torch.randn(1, 4, 16, 16)
    t = torch.tensor([999])
    ctx = torch.randn(1, 77, 32)
    with torch.no_grad():
        ref = with_peft(x, t, encoder_hidden_states=ctx).sample
        got = merged(x, t, encoder_hidden_states=ctx).sample
        base = unet(x, t, encoder_hidden_states=ctx).sample
    assert float((got - base).abs().max()) > 1e-3  # the LoRA does something
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_released_layout_loads(tiny_release):
    loaded = api.load(sd_turbo=tiny_release["sd_turbo"], checkpoint=tiny_release["checkpoint"], elic=tiny_release["elic"])
    assert loaded.name == "ft8" and loaded.code == 0x25
    assert len(loaded.fingerprint) == 16
    # the replaced first convolution takes g_s's 32 channels
    assert loaded.model.denoiser.unet.conv_in.in_channels == 32


def test_by_name_from_weights_dir(tiny_release):
    loaded = api.load("ft8", weights_dir=tiny_release["dir"])
    assert loaded.name == "ft8"


@pytest.mark.parametrize("missing", ["sd-turbo", "stablecodec_ft8.pkl", "elic_official.pth"])
def test_missing_weights_name_the_file(tiny_release, tmp_path, missing):
    import shutil

    d = tmp_path / "w"
    shutil.copytree(tiny_release["dir"], d)
    p = d / missing
    shutil.rmtree(p) if p.is_dir() else p.unlink()
    with pytest.raises(WeightsError, match=missing.replace(".", r"\.")):
        api.load("ft8", weights_dir=d)


def test_unknown_model_name_is_a_config_error():
    from stablecodec.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown model 'ft7'"):
        api.load("ft7")


def test_wrong_checkpoint_content(tmp_path, tiny_release):
    bad = tmp_path / "stablecodec_ft8.pkl"
    torch.save({"state_dict_codec": {"x": torch.zeros(1)}}, bad)
    with pytest.raises(WeightsError, match="not a StableCodec checkpoint"):
        api.load(sd_turbo=tiny_release["sd_turbo"], checkpoint=bad, elic=tiny_release["elic"])
    ck = torch.load(tiny_release["checkpoint"], weights_only=True)
    ck["state_dict_codec"] = {k: v for k, v in ck["state_dict_codec"].items() if not k.startswith("h_s.")}
    torch.save(ck, bad)
    with pytest.raises(WeightsError, match="missing"):
        api.load(sd_turbo=tiny_release["sd_turbo"], checkpoint=bad, elic=tiny_release["elic"])


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, tiny_release):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "stablecodec_ft8.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict_vae": {}, "state_dict_unet": _Evil(marker), "state_dict_codec": {}}, f)
    with pytest.raises(WeightsError, match="refused"):
        api.load(sd_turbo=tiny_release["sd_turbo"], checkpoint=evil, elic=tiny_release["elic"])
    assert not marker.exists()
    # the same through torch.save's zip format
    torch.save({"state_dict_vae": _Evil(marker)}, evil)
    with pytest.raises(WeightsError, match="refused"):
        api.load(sd_turbo=tiny_release["sd_turbo"], checkpoint=evil, elic=tiny_release["elic"])
    assert not marker.exists()


def test_convert_then_load_decodes_identically(tiny_release, tmp_path):
    import numpy as np

    from conftest import smooth_image

    out = tmp_path / "stablecodec-ft8.safetensors"
    fp = weights.convert(tiny_release["sd_turbo"], tiny_release["checkpoint"], tiny_release["elic"], out, "ft8")
    model, fp2, meta = weights.load_converted(out)
    assert fp == fp2 and meta["name"] == "ft8"
    img = smooth_image(64, 80)
    a = api.Codec("ft8", weights_dir=tiny_release["dir"], device="cpu", precision="fp32")
    data = a.encode(img)
    b = api.Codec("ft8", weights_dir=tmp_path, device="cpu", precision="fp32")  # only the converted file there
    assert np.array_equal(np.asarray(a.decode(data)), np.asarray(b.decode(data)))
    # and the converted model encodes the same bytes
    assert b.encode(img) == data


def test_default_model_files_name_the_numerics_of_their_payloads(tmp_path, monkeypatch):
    """Default-model files written now code the entropy parameters with V1 (format 1.x's
    rules) under format 2.x; files from before the config field keep V2, as they were made."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from stablecodec.models.latent_codec import FORMAT_RULES, LatentCodec
    from stablecodec.models.lite import LiteModel, LiteNet
    from stablecodec.weights.lite import load_lite, save_lite

    new = tmp_path / "new.safetensors"
    save_lite(LiteNet().eval(), new, [{"name": f"lite-{i + 1}"} for i in range(5)])
    with safe_open(str(new), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    cfg = json.loads(meta["config"])
    assert cfg.pop("entropy_numerics") == "1"
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), {**meta, "config": json.dumps(cfg)})
    m_new, m_old = LiteModel(load_lite(new)[0], 2), LiteModel(load_lite(old)[0], 2)
    assert m_new.coding_rules(2) == FORMAT_RULES[1] and m_old.coding_rules(2) == FORMAT_RULES[2]
    assert m_new.coding_rules(1) == m_old.coding_rules(1) == FORMAT_RULES[1]

    seen, real = [], LatentCodec.compress_y
    monkeypatch.setattr(LatentCodec, "compress_y", lambda self, y, rate=None, rules=None: seen.append(rules)
                        or real(self, y, rate, rules))
    x = torch.rand(1, 3, 64, 64)
    comp = m_new.compress(x)
    m_old.compress(x)
    assert seen == [FORMAT_RULES[1], FORMAT_RULES[2]]
    y_shape = m_new.codec.y_shape((8, 8))
    assert torch.equal(m_new.codec.decompress(comp.payload, comp.symbol_crc, y_shape, 2, m_new.coding_rules(2)), comp.y_hat)


def test_a_grown_default_model_round_trips_and_decodes_in_exact_windows(tmp_path):
    """Extra synthesis blocks are part of the file's config (older files have none), the
    decoder's window halo grows with them, and a config this version does not know is
    one clear WeightsError."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from stablecodec.errors import WeightsError
    from stablecodec.models.lite import LiteConfig, LiteModel, LiteNet
    from stablecodec.tiling import run_windows
    from stablecodec.weights.lite import load_lite, save_lite

    torch.manual_seed(0)
    net = LiteNet(LiteConfig(synthesis_extra=(1, 1))).eval()
    with torch.no_grad():
        for p in net.synthesis.parameters():
            p.add_(0.05 * torch.randn_like(p))  # new blocks start as identities; make them act
    path = tmp_path / "grown.safetensors"
    save_lite(net, path, [{"name": f"lite-{i + 1}"} for i in range(5)])
    loaded = load_lite(path)[0]
    assert loaded.cfg.synthesis_extra == (1, 1)
    model = LiteModel(loaded, 3)
    assert model.DECODER_HALO == 19 and LiteModel(LiteNet(), 3).DECODER_HALO == 16
    y = torch.randn(1, 160, 12, 20)
    dec = lambda t: loaded.synthesis(loaded.codec.g_s(t))
    with torch.no_grad():
        ref = dec(y)
        exact = run_windows(dec, y, 4, model.DECODER_HALO, up=16)
    # The halo is the receptive-field bound; on random weights the influence decays well
    # before it, so a shorter halo is not reliably worse and is not asserted.
    assert float((exact - ref).abs().max()) < 1e-5

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    cfg = json.loads(meta["config"])
    bad = tmp_path / "newer.safetensors"
    save_file(tensors, str(bad), {**meta, "config": json.dumps({**cfg, "synthesis_extra": [1, 1, 1]})})
    with pytest.raises(WeightsError, match="config not understood"):
        load_lite(bad)
