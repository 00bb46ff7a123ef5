"""The library: images in, ``.scdc`` bytes out, and back (tfci-style: bytes, not files).

    import stablecodec
    data = stablecodec.encode("photo.png")            # bytes, default model
    image = stablecodec.decode(data)                   # PIL.Image, model from the header

    codec = stablecodec.Codec(model="lite-2")          # keeps models loaded
    for path in paths:
        blobs.append(codec.encode(path))

This module orchestrates: image I/O (:mod:`imageio`), colour statistics
(:mod:`colorfix`), padding to the model's stride, the model's ``compress``/
``decompress`` (:mod:`models`), and the container (:mod:`container`). Files, folders and
exit codes are the CLI's business.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union


import numpy as np

from . import colorfix, container, imageio, registry, tiling
from .errors import ConfigError, LimitError, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import PIL.Image

ImageLike = Union[str, "os.PathLike[str]", bytes, "PIL.Image.Image", np.ndarray, imageio.LoadedImage]
PathLike = Union[str, "os.PathLike[str]"]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclasses.dataclass
class Loaded:
    """A model ready to run, with its identity for the header."""

    name: str
    code: int
    fingerprint: str  # hex
    model: Any  # a models.contract.CodecModel
    family: registry.Family

    @property
    def header_fingerprint(self) -> int:
        return int(self.fingerprint[:4], 16)


def default_budget(device: str) -> int:
    """9 GB on CUDA (the paper's figure); on CPU, three quarters of this machine's memory."""
    if device == "cuda":
        return 9 * tiling.GB
    try:
        return int(0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 9 * tiling.GB


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX) on this CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
    return device


def resolve_precision(precision: str, device: str, family: registry.Family) -> str:
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        if precision == "fp16" and device == "cpu":
            raise ConfigError("--precision fp16 is not supported on CPU; use bf16 or fp32")
        return precision
    if device == "cuda":
        # Native bf16 only (Ampere and later): with emulation counted (the default of
        # is_bf16_supported), a V100 would say yes and run bf16 convolutions emulated or fail.
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    # Small, bandwidth-bound models (the default one) are as fast and exact in float32 on CPU.
    return "bf16" if family.cpu_reduced_precision and cpu_has_bf16() else "fp32"


_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def place(model, device: str, precision: str) -> None:
    """Move the image-path modules to device/precision; the entropy-parameter path stays exact on CPU."""
    import torch

    model.place(device, getattr(torch, _DTYPES[precision]))


def load(name: str | None = None, *, weights_dir: PathLike | None = None, **files: PathLike | None) -> Loaded:
    """Load a model by registry name, or from explicit released files (CPU, float32).

    ``files``: a family's explicit files (``sd_turbo``, ``checkpoint`` and ``elic`` or
    ``half_decoder``); the family follows from which are given."""
    from . import weights

    if any(v is not None for v in files.values()):
        rec, model, fp = weights.load_explicit(files)
        spec = registry.get(name) if name else _spec_from_checkpoint(rec, Path(files["checkpoint"]))
        if spec is not None and spec.family != rec.name:
            raise ConfigError(f"--model {spec.name} is not a {rec.name} model; drop --model or the weight files")
        return Loaded(spec.name if spec else "custom", spec.code if spec else registry.CUSTOM_CODE, fp, model, rec)
    spec = registry.get(name or registry.default_name())
    where = registry.locate(spec, registry.weights_dir(weights_dir))
    if not where.present:
        raise WeightsError(f"weights of model {spec.name} not found: {where.where}; put them there or pass "
                           f"--weights-dir{' (or ' + spec.record.explicit_flags + ')' if spec.record.explicit else ''}")
    model, fp = weights.load(spec, Path(where.where))
    return Loaded(spec.name, spec.code, fp, model, spec.record)


def _spec_from_checkpoint(family: registry.Family, path: Path):
    from . import weights

    name = weights.loader(family).name_from_checkpoint(path)
    try:
        return registry.get(name) if name else None
    except ConfigError:
        return None


pad_to_multiple = tiling.pad_to_multiple  # where it lived before it was shared with the models


class Codec:
    """Encoder and decoder that keep their models loaded between images.

    ``model``: a registry name (``stablecodec models``) or None for the default; ``bpp``
    picks the registry model closest to a target rate instead. Decoding uses the model
    named in each file's header and loads it when first needed. ``max_memory`` (e.g.
    "9GB") bounds the process's peak memory: tiles are chosen per image to fit it;
    ``tile_plan`` fixes them instead.
    """

    def __init__(self, model: str | None = None, *, bpp: float | None = None, weights_dir: PathLike | None = None,
                 sd_turbo: PathLike | None = None, checkpoint: PathLike | None = None, elic: PathLike | None = None,
                 half_decoder: PathLike | None = None, device: str = "auto", precision: str = "auto",
                 color_fix: bool = True, alpha: str = "refuse", metadata: str = "none",
                 max_memory: str | int | None = None,
                 progress: bool | Callable | None = None, tile_plan: "tiling.MemoryPlan | None" = None,
                 compile: bool = False):
        if model is not None and bpp is not None:
            raise ConfigError("give either a model name or a target bpp, not both")
        if bpp is not None:
            if sd_turbo or checkpoint or elic or half_decoder:
                raise ConfigError("a target bpp picks a named model; it cannot be combined with explicit weight files")
            model = registry.closest(bpp, weights=registry.weights_dir(weights_dir)).name
        if model is not None:
            registry.get(model)
        if alpha not in ("refuse", "drop"):
            raise ConfigError(f"alpha must be 'refuse' or 'drop', got {alpha!r}")
        if metadata not in imageio.METADATA_LEVELS:
            raise ConfigError(f"--metadata must be one of {', '.join(imageio.METADATA_LEVELS)}, got {metadata!r}")
        self.metadata = metadata
        self.model_name = model
        self.weights_dir = weights_dir
        self._explicit = dict(sd_turbo=sd_turbo, checkpoint=checkpoint, elic=elic, half_decoder=half_decoder)
        self._explicit_family = None
        if self._explicit_given():
            from .weights import explicit_family

            self._explicit_family = explicit_family(self._explicit)  # ConfigError naming what is missing
        self._device_arg, self._precision_arg = device, precision
        resolve_device(device)  # validate early
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.color_fix = color_fix
        self.alpha = alpha
        try:
            self.max_memory = tiling.parse_size(max_memory)
        except ValueError as e:
            raise ConfigError(f"--max-memory: {e}") from None
        self.progress = progress
        self.tile_plan = tile_plan  # fixed tiles instead of the planner's (advanced use, tests)
        self.compile = compile
        self._models: dict[str, Loaded] = {}

    # -- models --------------------------------------------------------------------------

    def _explicit_given(self) -> bool:
        return any(v is not None for v in self._explicit.values())

    def get_model(self, name: str | None = None) -> Loaded:
        """The loaded model called ``name`` (default: this codec's encoding model)."""
        key = name or self.model_name or ("custom" if self._explicit_given() else registry.default_name())
        if key not in self._models:
            self._check_budget_before_loading(key)
            if self._explicit_given():
                loaded = load(self.model_name, **self._explicit)
            else:
                loaded = load(key, weights_dir=self.weights_dir)
            device = resolve_device(self._device_arg)
            place(loaded.model, device, resolve_precision(self._precision_arg, device, loaded.family))
            if self.compile and hasattr(loaded.model, "enable_compile"):
                loaded.model.enable_compile()
            self._models[key] = loaded
            if loaded.name != key:
                self._models[loaded.name] = loaded
        return self._models[key]

    @property
    def budget(self) -> int:
        return self.max_memory or default_budget(resolve_device(self._device_arg))

    def _check_budget_before_loading(self, key: str) -> None:
        from .weights import estimate_weight_bytes

        if self._explicit_given():
            enc, _ = estimate_weight_bytes(files=self._explicit)
        else:
            enc, _ = estimate_weight_bytes(spec=registry.get(key), weights_dir=registry.weights_dir(self.weights_dir))
        if tiling.RUNTIME + enc > 0.9 * self.budget:
            raise LimitError(f"the memory budget ({self.budget / tiling.GB:.1f} GB) cannot hold model {key}'s weights "
                             f"(~{(tiling.RUNTIME + enc) / 0.9 / tiling.GB:.1f} GB needed); raise --max-memory")

    def _plan(self, loaded: Loaded, height: int, width: int) -> None:
        """Choose tiles for this image size within the budget (sets ``loaded.model.plan``)."""
        model = loaded.model
        if self.tile_plan is not None:
            model.plan, model.last_plan = self.tile_plan, self.tile_plan.describe() + " (given)"
            return
        try:
            plan = model.plan_memory(height, width, self.budget)
        except ValueError as e:
            raise LimitError(str(e)) from None
        model.plan = plan
        model.last_plan = plan.describe()

    def _progress(self, desc: str, pixels: int):
        """A tqdm counter over tiles for large images (off with quiet or without a terminal)."""
        import sys

        if not self.progress or pixels < 4_000_000:
            return None
        from tqdm import tqdm

        return tqdm(desc=desc, unit="tile", leave=False, file=sys.stderr, dynamic_ncols=True)

    def _model_for_header(self, h: container.Header) -> Loaded:
        spec = registry.by_code(h.model_code)
        if self._explicit_given():
            loaded = self.get_model()
        elif spec is None:
            raise WeightsError(
                f"file was made with custom weights (model code 0x{h.model_code:02x}, fingerprint {h.fingerprint:04x}); "
                "decode it with the same weight files (" + " or ".join(
                    f.explicit_flags for f in registry.FAMILIES.values() if f.explicit) + ")"
            )
        else:
            loaded = self.get_model(spec.name)
        if loaded.code != h.model_code or loaded.header_fingerprint != h.fingerprint:
            made = spec.name if spec else f"custom (0x{h.model_code:02x})"
            raise WeightsError(
                f"file was made with model {made}, weights {h.fingerprint:04x}; the loaded weights are "
                f"{loaded.name}, {loaded.header_fingerprint:04x}: decode with the weights that encoded it"
            )
        return loaded

    # -- coding --------------------------------------------------------------------------

    def encode(self, image: ImageLike, *, notes: list[str] | None = None, model: str | None = None) -> bytes:
        """Compress an image (path, bytes, PIL image, or float/uint8 array HxWxC) to ``.scdc`` bytes.

        ``model``: another registry model than this codec's (loaded once and kept).
        """
        import torch

        img = _as_loaded(image, self.alpha, self.metadata)
        if notes is not None:
            notes.extend(img.notes)
        container.check_size(img.width, img.height)
        loaded = self.get_model(model)
        stats = colorfix.statistics(img.pixels)  # from the full-precision original (16-bit stays 16-bit)
        scale = loaded.model.coded_scale
        pixels = imageio.resize(img.pixels, *container.coded_size(img.width, img.height, scale))
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        x = x.expand(1, 3, -1, -1).contiguous() if img.grey else x.contiguous()
        x.mul_(255.0).round_().div_(255.0)  # code the 8-bit values a user sees
        x = pad_to_multiple(x, loaded.model.stride)
        self._plan(loaded, x.shape[2], x.shape[3])
        bar = self._progress("encode", x.shape[2] * x.shape[3])
        loaded.model.progress = bar.update if bar is not None else None
        try:
            comp = loaded.model.compress(x)
        finally:
            if bar is not None:
                bar.close()
            loaded.model.progress = None
        header = container.Header(model_code=loaded.code, fingerprint=loaded.header_fingerprint, width=img.width,
                                  height=img.height, symbol_crc=comp.symbol_crc, color=stats, grey=img.grey,
                                  metadata=img.metadata or None, scale=scale)
        return container.pack(header, comp.payload)

    def encode_to_size(self, image: ImageLike, max_bytes: int | None = None, *, max_bpp: float | None = None,
                       family: str | None = None, notes: list[str] | None = None) -> "Fit":
        """The highest-rate model whose file fits: ``max_bytes`` for the whole file, or
        ``max_bpp`` for the image's rate (metadata not counted).

        Candidates are the named models whose weights are present (of ``family`` if
        given), ordered by their typical rate. The first encode is the model the typical
        rates predict; each later one, the model predicted by this image's rate relative to
        the typical ones so far, until a fitting model and the next one up are known: two
        encodes when the prediction is right, one when the top model fits. Raises :class:`LimitError`
        naming the smallest file when even the lowest rate does not fit.
        """
        if (max_bytes is None) == (max_bpp is None):
            raise ConfigError("give a target size or a target bpp, one of them")
        img = _as_loaded(image, self.alpha, self.metadata)
        if notes is not None:
            notes.extend(img.notes)
        px = img.width * img.height
        ladder = registry.rate_ladder(registry.weights_dir(self.weights_dir), family)
        if not ladder:
            raise WeightsError("no model's weights are present" + (f" for family {family}" if family else ""))

        def size_of(data: bytes) -> float:
            if max_bytes is not None:
                return len(data)
            return (len(data) - container.peek(data)[0].metadata_size) * 8 / px

        limit = max_bytes if max_bytes is not None else max_bpp
        tried: dict[int, tuple[bytes, float]] = {}

        def fits(i: int) -> bool:
            if i not in tried:
                data = self.encode(img, model=ladder[i].name)
                tried[i] = (data, size_of(data))
            return tried[i][1] <= limit

        budget_bpp = max_bpp if max_bpp is not None else max_bytes * 8 / px

        def predicted(lo: int, hi: int, ratio: float) -> int | None:
            """The highest model in (lo, hi) whose typical rate, scaled by what this image
            showed so far, fits; None if none is predicted to."""
            return max((i for i in range(lo + 1, hi) if ladder[i].bpp * ratio <= budget_bpp), default=None)

        lo, hi = -1, len(ladder)  # ladder[lo] fits, ladder[hi] does not (sentinels)
        probe = predicted(lo, hi, 1.0)
        probe = 0 if probe is None else probe
        while True:
            ok = fits(probe)
            lo, hi = (probe, hi) if ok else (lo, probe)
            if hi - lo <= 1:
                break
            # This image's rate relative to the typical one predicts the answer; a fitting
            # model and the next one up that does not fit settle it (two encodes at best).
            rate = tried[probe][1] if max_bpp is not None else tried[probe][1] * 8 / px
            nxt = predicted(lo, hi, rate / ladder[probe].bpp)
            probe = nxt if nxt is not None else (lo + 1 if ok else hi - 1)
        if lo < 0:
            smallest = min(tried.items(), key=lambda kv: kv[1][1])
            m = ladder[smallest[0]]
            got = (f"{smallest[1][1]:,.0f} bytes" if max_bytes is not None else f"{smallest[1][1]:.4f} bpp")
            want = f"{max_bytes:,} bytes" if max_bytes is not None else f"{max_bpp:g} bpp"
            raise LimitError(f"no model fits {want}: the smallest file is {got} (model {m.name}); "
                             "raise the target or downscale the image")
        return Fit(tried[lo][0], ladder[lo].name, [(ladder[i].name, v[1]) for i, v in sorted(tried.items())])

    def decode(self, data: bytes) -> "PIL.Image.Image":
        """``.scdc`` bytes -> PIL image (8-bit sRGB, or L for a greyscale original).

        Metadata stored in the file (``metadata="exif"``/``"all"`` at encode time) comes
        back in ``image.info``: ``"exif"``, ``"xmp"`` and ``"original_icc_profile"`` (the
        pixels are sRGB; :func:`stablecodec.imageio.encode_image` converts them back to it).
        """
        img = imageio.to_pil(self.decode_array(data))
        meta = container.unpack(data)[0].metadata or {}
        for key, name in (("exif", "exif"), ("xmp", "xmp"), ("icc", "original_icc_profile")):
            if key in meta:
                img.info[name] = meta[key]
        return img

    def decode_array(self, data: bytes) -> np.ndarray:
        """``.scdc`` bytes -> float32 array (H, W, C) in [0, 1]."""
        header, payload = container.unpack(data)
        loaded = self._model_for_header(header)
        stride = loaded.model.stride
        cw, ch = header.coded_size
        hp, wp = -(-ch // stride) * stride, -(-cw // stride) * stride
        self._plan(loaded, hp, wp)
        bar = self._progress("decode", hp * wp)
        loaded.model.progress = bar.update if bar is not None else None
        try:
            x = loaded.model.decompress(payload, header.symbol_crc, (hp, wp),
                                        rules=loaded.model.coding_rules(header.version[0]))
        finally:
            if bar is not None:
                bar.close()
            loaded.model.progress = None
        pix = x[0, :, :ch, :cw].permute(1, 2, 0).cpu().numpy().astype(np.float32)
        if header.grey:  # luma before the resize: one channel to resample, not three
            pix = (pix @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        pix = imageio.resize(pix, header.width, header.height)
        if self.color_fix and header.color is not None and header.width * header.height > loaded.family.color_fix_min_pixels:
            pix = colorfix.apply(pix, header.color)
        return np.clip(pix, 0.0, 1.0)


@dataclasses.dataclass
class Fit:
    """What :meth:`Codec.encode_to_size` chose: the file, its model, and every (model, size) tried."""

    data: bytes
    model: str
    tried: list[tuple[str, float]]


def _as_loaded(image: ImageLike, alpha: str, metadata: str = "none") -> imageio.LoadedImage:
    if isinstance(image, imageio.LoadedImage):
        return image
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise ConfigError(f"image array must be HxW, HxWx1 or HxWx3, got shape {image.shape}")
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        return imageio.LoadedImage(np.clip(arr.astype(np.float32), 0, 1), [])
    return imageio.load(image, alpha=alpha, metadata=metadata)


def encode(image: ImageLike, model: str | None = None, **kwargs: Any) -> bytes:
    """Compress one image with a fresh :class:`Codec` (see there for the options)."""
    return Codec(model, **kwargs).encode(image)


def decode(data: bytes, **kwargs: Any) -> "PIL.Image.Image":
    """Decompress ``.scdc`` bytes to a PIL image with the model named in the header."""
    return Codec(**kwargs).decode(data)


def info(data: bytes) -> dict[str, Any]:
    """What a ``.scdc`` file says about itself, without loading a model."""
    header, crc_ok = container.peek(data)
    spec = registry.by_code(header.model_code)
    image_bytes = len(data) - header.metadata_size
    mu = sigma = None
    if header.color is not None:
        m, s = colorfix.dequantize(header.color)
        mu, sigma = [round(float(v), 5) for v in m], [round(float(v), 5) for v in s]
    return {
        "format_version": f"{header.version[0]}.{header.version[1]}",
        "model": spec.name if spec else f"custom (0x{header.model_code:02x})",
        "fingerprint": f"{header.fingerprint:04x}",
        "width": header.width,
        "height": header.height,
        "coded_size": list(header.coded_size),  # the payload's image, resampled to width x height
        "greyscale": header.grey,
        "bytes": len(data),
        "bpp": round(image_bytes * 8 / (header.width * header.height), 6),  # the image's: without metadata
        "header_bytes": header.header_bytes,
        "metadata_bytes": header.metadata_size,
        "metadata": imageio.metadata_summary(header.metadata) if header.metadata else None,
        "color_mean": mu,
        "color_std": sigma,
        "crc_ok": crc_ok,
    }
