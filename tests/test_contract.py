"""One contract, every family in the registry (issue 20): each family's model, built from
tiny weights in its released layout (the default model: its bundled file), must

* satisfy :class:`~stablecodec.models.contract.CodecModel`;
* decode to the encoder's ŷ bit for bit at odd image sizes;
* refuse a file made with other weights;
* keep its entropy-parameter path exact (float32 on the CPU, the same ŷ) after place(bf16);
* plan memory within the budget it is given;
* load from its converted file to the same model (same fingerprint, same bytes).

A family added to ``registry.FAMILIES`` without a builder here fails
``test_every_family_is_covered``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import smooth_image
from stablecodec import Codec, container, imageio, registry, testing, weights
from stablecodec.errors import WeightsError
from stablecodec.models.contract import CodecModel
from stablecodec.tiling import GB, pad_to_multiple


def _stablecodec(d: Path, seed: int):
    f = testing.write_released(d, testing.tiny(), name="ft8", seed=seed)
    return {"sd_turbo": f["sd_turbo"], "checkpoint": f["checkpoint"], "elic": f["elic"]}, "ft8"


def _aeic(d: Path, seed: int):
    f = testing.write_released_aeic(d, testing.aeic_tiny("SE"), seed=seed)
    return {k: f[k] for k in ("sd_turbo", "checkpoint", "half_decoder")}, "aeic-se-ft8"


BUILDERS = {"stablecodec": _stablecodec, "aeic": _aeic, "lite": None}


def test_every_family_is_covered():
    assert set(BUILDERS) == set(registry.FAMILIES)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request, tmp_path_factory):
    name = request.param
    if BUILDERS[name] is None:  # the bundled default model
        return {"name": name, "codec": lambda **kw: Codec("lite-3", device="cpu", **kw), "model": "lite-3"}
    d = tmp_path_factory.mktemp(name)
    files, model = BUILDERS[name](d, 0)
    other, _ = BUILDERS[name](tmp_path_factory.mktemp(name + "_other"), 7)
    return {"name": name, "dir": d, "files": files, "other": other, "model": model,
            "codec": lambda files=files, **kw: Codec(**files, device="cpu", **kw)}


def _y_hat(codec: Codec, data: bytes) -> torch.Tensor:
    h, payload = container.unpack(data)
    m = codec.get_model().model
    cw, ch = h.coded_size
    hp, wp = -(-ch // m.stride) * m.stride, -(-cw // m.stride) * m.stride
    kw = {"rules": m.coding_rules(h.version[0])}
    if hasattr(m, "y_shape"):
        return m.codec.decompress(payload, h.symbol_crc, m.y_shape((hp, wp)), **kw)
    return m.codec.decompress(payload, h.symbol_crc, m.codec.y_shape((hp // 8, wp // 8)), m.rate, **kw)


def test_the_model_keeps_the_contract(family):
    m = family["codec"](precision="fp32").get_model().model
    assert isinstance(m, CodecModel)
    assert m.stride % 16 == 0 and m.resident_bytes(False) <= m.resident_bytes(True)


@pytest.mark.parametrize("hw", [(61, 97), (130, 66)])
def test_decode_gets_the_encoders_y_hat_bit_for_bit(family, hw):
    codec = family["codec"](precision="fp32")
    m = codec.get_model().model
    img = smooth_image(*hw, seed=11)
    img = imageio.resize(img, *container.coded_size(hw[1], hw[0], m.coded_scale))  # as Codec.encode does
    x = pad_to_multiple(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous(), m.stride)
    x.mul_(255).round_().div_(255)
    comp = m.compress(x)
    data = codec.encode(smooth_image(*hw, seed=11))
    assert torch.equal(_y_hat(codec, data), comp.y_hat)
    assert codec.decode(data).size == (hw[1], hw[0])


def test_other_weights_are_refused(family):
    if "other" not in family:
        pytest.skip("the default model has one set of weights")
    data = family["codec"]().encode(smooth_image(64, 64))
    with pytest.raises(WeightsError):
        Codec(**family["other"], device="cpu").decode(data)


def test_the_entropy_path_is_unchanged_after_placing_in_bf16(family):
    data = family["codec"](precision="fp32").encode(smooth_image(64, 96, seed=2))
    b = family["codec"](precision="bf16")
    m = b.get_model().model
    assert all(p.dtype == torch.float32 and p.device.type == "cpu"
               for mod in m.codec.parameter_modules() for p in mod.parameters())
    assert torch.equal(_y_hat(b, data), _y_hat(family["codec"](precision="fp32"), data))
    assert np.isfinite(b.decode_array(data)).all()


@pytest.mark.parametrize("size", [(512, 768), (2048, 3072)])
def test_the_plan_fits_the_budget(family, size):
    m = family["codec"](precision="fp32").get_model().model
    plan = m.plan_memory(*size, 4 * GB)
    assert 0 < plan.estimate_encode <= 4 * GB and 0 < plan.estimate_decode <= 4 * GB


def test_the_converted_file_is_the_released_files(family, tmp_path):
    if "files" not in family:
        pytest.skip("the default model ships converted")
    spec = registry.get(family["model"])
    out = tmp_path / spec.converted
    fp = weights.convert_model(spec, family["files"], out)
    released = family["codec"](precision="fp32")
    assert released.get_model().fingerprint == fp
    converted = Codec(family["model"], weights_dir=tmp_path, device="cpu", precision="fp32")
    img = smooth_image(64, 96, seed=4)
    data = released.encode(img)
    assert converted.encode(img) == data
    assert torch.equal(_y_hat(converted, data), _y_hat(released, data))
    # the image path is the same float32 arithmetic (last bits may follow kernel choices)
    assert np.abs(converted.decode_array(data) - released.decode_array(data)).max() < 1e-4
