"""The latent codec: structure, exact entropy path, decode = encoder's ŷ."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressai.entropy_models import GaussianConditional

from stablecodec.models import latent_codec as lcm
from stablecodec.models.entropy import scale_table
from stablecodec.testing import tiny

DATA = __import__("pathlib").Path(__file__).parent / "data"


def _codec(seed=0, cfg=None):
    torch.manual_seed(seed)
    return lcm.LatentCodec(cfg or tiny().codec).eval()


def _reference_keys(name):
    rows = [line.split("\t") for line in (DATA / name).read_text().splitlines() if line.strip()]
    return {r[0]: tuple(int(v) for v in r[1].strip("()").split(",") if v.strip()) for r in rows}


def test_full_size_codec_has_the_released_layout():
    codec = lcm.LatentCodec()
    got = {k: tuple(v.shape) for k, v in codec.state_dict().items()}
    assert got == _reference_keys("checkpoint-codec-keys.tsv")
    assert sum(p.numel() for p in codec.parameters()) == pytest.approx(74.1e6, rel=1e-3)


def test_elic_has_the_released_layout():
    from stablecodec.models.encoder import ElicAnalysis

    got = {f"g_a.{k}": tuple(v.shape) for k, v in ElicAnalysis().state_dict().items()}
    assert got == _reference_keys("elic-g_a-keys.tsv")


def test_quadtree_steps_cover_every_element_once():
    masks = lcm.quadtree_masks(16, 6, 10)
    total = sum(m.int() for m in masks)
    assert torch.equal(total, torch.ones_like(total))
    for m in masks:
        assert int(m.sum()) == 16 * 6 * 10 // 4
    # step 1, group 0 codes odd row / odd column (p3)
    assert bool(masks[1][0, 1, 1]) and not bool(masks[1][0, 0, 0])


def test_decompress_returns_the_encoders_y_hat_exactly():
    codec = _codec()
    lat, feat = torch.randn(1, 4, 64, 96), torch.randn(1, 32, 32, 48)
    c = codec.compress(lat, feat)
    y_hat = codec.decompress(c.payload, c.symbol_crc, c.y_shape)
    assert torch.equal(y_hat, c.y_hat)
    # and ŷ is the quantized y: within half a step (plus LRP's 0.5 tanh) of it
    y = codec.analyse(lat, feat).double()
    assert float((y_hat - y).abs().max()) <= 1.0 + 1e-9


def test_fresh_instances_agree():
    """A decoder built separately from the same weights decodes the encoder's ŷ."""
    enc = _codec(seed=3)
    dec = lcm.LatentCodec(enc.cfg).eval()
    dec.load_state_dict(enc.state_dict())
    c = enc.compress(torch.randn(1, 4, 32, 64), torch.randn(1, 32, 16, 32))
    assert torch.equal(dec.decompress(c.payload, c.symbol_crc, c.y_shape), c.y_hat)


def test_other_weights_are_detected():
    from stablecodec.errors import DesyncError

    a, b = _codec(seed=1), _codec(seed=2)
    c = a.compress(torch.randn(1, 4, 32, 64), torch.randn(1, 32, 16, 32))
    with pytest.raises(DesyncError):
        b.decompress(c.payload, c.symbol_crc, c.y_shape)


def test_snap_follows_compressais_index_rule():
    gc = GaussianConditional(None)
    gc.update_scale_table(scale_table().float())
    rng = np.random.default_rng(0)
    scales = torch.from_numpy(np.exp(rng.uniform(np.log(0.01), np.log(400), 200_000)))
    grid = torch.round(scales * 1024) / 1024
    _, ours = lcm.snap(torch.zeros_like(grid), grid)
    theirs = gc.build_indexes(grid.float()).long()
    # CompressAI compares in float32; the only disagreements are ties at float32 precision
    assert float((ours != theirs).double().mean()) < 1e-4


@pytest.mark.parametrize("major", [1, 2])
def test_parameter_outputs_are_immune_to_float_noise(major):
    """±4 float32 ulp on every parameter-network output changes no table index (10**6+
    elements), nor a mean on format 1's 2**-8 grid (format 2 does not snap the means)."""
    rules = lcm.rules_for_format(major)
    one = rules.numerics.one
    gen = torch.Generator().manual_seed(0)
    n = 1_200_000
    means_q = torch.round(torch.randn(n, generator=gen, dtype=torch.float64) * 300 * one)
    scales_q = torch.round(torch.rand(n, generator=gen, dtype=torch.float64) * 300 * one)
    means, scales = lcm.parameter_outputs(means_q, scales_q, rules)
    ref_m, ref_s = lcm.snap(means, scales, rules)

    def noisy(v):
        v32 = v.float()
        ulp = (torch.nextafter(v32.abs(), torch.tensor(float("inf"))) - v32.abs()).double()
        u = torch.randint(-4, 5, v.shape, generator=gen).double()
        return v + u * ulp

    for _ in range(3):
        m, s = lcm.snap(noisy(means), noisy(scales), rules)
        assert major == 2 or int((m != ref_m).sum()) == 0
        assert int((s != ref_s).sum()) == 0
