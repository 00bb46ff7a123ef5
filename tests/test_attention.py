"""The attention core and processor (stablecodec.models.attention)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from stablecodec.models import attention


def _qkv(b, h, n, d, m=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = m or n
    return [torch.randn(b, h, length, d, generator=g).to(dtype) for length in (n, m, m)]


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("b,h,n,m,d", [(1, 5, 300, 300, 16), (2, 3, 200, 77, 8), (1, 1, 1000, 1000, 32)])
def test_bf16_attention_in_query_blocks_matches_float64_as_closely_as_pytorchs_kernel(monkeypatch, b, h, n, m, d):
    # Blocks much smaller than the query count, with a ragged last block.
    monkeypatch.setattr(attention, "SCORE_BLOCK", 37 * h * b * m)
    q, k, v = _qkv(b, h, n, d, m)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    q16, k16, v16 = (t.bfloat16() for t in (q, k, v))
    assert attention.blocked(q16)
    out = attention.sdpa(q16, k16, v16)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    fused = _rel(F.scaled_dot_product_attention(q16, k16, v16), ref)
    assert _rel(out, ref) < 2 * fused + 1e-3  # bf16 scores cost a little more than fused float32 ones


def test_float32_and_masked_attention_go_to_pytorchs_kernel():
    q, k, v = _qkv(1, 2, 50, 8)
    assert not attention.blocked(q)
    assert torch.equal(attention.sdpa(q, k, v), F.scaled_dot_product_attention(q, k, v))
    mask = torch.rand(1, 1, 50, 50) > 0.3
    q16, k16, v16 = (t.bfloat16() for t in (q, k, v))
    assert torch.equal(attention.sdpa(q16, k16, v16, mask), F.scaled_dot_product_attention(q16, k16, v16, attn_mask=mask))


@pytest.mark.parametrize("kind", ["unet-self", "unet-cross", "vae"])
def test_processor_computes_what_diffusers_processor_computes(kind):
    torch.manual_seed(0)
    if kind == "vae":  # 4D input, own GroupNorm, residual, one head
        attn = Attention(32, heads=1, dim_head=32, norm_num_groups=8, residual_connection=True, bias=True,
                         upcast_softmax=True, _from_deprecated_attn_block=True)
        x, ctx = torch.randn(2, 32, 6, 7), None
    else:
        attn = Attention(32, cross_attention_dim=24 if kind == "unet-cross" else None, heads=4, dim_head=8)
        x, ctx = torch.randn(2, 40, 32), (torch.randn(2, 11, 24) if kind == "unet-cross" else None)
    attn.eval()
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        ref = attn(x, encoder_hidden_states=ctx)
        attn.set_processor(attention.AttnProcessor())
        ours = attn(x, encoder_hidden_states=ctx)
        torch.testing.assert_close(ours, ref)
        attn.to(torch.bfloat16)
        ours16 = attn(x.bfloat16(), encoder_hidden_states=None if ctx is None else ctx.bfloat16())
    assert ours16.dtype == torch.bfloat16
    assert _rel(ours16, ref) < 0.03
