"""Float32 islands in a reduced-precision network: placement and the casts at their edges.

bf16 keeps 8 significant bits, so every layer it runs adds a relative rounding of about
2^-9 to its output. Where those roundings matter most (the UNet's full-resolution level
and output layers, the VAE decoder's output layers) the models keep a few modules in
float32: :func:`place` casts a model to the working dtype but restores those modules'
original float32 weights, and :func:`run_in_own_dtype` makes a module take its inputs in its
own dtype and, if asked, hand its outputs back in the dtype they arrived in. Within an
island, modules that cost much and matter little can run in the working dtype again
(``reduced``). Which modules, and what it buys, is each model's business
(``float32_modules()``, ``reduced_modules()``); docs/performance.md has the measurements.

torch.autocast does not do this: once an activation is bf16 every later op sees bf16,
and its per-op lists say nothing about whole blocks.
"""

from __future__ import annotations

import torch
from torch import nn


def channels_last(dtype: torch.dtype, device: str) -> bool:
    """Whether convolutions should run NHWC: always on CUDA, for bf16/fp16 on CPU (why:
    ``StableCodecModel.place``)."""
    return device == "cuda" or dtype != torch.float32


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a tensor lies NHWC in memory (and not also NCHW, as 1-channel or 1x1 ones do)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def cast(obj, dtype: torch.dtype):
    """Floating tensors in (nested tuples, lists, dicts of) ``obj`` to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(cast(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: cast(v, dtype) for k, v in obj.items()}
    return obj


def _first_float_dtype(obj) -> torch.dtype | None:
    if isinstance(obj, torch.Tensor):
        return obj.dtype if obj.is_floating_point() else None
    if isinstance(obj, (tuple, list)):
        items = obj
    elif isinstance(obj, dict):
        items = obj.values()
    else:
        return None
    for o in items:
        d = _first_float_dtype(o)
        if d is not None:
            return d
    return None


def run_in_own_dtype(module: nn.Module, hand_back: bool) -> None:
    """Run ``module`` in its own weights' dtype whatever its inputs come in.

    With ``hand_back`` its outputs return to the dtype of its first floating input, for
    the reduced-precision layers after it; without, they stay in the module's dtype (the
    next module is also kept in float32, or the caller wants float32). When the module
    and its inputs share a dtype, both casts are no-ops.
    """
    arrived: list[torch.dtype | None] = [None]

    def enter(mod: nn.Module, args, kwargs):
        dtype = next(mod.parameters()).dtype
        arrived[0] = _first_float_dtype((args, kwargs))
        return cast(args, dtype), cast(kwargs, dtype)

    module.register_forward_pre_hook(enter, with_kwargs=True)
    if hand_back:
        module.register_forward_hook(lambda mod, args, out: out if arrived[0] is None else cast(out, arrived[0]))


def place(model: nn.Module, device: str | torch.device, dtype: torch.dtype, keep: list[nn.Module],
          channels_last: bool, reduced: list[nn.Module] = ()) -> None:
    """``model`` to ``device`` in ``dtype``, except ``keep``, which stay in float32 with their
    original weights (not their rounding to ``dtype`` and back), and within them ``reduced``,
    which are in ``dtype`` again."""
    saved = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in keep] if dtype != torch.float32 else []
    model.to(device=device, dtype=dtype)
    for m, state in zip(keep, saved):
        m.to(dtype=torch.float32)
        m.load_state_dict(state)
    for m in reduced if saved else []:
        m.to(dtype=dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
