"""Tiles, windows, banded VAE and the memory planner (issue: any resolution under a budget)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import smooth_image
from stablecodec import tiling
from stablecodec.errors import LimitError


@settings(max_examples=400, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), tile=st.integers(2, 200), ov=st.integers(0, 199))
def test_planner_covers_every_pixel(h, w, tile, ov):
    ov = ov % tile
    boxes = tiling.plan_tiles_2d(h, w, tile, ov)
    cover = np.zeros((h, w), np.int32)
    for b in boxes:
        assert 0 <= b.top < b.bottom <= h and 0 <= b.left < b.right <= w
        assert b.height == min(tile, h) and b.width == min(tile, w)  # same shape: tiles batch
        cover[b.top : b.bottom, b.left : b.right] += 1
    assert cover.min() >= 1
    rows = tiling.plan_tiles_1d(h, tile, ov)
    assert rows[0][0] == 0 and rows[-1][1] == h  # flush with both borders
    for (a0, a1), (b0, b1) in zip(rows, rows[1:]):
        assert a1 - b0 >= ov  # at least the requested overlap


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), tile=st.integers(1, 64))
def test_core_boxes_partition(h, w, tile):
    cover = np.zeros((h, w), np.int32)
    for b in tiling.core_boxes(h, w, tile):
        cover[b.top : b.bottom, b.left : b.right] += 1
    assert (cover == 1).all()


def test_aggregating_a_constant_returns_it():
    agg = tiling.LatentAggregator((1, 4, 70, 130))
    for b in tiling.plan_tiles_2d(70, 130, 32, 12):
        agg.add(b, torch.full((1, 4, b.height, b.width), 2.5), tiling.gaussian_weight(b.height, b.width))
    torch.testing.assert_close(agg.result(), torch.full((1, 4, 70, 130), 2.5))


def test_windows_are_exact_with_enough_halo_and_not_without():
    from stablecodec.models.lite import LiteNet

    torch.manual_seed(0)
    net = LiteNet().eval()
    x = torch.rand(1, 3, 192, 320)
    with torch.no_grad():
        enc = lambda t: net.codec.g_a(net.analysis(t))  # noqa: E731
        ref = enc(x)
        exact = tiling.run_windows(enc, x, 64, 256, down=16)
        short = tiling.run_windows(enc, x, 64, 16, down=16)
    assert float((exact - ref).abs().max()) < 1e-5
    assert float((short - ref).abs().max()) > 1e-3  # the halo matters


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKL

    from stablecodec import testing
    from stablecodec.models.vae import TiledVAE

    torch.manual_seed(0)
    return TiledVAE(AutoencoderKL(**testing.tiny().vae).eval())


def test_whole_image_vae_computes_what_diffusers_does():
    """TiledVAE runs the ResNet blocks with in-place SiLUs and sums and the attention through
    its own processor: in float32 the result is diffusers' own, bit for bit; in bf16 (where
    the attention core's kernel differs, models/attention.py) as close to float32 as theirs."""
    import copy

    from diffusers import AutoencoderKL

    from stablecodec import testing
    from stablecodec.models.vae import TiledVAE

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    torch.manual_seed(0)
    plain = AutoencoderKL(**testing.tiny().vae).eval()
    ours, ours16 = TiledVAE(copy.deepcopy(plain)), TiledVAE(copy.deepcopy(plain).to(torch.bfloat16))
    plain16 = copy.deepcopy(plain).to(torch.bfloat16)
    assert all("forward" in vars(r) for r in ours.vae.decoder.mid_block.resnets)  # ours, not the class's
    x, z = torch.rand(1, 3, 48, 72) * 2 - 1, torch.randn(1, 4, 6, 9)
    with torch.no_grad():
        ref_e, ref_d = plain.encode(x).latent_dist.mode(), plain.decode(z).sample
        assert torch.equal(ours.vae.encode(x).latent_dist.mode(), ref_e)
        assert torch.equal(ours.vae.decode(z).sample, ref_d)
        theirs = rel(plain16.decode(z.bfloat16()).sample, ref_d)
        assert 0 < rel(ours16.vae.decode(z.bfloat16()).sample, ref_d) < 1.2 * theirs


def test_banded_vae_matches_untiled(tiny_vae):
    from stablecodec.models.vae import VAEPlan

    x = torch.rand(1, 3, 120, 200) * 2 - 1
    z = torch.randn(1, 4, 15, 25)
    with torch.no_grad():
        ref_e, ref_d = tiny_vae.vae.encode(x).latent_dist.mode(), tiny_vae.vae.decode(z).sample
        whole = VAEPlan(band_elems=None, attn_tile=1000)
        assert torch.equal(tiny_vae.encode(x, whole), ref_e)  # one tile: exactly diffusers' result
        banded = VAEPlan(band_elems=3000, attn_tile=1000)
        # Whole-image GroupNorm statistics and exact halos: only float summation order differs.
        torch.testing.assert_close(tiny_vae.encode(x, banded), ref_e, rtol=0, atol=1e-5)
        torch.testing.assert_close(tiny_vae.decode(z, banded), ref_d, rtol=0, atol=1e-5)
        spilled = VAEPlan(band_elems=3000, attn_tile=1000, spill=True)
        assert torch.equal(tiny_vae.decode(z, spilled), tiny_vae.decode(z, banded))
        # Attention windows are the one approximation: bounded, not exact.
        windowed = tiny_vae.decode(z, VAEPlan(band_elems=3000, attn_tile=8, attn_overlap=4))
        assert 0 < float((windowed - ref_d).abs().max()) < 2.0
        # Out of core changes where activations live, never what is computed.
        assert torch.equal(tiny_vae.decode(z, VAEPlan(band_elems=3000, attn_tile=8, attn_overlap=4, spill=True)), windowed)
        assert torch.equal(tiny_vae.encode(x, VAEPlan(band_elems=3000, attn_tile=1000, spill=True)), tiny_vae.encode(x, banded))


def test_one_band_runs_each_first_convolution_once(tiny_vae):
    """Whole image but windowed attention (what 2048x1365 gets): conv1's output from the
    statistics pass is reused, and the result is the banded runner's."""
    from stablecodec.models.vae import VAEPlan

    z = torch.randn(1, 4, 15, 25)
    conv1s = [r.conv1 for b in [tiny_vae.vae.decoder.mid_block, *tiny_vae.vae.decoder.up_blocks] for r in b.resnets]
    calls = []
    hooks = [c.register_forward_hook(lambda m, a, o: calls.append(m)) for c in conv1s]
    try:
        with torch.no_grad():
            one_band = tiny_vae.decode(z, VAEPlan(band_elems=None, attn_tile=8, attn_overlap=4))
            n_one = len(calls)
            banded = tiny_vae.decode(z, VAEPlan(band_elems=3000, attn_tile=8, attn_overlap=4))
    finally:
        for h in hooks:
            h.remove()
    assert n_one == len(conv1s)
    assert len(calls) - n_one > 2 * len(conv1s)  # several bands: each recomputes in pass B
    torch.testing.assert_close(one_band, banded, rtol=0, atol=1e-5)


@pytest.mark.parametrize("h,w", [(1, 1), (17, 300), (4000, 64)])
def test_extreme_sizes_round_trip(tiny_codec, h, w):
    img = smooth_image(h, w, seed=h)
    out = tiny_codec.decode(tiny_codec.encode(img))
    assert out.size == (w, h)


def test_tiles_in_every_stage(tiny_release):
    import stablecodec
    from stablecodec.tiling import MemoryPlan

    img = smooth_image(700, 900, seed=4)
    kw = dict(weights_dir=tiny_release["dir"], device="cpu", precision="fp32")
    whole = stablecodec.Codec("ft8", tile_plan=MemoryPlan(), **kw)
    # Every stage in tiles or bands, all of them exact (whole-image GroupNorm statistics,
    # halos covering the receptive fields); the VAE's attention stays global here.
    exact = MemoryPlan(encoder_window=256, synthesis_window=4, vae_enc_band=20_000, vae_enc_spill=True,
                       vae_dec_band=20_000, vae_dec_spill=True, attn_tile=10_000)
    data = whole.encode(img)
    assert stablecodec.Codec("ft8", tile_plan=exact, **kw).encode(img) == data
    a = np.asarray(whole.decode(data), dtype=np.int16)
    b = np.asarray(stablecodec.Codec("ft8", tile_plan=exact, **kw).decode(data), dtype=np.int16)
    # Float summation order only; the UNet step amplifies latent errors ~15x (Eq. 3), so a
    # few pixels move by up to 2 levels.
    assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.1
    # The UNet on blended latent tiles and the VAE's attention in windows are approximations
    # (each tile normalises with its own statistics): the image changes, but stays close.
    approx = MemoryPlan(**{**exact.__dict__, "unet_tile": 48, "unet_overlap": 16, "unet_batch": 2, "attn_tile": 32})
    c = np.asarray(stablecodec.Codec("ft8", tile_plan=approx, **kw).decode(data), dtype=np.float64)
    assert c.shape == a.shape and np.corrcoef(c.ravel(), a.ravel())[0, 1] > 0.5


def test_planner_picks_tiles_for_a_tight_budget():
    wide = tiling.plan_stablecodec(2304, 3840, budget=64 * tiling.GB, dtype_bytes=4,
                                   weights_encode=int(0.7 * tiling.GB), weights_decode=int(4.4 * tiling.GB))
    tight = tiling.plan_stablecodec(2304, 3840, budget=9 * tiling.GB, dtype_bytes=4,
                                    weights_encode=int(0.7 * tiling.GB), weights_decode=int(4.4 * tiling.GB))
    assert wide.vae_dec_band is None and not wide.vae_dec_spill
    assert tight.vae_dec_spill and tight.unet_tile == 96
    with pytest.raises(ValueError, match="cannot hold"):
        tiling.plan_stablecodec(512, 768, budget=4 * tiling.GB, dtype_bytes=4, weights_encode=int(0.7 * tiling.GB),
                                weights_decode=int(4.4 * tiling.GB))


def test_budget_too_small_for_the_weights_fails_before_loading(tiny_release):
    import stablecodec

    codec = stablecodec.Codec("ft8", weights_dir=tiny_release["dir"], max_memory="100MB")
    with pytest.raises(LimitError, match="cannot hold"):
        codec.encode(smooth_image(16, 16))
    assert not codec._models  # nothing was loaded


def test_planner_estimates_stay_within_budget():
    for budget in (6, 9, 16):
        for h, w in ((512, 768), (1536, 2048), (2304, 3840), (8192, 8192)):
            try:
                p = tiling.plan_stablecodec(h, w, budget=budget * tiling.GB, dtype_bytes=4,
                                            weights_encode=int(0.7 * tiling.GB), weights_decode=int(4.4 * tiling.GB))
            except ValueError:
                assert budget == 6 or (h, w) == (8192, 8192)
                continue
            assert p.estimate_encode <= budget * tiling.GB and p.estimate_decode <= budget * tiling.GB, (h, w, p)


def test_memory_sizes_parse():
    assert tiling.parse_size("9GB") == 9 * tiling.GB
    assert tiling.parse_size("512 MiB") == 512 * tiling.MB
    with pytest.raises(ValueError):
        tiling.parse_size("lots")


def test_image_limits():
    from stablecodec import container

    container.check_size(8192, 8192)
    with pytest.raises(LimitError, match="exceeds the limit"):
        container.check_size(16385, 100)


@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_spilled_buffer_reads_back_what_was_written_in_other_bands(dtype, channels_last):
    """A spilled buffer lives in its file only (row-major, one pread/pwrite per band): rows
    written in bands of 7 read back identical over ranges that straddle those bands."""
    from stablecodec.models.vae import Level

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    lvl = Level(3, 256, 1000, dtype, "cpu", spill=True, memory_format=fmt)
    assert lvl.t is None  # nothing of it is held in RAM
    data = torch.randn(1, 3, 256, 1000).to(dtype)
    if channels_last:
        data = data.contiguous(memory_format=torch.channels_last)
    for r0 in range(0, 256, 7):
        lvl.write(r0, data[:, :, r0 : r0 + 7])
    for r0, r1 in [(0, 256), (10, 20), (6, 8), (250, 256)]:
        got = lvl.read(r0, r1)
        assert got.dtype == dtype and got.is_contiguous(memory_format=fmt)  # no transposing copy needed
        assert torch.equal(got, data[:, :, r0:r1])
    lvl.close()


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm_statistics_in_chunks_match_float64(monkeypatch, fmt, dtype):
    from stablecodec.models import vae

    monkeypatch.setattr(vae, "_STATS_CHUNK", 8 * 7 * 5)  # 5 rows a chunk: 4 chunks, the last ragged
    gn = torch.nn.GroupNorm(4, 8)
    torch.manual_seed(0)
    x = (torch.randn(1, 8, 17, 7) * 3 + 1).to(dtype).contiguous(memory_format=fmt)
    acc = vae._StatsAccumulator(gn)
    acc.add(x[:, :, :9])
    acc.add(x[:, :, 9:])  # two bands
    xd = x.double().contiguous().view(4, -1)  # groups of 2 channels, in NCHW order
    torch.testing.assert_close(acc.s1, xd.sum(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(acc.s2, (xd * xd).sum(1), rtol=1e-6, atol=1e-6)
    assert acc.n == 2 * 17 * 7
    assert torch.equal(x, x.clone())  # the input is left as it was (squares go in a buffer)
