"""Shared pieces of weight loading: safe files, LoRA, fingerprints, diffusers folders.

Pickles are opened only with ``torch.load(weights_only=True)``, which refuses anything
but tensors and plain containers; safetensors files are read with their headers checked
first. Every failure is a :class:`~stablecodec.errors.WeightsError` naming the file and
the fix. The families' loaders (``stablecodec.py``, ``aeic.py``, ``lite.py`` beside this
file) are built from these.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from ..models.entropy import tables_from_tensors, tables_to_tensors

LORA_ALPHA = 8.0  # PEFT's default lora_alpha, which the released checkpoints were trained with
FORMAT = "stablecodec-weights/1"

# Weights are local files: never reach for a hub (``stablecodec download`` asks for one
# explicitly; it notes here whether the user had set this).
USER_HF_OFFLINE = os.environ.get("HF_HUB_OFFLINE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the libraries' loading bars are noise to our users
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _quiet_libraries() -> None:
    """No per-shard progress bars or advisory logging from diffusers/transformers."""
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except Exception:  # logging knobs moved between versions; silence is best-effort
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:
        pass


# ---------------------------------------------------------------------------------------
# Generic helpers


def fingerprint(*state_dicts: dict[str, torch.Tensor]) -> str:
    """BLAKE2b of the tensors (name, dtype, shape, bytes; sorted by name), 16 hex digits."""
    h = hashlib.blake2b(digest_size=8)
    for sd in state_dicts:
        for name in sorted(sd):
            t = sd[name].detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def header_fingerprint(hexdigest: str) -> int:
    """The 16 bits of a fingerprint that go into a ``.scdc`` header."""
    return int(hexdigest[:4], 16)


def load_pickle(path: Path, what: str, mmap: bool = False) -> dict:
    """torch.load with weights_only=True: tensors and plain containers only, never code.

    ``mmap``: map the file's tensors instead of reading them (torch's zip format), so the
    ones never used (a decoder's, when only encoding) are never read into memory."""
    import warnings

    _require_file(path, what)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise next to the verdict
            warnings.simplefilter("ignore")
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap) if mmap else None
            except RuntimeError:  # not the zip format: read it whole
                obj = None
            if obj is None:
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError...
        raise WeightsError(f"{path}: refused to load {what}: {_unpickling_verdict(e)}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: {what} is not a dict of tensors")
    return obj


def _unpickling_verdict(e: Exception) -> str:
    """Why torch's safe unpickler refused a file, in our words (torch's advice to turn the
    check off with weights_only=False is exactly what must not be done with such a file)."""
    text = str(e)
    m = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", text)
    if m:
        return (f"it would run Python code ({m.group(1)}) when loaded, not only hold tensors; stablecodec reads only "
                "plain tensor checkpoints and never runs a file's code")
    if "Unsupported operand" in text or "Unsupported class" in text:
        return ("it is not a plain tensor checkpoint (a pickle that weights-only loading cannot read); "
                "stablecodec never runs a file's code")
    first = next((ln for ln in text.strip().splitlines() if ln.strip() and "weights_only" not in ln), type(e).__name__)
    return f"not a readable PyTorch checkpoint ({first.strip()[:160]})"


def save_atomic(tensors: dict[str, torch.Tensor], out: Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written to ``<out>.part`` and renamed: ``out`` is whole or absent."""
    from safetensors.torch import save_file

    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, out)


def _require_file(path: Path, what: str) -> None:
    if not Path(path).is_file():
        raise WeightsError(f"{what} not found: {path}")


def merge_lora(model: nn.Module, lora: dict[str, torch.Tensor], adapter: str, alpha: float = LORA_ALPHA) -> int:
    """Fold PEFT LoRA tensors into the base layers: W += alpha / r * B A. Returns layers merged.

    Written out rather than through peft's inject/merge/unload because that builds adapter
    modules on the full 865M-parameter UNet only to remove them again; the tests check
    the result against peft itself.
    """
    modules = dict(model.named_modules())
    suffix_a, suffix_b = f".lora_A.{adapter}.weight", f".lora_B.{adapter}.weight"
    names = sorted(k[: -len(suffix_a)] for k in lora if k.endswith(suffix_a))
    leftover = set(lora) - {n + s for n in names for s in (suffix_a, suffix_b)}
    if leftover:
        raise WeightsError(f"unexpected LoRA tensors, e.g. {sorted(leftover)[0]!r}")
    for name in names:
        layer = modules.get(name)
        a, b = lora.get(name + suffix_a), lora.get(name + suffix_b)
        if layer is None or b is None or not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise WeightsError(f"LoRA tensors for {name!r} do not match the base model")
        r = a.shape[0]
        scale = alpha / r
        w = layer.weight
        if isinstance(layer, nn.Conv2d):
            delta = (b.flatten(1).float() @ a.flatten(1).float()).view(w.shape)
        else:
            delta = b.float() @ a.float()
        if delta.shape != w.shape:
            raise WeightsError(f"LoRA for {name!r} has shape {tuple(delta.shape)}, the layer {tuple(w.shape)}")
        with torch.no_grad():
            w.add_((delta * scale).to(w.dtype))
    return len(names)


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    bad = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        if bad:
            parts.append(f"{len(bad)} of other shape (e.g. {bad[0]}: {tuple(sd[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})")
        raise WeightsError(f"{what} does not fit the network: {'; '.join(parts)}")
    module.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------
# The released StableCodec files


def _from_pretrained(cls, folder: Path, what: str):
    _quiet_libraries()
    if not folder.is_dir():
        raise WeightsError(f"SD-Turbo {what} not found: {folder} (expected a diffusers folder)")
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, EnvironmentError):
        try:
            return cls.from_pretrained(folder, local_files_only=True, variant="fp16", torch_dtype=torch.float32)
        except Exception as e:
            raise WeightsError(f"cannot load SD-Turbo {what} from {folder}: {str(e).splitlines()[0][:200]}") from None


def _tables_state(codec) -> dict[str, torch.Tensor]:
    gaussian, z_tables, medians = codec.tables()
    return {**tables_to_tensors("tables.gaussian", gaussian), **tables_to_tensors("tables.z", z_tables),
            "tables.z_medians": medians}


def _set_tables(codec, tensors: dict[str, torch.Tensor], what: str) -> None:
    try:
        codec.set_tables(tables_from_tensors("tables.gaussian", tensors), tables_from_tensors("tables.z", tensors),
                         tensors["tables.z_medians"])
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{what}: entropy tables are missing or damaged ({e})") from None


def _config_json(config) -> str:
    """A diffusers config without its private bookkeeping entries (paths, versions)."""
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")})


def _read_safetensors(path: Path, only: str | None = None, exclude: str | None = None):
    """Tensors (those starting with ``only``, or all but ``exclude``) and metadata of a weights file."""
    from safetensors import SafetensorError, safe_open

    _require_file(path, "weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise WeightsError(f"{path}: not a stablecodec weights file (format {meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()
                       if (only is None or k.startswith(only)) and (exclude is None or not k.startswith(exclude))}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({str(e)[:200]})") from None
    return tensors, meta


def _dir_bytes(folder: Path) -> int:
    """Bytes of the weight files in a diffusers sub-folder (one variant: the largest set)."""
    if not Path(folder).is_dir():
        return 0
    sizes = [f.stat().st_size for f in Path(folder).iterdir() if f.suffix in (".safetensors", ".bin") and ".fp16." not in f.name]
    if not sizes:  # only an fp16 variant: loaded as float32, twice its size
        sizes = [2 * f.stat().st_size for f in Path(folder).iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(sizes)


def _safetensors_bytes(path: Path) -> dict[str, int]:
    """Bytes per top-level prefix of a safetensors file, from its header alone.

    Read by hand (8-byte length, JSON) because safetensors' own reader maps the whole file
    before it can be asked for sizes; a damaged header is a WeightsError like any other."""
    import struct

    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 100 * 1024 * 1024:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        out: dict[str, int] = {}
        for k, v in header.items():
            if k != "__metadata__":
                a, b = v["data_offsets"]
                out[k.split(".")[0]] = out.get(k.split(".")[0], 0) + (int(b) - int(a))
        return out
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as e:  # JSON/Unicode errors are ValueErrors
        raise WeightsError(f"{path}: damaged safetensors header ({type(e).__name__}); "
                           "convert or download the weights again") from None


def _sub(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _on_meta(build):
    """Build a module without initialising its weights (they are overwritten right after)."""
    with torch.device("meta"):
        return build()


def _assign(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> nn.Module:
    own = module.state_dict()
    missing, extra = set(own) - set(sd), set(sd) - set(own)
    if missing or extra:
        raise WeightsError(f"{what}: {len(missing)} tensors missing, {len(extra)} unexpected")
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, assign=True)
    if any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
        raise WeightsError(f"{what}: some tensors were not loaded")
    return module


# ---------------------------------------------------------------------------------------
# Tensors out of a pickle that weights-only loading refuses


class _Inert:
    """Stands in for any class a checkpoint names: accepts whatever it is given, runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()


def tensors_without_code(path: Path) -> dict:
    """The containers and tensors of a ``torch.save`` zip file whose other objects (e.g. a
    Lightning checkpoint's hyper-parameters) ``weights_only`` refuses -- without importing or
    running any of them: every global except torch's tensor rebuilders and plain containers
    becomes an inert stand-in. For ``stablecodec convert --half-decoder``.

    Written out because torch's own safe loader only allows what it knows, and the
    alternative, ``weights_only=False``, would run the file's code.
    """
    import collections
    import pickle
    import zipfile

    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch", "Size"): torch.Size,
    }
    for name in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"):
        allowed[("torch", f"{name}Storage")] = getattr(torch, f"{name}Storage")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path}: not a torch.save zip file ({e})") from None
    with zf:
        pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise WeightsError(f"{path}: no data.pkl in it; not a torch.save file")
        root = pkl[: -len("data.pkl")]

        class Reader(pickle.Unpickler):
            def find_class(self, module, name):
                return allowed.get((module, name)) or type(name, (_Inert,), {"__module__": "inert"})

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                    raise pickle.UnpicklingError("unsupported persistent id")
                _, storage_type, key, _location, numel = pid
                dtype = getattr(storage_type, "dtype", None) or getattr(storage_type, "_dtype", torch.float32)
                data = zf.read(f"{root}data/{key}")
                untyped = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data else torch.UntypedStorage(0)
                return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)

        import warnings

        try:
            with zf.open(pkl) as f, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TypedStorage's deprecation: it is what torch's own loader builds
                obj = Reader(f).load()
        except Exception as e:  # a malformed pickle: one line
            raise WeightsError(f"{path}: cannot read its tensors ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: not a dict of tensors")
    return obj
