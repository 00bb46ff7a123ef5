"""The default model's one file (``weights/lite.safetensors``, shipped in the package)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..container import FULL_SCALE
from ..errors import WeightsError
from ..models.latent_codec import GAIN_NAMES
from .common import FORMAT, _read_safetensors, _set_tables, _tables_state, fingerprint, load_strict, save_atomic


def save_lite(net, path: Path, rates: list[dict], fingerprint_hex: str | None = None, half: bool = True,
              training: dict | None = None, trained_gains: dict[str, torch.Tensor] | None = None) -> str:
    """Write the default network (fp16 weights, tables, rate names) to one safetensors file.

    ``training`` (e.g. the steps behind the weights) is stored as metadata for the next
    training part; it is not part of the fingerprint, which covers the coding tensors.
    ``trained_gains`` (the training rates' gain vectors, of which the file's rate points
    are interpolations) are stored in float32 as ``training.<name>`` for the same reason:
    a part started from this file resumes at its trained rates (scripts/train_default.py)
    instead of re-learning them. Decoding never reads them.
    """
    import dataclasses


    sd = {f"lite.{k}": (v.half() if half and v.is_floating_point() else v).detach().contiguous()
          for k, v in net.state_dict().items()}
    fp = fingerprint_hex or fingerprint(sd)
    # Tables from the weights as stored (fp16-rounded), so loading and exporting agree.
    tmp_net = load_lite_tensors(sd, json.dumps(dataclasses.asdict(net.cfg)))
    tensors = {**sd, **_tables_state(tmp_net.codec)}
    meta = {"format": FORMAT, "family": "lite", "fingerprint": fp, "config": json.dumps(dataclasses.asdict(net.cfg)),
            "rates": json.dumps(rates)}
    if training:
        meta["training"] = json.dumps(training)
    for name, v in (trained_gains or {}).items():
        if name not in GAIN_NAMES:
            raise ValueError(f"trained_gains: unknown gain {name!r} (expected {', '.join(GAIN_NAMES)})")
        tensors[f"training.{name}"] = v.detach().float().contiguous()
    save_atomic(tensors, path, meta)
    return fp


def load_lite_tensors(sd: dict[str, torch.Tensor], config_json: str):
    from ..models.lite import LiteConfig, LiteNet

    raw = json.loads(config_json)
    raw.setdefault("entropy_numerics", "2")  # files from before the field coded with V2 (LiteConfig)
    try:
        cfg = LiteConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"default model weights: config not understood by this version of stablecodec ({e}); "
                           "upgrade stablecodec or use the weights it ships") from None
    net = LiteNet(cfg)
    load_strict(net, {k[len("lite."):]: v.float() for k, v in sd.items() if k.startswith("lite.")}, "default model weights")
    return net.eval()


def load_lite(path: Path):
    """The default model's file. Returns (LiteNet, fingerprint hex, metadata)."""
    tensors, meta = _read_safetensors(Path(path), exclude="training.")  # decoding never reads those
    if meta.get("family") != "lite":
        raise WeightsError(f"{path}: not a default-model weights file")
    net = load_lite_tensors(tensors, meta["config"])
    _set_tables(net.codec, tensors, str(path))
    return net, meta["fingerprint"], meta


def load_trained_gains(path: Path) -> dict[str, torch.Tensor] | None:
    """The training rates' gain vectors stored beside the rate points (``save_lite``), or
    None for a file written without them (before 2026-12-04)."""
    tensors, _ = _read_safetensors(Path(path), only="training.")
    gains = {k[len("training."):]: v for k, v in tensors.items()}
    return gains if set(gains) == set(GAIN_NAMES) else None


def load(spec, path: Path):
    """One rate point of the default model: (LiteModel, fingerprint hex)."""
    from ..models.lite import LiteModel

    net, fp, meta = load_lite(path)
    rates = json.loads(meta["rates"])
    names = [r["name"] for r in rates]
    if spec.name not in names:
        raise WeightsError(f"{path} has no rate point {spec.name} (it has {', '.join(names)})")
    i = names.index(spec.name)
    # An encoder setting, not part of the network: the file's header carries the scale, so
    # decoding never reads it from here (files from before the field code at full size).
    return LiteModel(net, i, coded_scale=int(rates[i].get("coded_scale", FULL_SCALE))), fp


def estimate_bytes(path: Path | None = None, **_) -> tuple[int, int]:
    n = 4 * Path(path).stat().st_size  # fp16 on disk, float32 and float64 copies in memory
    return n, n
