"""Float32 islands in reduced-precision models (stablecodec.models.precision)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smooth_image
from torch import nn

from stablecodec import Codec
from stablecodec.models import precision
from stablecodec.models.vae import VAEPlan


def _chain(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))


def test_place_keeps_the_original_float32_weights_of_kept_modules():
    net = _chain()
    original = net[1].weight.detach().clone()
    precision.place(net, "cpu", torch.bfloat16, [net[1]], channels_last=False)
    assert net[0].weight.dtype == net[2].weight.dtype == torch.bfloat16
    assert net[1].weight.dtype == torch.float32
    assert torch.equal(net[1].weight, original)  # not rounded through bf16 and back


def test_place_in_float32_keeps_everything_float32():
    net = _chain()
    precision.place(net, "cpu", torch.float32, [net[1]], channels_last=False)
    assert {p.dtype for p in net.parameters()} == {torch.float32}


@pytest.mark.parametrize("hand_back,out_dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_kept_module_computes_in_float32_and_hands_back_when_asked(hand_back, out_dtype):
    net = _chain()
    kept = net[1] if hand_back else net[2]
    precision.place(net, "cpu", torch.bfloat16, [kept], channels_last=False)
    precision.run_in_own_dtype(kept, hand_back=hand_back)
    seen = {}
    kept.register_forward_hook(lambda m, a, o: seen.update(inp=a[0].dtype, out=o.dtype))
    out = net(torch.randn(2, 8, dtype=torch.bfloat16))
    assert seen["inp"] == torch.float32
    assert out.dtype == out_dtype


def test_cast_reaches_nested_containers_and_leaves_integers():
    x = {"a": (torch.ones(2), [torch.zeros(1, dtype=torch.float64)]), "t": torch.tensor([999]), "n": None}
    y = precision.cast(x, torch.bfloat16)
    assert y["a"][0].dtype == y["a"][1][0].dtype == torch.bfloat16
    assert y["t"].dtype == torch.int64 and y["n"] is None


@pytest.fixture(scope="module")
def bf16_model(tiny_release):
    codec = Codec("ft8", weights_dir=tiny_release["dir"], device="cpu", precision="bf16")
    return codec, codec.get_model().model


def test_bf16_model_keeps_the_unet_full_resolution_level_and_vae_output_in_float32(bf16_model):
    _, m = bf16_model
    den = m.denoiser
    reduced = {id(p) for mod in den.reduced_modules() for p in mod.parameters()}
    kept = {id(p) for mod in den.float32_modules() + m.vae.float32_modules() for p in mod.parameters()} - reduced
    assert kept and reduced  # the tiny UNet has transformer blocks at full resolution too
    dtype = {id(p): p.dtype for p in list(den.parameters()) + list(m.vae.parameters())}
    assert {dtype[i] for i in kept} == {torch.float32}
    assert {dtype[i] for i in reduced} == {torch.bfloat16}
    assert {d for i, d in dtype.items() if i not in kept} == {torch.bfloat16}


def test_feed_forward_inside_a_float32_block_runs_bf16_and_hands_back_float32(bf16_model, tiny_codec):
    codec, m = bf16_model
    ff = m.denoiser.reduced_modules()[0]
    seen = {}
    h = ff.register_forward_hook(lambda mod, a, o: seen.update(inp=a[0].dtype, out=o.dtype))
    try:
        codec.decode_array(tiny_codec.encode(smooth_image(64, 64, seed=4)))
    finally:
        h.remove()
    assert seen["inp"] == torch.bfloat16  # cast down on the way in (the block around it is float32)
    assert seen["out"] == torch.float32  # and handed back up (that hook runs before this one)


def test_bf16_decode_gives_float32_eps_and_image(bf16_model, tiny_codec):
    codec, m = bf16_model
    data = tiny_codec.encode(smooth_image(64, 64, seed=3))
    seen = {}
    h = m.denoiser.unet.conv_out.register_forward_hook(lambda mod, a, o: seen.update(eps=o.dtype))
    try:
        img = codec.decode_array(data)
    finally:
        h.remove()
    assert seen["eps"] == torch.float32
    ref = tiny_codec.decode_array(data)
    assert img.shape == ref.shape
    assert np.abs(img.astype(np.float64) - ref).mean() < 0.02  # the same picture, bf16 roundings aside


def test_banded_vae_decoder_output_is_float32_and_matches_whole(bf16_model):
    _, m = bf16_model
    torch.manual_seed(0)
    z = m._layout(torch.randn(1, 4, 16, 24).to(torch.bfloat16))
    whole = m.vae.decode(z)
    banded = m.vae.decode(z, VAEPlan(band_elems=4 * 24 * 32))
    assert whole.dtype == banded.dtype == torch.float32
    # Spilled bf16 buffers lie in their files channels-last: what is computed is the same.
    assert torch.equal(m.vae.decode(z, VAEPlan(band_elems=4 * 24 * 32, spill=True)), banded)
    # Both bf16 inside, with GroupNorm statistics gathered differently (float64 over bands
    # vs bf16 whole), which the tiny random decoder amplifies: the same picture, not equal.
    assert float((banded - whole).norm() / whole.norm()) < 0.1


def _transformer_outputs(unet, l_t, prompt):
    """Each Transformer2DModel's output and what diffusers' own output method gives for it."""
    seen = []

    def hook(mod, args, kwargs, out):
        seen.append((mod, out[0] if isinstance(out, tuple) else out.sample))

    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    blocks = [b for b in unet.modules() if isinstance(b, Transformer2DModel)]
    handles = [b.register_forward_hook(hook, with_kwargs=True) for b in blocks]
    try:
        with torch.no_grad():
            unet(l_t, torch.tensor([999]), encoder_hidden_states=prompt)
    finally:
        for h in handles:
            h.remove()
    assert seen and len(seen) == len(blocks)
    return seen


def test_bf16_unet_transformer_outputs_stay_channels_last_with_diffusers_values(bf16_model):
    _, m = bf16_model
    den = m.denoiser
    torch.manual_seed(0)
    l_t = m._layout(torch.randn(1, den.unet.config.in_channels, 16, 16).to(torch.bfloat16))
    for block, out in _transformer_outputs(den.unet, l_t, den.prompt_embedding.to(torch.bfloat16)):
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    # The values are diffusers': its own method on the same inputs (a float32 block, NCHW result).
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    block = den.unet.down_blocks[0].attentions[0]
    hid = torch.randn(1, 16 * 16, block.config.num_attention_heads * block.config.attention_head_dim)
    res = torch.randn(1, hid.shape[-1], 16, 16).contiguous(memory_format=torch.channels_last)
    ours = block._get_output_for_continuous_inputs(hid, res, 1, 16, 16, hid.shape[-1])
    theirs = Transformer2DModel._get_output_for_continuous_inputs(block, hid, res, 1, 16, 16, hid.shape[-1])
    assert ours.is_contiguous(memory_format=torch.channels_last) and theirs.is_contiguous()
    assert torch.equal(ours, theirs)


def test_float32_unet_transformer_outputs_are_diffusers_nchw(tiny_codec):
    den = tiny_codec.get_model().model.denoiser
    torch.manual_seed(0)
    l_t = torch.randn(1, den.unet.config.in_channels, 16, 16)
    for block, out in _transformer_outputs(den.unet, l_t, den.prompt_embedding):
        assert out.is_contiguous()
