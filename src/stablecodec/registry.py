"""Named models: what each name means, its header code and where its weights live.

No torch import: ``stablecodec models`` and ``info`` answer without loading a network.
A ``.scdc`` header stores the model's one-byte code (never reused for another model) and
16 bits of its weights' fingerprint; decoding looks the code up here.

Families (:data:`FAMILIES`: one record each, which the rest of the code asks instead of
testing names):

* ``lite-N`` -- the default model, shipped in the package (``weights/lite.safetensors``).
  One network, several rates; bpp measured on the val photos (``docs/benchmarks.md``).
* ``ft2`` ... ``ft32``, ``base`` -- the released StableCodec checkpoints; bpp on Kodak as
  their README reports. They need SD-Turbo (diffusers folder), ``stablecodec_<name>.pkl``
  and ``elic_official.pth`` in the weights directory, or one file made by
  ``stablecodec convert`` (``stablecodec-<name>.safetensors``).
* ``aeic-se-ftN``, ``aeic-me-ftN`` -- AEIC's shallow- and moderate-encoder models; bpp on
  Kodak from its results files. They need SD-Turbo's ``unet/``, ``AEIC_{SE,ME}_ftN.pkl``
  and AdcSR's ``halfDecoder.ckpt``, or ``aeic-<name>.safetensors``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .errors import ConfigError

LITE_FILE = "lite.safetensors"
SD_TURBO_DIR = "sd-turbo"
ELIC_FILE = "elic_official.pth"
HALF_DECODER_FILE = "halfDecoder.ckpt"
CUSTOM_CODE = 0xFF

_SD_TURBO_HUB = "stabilityai/sd-turbo"
_SD_TURBO_LICENCE = "Stability AI Non-Commercial Research Community License (sai-nc-community)"
_STABLECODEC_DRIVE = "https://drive.google.com/drive/folders/1itiVVAPSTATGPcHLp_bLI9r9Qi3YcM12"
_AEIC_DRIVE = "https://github.com/LuizScarlet/AEIC (README: Google Drive folder of AEIC_SE_*.pkl / AEIC_ME_*.pkl)"


@dataclasses.dataclass(frozen=True)
class ReleasedFile:
    """One file a model needs, relative to the weights directory, and where it is published."""

    path: str
    hub: tuple[str, str] | None = None  # (repository, file) on the Hugging Face Hub
    page: str | None = None  # where a person downloads it when no program can (a Google Drive folder)
    licence: str = ""


def _sd_turbo(*subfolders: str) -> tuple[ReleasedFile, ...]:
    """SD-Turbo's files in diffusers layout, only the sub-folders a family reads."""
    files = {
        "unet": ("unet/config.json", "unet/diffusion_pytorch_model.safetensors"),
        "vae": ("vae/config.json", "vae/diffusion_pytorch_model.safetensors"),
        "scheduler": ("scheduler/scheduler_config.json",),
        "text_encoder": ("text_encoder/config.json", "text_encoder/model.safetensors"),
        "tokenizer": ("tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
                      "tokenizer/vocab.json"),
    }
    return tuple(ReleasedFile(f"{SD_TURBO_DIR}/{f}", hub=(_SD_TURBO_HUB, f), licence=_SD_TURBO_LICENCE)
                 for sub in subfolders for f in files[sub])


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything about a model family that can be said without loading a network.

    ``loader``: the module (``stablecodec.weights.<name>``) with ``load(spec, path)``,
    ``load_explicit(**files)``, ``estimate_bytes(...)`` and ``convert(...)``;
    ``explicit``: the released files a user may name on the command line instead of a
    weights directory (Codec keyword, what it is); ``cpu_reduced_precision``: whether
    ``--precision auto`` picks bf16 on CPUs with native bf16 (large networks) or stays
    float32 (small, bandwidth-bound ones); ``color_fix_min_pixels``: the colour fix is
    applied to decoded images of more pixels than this (AEIC: only above 768^2, as its
    research code does).
    """

    name: str
    description: str
    codes: range
    loader: str
    explicit: tuple[tuple[str, str], ...] = ()
    cpu_reduced_precision: bool = False
    color_fix_min_pixels: int = 0
    shared: tuple[ReleasedFile, ...] = ()  # files every model of the family needs
    checkpoint_pattern: str = ""  # its own checkpoint, with {name} for the rate point
    checkpoint_page: str | None = None
    checkpoint_licence: str = ""
    converted_pattern: str = "{name}.safetensors"  # what `stablecodec convert` writes

    def checkpoint(self, spec: "ModelSpec") -> str | None:
        return self.checkpoint_pattern.format(**spec.fields) if self.checkpoint_pattern else None

    def released_files(self, spec: "ModelSpec") -> tuple[ReleasedFile, ...]:
        own = self.checkpoint(spec)
        mine = (ReleasedFile(own, page=self.checkpoint_page, licence=self.checkpoint_licence),) if own else ()
        return mine + self.shared

    def converted(self, spec: "ModelSpec") -> str:
        return self.converted_pattern.format(**spec.fields)

    @property
    def explicit_flags(self) -> str:
        flags = ["--" + k.replace("_", "-") for k, _ in self.explicit]
        return ", ".join(flags[:-1]) + " and " + flags[-1] if len(flags) > 1 else "".join(flags)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("lite", "default model, CPU, no diffusion", range(0x01, 0x20), "lite", converted_pattern=LITE_FILE),
    Family("stablecodec", "StableCodec (ICCV 2025), released weights", range(0x20, 0x40), "stablecodec",
           explicit=(("sd_turbo", "SD-Turbo folder (diffusers layout)"), ("checkpoint", "stablecodec_ft*.pkl"),
                     ("elic", "elic_official.pth")),
           cpu_reduced_precision=True,
           shared=_sd_turbo("unet", "vae", "scheduler", "text_encoder", "tokenizer")
           + (ReleasedFile(ELIC_FILE, page=_STABLECODEC_DRIVE, licence="MIT (StableCodec release)"),),
           checkpoint_pattern="stablecodec_{name}.pkl", checkpoint_page=_STABLECODEC_DRIVE,
           checkpoint_licence="MIT (StableCodec release)", converted_pattern="stablecodec-{name}.safetensors"),
    Family("aeic", "AEIC (arXiv 2512.12229), released weights", range(0x40, 0x60), "aeic",
           explicit=(("sd_turbo", "SD-Turbo folder (only unet/ is read)"), ("checkpoint", "AEIC_{SE,ME}_ft*.pkl"),
                     ("half_decoder", "halfDecoder.ckpt (AdcSR)")),
           cpu_reduced_precision=True, color_fix_min_pixels=768 * 768,
           shared=_sd_turbo("unet") + (ReleasedFile(HALF_DECODER_FILE, hub=("Guaishou74851/AdcSR",
                                                                             "weight/pretrained/halfDecoder.ckpt"),
                                                    licence="AdcSR release (no licence stated for the weights; "
                                                            "derived from the SD 2.1 VAE, CreativeML Open RAIL++-M)"),),
           checkpoint_pattern="AEIC_{variant}_ft{lam}.pkl", checkpoint_page=_AEIC_DRIVE,
           checkpoint_licence="MIT (AEIC release)"),
)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    code: int
    family: str  # a key of FAMILIES
    bpp: float  # typical bits per pixel
    rate: int | None = None  # lite: rate index inside the weights file
    description: str = ""
    variant: str = ""  # AEIC: "SE" or "ME"
    lam: int = 0  # AEIC: the fine-tuning lambda in the checkpoint's name

    @property
    def fields(self) -> dict[str, object]:
        return {"name": self.name, "variant": self.variant, "lam": self.lam}

    @property
    def record(self) -> Family:
        return FAMILIES[self.family]

    @property
    def checkpoint(self) -> str | None:
        return self.record.checkpoint(self)

    @property
    def converted(self) -> str:
        return self.record.converted(self)


# Mean bpp on the get-photos kodak/ crops (768x512) by `stablecodec eval`
# (docs/benchmarks.md); updated when the shipped weights change.
_LITE_BPP = (0.0049, 0.0087, 0.0173, 0.0311, 0.0605)
_RELEASED = (("ft2", 0.035), ("ft3", 0.029), ("ft4", 0.025), ("ft6", 0.020), ("ft8", 0.017),
             ("ft12", 0.013), ("ft16", 0.010), ("ft24", 0.008), ("ft32", 0.005))
# AEIC's results/*.txt, Kodak, ascending bpp; larger lambda -> lower rate (ft32 lowest),
# as its fine-tuning config names the checkpoints (../shared/reference/aeic-network.md).
_AEIC = {"SE": (0.00410, 0.00791, 0.01433, 0.02407, 0.03702), "ME": (0.00564, 0.01011, 0.01684, 0.02602, 0.03760)}
_AEIC_LAMBDAS = (32, 16, 8, 4, 2)

MODELS: tuple[ModelSpec, ...] = (
    *(ModelSpec(f"lite-{i + 1}", 0x01 + i, "lite", bpp, rate=i, description="default model, CPU, no diffusion")
      for i, bpp in enumerate(_LITE_BPP)),
    ModelSpec("base", 0x20, "stablecodec", 0.035, description="StableCodec before fine-tuning"),
    *(ModelSpec(name, 0x21 + i, "stablecodec", bpp, description="StableCodec, released weights")
      for i, (name, bpp) in enumerate(_RELEASED)),
    *(ModelSpec(f"aeic-{v.lower()}-ft{lam}", base + i, "aeic", bpp, variant=v, lam=lam,
                description=f"AEIC-{v} ({'shallow' if v == 'SE' else 'moderate'} encoder), released weights")
      for v, base in (("SE", 0x40), ("ME", 0x48)) for i, (lam, bpp) in enumerate(zip(_AEIC_LAMBDAS, _AEIC[v]))),
)
assert all(m.code in FAMILIES[m.family].codes for m in MODELS)

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
    """Where this model's weights are, or which file is missing and where it was looked for.

    A converted file (``stablecodec convert``) is preferred; else the released files."""
    if spec.family == "lite":
        for d in (weights, bundled_dir()):
            if (d / LITE_FILE).is_file():
                return Availability(True, str(d / LITE_FILE))
        return Availability(False, f"{LITE_FILE} not found in {weights} or {bundled_dir()}")
    conv = weights / spec.converted
    if conv.is_file():
        return Availability(True, str(conv))
    tops = dict.fromkeys(f.path.split("/")[0] for f in spec.record.released_files(spec))  # sd-turbo/ as one entry
    missing = [str(weights / p) for p in tops if not (weights / p).exists()]
    if missing:
        return Availability(False, f"missing {', '.join(missing)} (or {conv}; `stablecodec download {spec.name}` fetches them)")
    return Availability(True, str(weights / spec.checkpoint))
