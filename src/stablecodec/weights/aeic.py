"""The AEIC family's files: the released layout and the converted one.

Released layout (``../shared/reference/aeic-network.md``):

* SD-Turbo's ``unet/`` (diffusers); nothing else of SD-Turbo is read;
* ``AEIC_{SE,ME}_ft<lambda>.pkl``: ``state_dict_codec`` (the whole pixel codec, CompressAI
  1.2.6 names for the factorized prior: ``_matrix0``, ``_bias0``, ``_factor0`` ...) and
  ``state_dict_unet`` (the UNet's LoRA, adapter ``default`` with ``conv_in``/``conv_out``, or
  the distillation spelling ``student_unet_lora`` with ``student_conv_in``/``student_conv_out``);
* ``halfDecoder.ckpt`` (AdcSR): ``{"state_dict": {"decoder.<name>": tensor, ...}}``; every
  occurrence of ``decoder.`` is removed from the keys that contain it, and the result must be
  exactly the diffusers ``Decoder``'s keys. Read with ``weights_only=True``; a Lightning
  checkpoint whose other entries need more is converted once with
  ``stablecodec convert --half-decoder FILE``, which reads its tensors without running any
  of its code (:func:`common.tensors_without_code`) and writes ``halfDecoder.safetensors``.

The sender needs only the codec: the loaders read g_s, the UNet and the halfDecoder when
the model first decodes (from a memory-mapped pickle or by name from the converted file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from .. import registry
from ..errors import WeightsError
from ..models.aeic import AEICCodec, AEICConfig, Synthesis
from ..models.onestep import Lazy
from .common import (save_atomic, FORMAT, LORA_ALPHA, _assign, _config_json, _dir_bytes, _from_pretrained, _on_meta,
                     _read_safetensors, _require_file, _safetensors_bytes, _set_tables, _sub, _tables_state,
                     fingerprint, load_pickle, load_strict, merge_lora)

HALF_DECODER_CONFIG = dict(in_channels=4, out_channels=3, up_block_types=("UpDecoderBlock2D",) * 4,
                           block_out_channels=(64, 128, 256, 256), layers_per_block=2, norm_num_groups=32,
                           act_fn="silu", norm_type="group", mid_block_add_attention=True)
CONVERTED_HALF_DECODER = "halfDecoder.safetensors"
_CDF_BUFFERS = ("_offset", "_quantized_cdf", "_cdf_length", "scale_table")
_EB_RENAME = re.compile(r"^entropy_bottleneck\._(matrix|bias|factor)(\d+)$")
_EB_NAMES = {"matrix": "matrices", "bias": "biases", "factor": "factors"}


# ---------------------------------------------------------------------------------------
# The codec


def codec_tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict_codec`` in this implementation's names: the factorized prior's CompressAI-1.2.6
    names mapped to 1.2.8's, the CDF buffers (empty in the release; tables are built here) left out."""
    out = {}
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] in _CDF_BUFFERS and k.startswith(("entropy_bottleneck.", "gaussian_conditional.")):
            continue
        m = _EB_RENAME.match(k)
        out[f"entropy_bottleneck.{_EB_NAMES[m.group(1)]}.{m.group(2)}" if m else k] = v
    return out


def infer_config(sd: dict[str, torch.Tensor], unet_in: int | None = None) -> AEICConfig:
    """The variant's widths, read off ``state_dict_codec`` (and the UNet's input width)."""
    try:
        def indexed(prefix: str, suffix: str) -> dict[int, torch.Tensor]:
            pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.{re.escape(suffix)}$")
            return {int(m.group(1)): v for k, v in sd.items() if (m := pat.match(k))}

        downs = indexed("g_a.analysis_transform", "body.0.weight")
        stars = indexed("g_a.analysis_transform", "norm.weight")
        analysis = tuple(int(downs[i].shape[0]) * 4 for i in sorted(downs))
        blocks = len(stars) // len(downs)
        context = int(sd["adapter_in.0.branch2.weight"].shape[0])
        depth = len({int(k.split(".")[2]) for k in sd if k.startswith("g_c.block.")})
        syn_stars = indexed("g_s.synthesis_transform", "norm.weight")
        syn_ups = sorted(indexed("g_s.synthesis_transform", "body.0.weight"))
        # one level per run of StarBlocks between the upsamplings
        synthesis = tuple(int(syn_stars[min(i for i in syn_stars if i > lo)].shape[0]) for lo in (0, *syn_ups))
        last = max(int(k.split(".")[2]) for k in sd if k.startswith("g_s.synthesis_transform."))
        total = int(sd[f"g_s.synthesis_transform.{last}.branch2.weight"].shape[0])
        variant = "SE" if blocks == 1 else "ME"
        unet_in = unet_in or (320 if total == 576 else total // 2)
        return AEICConfig(variant, analysis, blocks=blocks, context=context, context_depth=depth, synthesis=synthesis,
                          unet_in=unet_in, decoder_in=total - unet_in)
    except (KeyError, ValueError, ZeroDivisionError, IndexError) as e:
        raise WeightsError(f"the codec checkpoint does not have AEIC's layout ({type(e).__name__}: {e})") from None


def _split(tensors: dict[str, torch.Tensor]):
    sender = {k: v for k, v in tensors.items() if not k.startswith("g_s.")}
    return sender, _sub(tensors, "g_s.")


def _cdf_buffer(key: str) -> bool:
    return key.startswith(("entropy_bottleneck.", "gaussian_conditional.")) and key.rsplit(".", 1)[-1] in _CDF_BUFFERS


def build_codec(tensors: dict[str, torch.Tensor], cfg: AEICConfig, what: str) -> AEICCodec:
    codec = AEICCodec(cfg)
    own = {k: v for k, v in codec.state_dict().items() if not _cdf_buffer(k)}  # tables are built here
    given = {k: v.float() if v.is_floating_point() else v for k, v in _split(tensors)[0].items() if not _cdf_buffer(k)}
    load_strict(_Keys(own), given, what)
    codec.load_state_dict(given, strict=False)
    return codec.eval()


class _Keys:
    """A state dict's keys and shapes, for :func:`load_strict`'s checks alone."""

    def __init__(self, sd: dict[str, torch.Tensor]):
        self._sd = sd

    def state_dict(self):
        return self._sd

    def load_state_dict(self, sd, strict=True):
        pass


def build_synthesis(tensors: dict[str, torch.Tensor], cfg: AEICConfig, what: str) -> Synthesis:
    g_s = _on_meta(lambda: Synthesis(cfg))
    return _assign(g_s, tensors, what).eval()


# ---------------------------------------------------------------------------------------
# The UNet and the halfDecoder


def unet_spelling(unet_state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(LoRA adapter name, prefix of conv_in/conv_out): "default"/"" or "student_unet_lora"/"student_"."""
    if any(".student_unet_lora." in k for k in unet_state) or "student_conv_in.weight" in unet_state:
        return "student_unet_lora", "student_"
    return "default", ""


def aeic_unet(sd_turbo: Path, unet_state: dict[str, torch.Tensor], what: str):
    """SD-Turbo's UNet pruned as AEIC prunes it, with the checkpoint's conv_in (320 -> 320),
    conv_out (320 -> 256) and LoRA merged (W += 8/32 B A)."""
    from diffusers import UNet2DConditionModel

    from ..models.denoiser import prune

    adapter, prefix = unet_spelling(unet_state)
    try:
        w_in, b_in = unet_state[f"{prefix}conv_in.weight"], unet_state[f"{prefix}conv_in.bias"]
        w_out, b_out = unet_state[f"{prefix}conv_out.weight"], unet_state[f"{prefix}conv_out.bias"]
    except KeyError as e:
        raise WeightsError(f"{what}: state_dict_unet has no {e.args[0]}") from None
    unet = prune(_from_pretrained(UNet2DConditionModel, Path(sd_turbo) / "unet", "UNet").float().eval())
    unet.conv_in = nn.Conv2d(w_in.shape[1], w_in.shape[0], w_in.shape[2], padding=w_in.shape[2] // 2)
    unet.conv_in.load_state_dict({"weight": w_in.float(), "bias": b_in.float()})
    unet.conv_out = nn.Conv2d(w_out.shape[1], w_out.shape[0], w_out.shape[2], padding=w_out.shape[2] // 2)
    unet.conv_out.load_state_dict({"weight": w_out.float(), "bias": b_out.float()})
    lora = {k: v for k, v in unet_state.items() if f".lora_A.{adapter}." in k or f".lora_B.{adapter}." in k}
    try:
        merge_lora(unet, lora, adapter, alpha=LORA_ALPHA)
    except WeightsError as e:
        raise WeightsError(f"{what}: {e}") from None
    return unet


def decoder_config(tensors: dict[str, torch.Tensor]) -> dict:
    """The Decoder's configuration: AdcSR's, with the channel widths read off the tensors (the
    released file has (64, 128, 256, 256); tests use narrower ones)."""
    ups = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("up_blocks.")})
    widths = [int(tensors[f"up_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in ups]
    return dict(HALF_DECODER_CONFIG, block_out_channels=tuple(reversed(widths)),
                in_channels=int(tensors["conv_in.weight"].shape[1]))


def half_decoder(tensors: dict[str, torch.Tensor], what: str, latent_channels: int = 256):
    """AdcSR's halfDecoder as AEIC builds it: the diffusers Decoder with its 4 -> 256 conv_in
    replaced by a 256 -> 256 one whose kernel is the original tiled over the 64 groups of 4
    input channels and divided by 64 (bias kept). Returns a TiledVAE over it."""
    from diffusers.models.autoencoders.vae import Decoder

    from ..models.vae import DecoderOnly, TiledVAE

    try:
        cfg = decoder_config(tensors)
    except (KeyError, ValueError, IndexError) as e:
        raise WeightsError(f"{what}: not AdcSR's halfDecoder layout ({e})") from None
    dec = _assign(_on_meta(lambda: Decoder(**cfg)), tensors, what)
    w, b = dec.conv_in.weight.detach(), dec.conv_in.bias.detach()
    groups = latent_channels // w.shape[1]
    conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], w.shape[2], padding=w.shape[2] // 2)
    conv.load_state_dict({"weight": w.repeat(1, groups, 1, 1) / groups, "bias": b})
    dec.conv_in = conv
    return TiledVAE(DecoderOnly(dec.eval(), {"block_out_channels": list(cfg["block_out_channels"])}))


def half_decoder_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The 138 decoder tensors of ``halfDecoder.ckpt`` (or its converted ``.safetensors``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _read_plain_safetensors(path)
    conv = path.with_name(CONVERTED_HALF_DECODER)
    if conv.is_file():
        return _read_plain_safetensors(conv)
    try:
        ck = load_pickle(path, "halfDecoder checkpoint")
    except WeightsError as e:
        if "refused" in str(e) and path.is_file():
            raise WeightsError(f"{path}: holds Python objects besides its tensors (a Lightning checkpoint), which "
                               "stablecodec never unpickles; extract its weights once, safely, with: stablecodec "
                               f"convert --half-decoder {path}") from None
        raise
    return decoder_keys(ck, str(path))


def decoder_keys(ck: dict, what: str) -> dict[str, torch.Tensor]:
    sd = ck.get("state_dict") if isinstance(ck.get("state_dict"), dict) else None
    if sd is None:
        raise WeightsError(f"{what}: no state_dict in it; not AdcSR's halfDecoder checkpoint")
    out = {k.replace("decoder.", ""): v for k, v in sd.items() if "decoder" in k and isinstance(v, torch.Tensor)}
    if not out:
        raise WeightsError(f"{what}: its state_dict has no decoder tensors; not AdcSR's halfDecoder checkpoint")
    return out


def _read_plain_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({str(e)[:160]})") from None


def convert_half_decoder(path: Path, out: Path | None = None) -> Path:
    """halfDecoder.ckpt -> halfDecoder.safetensors, reading only its tensors (no code runs)."""

    from .common import tensors_without_code

    path = Path(path)
    _require_file(path, "halfDecoder checkpoint")
    tensors = decoder_keys(tensors_without_code(path), str(path))
    decoder_config(tensors)  # it must have the layout
    out = Path(out) if out else path.with_name(CONVERTED_HALF_DECODER)
    save_atomic({k: v.contiguous() for k, v in tensors.items()}, out)
    return out


# ---------------------------------------------------------------------------------------
# Released files


def _load_checkpoint(path: Path) -> tuple[dict, dict]:
    ck = load_pickle(path, "AEIC checkpoint", mmap=True)
    if not isinstance(ck.get("state_dict_codec"), dict) or not isinstance(ck.get("state_dict_unet"), dict):
        raise WeightsError(f"{path}: not an AEIC checkpoint (needs state_dict_codec and state_dict_unet)")
    return ck["state_dict_codec"], ck["state_dict_unet"]


def load_released(sd_turbo: Path, checkpoint: Path, half_decoder_path: Path):
    """The full model from the released files: (AEICModel, fingerprint hex). Only the codec
    is built now; g_s, the UNet and the halfDecoder on the first decode."""
    from ..models.aeic_model import AEICModel

    sd_turbo, checkpoint, half_decoder_path = Path(sd_turbo), Path(checkpoint), Path(half_decoder_path)
    if not (sd_turbo / "unet").is_dir():
        raise WeightsError(f"SD-Turbo unet folder not found: {sd_turbo / 'unet'} (expected a diffusers folder)")
    _require_file(half_decoder_path, "halfDecoder checkpoint")
    codec_sd, unet_sd = _load_checkpoint(checkpoint)
    fp = fingerprint(codec_sd, unet_sd)
    _, prefix = unet_spelling(unet_sd)
    w_in = unet_sd.get(f"{prefix}conv_in.weight")
    cfg = infer_config(codec_sd, unet_in=int(w_in.shape[1]) if w_in is not None else None)
    tensors = codec_tensors(codec_sd)
    codec = build_codec(tensors, cfg, f"{checkpoint} (state_dict_codec)")
    what = str(checkpoint)
    gs_bytes = sum(v.numel() * 4 for k, v in tensors.items() if k.startswith("g_s."))
    model = AEICModel(
        codec,
        synthesis=Lazy(lambda: build_synthesis(_sub(tensors, "g_s."), cfg, f"{what} (g_s)"), gs_bytes),
        unet=Lazy(lambda: aeic_unet(sd_turbo, unet_sd, what), _dir_bytes(sd_turbo / "unet")),
        decoder=Lazy(lambda: half_decoder(half_decoder_tensors(half_decoder_path), str(half_decoder_path),
                                          cfg.decoder_in), 4 * 12_400_000))
    return model.eval(), fp


def load_explicit(sd_turbo, checkpoint, half_decoder):
    return load_released(Path(sd_turbo), Path(checkpoint), Path(half_decoder))


def name_from_checkpoint(path: Path) -> str | None:
    m = re.fullmatch(r"AEIC_(SE|ME)_ft(\d+)", Path(path).stem)
    return f"aeic-{m.group(1).lower()}-ft{m.group(2)}" if m else None


# ---------------------------------------------------------------------------------------
# The converted file


def convert(sd_turbo: Path, checkpoint: Path, half_decoder: Path, out: Path, name: str) -> str:
    """The released files -> one safetensors file (codec, g_s, the merged UNet, the halfDecoder,
    the entropy tables, the configurations). Returns the fingerprint."""

    model, fp = load_released(sd_turbo, checkpoint, half_decoder)
    tensors: dict[str, torch.Tensor] = {}
    parts = (("codec.", model.codec), ("g_s.", model.synthesis.g_s), ("unet.", model.denoiser.unet))
    for prefix, module in parts:
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().contiguous()
    for k, v in half_decoder_tensors(half_decoder).items():  # as released: conv_in is tiled when built
        tensors["half_decoder." + k] = v.detach().float().contiguous()
    tensors.update(_tables_state(model.codec))
    cfg = model.codec.cfg
    unet = model.denoiser.unet
    meta = {"format": FORMAT, "family": "aeic", "name": name, "fingerprint": fp,
            "codec_config": json.dumps({**cfg.__dict__, "analysis": list(cfg.analysis), "synthesis": list(cfg.synthesis)}),
            "unet_config": _config_json(unet.config), "unet_conv": json.dumps([unet.conv_in.in_channels,
                                                                               unet.conv_out.out_channels])}
    save_atomic(tensors, out, meta)
    return fp


def load_converted(path: Path):
    """A file written by :func:`convert`: (AEICModel, fingerprint hex). The decoder side is read
    from the file, tensor by tensor, on the first decode."""
    from diffusers import UNet2DConditionModel

    from ..models.aeic_model import AEICModel
    from ..models.denoiser import prune

    path = Path(path)
    tensors, meta = _read_safetensors(path, only="codec.")
    if meta.get("family") != "aeic":
        raise WeightsError(f"{path}: not a converted AEIC model")
    try:
        raw = json.loads(meta["codec_config"])
        cfg = AEICConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        unet_cfg = json.loads(meta["unet_config"])
        c_in, c_out = json.loads(meta["unet_conv"])
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: metadata is incomplete ({e})") from None
    codec = build_codec(_sub(tensors, "codec."), cfg, f"{path} (codec)")
    tables, _ = _read_safetensors(path, only="tables.")
    _set_tables(codec, tables, str(path))
    parts = _safetensors_bytes(path)

    def unet():
        sd, _ = _read_safetensors(path, only="unet.")
        u = prune(_on_meta(lambda: UNet2DConditionModel.from_config(unet_cfg)))
        u.conv_in = _on_meta(lambda: nn.Conv2d(c_in, u.config.block_out_channels[0], 3, padding=1))
        u.conv_out = _on_meta(lambda: nn.Conv2d(u.config.block_out_channels[0], c_out, 3, padding=1))
        return _assign(u, _sub(sd, "unet."), f"{path} (unet)").eval()

    def decoder():
        sd, _ = _read_safetensors(path, only="half_decoder.")
        return half_decoder(_sub(sd, "half_decoder."), f"{path} (half_decoder)", cfg.decoder_in)

    model = AEICModel(
        codec,
        synthesis=Lazy(lambda: build_synthesis(_sub(_read_safetensors(path, only="g_s.")[0], "g_s."), cfg,
                                               f"{path} (g_s)"), parts.get("g_s", 0)),
        unet=Lazy(unet, parts.get("unet", 0)), decoder=Lazy(decoder, parts.get("half_decoder", 0)))
    return model.eval(), meta["fingerprint"]


# ---------------------------------------------------------------------------------------
# The family's entry points (registry.Family.loader)


def load(spec, path: Path):
    if path.suffix == ".safetensors":
        return load_converted(path)
    d = path.parent
    return load_released(d / registry.SD_TURBO_DIR, path, d / registry.HALF_DECODER_FILE)


def estimate_bytes(path: Path | None = None, sd_turbo=None, checkpoint=None, half_decoder=None) -> tuple[int, int]:
    """(encode, decode) bytes of weights, from the files: the sender holds the codec without g_s."""
    if path is not None:
        if path.suffix == ".safetensors":
            parts = _safetensors_bytes(path)
            enc = parts.get("codec", 0) + parts.get("tables", 0)
            return enc, sum(parts.values())
        checkpoint, sd_turbo, half_decoder = path, path.parent / registry.SD_TURBO_DIR, path.parent / registry.HALF_DECODER_FILE
    size = lambda p: Path(p).stat().st_size if p and Path(p).is_file() else 0  # noqa: E731
    ck = size(checkpoint)
    enc = ck // 4  # the codec without g_s (67 M of its 83-123 M parameters) and the UNet's LoRA
    return enc, ck + size(half_decoder) + _dir_bytes(Path(sd_turbo) / "unet")


def check_file(path: Path) -> str:
    """What a downloaded released file is, checked by loading it (``stablecodec download``)."""
    if path.name == registry.HALF_DECODER_FILE:
        half_decoder(half_decoder_tensors(path), str(path))
        return "AdcSR halfDecoder"
    codec_sd, unet_sd = _load_checkpoint(path)
    infer_config(codec_sd)
    return "AEIC checkpoint"
