"""The StableCodec family's files: the released layout and the converted one.

Released layout (``../shared/reference/stablecodec-network.md``):

* SD-Turbo as a diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``);
* ``stablecodec_<name>.pkl``: ``state_dict_vae`` (VAE-encoder LoRA, adapter ``vae_skip``),
  ``state_dict_unet`` (UNet LoRA, adapter ``default``, plus the 320-channel ``conv_in``),
  ``state_dict_codec`` (the latent codec with CompressAI's entropy-model buffers);
* ``elic_official.pth``: a whole ELIC state dict, of which ``g_a.*`` is used.

``convert`` writes one safetensors file with the LoRA merged, the prompt embedding, the
entropy tables and the configurations, which loads faster and needs neither the text
encoder nor pickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from .. import registry
from ..errors import WeightsError
from ..models.denoiser import OneStepDenoiser
from ..models.latent_codec import LatentCodec, LatentCodecConfig
from .common import (save_atomic, FORMAT, _assign, _config_json, _dir_bytes, _from_pretrained, _on_meta, _read_safetensors, _require_file, _safetensors_bytes, _set_tables, _sub, _tables_state,
                     fingerprint, load_pickle, load_strict, merge_lora)

PROMPT = ("A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, and natural "
          "lighting.")
VAE_LORA_TARGETS = re.compile(r"^encoder\..*(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_k|to_q|to_v|to_out\.0)$")


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
    load_strict(codec, sd, "state_dict_codec")
    return codec


def _elic_from_pth(path: Path):

    sd = load_pickle(path, "ELIC checkpoint")
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    g_a = {k[len("g_a."):]: v for k, v in sd.items() if k.startswith("g_a.")}
    return _elic_from_state(g_a, f"{path} (g_a)")


def _elic_from_state(g_a: dict[str, torch.Tensor], what: str):
    from ..models.encoder import ElicAnalysis

    try:
        N = g_a["analysis_transform.0.weight"].shape[0]
        M = g_a["analysis_transform.13.weight"].shape[0]
    except KeyError:
        raise WeightsError(f"{what}: no ELIC analysis transform in it") from None
    elic = ElicAnalysis(N, M)
    load_strict(elic, g_a, what)
    return elic


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
    from ..models.denoiser import alpha_bar

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

    from ..models.stablecodec import StableCodecModel

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


def convert(sd_turbo: Path, checkpoint: Path, elic: Path, out: Path, name: str) -> str:
    """The released files -> one safetensors file. Returns the fingerprint."""

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
    save_atomic(tensors, out, meta)
    return fp


def load_converted(path: Path):
    """A file written by :func:`convert`. Returns (model, fingerprint hex, metadata).

    The UNet's tensors are read from the file only when the model first decodes.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..models.stablecodec import StableCodecModel

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


def _unet_width(config: Path) -> int | None:
    try:
        return int(json.loads(Path(config).read_text())["block_out_channels"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


# ---------------------------------------------------------------------------------------
# The family's entry points (registry.Family.loader)


def load(spec, path: Path):
    """A named model from its converted file or its released files beside each other."""
    if path.suffix == ".safetensors":
        model, fp, _ = load_converted(path)
        return model, fp
    d = path.parent
    return load_released(d / registry.SD_TURBO_DIR, path, d / registry.ELIC_FILE)


def load_explicit(sd_turbo, checkpoint, elic):
    return load_released(Path(sd_turbo), Path(checkpoint), Path(elic))


def name_from_checkpoint(path: Path) -> str | None:
    stem = Path(path).stem
    return stem[len("stablecodec_"):] if stem.startswith("stablecodec_") else None


def estimate_bytes(path: Path | None = None, sd_turbo=None, checkpoint=None, elic=None) -> tuple[int, int]:
    """(encode, decode) bytes of weights, from the files, before loading them."""
    if path is not None:
        if path.suffix == ".safetensors":
            parts = _safetensors_bytes(path)
            enc = sum(v for k, v in parts.items() if k != "unet")
            return enc, enc + parts.get("unet", 0)
        checkpoint, sd_turbo, elic = path, path.parent / registry.SD_TURBO_DIR, path.parent / registry.ELIC_FILE
    size = lambda p: Path(p).stat().st_size if p and Path(p).is_file() else 0  # noqa: E731
    enc = size(checkpoint) + size(elic) + _dir_bytes(Path(sd_turbo) / "vae")
    return enc, enc + _dir_bytes(Path(sd_turbo) / "unet") + _dir_bytes(Path(sd_turbo) / "text_encoder")


def check_file(path: Path) -> str:
    """What a downloaded released file is, checked by loading it (``stablecodec download``)."""
    if path.name == registry.ELIC_FILE:
        _elic_from_pth(path)
        return "ELIC analysis transform"
    ck = load_pickle(path, "StableCodec checkpoint")
    keys = ("state_dict_vae", "state_dict_unet", "state_dict_codec")
    if not all(isinstance(ck.get(k), dict) for k in keys):
        raise WeightsError(f"{path}: not a StableCodec checkpoint (needs {', '.join(keys)})")
    infer_codec_config(ck["state_dict_codec"])
    return "StableCodec checkpoint"
