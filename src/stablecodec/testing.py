"""Dummy models in the released file layouts, for tests and benchmarks (diffusers-style).

The real weights (SD-Turbo, ``stablecodec_ft*.pkl``, ``elic_official.pth``) are never on
the machines this project is built on, so the loading code is exercised on files written
here with random weights: ``tiny()`` configurations for fast tests and ``full()`` for the
real architecture (parity, memory and speed). :func:`write_released` writes an SD-Turbo
diffusers folder, a StableCodec ``.pkl`` (LoRA tensors named as PEFT names them, adapter
``vae_skip`` / ``default``) and an ELIC ``.pth``, exactly where the loader looks.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .models.latent_codec import LatentCodec, LatentCodecConfig

SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
             "timestep_spacing": "trailing"}
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
                     "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj"]
VAE_LORA_TARGETS = r"^encoder\..*(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_k|to_q|to_v|to_out\.0)$"


@dataclasses.dataclass
class Arch:
    unet: dict
    vae: dict
    text: dict
    codec: LatentCodecConfig
    elic: tuple[int, int]
    unet_rank: int = 32
    vae_rank: int = 16


def full() -> Arch:
    """SD-Turbo (SD 2.1 architecture) and StableCodec at their released sizes."""
    return Arch(
        unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=[320, 640, 1280, 1280], attention_head_dim=[5, 10, 20, 20],
                  down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                  up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, cross_attention_dim=1024,
                  use_linear_projection=True, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                 block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4, sample_size=768, scaling_factor=0.18215),
        text=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                  num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024),
        codec=LatentCodecConfig(),
        elic=(192, 320),
    )


def tiny() -> Arch:
    """The same structure at toy widths: builds and runs in well under a second."""
    return Arch(
        unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[32, 64],
                  attention_head_dim=[2, 4], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=32,
                  use_linear_projection=True, norm_num_groups=8),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                 block_out_channels=[8, 16, 16, 16], down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4, sample_size=32, scaling_factor=0.18215),
        text=dict(vocab_size=516, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=77, hidden_act="gelu", projection_dim=32, bos_token_id=512,
                  eos_token_id=513, pad_token_id=513),
        codec=LatentCodecConfig(aux_channels=32, pre1_channels=16, pre2_channels=16, analysis=(32, 32, 32),
                                context_mult=2, context_depth=1, synthesis=(32, 32, 32, 32), aux_decoder=(32, 16, 16, 4)),
        elic=(16, 32),
        unet_rank=4,
        vae_rank=4,
    )


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: printable stand-ins for the 256 byte values."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return [out[b] for b in range(256)]


def write_tokenizer(folder: Path) -> None:
    """A byte-level CLIP tokenizer with no merges (every character one token)."""
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "do_lower_case": True}))


def _lora_tensors(model: torch.nn.Module, targets, rank: int, adapter: str, seed: int) -> dict[str, torch.Tensor]:
    """Inject PEFT LoRA into ``model`` (in place: call after saving it) and return its LoRA
    tensors under PEFT's own names, with small random values."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, target_modules=targets), model, adapter_name=adapter)
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in model.state_dict().items() if ".lora_" in k}


def codec_state(cfg: LatentCodecConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random latent codec state dict (entropy-model buffers as the released ones: empty tables)."""
    torch.manual_seed(seed)
    codec = LatentCodec(cfg)
    with torch.no_grad():
        # Spread the hyper-latent quantiles as trained ones are (the default init is +-10).
        codec.entropy_bottleneck.quantiles.copy_(torch.tensor([-8.0, 0.0, 8.0]).expand_as(codec.entropy_bottleneck.quantiles))
    return {k: v.clone() for k, v in codec.state_dict().items()}


def write_released(folder: Path, arch: Arch, name: str = "ft8", seed: int = 0, with_text_encoder: bool = True) -> dict[str, Path]:
    """Write sd-turbo/, stablecodec_<name>.pkl and elic_official.pth into ``folder``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models.encoder import ElicAnalysis

    folder = Path(folder)
    sd = folder / "sd-turbo"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**arch.unet)
    vae = AutoencoderKL(**arch.vae)
    unet.save_pretrained(sd / "unet")
    vae.save_pretrained(sd / "vae")
    if with_text_encoder:
        te = CLIPTextModel(CLIPTextConfig(**arch.text))
        te.save_pretrained(sd / "text_encoder")
        del te
    write_tokenizer(sd / "tokenizer")
    (sd / "scheduler").mkdir(parents=True, exist_ok=True)
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    unet_lora = _lora_tensors(unet, UNET_LORA_TARGETS, arch.unet_rank, "default", seed + 1)
    del unet
    g = torch.Generator().manual_seed(seed + 2)
    cin = arch.codec.synthesis[-1]
    c0 = arch.unet["block_out_channels"][0]
    unet_lora["conv_in.weight"] = torch.randn(c0, cin, 3, 3, generator=g) * (1.0 / (cin * 9) ** 0.5)
    unet_lora["conv_in.bias"] = torch.zeros(c0)
    vae_lora = _lora_tensors(vae, VAE_LORA_TARGETS, arch.vae_rank, "vae_skip", seed + 3)
    del vae
    ckpt = folder / f"stablecodec_{name}.pkl"
    torch.save({"state_dict_vae": vae_lora, "state_dict_unet": unet_lora,
                "state_dict_codec": codec_state(arch.codec, seed + 4)}, ckpt)
    torch.manual_seed(seed + 5)
    elic = ElicAnalysis(*arch.elic)
    elic_sd = {f"g_a.{k}": v for k, v in elic.state_dict().items()}
    elic_sd["g_s.0.weight"] = torch.zeros(1)  # the official file holds the whole ELIC model
    torch.save(elic_sd, folder / "elic_official.pth")
    return {"sd_turbo": sd, "checkpoint": ckpt, "elic": folder / "elic_official.pth"}


# ---------------------------------------------------------------------------------------
# AEIC in its released layouts (``../shared/reference/aeic-network.md``)


@dataclasses.dataclass
class AEICArch:
    codec: "object"  # models.aeic.AEICConfig
    unet: dict
    half_decoder: tuple[int, ...]  # block_out_channels
    unet_rank: int = 32


def aeic_full(variant: str = "SE") -> AEICArch:
    from .models import aeic

    return AEICArch(codec=aeic.se() if variant == "SE" else aeic.me(), unet=full().unet,
                    half_decoder=(64, 128, 256, 256))


def aeic_tiny(variant: str = "SE") -> AEICArch:
    from .models.aeic import AEICConfig

    blocks, depth = (1, 1) if variant == "SE" else (2, 1)
    cfg = AEICConfig(variant, (8, 16, 16, 32, 32), blocks=blocks, context=32, context_depth=depth,
                     synthesis=(32, 32, 32), unet_in=16, decoder_in=8)
    unet = dict(tiny().unet, layers_per_block=2)
    return AEICArch(codec=cfg, unet=unet, half_decoder=(32, 32, 32, 32), unet_rank=4)


AEIC_UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "proj_in",
                          "proj_out", "ff.net.2", "ff.net.0.proj"]


def aeic_codec_state(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random AEIC ``state_dict_codec`` as released: CompressAI-1.2.6 names for the
    factorized prior, empty CDF buffers, moderate weights (y of unit scale on images)."""
    from .models.aeic import AEICCodec, Synthesis

    torch.manual_seed(seed)
    codec, g_s = AEICCodec(cfg), Synthesis(cfg)
    with torch.no_grad():
        codec.entropy_bottleneck.quantiles.copy_(torch.tensor([-8.0, 0.0, 8.0]).expand_as(codec.entropy_bottleneck.quantiles))
        for i in range(4):  # positive scales around 1: every element coded, none skipped
            codec.adapter_out[i].branch2.bias[cfg.M:] += 1.0
    sd = {**{k: v.clone() for k, v in codec.state_dict().items()},
          **{f"g_s.{k}": v.clone() for k, v in g_s.state_dict().items()}}
    out = {}
    for k, v in sd.items():
        for new, old in (("matrices.", "_matrix"), ("biases.", "_bias"), ("factors.", "_factor")):
            if k.startswith(f"entropy_bottleneck.{new}"):
                k = f"entropy_bottleneck.{old}{k.split('.')[-1]}"
        out[k] = v
    return out


def write_released_aeic(folder: Path, arch: AEICArch, name: str | None = None, seed: int = 0,
                        spelling: str = "plain") -> dict[str, Path]:
    """Write sd-turbo/unet, AEIC_<V>_ft8.pkl (or ``name``) and halfDecoder.ckpt into ``folder``.

    ``spelling``: "plain" (``...lora_A.default...``, ``conv_in``) or "student" (the
    distillation names ``student_unet_lora``, ``student_conv_in``)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.autoencoders.vae import Decoder

    from .models.denoiser import prune
    from .weights.aeic import HALF_DECODER_CONFIG

    folder = Path(folder)
    cfg = arch.codec
    sd = folder / "sd-turbo"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**arch.unet)
    unet.save_pretrained(sd / "unet")
    (sd / "scheduler").mkdir(parents=True, exist_ok=True)
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    prune(unet)
    c0 = arch.unet["block_out_channels"][0]
    g = torch.Generator().manual_seed(seed + 1)
    unet_state = _lora_tensors(unet, AEIC_UNET_LORA_TARGETS, arch.unet_rank, "default", seed + 2)
    unet_state["conv_in.weight"] = torch.randn(c0, cfg.unet_in, 3, 3, generator=g) * (1.0 / (cfg.unet_in * 9) ** 0.5)
    unet_state["conv_in.bias"] = torch.zeros(c0)
    unet_state["conv_out.weight"] = torch.randn(cfg.decoder_in, c0, 3, 3, generator=g) * (0.5 / (c0 * 9) ** 0.5)
    unet_state["conv_out.bias"] = torch.zeros(cfg.decoder_in)
    if spelling == "student":
        unet_state = {("student_" + k if k.startswith(("conv_in.", "conv_out.")) else k.replace(".default.", ".student_unet_lora.")): v
                      for k, v in unet_state.items()}
    del unet
    ckpt = folder / (name or f"AEIC_{cfg.variant}_ft8.pkl")
    torch.save({"state_dict_codec": aeic_codec_state(cfg, seed + 3), "state_dict_unet": unet_state}, ckpt)
    torch.manual_seed(seed + 4)
    dec = Decoder(**dict(HALF_DECODER_CONFIG, block_out_channels=arch.half_decoder))
    torch.save({"state_dict": {f"decoder.{k}": v for k, v in dec.state_dict().items()}}, folder / "halfDecoder.ckpt")
    return {"sd_turbo": sd, "checkpoint": ckpt, "half_decoder": folder / "halfDecoder.ckpt"}
