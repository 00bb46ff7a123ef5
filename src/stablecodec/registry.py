"""Named models: what each name means, its header code and where its weights live.

No torch import: ``stablecodec models`` and ``info`` answer without loading a network.
A ``.scdc`` header stores the model's one-byte code (never reused for another model) and
16 bits of its weights' fingerprint; decoding looks the code up here.

Families:

* ``lite-N`` -- the default model, shipped in the package (``weights/lite.safetensors``).
  One network, several rates; bpp measured on the val photos (``docs/benchmarks.md``).
* ``ft2`` ... ``ft32``, ``base`` -- the released StableCodec checkpoints; bpp on Kodak as
  their README reports. They need SD-Turbo (diffusers folder), ``stablecodec_<name>.pkl``
  and ``elic_official.pth`` in the weights directory, or one file made by
  ``stablecodec convert`` (``stablecodec-<name>.safetensors``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .errors import ConfigError

LITE_FILE = "lite.safetensors"
SD_TURBO_DIR = "sd-turbo"
ELIC_FILE = "elic_official.pth"
CUSTOM_CODE = 0xFF


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    code: int
    family: str  # "lite" or "stablecodec"
    bpp: float  # typical bits per pixel
    rate: int | None = None  # lite: rate index inside the weights file
    description: str = ""

    @property
    def checkpoint(self) -> str | None:
        return f"stablecodec_{self.name}.pkl" if self.family == "stablecodec" else None

    @property
    def converted(self) -> str:
        return LITE_FILE if self.family == "lite" else f"stablecodec-{self.name}.safetensors"


# Mean bpp on the get-photos kodak/ crops (768x512) by `stablecodec eval`
# (docs/benchmarks.md); updated when the shipped weights change.
_LITE_BPP = (0.0144, 0.0198, 0.0321, 0.0512, 0.0831)
_RELEASED = (("ft2", 0.035), ("ft3", 0.029), ("ft4", 0.025), ("ft6", 0.020), ("ft8", 0.017),
             ("ft12", 0.013), ("ft16", 0.010), ("ft24", 0.008), ("ft32", 0.005))

MODELS: tuple[ModelSpec, ...] = (
    *(ModelSpec(f"lite-{i + 1}", 0x01 + i, "lite", bpp, rate=i, description="default model, CPU, no diffusion")
      for i, bpp in enumerate(_LITE_BPP)),
    ModelSpec("base", 0x20, "stablecodec", 0.035, description="StableCodec before fine-tuning"),
    *(ModelSpec(name, 0x21 + i, "stablecodec", bpp, description="StableCodec, released weights")
      for i, (name, bpp) in enumerate(_RELEASED)),
)

DEFAULT_MODEL = "lite-3"

_BY_NAME = {m.name: m for m in MODELS}
_BY_CODE = {m.code: m for m in MODELS}


def get(name: str) -> ModelSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(_BY_NAME)}") from None


def by_code(code: int) -> ModelSpec | None:
    return _BY_CODE.get(code)


def default_name() -> str:
    """$STABLECODEC_MODEL if set, else the bundled default."""
    name = os.environ.get("STABLECODEC_MODEL") or DEFAULT_MODEL
    get(name)
    return name


def closest(bpp: float, family: str | None = None, weights: Path | None = None) -> ModelSpec:
    """The model whose typical rate is closest to ``bpp`` (in log scale), never "base".

    With ``weights`` (a weights directory), models whose weights are present there (or
    bundled) are preferred; if none is, the closest of all is returned and loading it
    says what is missing.
    """
    import math

    if not bpp > 0:
        raise ConfigError(f"--bpp must be positive, got {bpp}")
    pool = [m for m in MODELS if (family is None or m.family == family) and m.name != "base"]
    if weights is not None:
        present = [m for m in pool if locate(m, Path(weights)).present]
        pool = present or pool
    return min(pool, key=lambda m: abs(math.log(m.bpp / bpp)))


def family(name: str) -> str:
    """A model family's name, checked."""
    names = sorted({m.family for m in MODELS})
    if name not in names:
        raise ConfigError(f"unknown model family {name!r}; known families: {', '.join(names)}")
    return name


def rate_ladder(weights: Path, family: str | None = None) -> list[ModelSpec]:
    """Named models whose weights are present (of ``family``), by typical rate, lowest first."""
    pool = [m for m in MODELS if m.name != "base" and (family is None or m.family == family)]
    return sorted((m for m in pool if locate(m, Path(weights)).present), key=lambda m: m.bpp)


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """--weights-dir, else $STABLECODEC_HOME, else the platform's user data directory."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("STABLECODEC_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("stablecodec", appauthor=False))


def bundled_dir() -> Path:
    """The weights folder installed with the package."""
    from importlib import resources

    return Path(str(resources.files("stablecodec.bundled")))


@dataclasses.dataclass(frozen=True)
class Availability:
    present: bool
    where: str  # the file that would be loaded, or what is missing


def locate(spec: ModelSpec, weights: Path) -> Availability:
    """Where this model's weights are, or which file is missing and where it was looked for."""
    if spec.family == "lite":
        for d in (weights, bundled_dir()):
            if (d / LITE_FILE).is_file():
                return Availability(True, str(d / LITE_FILE))
        return Availability(False, f"{LITE_FILE} not found in {weights} or {bundled_dir()}")
    conv = weights / spec.converted
    if conv.is_file():
        return Availability(True, str(conv))
    missing = [str(weights / p) for p in (SD_TURBO_DIR, spec.checkpoint, ELIC_FILE) if not (weights / p).exists()]
    if missing:
        return Availability(False, f"missing {', '.join(missing)} (or {conv})")
    return Availability(True, str(weights / spec.checkpoint))
