"""The attention core softmax(Q K^T / sqrt(d)) V of the UNet's transformer blocks and the
VAE's mid-block, and the diffusers attention processor that runs it.

The networks are diffusers' (the released checkpoints load into them unchanged); only the
kernel under their ``Attention`` modules is chosen here. PyTorch's
``scaled_dot_product_attention`` picks a fused flash-attention kernel on CPU, which runs
bf16 no faster than float32 (~150 GFLOP/s on this project's 2-core machine, where a bf16
GEMM runs at ~390). For bf16 on CPU, :func:`sdpa` therefore computes attention as two
GEMMs and a softmax over blocks of queries, small enough that each block's scores stay
in cache (2^23 elements, 16 MB): 1.4-1.8x faster than the fused kernel at the UNet's and
VAE's shapes (docs/performance.md). The softmax accumulates in float32 inside PyTorch's
kernel; only its output is rounded to bf16, as the fused kernel's inputs to its second
product are. Everything else (float32, fp16, CUDA, masks) goes to PyTorch's kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCORE_BLOCK = 1 << 23  # elements of one block of attention scores


def blocked(q: torch.Tensor) -> bool:
    """Whether :func:`sdpa` computes attention with queries in blocks for inputs like ``q``."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over (batch, heads, tokens, head_dim) tensors, as ``F.scaled_dot_product_attention``."""
    if mask is not None or not blocked(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, h, n, d = q.shape
    # K^T and V contiguous once here: strided, the batched GEMMs copied them for every block
    # of queries (at the UNet's full resolution 22 blocks, ~100 ms of a 2.8 s UNet; measured).
    q = q.reshape(b * h, n, d)
    kt = k.reshape(b * h, -1, d).transpose(1, 2).contiguous()
    v = v.reshape(b * h, -1, v.shape[-1]).contiguous()
    rows = min(n, max(16, SCORE_BLOCK // (b * h * kt.shape[-1])))
    # One buffer each for a block's scores and probabilities, reused block after block: a
    # fresh pair per block costs ~25 % more at the UNet's full resolution (measured).
    scores = q.new_empty(b * h, rows, kt.shape[-1])
    probs = torch.empty_like(scores)
    out = q.new_empty(b * h, n, v.shape[-1])
    scale = 1.0 / math.sqrt(d)
    for i in range(0, n, rows):
        r = min(rows, n - i)
        # The last, shorter block uses a contiguous prefix of the buffers (a [:, :r] slice
        # would be strided, and the GEMM would compute into a copy).
        s, p = (scores, probs) if r == rows else (t.view(-1)[: b * h * r * kt.shape[-1]].view(b * h, r, -1)
                                                  for t in (scores, probs))
        # The scale inside the GEMM (alpha) rather than on q: one rounding fewer.
        torch.baddbmm(s, q[:, i : i + r], kt, beta=0.0, alpha=scale, out=s)
        torch.softmax(s, -1, out=p)
        torch.bmm(p, v, out=out[:, i : i + r])
    return out.view(b, h, n, -1)


class AttnProcessor:
    """diffusers' ``AttnProcessor2_0`` with :func:`sdpa` as its core.

    Written out because diffusers' processor calls ``F.scaled_dot_product_attention``
    directly, and its ``SlicedAttnProcessor`` slices heads, not queries (a head's whole
    score matrix, 6144^2 at 768x512, does not stay in cache). The steps and their order
    are diffusers': optional spatial and group norm, projections, optional q/k norms,
    attention, output projection, optional residual, rescale.
    """

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image = hidden_states.ndim == 4
        if image:
            b, c, hgt, wid = hidden_states.shape
            hidden_states = hidden_states.view(b, c, hgt * wid).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b, length = context.shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        d = k.shape[-1] // attn.heads
        q, k, v = (t.view(b, -1, attn.heads, d).transpose(1, 2) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = sdpa(q, k, v, attention_mask).transpose(1, 2).reshape(b, -1, attn.heads * d)
        out = attn.to_out[1](attn.to_out[0](out))
        if image:
            out = out.transpose(-1, -2).reshape(b, c, hgt, wid)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
