"""Tiles for images and latents of any size: a pure planner and one aggregator.

The planner returns integer boxes only (no torch): tiles of a fixed size that overlap by
at least ``overlap``, evenly spaced, the first and last flush with the border, so every
pixel is covered and every tile has the same shape (tiles can be batched). The
aggregator blends overlapping tile outputs with a Gaussian weight map and normalises by
the summed weights, as the paper's supplementary A does for the one-step UNet on latent
tiles (96 latent px, overlap 32, variance 0.01 of the tile size).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Box:
    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def plan_tiles_1d(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Spans [start, end) of size min(tile, length) covering 0..length, overlapping >= overlap."""
    if length < 1 or tile < 1:
        raise ValueError(f"length and tile must be positive, got {length} and {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    starts = [((length - tile) * i + (count - 1) // 2) // (count - 1) for i in range(count)]
    return [(s, s + tile) for s in starts]


def plan_tiles_2d(height: int, width: int, tile: int, overlap: int) -> list[Box]:
    """Row-major boxes of at most tile x tile covering a height x width grid."""
    rows = plan_tiles_1d(height, tile, overlap)
    cols = plan_tiles_1d(width, tile, overlap)
    return [Box(t, l, b, r) for t, b in rows for l, r in cols]


def expand(box: Box, margin: int, height: int, width: int) -> Box:
    """The box grown by ``margin`` on each side, clipped to the grid."""
    return Box(max(0, box.top - margin), max(0, box.left - margin), min(height, box.bottom + margin),
               min(width, box.right + margin))


def core_boxes(height: int, width: int, tile: int) -> list[Box]:
    """A partition of the grid into non-overlapping tiles of at most tile x tile."""
    return [Box(t, l, min(t + tile, height), min(l + tile, width))
            for t in range(0, height, tile) for l in range(0, width, tile)]


def gaussian_weight(height: int, width: int, var: float = 0.01, device=None):
    """Separable Gaussian weight map of a tile, peak in the centre (torch tensor 1x1xHxW)."""
    import torch

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32, device=device)
        mid = (n - 1) / 2
        return torch.exp(-((x - mid) ** 2) / (n * n) / (2 * var))

    return (axis(height)[:, None] * axis(width)[None, :])[None, None]


class LatentAggregator:
    """Sum of weight * tile over all tiles, divided by the summed weights."""

    def __init__(self, shape: tuple[int, ...], device=None, dtype=None):
        import torch

        self._acc = torch.zeros(shape, device=device, dtype=dtype)
        self._wsum = torch.zeros((1, 1, *shape[2:]), device=device, dtype=dtype)

    def add(self, box: Box, value, weight) -> None:
        sl = (slice(None), slice(None), slice(box.top, box.bottom), slice(box.left, box.right))
        self._acc[sl] += value.to(self._acc.dtype) * weight
        self._wsum[sl] += weight

    def result(self):
        if bool((self._wsum <= 0).any()):
            raise RuntimeError("tiles do not cover the whole latent")
        return self._acc / self._wsum


def run_windows(fn, x, tile: int, halo: int, up: int = 1, down: int = 1, progress=None):
    """Apply a convolutional ``fn`` to (N, C, H, W) ``x`` window by window, exactly.

    ``fn`` maps h x w to (h * up / down) x (w * up / down). Each window is a core tile
    (``tile`` input px, a multiple of ``down``) plus ``halo`` px of context on every side;
    only the core's output is kept. With ``halo`` at least the receptive radius of
    ``fn`` this equals ``fn(x)``; at the image border a window stops where the image
    does, so zero padding is applied exactly where ``fn(x)`` applies it.
    """
    n, _, h, w = x.shape
    if tile % down or halo % down:
        raise ValueError(f"tile and halo must be multiples of {down}")
    if h <= tile and w <= tile:
        return fn(x)
    out = None
    for core in core_boxes(h, w, tile):
        win = expand(core, halo, h, w)
        y = fn(x[:, :, win.top : win.bottom, win.left : win.right])
        if out is None:
            out = y.new_empty((n, y.shape[1], -(-h * up // down), -(-w * up // down)))
        ot, ol = core.top * up // down, core.left * up // down
        ob, orr = -(-core.bottom * up // down), -(-core.right * up // down)
        wt, wl = win.top * up // down, win.left * up // down
        out[:, :, ot:ob, ol:orr] = y[:, :, ot - wt : ob - wt, ol - wl : orr - wl]
        if progress is not None:
            progress(1)
    return out


def pad_to_multiple(x, multiple: int):
    """Reflect-pad (N, C, H, W) on the bottom/right to multiples of ``multiple``.

    Reflection needs the pad to be smaller than the side, so tiny images are reflected
    repeatedly (a 1-pixel side is replicated).
    """
    import torch.nn.functional as F  # noqa: N812

    h, w = x.shape[2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    while ph or pw:
        sh = min(ph, x.shape[2] - 1)
        sw = min(pw, x.shape[3] - 1)
        if sh == 0 and sw == 0:
            x = F.pad(x, (0, min(pw, 1), 0, min(ph, 1)), mode="replicate")
            ph, pw = max(ph - 1, 0), max(pw - 1, 0)
            continue
        x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        ph, pw = ph - sh, pw - sw
    return x


# ---------------------------------------------------------------------------------------
# The memory planner (pure arithmetic: sizes in, tile sizes out).

GB = 1 << 30
MB = 1 << 20

# Activation memory per image pixel at float32, measured by benchmarks/calibrate_memory.py
# (random full-size weights, 512x768; docs/memory.md). Scaled by the dtype's size.
_PER_PX = {
    "vae_enc": 2600.0,  # diffusers' untiled encoder
    "vae_enc_band": 920.0,  # banded, buffers in RAM (about 640 B/px of them) + 2M-element bands
    "vae_dec": 3910.0,
    "vae_dec_band": 2120.0,
    "elic": 700.0,
    "gs_aux": 150.0,
    "exact": 215.0,  # the fixed-point parameter path (float64 whatever the precision)
    "persist": 60.0,  # l_T, r, l_0 and the decoded image kept across decoding stages
}
_UNET_PER_LATENT_PX = 59_000.0  # UNet activations per latent px of a tile, float32
_BAND_WORKSET = 10  # band-sized float tensors alive at once inside a banded VAE layer
RUNTIME = int(0.9 * GB)  # Python, torch and the libraries before any weight is loaded


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """How to run one image within a memory budget (None: whole image at once)."""

    encoder_window: int | None = None  # image px, exact windows (ELIC; the default model's encoder)
    synthesis_window: int | None = None  # y px, exact windows of g_s and aux (+ the default model's decoder)
    vae_enc_band: int | None = None  # elements per band of the banded VAE encoder
    vae_enc_spill: bool = False
    unet_tile: int | None = None  # latent px (the paper: 96, overlap 32)
    unet_overlap: int = 32
    unet_batch: int = 1
    vae_dec_band: int | None = None
    vae_dec_spill: bool = False
    attn_tile: int = 64  # latent px of a VAE attention window's core (only beyond 96 latent px)
    estimate_encode: int = 0  # bytes, whole process
    estimate_decode: int = 0

    def describe(self) -> str:
        def t(v, unit):
            return "whole" if v is None else f"{v} {unit}"

        return (f"encoder {t(self.encoder_window, 'px')}, synthesis {t(self.synthesis_window, 'y px')}, VAE encoder {t(self.vae_enc_band, 'elements/band')}"
                f"{' spilled' if self.vae_enc_spill else ''}, UNet {t(self.unet_tile, 'latent px')} x{self.unet_batch}, "
                f"VAE decoder {t(self.vae_dec_band, 'elements/band')}{' spilled' if self.vae_dec_spill else ''}; "
                f"estimated peak encode "
                f"{self.estimate_encode / GB:.1f} GB, decode {self.estimate_decode / GB:.1f} GB")


def parse_size(text: str | int | float | None) -> int | None:
    """'9GB', '9 GiB', '9000MB', '9.5G', 9e9 -> bytes (powers of 1024 for every unit)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip().upper().replace(" ", "").replace("IB", "B")
    units = {"TB": 1 << 40, "GB": GB, "MB": MB, "KB": 1 << 10, "T": 1 << 40, "G": GB, "M": MB, "K": 1 << 10, "B": 1}
    for u, f in units.items():
        if s.endswith(u):
            num = s[: -len(u)]
            break
    else:
        num, f = s, 1
    try:
        v = float(num)
    except ValueError:
        raise ValueError(f"cannot read memory size {text!r}; write e.g. 9GB or 9000MB") from None
    if not v > 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(v * f)


def _px(kind: str, pixels: int, scale: float) -> int:
    return int(_PER_PX[kind] * pixels * scale)


def _rooms(budget: int, weights_encode: int, weights_decode: int) -> tuple[int, int, int, int]:
    """(encode base, decode base, room left for activations when encoding, when decoding):
    the runtime and weights, and 90 % of the budget less them (the estimates are within about
    10 % of measurements). ValueError when even the weights do not fit."""
    usable = int(0.9 * budget)
    base_e, base_d = RUNTIME + weights_encode, RUNTIME + weights_decode
    if max(base_e, base_d) > usable:
        need = max(base_e, base_d) / 0.9
        raise ValueError(f"the memory budget ({budget / GB:.1f} GB) cannot hold this model's weights and the "
                         f"runtime (needs at least {need / GB:.1f} GB); raise --max-memory")
    return base_e, base_d, usable - base_e, usable - base_d


def plan_stablecodec(height: int, width: int, *, budget: int, dtype_bytes: int, weights_encode: int,
                     weights_decode: int, widths: dict[str, float] | None = None) -> MemoryPlan:
    """The fastest plan whose estimated peak fits ``budget`` (bytes, whole process).

    ``height``/``width``: the padded image size; ``weights_*``: bytes of weights resident
    while encoding / decoding. Stages run one after another, so a phase's peak is the
    weights and runtime, what persists across the phase, and its own working memory.
    ``widths``: each stage's channel width relative to the released model's (keys "vae",
    "unet", "elic", "codec"; activations scale with them). Raises ValueError when even
    the weights do not fit, or when the smallest tiles still do not.
    """
    px = height * width
    sc = dtype_bytes / 4.0
    wd = {"vae": 1.0, "unet": 1.0, "elic": 1.0, "codec": 1.0, **(widths or {})}

    def _px(kind: str, pixels: int, scale: float) -> int:
        stage = {"vae_enc": "vae", "vae_enc_band": "vae", "vae_dec": "vae", "vae_dec_band": "vae", "elic": "elic",
                 "gs_aux": "codec", "exact": "codec"}.get(kind)
        return int(_PER_PX[kind] * pixels * scale * (wd[stage] if stage else 1.0))

    base_e, base_d, room_e, room_d = _rooms(budget, weights_encode, weights_decode)
    image = int(24 * px)  # the input as float32, and its padded copy
    band = 4 * MB
    band_work = _BAND_WORKSET * band * dtype_bytes

    exact = _px("exact", px, 1.0)

    # Encoding: VAE encoder, ELIC, the latent codec, one after another.
    def vae(kind: str, kept: int, room: int) -> tuple[int | None, bool, int]:
        """(band elements, spill, bytes): whole if it fits, else banded in RAM, else spilled."""
        whole = _px(kind, px, sc)
        if kept + whole <= room:
            return None, False, whole
        banded = _px(kind + "_band", px, sc)
        if kept + banded <= room:
            return band, False, banded
        return band, True, band_work

    enc_band, enc_spill, vae_e = vae("vae_enc", image, room_e)
    elic_tile, elic = None, _px("elic", px, sc)
    for tile in (1024, 512, 256):
        if image + elic <= room_e:
            break
        elic_tile, elic = tile, _px("elic", (tile + 288) ** 2, sc)
    est_e = base_e + image + max(vae_e, elic, exact)

    # Decoding: exact path, g_s and aux, the UNet (l_T kept), the VAE decoder (output kept),
    # then cropping, colour correction and 8-bit conversion of the output.
    l_t = int(20 * px * sc)
    out = int(12 * px)
    latent_px = px // 64
    unet_tile, unet_batch = None, 1
    # At float32 size whatever the precision: the UNet's full-resolution level, where its
    # activations are largest, stays float32 (models/denoiser.py, float32_modules).
    per_latent = _UNET_PER_LATENT_PX * wd["unet"]
    unet = per_latent * latent_px
    if latent_px > 96 * 96 or l_t + unet > room_d:
        unet_tile, unet = 96, per_latent * 96 * 96
        while unet_batch < 4 and l_t + unet * (unet_batch + 1) <= 0.6 * room_d:
            unet_batch += 1
        unet *= unet_batch
    dec_band, dec_spill, vae_d = vae("vae_dec", out, room_d)
    gs_window, gs = None, _px("gs_aux", px, sc)
    if gs > room_d:
        gs_window, gs = 32, _px("gs_aux", (64 * 64) ** 2, sc)
    post = 3 * out
    est_d = base_d + max(exact, gs, l_t + int(unet), out + vae_d, post)
    if max(est_e, est_d) > budget:
        raise ValueError(f"a {width}x{height} image needs about {max(est_e, est_d) / GB:.1f} GB even in the "
                         f"smallest tiles, over the memory budget ({budget / GB:.1f} GB); raise --max-memory")
    return MemoryPlan(encoder_window=elic_tile, synthesis_window=gs_window, vae_enc_band=enc_band,
                      vae_enc_spill=enc_spill, unet_tile=unet_tile, unet_batch=unet_batch, vae_dec_band=dec_band,
                      vae_dec_spill=dec_spill, estimate_encode=int(est_e), estimate_decode=int(est_d))


_LITE_PER_PX = 900.0  # the default model's encoder or decoder, float32, bytes per image pixel


def plan_lite(height: int, width: int, *, budget: int, weights: int) -> MemoryPlan:
    """The default model: exact windows for its encoder and decoder when the image is large."""
    px = height * width
    usable = int(0.9 * budget)
    base = RUNTIME + weights
    if base > usable:
        raise ValueError(f"the memory budget ({budget / GB:.1f} GB) cannot hold the runtime (needs at least "
                         f"{base / 0.9 / GB:.1f} GB); raise --max-memory")
    room = usable - base
    image = int(36 * px)
    exact = _px("exact", px, 0.25)  # y at 1/16 with a narrow context model
    enc_w = dec_w = None
    work = _LITE_PER_PX * px
    if image + work > room or px > 16 * MB:
        enc_w, dec_w = 512, 32  # 1024 px windows: about 1 GB of activations
        work = _LITE_PER_PX * 1024 * 1024
    est = base + image + max(work, exact)
    return MemoryPlan(encoder_window=enc_w, synthesis_window=dec_w, estimate_encode=int(est), estimate_decode=int(est))


# AEIC (float32 bytes per image pixel; scaled by the dtype and, for the codec, by the
# variant's widths). The analysis transform's activations peak in its first StarBlock
# (4C channels at 1/4 of the pixels, with GELU and product temporaries); g_s's in its last
# level; the halfDecoder has half the SD VAE decoder's channels.
_AEIC_PER_PX = {"g_a": 6.0, "exact": 120.0, "g_s": 400.0, "dec": 1960.0, "dec_band": 1060.0}
_AEIC_ATTN_TILE = 150  # whole-latent attention up to 182 latent px, where AEIC's VAE hook starts to tile


def plan_aeic(height: int, width: int, *, budget: int, dtype_bytes: int, weights_encode: int, weights_decode: int,
              variant: str, widths=None) -> MemoryPlan:
    """AEIC's plan: its UNet tiles as its research code sets them (SE 192 latent px with
    overlap 64, ME 96 with 32; a latent of at most tile^2 px runs whole), and exact windows
    for g_a and g_s, bands for the halfDecoder, when the budget needs them."""
    px = height * width
    sc = dtype_bytes / 4.0
    base_e, base_d, room_e, room_d = _rooms(budget, weights_encode, weights_decode)
    first = widths.analysis[0] if widths is not None else 32
    ga_px = _AEIC_PER_PX["g_a"] * first * sc
    image = int(24 * px)
    exact = int(_AEIC_PER_PX["exact"] * px)
    enc_window, ga = None, int(ga_px * px)
    for tile in (2048, 1024, 512):
        if image + ga <= room_e:
            break
        enc_window, ga = tile, int(ga_px * (tile + 2 * 672) ** 2)
    est_e = base_e + image + max(ga, exact)

    tile, overlap = {"SE": (192, 64), "ME": (96, 32)}[variant]
    latent_px = px // 64
    unet_px = latent_px if latent_px <= tile * tile else tile * tile
    unet = _UNET_PER_LATENT_PX * unet_px
    l_t = int(24 * px * sc)  # l_T and r at 1/8, 576 channels
    while l_t + unet > room_d and tile > 32:  # smaller tiles than AEIC's own only when the budget forces it
        tile, overlap = tile // 2, overlap // 2
        unet_px = min(latent_px, tile * tile)
        unet = _UNET_PER_LATENT_PX * unet_px
    gs_window, gs = None, int(_AEIC_PER_PX["g_s"] * px * sc)
    if gs > room_d:
        gs_window, gs = 32, int(_AEIC_PER_PX["g_s"] * (32 * 32 + 48 * 48) * 1024 * sc)
    out = int(12 * px)
    dec_band, dec_spill, dec = None, False, int(_AEIC_PER_PX["dec"] * px * sc)
    if out + dec > room_d:
        dec_band, dec = 4 * MB, int(_AEIC_PER_PX["dec_band"] * px * sc)
        if out + dec > room_d:
            dec_spill, dec = True, _BAND_WORKSET * 4 * MB * dtype_bytes
    est_d = base_d + max(exact, gs, l_t + int(unet), out + dec, 3 * out)
    if max(est_e, est_d) > budget:
        raise ValueError(f"a {width}x{height} image needs about {max(est_e, est_d) / GB:.1f} GB even in the "
                         f"smallest tiles, over the memory budget ({budget / GB:.1f} GB); raise --max-memory")
    return MemoryPlan(encoder_window=enc_window, synthesis_window=gs_window, unet_tile=tile, unet_overlap=overlap,
                      vae_dec_band=dec_band, vae_dec_spill=dec_spill, attn_tile=_AEIC_ATTN_TILE,
                      estimate_encode=int(est_e), estimate_decode=int(est_d))
