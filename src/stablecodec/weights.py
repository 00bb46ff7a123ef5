"""Loading weights, in one place: the released files, converted files, the default model.

Released layout (``../shared/reference/stablecodec-network.md``):

* SD-Turbo as a diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``);
* ``stablecodec_<name>.pkl``: ``state_dict_vae`` (VAE-encoder LoRA, adapter ``vae_skip``),
  ``state_dict_unet`` (UNet LoRA, adapter ``default``, plus the 320-channel ``conv_in``),
  ``state_dict_codec`` (the latent codec with CompressAI's entropy-model buffers);
* ``elic_official.pth``: a whole ELIC state dict, of which ``g_a.*`` is used.

Pickles are opened only with ``torch.load(weights_only=True)``, which refuses anything
but tensors and plain containers. ``convert`` writes one safetensors file with the LoRA
merged, the prompt embedding, the entropy tables and the configurations, which loads
faster and needs neither the text encoder nor pickles. Every failure is a
:class:`~stablecodec.errors.WeightsError` naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from . import registry
from .errors import WeightsError
from .models.entropy import tables_from_tensors, tables_to_tensors
from .models.denoiser import OneStepDenoiser
from .models.latent_codec import LatentCodec, LatentCodecConfig

PROMPT = ("A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, and natural "
          "lighting.")
LORA_ALPHA = 8.0  # PEFT's default lora_alpha, which the released checkpoints were trained with
VAE_LORA_TARGETS = re.compile(r"^encoder\..*(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_k|to_q|to_v|to_out\.0)$")
FORMAT = "stablecodec-weights/1"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local files; never reach for a hub
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


def load_pickle(path: Path, what: str) -> dict:
    """torch.load with weights_only=True: tensors and plain containers only, never code."""
    import warnings

    _require_file(path, what)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise next to the verdict
            warnings.simplefilter("ignore")
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


def infer_codec_config(sd: dict[str, torch.Tensor]) -> LatentCodecConfig:
    """The latent codec's widths, read off a checkpoint's tensor shapes."""
    try:
        pre1 = sd["g_a.pre1.branch1.0.weight"]
        pre2 = sd.get("g_a.pre2.weight")
        norms = lambda prefix: [  # noqa: E731
            sd[k].shape[0] for k in sorted(
                (k for k in sd if re.fullmatch(rf"{prefix}\.(\d+)\.blocks\.1\.norm\.weight", k)),
                key=lambda k: int(k[len(prefix) + 1 :].split(".")[0]))
        ]
        analysis = tuple(norms("g_a.analysis_transform"))
        M = analysis[-1]
        ctx = sd["adapter_in.0.branch2.weight"].shape[0]
        depth = len({k.split(".")[2] for k in sd if k.startswith("g_c.block.")})

        def widths(prefix: str) -> tuple[int, ...]:
            blocks = norms(prefix)
            if not blocks:
                return ()
            last = max(int(k[len(prefix) + 1 :].split(".")[0]) for k in sd if k.startswith(prefix + "."))
            out = sd[f"{prefix}.{last}.branch1.2.weight"].shape[0] // 4
            return (*blocks, out)

        rates = sd["gain_y"].shape[0] if "gain_y" in sd else 0
        return LatentCodecConfig(
            sd_channels=pre1.shape[1],
            aux_channels=pre2.shape[1] if pre2 is not None else 0,
            pre1_channels=pre1.shape[0],
            pre2_channels=pre2.shape[0] if pre2 is not None else 64,
            analysis=analysis,
            context_mult=ctx // M,
            context_depth=depth,
            synthesis=widths("g_s.synthesis_transform"),
            aux_decoder=widths("aux.block"),
            rates=rates,
        )
    except (KeyError, IndexError, ValueError) as e:
        raise WeightsError(f"the latent codec checkpoint does not have the StableCodec layout ({e})") from None


def load_codec(sd: dict[str, torch.Tensor], cfg: LatentCodecConfig | None = None) -> LatentCodec:
    cfg = cfg or infer_codec_config(sd)
    codec = LatentCodec(cfg)
    _load_strict(codec, sd, "state_dict_codec")
    return codec


def _load_strict(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
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


def _elic_from_pth(path: Path):
    from .models.encoder import ElicAnalysis

    sd = load_pickle(path, "ELIC checkpoint")
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    g_a = {k[len("g_a."):]: v for k, v in sd.items() if k.startswith("g_a.")}
    return _elic_from_state(g_a, f"{path} (g_a)")


def _elic_from_state(g_a: dict[str, torch.Tensor], what: str):
    from .models.encoder import ElicAnalysis

    try:
        N = g_a["analysis_transform.0.weight"].shape[0]
        M = g_a["analysis_transform.13.weight"].shape[0]
    except KeyError:
        raise WeightsError(f"{what}: no ELIC analysis transform in it") from None
    elic = ElicAnalysis(N, M)
    _load_strict(elic, g_a, what)
    return elic


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


def prompt_embedding(sd_turbo: Path) -> torch.Tensor:
    """The fixed prompt through SD-Turbo's tokenizer and text encoder (last hidden state).

    Computed once and cached on disk (keyed by the text encoder's and tokenizer's files),
    so decoding does not load the 340M-parameter text encoder again.
    """
    from safetensors.torch import load_file, save_file

    key = _files_key(Path(sd_turbo) / "text_encoder", Path(sd_turbo) / "tokenizer")
    for cache in _cache_dirs(Path(sd_turbo)):
        f = cache / f"prompt-{key}.safetensors"
        if f.is_file():
            try:
                return load_file(str(f))["prompt_embedding"]
            except Exception:  # a damaged cache entry is recomputed, never trusted
                pass
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = _from_pretrained(CLIPTokenizer, sd_turbo / "tokenizer", "tokenizer")
    enc = _from_pretrained(CLIPTextModel, sd_turbo / "text_encoder", "text encoder").eval()
    ids = tok(PROMPT, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = enc(ids)[0].float().contiguous()
    del enc
    for cache in _cache_dirs(Path(sd_turbo)):
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f".prompt-{key}.{os.getpid()}.part"
            save_file({"prompt_embedding": emb}, str(tmp))
            os.replace(tmp, cache / f"prompt-{key}.safetensors")
            break
        except OSError:  # read-only weights: try the next place
            continue
    return emb


def _cache_dirs(sd_turbo: Path) -> list[Path]:
    import platformdirs

    return [sd_turbo / ".stablecodec-cache", Path(platformdirs.user_cache_dir("stablecodec", appauthor=False))]


def _files_key(*folders: Path) -> str:
    """A key that changes when any file of the folders changes (names, sizes, times)."""
    h = hashlib.blake2b(digest_size=8)
    for folder in folders:
        for f in sorted(Path(folder).glob("*")) if Path(folder).is_dir() else []:
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}|".encode())
    h.update(PROMPT.encode())
    return h.hexdigest()


def _scheduler_abar(sd_turbo: Path) -> float:
    from .models.denoiser import alpha_bar

    cfg_path = sd_turbo / "scheduler" / "scheduler_config.json"
    _require_file(cfg_path, "SD-Turbo scheduler config")
    cfg = json.loads(cfg_path.read_text())
    return alpha_bar(cfg.get("beta_start", 0.00085), cfg.get("beta_end", 0.012),
                     cfg.get("num_train_timesteps", 1000), schedule=cfg.get("beta_schedule", "scaled_linear"))


def load_released(sd_turbo: Path, checkpoint: Path, elic: Path):
    """Build the full model from the released files. Returns (model, fingerprint hex).

    The UNet and the text encoder are read only when the model first decodes.
    """
    from diffusers import AutoencoderKL

    from .models.stablecodec import StableCodecModel

    sd_turbo, checkpoint, elic = Path(sd_turbo), Path(checkpoint), Path(elic)
    if not sd_turbo.is_dir():
        raise WeightsError(f"SD-Turbo folder not found: {sd_turbo}")
    for sub in ("unet", "vae", "scheduler"):
        if not (sd_turbo / sub).is_dir():
            raise WeightsError(f"SD-Turbo {sub} folder not found: {sd_turbo / sub} (expected a diffusers folder)")
    ck = load_pickle(checkpoint, "StableCodec checkpoint")
    keys = ("state_dict_vae", "state_dict_unet", "state_dict_codec")
    if not all(isinstance(ck.get(k), dict) for k in keys):
        raise WeightsError(f"{checkpoint}: not a StableCodec checkpoint (needs {', '.join(keys)})")
    fp = fingerprint(*(ck[k] for k in keys))
    codec = load_codec(ck["state_dict_codec"])
    elic_net = _elic_from_pth(elic)
    vae = _from_pretrained(AutoencoderKL, sd_turbo / "vae", "VAE").float().eval()
    merge_lora(vae, ck["state_dict_vae"], "vae_skip")
    unet_state = ck["state_dict_unet"]
    if "conv_in.weight" not in unet_state or "conv_in.bias" not in unet_state:
        raise WeightsError(f"{checkpoint}: state_dict_unet has no conv_in")
    if unet_state["conv_in.weight"].shape[1] != codec.cfg.synthesis[-1]:
        raise WeightsError(f"{checkpoint}: the UNet takes {unet_state['conv_in.weight'].shape[1]} channels, "
                           f"g_s gives {codec.cfg.synthesis[-1]}")
    abar = _scheduler_abar(sd_turbo)
    del ck

    def denoiser():
        return OneStepDenoiser(released_unet(sd_turbo, unet_state), prompt_embedding(sd_turbo), abar)

    model = StableCodecModel(vae, elic_net, codec, denoiser, float(vae.config.scaling_factor),
                             denoiser_bytes=_dir_bytes(sd_turbo / "unet") + _dir_bytes(sd_turbo / "text_encoder"),
                             unet_width=_unet_width(sd_turbo / "unet" / "config.json"))
    return model.eval(), fp


def released_unet(sd_turbo: Path, unet_state: dict[str, torch.Tensor]):
    """SD-Turbo's UNet with the checkpoint's 320-channel conv_in and its LoRA merged."""
    from diffusers import UNet2DConditionModel

    unet = _from_pretrained(UNet2DConditionModel, Path(sd_turbo) / "unet", "UNet").float().eval()
    usd = dict(unet_state)
    w, b = usd.pop("conv_in.weight"), usd.pop("conv_in.bias")
    old = unet.conv_in
    unet.conv_in = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=old.padding)
    unet.conv_in.load_state_dict({"weight": w, "bias": b})
    unet.register_to_config(in_channels=w.shape[1])
    merge_lora(unet, usd, "default")
    return unet


# ---------------------------------------------------------------------------------------
# One-file formats (converted StableCodec, the default model)


def _tables_state(codec: LatentCodec) -> dict[str, torch.Tensor]:
    gaussian, z_tables, medians = codec.tables()
    return {**tables_to_tensors("tables.gaussian", gaussian), **tables_to_tensors("tables.z", z_tables),
            "tables.z_medians": medians}


def _set_tables(codec: LatentCodec, tensors: dict[str, torch.Tensor], what: str) -> None:
    try:
        codec.set_tables(tables_from_tensors("tables.gaussian", tensors), tables_from_tensors("tables.z", tensors),
                         tensors["tables.z_medians"])
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{what}: entropy tables are missing or damaged ({e})") from None


def _config_json(config) -> str:
    """A diffusers config without its private bookkeeping entries (paths, versions)."""
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")})


def convert(sd_turbo: Path, checkpoint: Path, elic: Path, out: Path, name: str) -> str:
    """The released files -> one safetensors file. Returns the fingerprint."""
    from safetensors.torch import save_file

    model, fp = load_released(sd_turbo, checkpoint, elic)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("vae.", model.vae.vae), ("unet.", model.denoiser.unet), ("elic.", model.elic),
                           ("codec.", model.codec)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().contiguous()
    tensors.update(_tables_state(model.codec))
    tensors["prompt_embedding"] = model.denoiser.prompt_embedding.contiguous()
    meta = {
        "format": FORMAT,
        "family": "stablecodec",
        "name": name,
        "fingerprint": fp,
        "vae_config": _config_json(model.vae.vae.config),
        "unet_config": _config_json(model.denoiser.unet.config),
        "abar": repr(model.denoiser.abar),
        "scaling_factor": repr(model.scaling_factor),
    }
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return fp


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


def _unet_width(config: Path) -> int | None:
    try:
        return int(json.loads(Path(config).read_text())["block_out_channels"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


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


def estimate_weight_bytes(spec=None, weights_dir: Path | None = None, checkpoint=None, sd_turbo=None, elic=None):
    """(encode, decode) bytes of weights a model will hold, from its files, before loading it."""
    if spec is not None:
        where = registry.locate(spec, Path(weights_dir))
        if not where.present:
            return 0, 0  # the loader reports what is missing
        path = Path(where.where)
        if spec.family == "lite":
            n = 4 * path.stat().st_size  # fp16 on disk, float32 and float64 copies in memory
            return n, n
        if path.suffix == ".safetensors":
            parts = _safetensors_bytes(path)
            enc = sum(v for k, v in parts.items() if k != "unet")
            return enc, enc + parts.get("unet", 0)
        checkpoint, sd_turbo, elic = path, path.parent / registry.SD_TURBO_DIR, path.parent / registry.ELIC_FILE
    size = lambda p: Path(p).stat().st_size if p and Path(p).is_file() else 0  # noqa: E731
    enc = size(checkpoint) + size(elic) + _dir_bytes(Path(sd_turbo) / "vae")
    return enc, enc + _dir_bytes(Path(sd_turbo) / "unet") + _dir_bytes(Path(sd_turbo) / "text_encoder")


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


def load_converted(path: Path):
    """A file written by :func:`convert`. Returns (model, fingerprint hex, metadata).

    The UNet's tensors are read from the file only when the model first decodes.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .models.stablecodec import StableCodecModel

    path = Path(path)
    tensors, meta = _read_safetensors(path, exclude="unet.")
    if meta.get("family") != "stablecodec":
        raise WeightsError(f"{path}: not a converted StableCodec model")
    try:
        vae_cfg, unet_cfg = json.loads(meta["vae_config"]), json.loads(meta["unet_config"])
        abar, scaling = float(meta["abar"]), float(meta["scaling_factor"])
        prompt = tensors["prompt_embedding"].float()
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{path}: metadata is incomplete ({e})") from None
    vae = _assign(_on_meta(lambda: AutoencoderKL.from_config(vae_cfg)), _sub(tensors, "vae."), f"{path} (vae)")
    elic = _elic_from_state(_sub(tensors, "elic."), f"{path} (elic)")
    codec = load_codec({k: v.float() for k, v in _sub(tensors, "codec.").items()})
    _set_tables(codec, tensors, str(path))
    del tensors

    def denoiser():
        unet_sd, _ = _read_safetensors(path, only="unet.")
        unet = _assign(_on_meta(lambda: UNet2DConditionModel.from_config(unet_cfg)), _sub(unet_sd, "unet."), f"{path} (unet)")
        return OneStepDenoiser(unet.eval(), prompt, abar)

    model = StableCodecModel(vae.eval(), elic, codec, denoiser, scaling,
                             denoiser_bytes=_safetensors_bytes(path).get("unet", 0),
                             unet_width=unet_cfg.get("block_out_channels", [320])[0])
    return model.eval(), meta["fingerprint"], meta


def save_lite(net, path: Path, rates: list[dict], fingerprint_hex: str | None = None, half: bool = True) -> str:
    """Write the default network (fp16 weights, tables, rate names) to one safetensors file."""
    import dataclasses

    from safetensors.torch import save_file

    sd = {f"lite.{k}": (v.half() if half and v.is_floating_point() else v).detach().contiguous()
          for k, v in net.state_dict().items()}
    fp = fingerprint_hex or fingerprint(sd)
    # Tables from the weights as stored (fp16-rounded), so loading and exporting agree.
    tmp_net = load_lite_tensors(sd, json.dumps(dataclasses.asdict(net.cfg)))
    tensors = {**sd, **_tables_state(tmp_net.codec)}
    meta = {"format": FORMAT, "family": "lite", "fingerprint": fp, "config": json.dumps(dataclasses.asdict(net.cfg)),
            "rates": json.dumps(rates)}
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return fp


def load_lite_tensors(sd: dict[str, torch.Tensor], config_json: str):
    from .models.lite import LiteConfig, LiteNet

    raw = json.loads(config_json)
    codec_cfg = LatentCodecConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.pop("codec").items()})
    net = LiteNet(LiteConfig(codec=codec_cfg, **raw))
    _load_strict(net, {k[len("lite."):]: v.float() for k, v in sd.items() if k.startswith("lite.")}, "default model weights")
    return net.eval()


def load_lite(path: Path):
    """The default model's file. Returns (LiteNet, fingerprint hex, metadata)."""
    tensors, meta = _read_safetensors(Path(path))
    if meta.get("family") != "lite":
        raise WeightsError(f"{path}: not a default-model weights file")
    net = load_lite_tensors(tensors, meta["config"])
    _set_tables(net.codec, tensors, str(path))
    return net, meta["fingerprint"], meta
