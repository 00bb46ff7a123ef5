"""Loading weights, in one place: one module per model family over shared safe-file helpers.

* :mod:`.common` -- safe pickles and safetensors, fingerprints, LoRA merging, diffusers
  folders, stored entropy tables;
* :mod:`.stablecodec`, :mod:`.aeic`, :mod:`.lite` -- each family's released and converted
  layouts, named by its registry record (``registry.Family.loader``), with the same entry
  points: ``load(spec, path)``, ``load_explicit(**files)``, ``estimate_bytes(...)``,
  ``convert(...)`` and ``check_file(path)``.

The functions below dispatch on the family record; nothing else in the package needs to
know which family it holds.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from .. import registry
from ..errors import ConfigError, WeightsError
from .common import FORMAT, fingerprint, header_fingerprint, load_pickle, merge_lora  # noqa: F401  (API)


def loader(family: str | registry.Family) -> ModuleType:
    """The loader module of a family."""
    rec = family if isinstance(family, registry.Family) else registry.FAMILIES[family]
    return importlib.import_module(f"{__name__}.{rec.loader}")


def load(spec: registry.ModelSpec, path: Path):
    """A named model from the file ``registry.locate`` found: (model, fingerprint hex)."""
    return loader(spec.record).load(spec, Path(path))


def explicit_family(files: dict[str, object]) -> registry.Family:
    """The family whose released files these are (``--sd-turbo --checkpoint --elic`` for
    StableCodec, ``--sd-turbo --checkpoint --half-decoder`` for AEIC); ConfigError naming
    what is missing."""
    given = [k for k, v in files.items() if v is not None]
    fams = [f for f in registry.FAMILIES.values() if f.explicit and set(given) <= {k for k, _ in f.explicit}]
    complete = [f for f in fams if all(files.get(k) is not None for k, _ in f.explicit)]
    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    if len(complete) == 1:
        return complete[0]
    if not fams:
        raise ConfigError(f"{', '.join(flag(k) for k in given)} do not belong to one model family; give "
                          + " or ".join(f"{f.explicit_flags} ({f.name})" for f in registry.FAMILIES.values() if f.explicit))
    options = " or ".join(f.explicit_flags + (f" ({f.name})" if len(fams) > 1 else "") for f in fams)
    raise ConfigError(f"{options} must be given together (got only {', '.join(flag(k) for k in given)})")


def load_explicit(files: dict[str, object]):
    """A model from explicitly named released files: (family record, model, fingerprint hex)."""
    rec = explicit_family(files)
    model, fp = loader(rec).load_explicit(**{k: files[k] for k, _ in rec.explicit})
    return rec, model, fp


def estimate_weight_bytes(spec: registry.ModelSpec | None = None, weights_dir: Path | None = None,
                          files: dict[str, object] | None = None) -> tuple[int, int]:
    """(encode, decode) bytes of weights a model will hold, from its files, before loading it."""
    if spec is not None:
        where = registry.locate(spec, Path(weights_dir))
        if not where.present:
            return 0, 0  # the loader reports what is missing
        return loader(spec.record).estimate_bytes(Path(where.where))
    rec = explicit_family(files or {})
    return loader(rec).estimate_bytes(None, **{k: files[k] for k, _ in rec.explicit})


def convert(sd_turbo: Path, checkpoint: Path, elic: Path, out: Path, name: str) -> str:
    """StableCodec's released files -> one safetensors file (the first family's signature, kept)."""
    return loader("stablecodec").convert(sd_turbo, checkpoint, elic, out, name)


def convert_model(spec: registry.ModelSpec, files: dict[str, object], out: Path) -> str:
    """Any family's released files -> its one converted file. Returns the fingerprint."""
    mod = loader(spec.record)
    if not hasattr(mod, "convert"):
        raise WeightsError(f"model {spec.name} has nothing to convert (its weights ship with stablecodec)")
    return mod.convert(**{k: Path(files[k]) for k, _ in spec.record.explicit}, out=Path(out), name=spec.name)


def load_released(sd_turbo, checkpoint, elic):
    """StableCodec's released files (kept for callers of the first layout)."""
    return loader("stablecodec").load_released(Path(sd_turbo), Path(checkpoint), Path(elic))


def load_converted(path: Path):
    return loader("stablecodec").load_converted(Path(path))


def save_lite(*args, **kwargs):
    return loader("lite").save_lite(*args, **kwargs)


def load_lite(path: Path):
    return loader("lite").load_lite(Path(path))
