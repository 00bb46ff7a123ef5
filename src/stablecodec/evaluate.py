"""Rate-distortion evaluation: the loop behind ``stablecodec eval``.

It codes every image with :class:`stablecodec.api.Codec` (the library's own pipeline,
so the rate is the real ``.scdc`` file size, header included) and each classic
baseline at the matched rate (:mod:`stablecodec.baselines`), measures them
(:mod:`stablecodec.metrics`) and returns a :class:`~stablecodec.reports.Report`
(rendered by :mod:`stablecodec.reports`).

Click, exit codes and progress bars are :mod:`stablecodec.cli_eval`'s business; every
failure a user can cause is raised as a :class:`~stablecodec.errors.StableCodecError`.
See ``docs/evaluation.md`` for the procedures in prose.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import container, imageio, registry, tiling
from .baselines import BASELINES, SCALES, Baseline, MatchedRate, bpp_of
from .errors import ConfigError, StableCodecError, WeightsError
from .metrics import (
    LearnedMetrics,
    as_uint8_rgb,
    extract_patches,
    frechet_distance,
    kernel_inception_distance,
    ms_ssim,
    psnr,
)
from .reports import Report, Result, summarize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


@dataclasses.dataclass
class ModelRequest:
    name: str
    target_bpp: float | None  # the --bpp target that chose it
    explicit: bool  # named with --model: missing weights are then an error, not a note


def find_images(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[tuple[Path, str]]:
    """(path, name for the report) for every image in the folders and files given."""
    found: list[tuple[Path, str]] = []
    for src in inputs:
        p = Path(src)
        if not p.exists():
            raise ConfigError(f"{src}: no such file or folder")
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(it):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                    found.append((f, f.relative_to(p).as_posix()))
        else:
            found.append((p, p.name))
    if not found:
        raise ConfigError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, inputs))}"
                          + ("" if recursive else "; use -r for subfolders"))
    return found


def plan_models(names: Sequence[str], targets: Sequence[float], family: str = "lite") -> list[ModelRequest]:
    """--model names (``none`` for no model), else the model closest to each --bpp, else the default."""
    names = [n.strip() for name in names for n in name.split(",") if n.strip()]
    if "none" in names:
        if len(names) > 1:
            raise ConfigError("--model none cannot be combined with model names")
        return []
    if names:
        out = []
        for n in dict.fromkeys(names):
            registry.get(n)
            out.append(ModelRequest(n, None, True))
        return out
    if targets:
        chosen: dict[str, ModelRequest] = {}
        for t in targets:
            spec = registry.closest(t, family=family)
            if spec.name == "base":
                # "base" (before fine-tuning) ties with ft2 at 0.035 bpp; the fine-tuned model is the one meant.
                spec = min((m for m in registry.MODELS if m.family == family),
                           key=lambda m: (abs(math.log(m.bpp / t)), m.name == "base"))
            chosen.setdefault(spec.name, ModelRequest(spec.name, t, False))
        return list(chosen.values())
    return [ModelRequest(registry.default_name(), None, False)]


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


class Evaluation:
    """Everything ``stablecodec eval`` runs, configured once; :meth:`run` does the work.

    ``note`` receives one-line notes (missing weights of an implicit model, metrics that
    are not installed, an unsupported default baseline) as soon as they are known.
    """

    def __init__(self, *, models: Sequence[str] = (), targets: Sequence[float] = (),
                 baselines: Sequence[str] | None = None, family: str = "lite",
                 weights_dir: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto",
                 max_memory: str | int | None = None, alpha: str = "refuse", learned_metrics: bool = True,
                 note: Callable[[str], None] | None = None) -> None:
        from . import api

        self.notes: list[str] = []
        self._note_cb = note
        for t in targets:
            if not (t > 0 and math.isfinite(t)):
                raise ConfigError(f"--bpp targets must be positive, got {t}")
        self.requests = plan_models(models, targets, family)
        self.weights_dir = weights_dir
        self.device = api.resolve_device(device)
        if precision not in api.PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(api.PRECISIONS)}, got {precision!r}")
        try:
            tiling.parse_size(max_memory)
        except ValueError as e:
            raise ConfigError(f"--max-memory: {e}") from None
        self.precision, self.max_memory, self.alpha = precision, max_memory, alpha
        if alpha not in ("refuse", "drop"):
            raise ConfigError(f"alpha must be 'refuse' or 'drop', got {alpha!r}")
        self.models: list[ModelRequest] = []
        wd = registry.weights_dir(weights_dir)
        for req in self.requests:
            where = registry.locate(registry.get(req.name), wd)
            if where.present:
                self.models.append(req)
            elif req.explicit:
                raise WeightsError(f"weights of model {req.name} not found: {where.where}; "
                                   "put them there or pass --weights-dir")
            else:
                self._note(f"model {req.name} skipped: its weights are not installed ({where.where})")
        self.baselines = self._plan_baselines(baselines)
        # Baselines are matched to --bpp, else to the typical rates of the models asked for.
        self.targets = sorted(set(targets)) if targets else sorted({registry.get(r.name).bpp for r in self.requests})
        if self.baselines and not self.targets:
            raise ConfigError("baselines need target rates: give --bpp (or a --model)")
        self.metrics = LearnedMetrics(self.device, enabled=learned_metrics)
        for n in self.metrics.notes:
            self._note(n)

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        if self._note_cb:
            self._note_cb(msg)

    def _plan_baselines(self, names: Sequence[str] | None) -> list[Baseline]:
        explicit = names is not None
        names = list(BASELINES) if names is None else [n.strip().lower() for n in names if n.strip()]
        if names == ["none"]:
            return []
        out = []
        for n in dict.fromkeys(names):
            if n not in BASELINES:
                raise ConfigError(f"unknown baseline {n!r}; known: {', '.join(BASELINES)}, or none")
            b = BASELINES[n]
            if b.supported():
                out.append(b)
            elif explicit:
                raise ConfigError(f"this Pillow has no {b.format} support (PIL.features); drop {n} from --baselines")
            else:
                self._note(f"baseline {n} skipped: this Pillow has no {b.format} support")
        return out

    @property
    def settings(self) -> dict[str, Any]:
        return {"models": [r.name for r in self.models], "skipped_models": [r.name for r in self.requests
                                                                           if r not in self.models],
                "targets_bpp": self.targets, "baselines": [b.name for b in self.baselines],
                "device": self.device, "precision": self.precision,
                "scales": [s for s, _ in SCALES], "baseline_options": {b.name: dict(b.options) for b in self.baselines}}

    def units(self, n_images: int) -> int:
        """Progress units: one per image x (model or baseline x target)."""
        return n_images * (len(self.models) + len(self.baselines) * len(self.targets))

    # -- running -------------------------------------------------------------------------

    def run(self, images: Sequence[tuple[Path, str]], *, advance: Callable[[int], Any] | None = None,
            error: Callable[[str], None] | None = None) -> Report:
        """Code every image with every model and baseline; never raises for one bad image.

        Per-image failures go to ``error`` (and the report); Ctrl-C stops early with
        ``interrupted`` set and what was measured so far.
        """
        advance = advance or (lambda n: None)
        errors: list[str] = []
        failed_images: set[str] = set()
        results: list[Result] = []
        # FID/KID are dataset-level: Inception features of every patch, per codec and rate.
        real_feats: dict[str, np.ndarray] = {}
        fake_feats: dict[str, list[np.ndarray]] = {}

        def fail(msg: str) -> None:
            errors.append(msg)
            if error:
                error(msg)

        def load(path: Path, name: str) -> imageio.LoadedImage | None:
            if name in failed_images:
                return None
            try:
                return imageio.load(path, alpha=self.alpha)
            except StableCodecError as e:
                failed_images.add(name)
                fail(str(e) if str(e).startswith(str(path)) else f"{path}: {e}")
                return None

        def measure(res: Result, name: str, reference: np.ndarray, rec: np.ndarray) -> None:
            res.psnr = psnr(reference, rec)
            res.ms_ssim = ms_ssim(reference, rec)
            if math.isnan(res.ms_ssim):
                res.note = "; ".join(filter(None, [res.note, "MS-SSIM undefined below 11 px"]))
            if self.metrics.lpips:
                res.lpips = self.metrics.lpips(reference, rec)
            if self.metrics.dists:
                res.dists = self.metrics.dists(reference, rec)
            if self.metrics.features:
                if name not in real_feats:
                    real_feats[name] = self.metrics.features(extract_patches(reference))
                fake_feats.setdefault(res.group, []).append(self.metrics.features(extract_patches(rec)))

        interrupted = False
        try:
            for req in self.models:
                # Rows are appended as they are measured, so Ctrl-C keeps everything done so far.
                self._run_model(req, images, load, measure, fail, advance, results)
            if self.baselines and self.targets:
                for path, name in images:
                    img = load(path, name)
                    if img is None:
                        advance(len(self.baselines) * len(self.targets))
                        continue
                    self._run_baselines(img, name, measure, fail, advance, results)
        except KeyboardInterrupt:
            interrupted = True
        dataset: dict[str, dict[str, float]] = {}
        if self.metrics.features and real_feats:
            real = np.concatenate(list(real_feats.values()))
            for group, feats in fake_feats.items():
                fake = np.concatenate(feats)
                kid, kid_std = kernel_inception_distance(real, fake)
                dataset[group] = {"fid": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std,
                                  "patches": len(fake)}
            if len(real) == 0:
                self._note("FID/KID: no image has a 256x256 patch; not computed")
        return Report([n for _, n in images], results, summarize(results, dataset), list(self.notes), errors,
                      self.settings, self.metrics.available, interrupted)

    def _run_model(self, req: ModelRequest, images: Sequence[tuple[Path, str]], load: Callable, measure: Callable,
                   fail: Callable[[str], None], advance: Callable[[int], Any], out: list[Result]) -> None:
        from .api import Codec

        spec = registry.get(req.name)
        try:
            codec = Codec(req.name, weights_dir=self.weights_dir, device=self.device, precision=self.precision,
                          max_memory=self.max_memory, alpha=self.alpha, progress=False)
            codec.get_model()
        except StableCodecError as e:
            fail(f"model {req.name}: {e}")
            advance(len(images))
            return
        except MemoryError:
            fail(f"model {req.name}: out of memory while loading; lower --max-memory or use a smaller model")
            advance(len(images))
            return
        try:
            for path, name in images:
                img = load(path, name)
                if img is not None:
                    try:
                        data = codec.encode(img)
                        rec = codec.decode_array(data)
                    except StableCodecError as e:
                        fail(f"{path}: model {req.name}: {e}")
                    except MemoryError:
                        fail(f"{path}: model {req.name}: out of memory; lower --max-memory or downscale the image")
                    else:
                        res = Result(name, img.width, img.height, spec.family, req.name, req.target_bpp,
                                     bpp_of(len(data), img.width * img.height), len(data),
                                     scale=container.peek(data)[0].scale / container.FULL_SCALE,
                                     group=req.name)
                        measure(res, name, as_uint8_rgb(img.pixels), as_uint8_rgb(rec))
                        out.append(res)
                advance(1)
        finally:
            # A StableCodec model holds gigabytes: release it before the next one loads.
            del codec
            gc.collect()
            if self.device == "cuda":
                import torch

                torch.cuda.empty_cache()

    def _run_baselines(self, img: imageio.LoadedImage, name: str, measure: Callable, fail: Callable[[str], None],
                       advance: Callable[[int], Any], out: list[Result]) -> None:
        search = MatchedRate(imageio.to_pil(img.pixels))
        for codec in self.baselines:
            for target in self.targets:
                try:
                    m = search.search(codec, target)
                except (OSError, ValueError) as e:  # Pillow refusing an image it cannot encode
                    fail(f"{name}: {codec.name} at {target:g} bpp: {str(e)[:120]}")
                    advance(1)
                    continue
                res = Result(name, img.width, img.height, codec.name, m.setting, target, m.bpp, m.bytes,
                             scale=_nan_to_none(m.scale_factor), quality=m.quality, note=m.note,
                             group=f"{codec.name}@{target:g}")
                if m.reconstruction is not None:
                    measure(res, name, search.reference, m.reconstruction)
                out.append(res)
                advance(1)


