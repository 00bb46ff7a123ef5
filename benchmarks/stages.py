"""Time every stage like the paper's Table 6, with FLOPs and the ratio to the machine's floor.

    python benchmarks/stages.py --model full --size 768x512 --precision bf16 fp32 [--cache DIR]
    python benchmarks/stages.py --model lite --size 768x512 --precision fp32
    python benchmarks/stages.py ... --compare      # whole decodes, fp32 first, side by side
    python benchmarks/stages.py ... --device cuda  # default: cuda where present, else cpu

For each precision: the model is loaded once (load time reported), then each stage runs
--repeat times on a smooth synthetic image (content does not change compute) and the
median is reported: VAE encoder, ELIC encoder, g_a (+ h_a), entropy encoding (the exact
context model and the range coder), entropy decoding, g_s, the auxiliary decoder, the
UNet, the VAE decoder (for ``lite``: its analysis, g_a, entropy coding, g_s, synthesis).
FLOPs come from ``torch.utils.flop_counter`` (2 per multiply-add, convolutions and
matmuls only), split by the dtype each op computes in; the floor is the sum over dtypes
of FLOPs divided by the machine's dense rate in that dtype, measured in the same run: the
better of a 4096^3 GEMM and a 3x3 convolution at the VAE decoder's shape (until
2026-12-01 the GEMM alone; on the project's AMD CPU oneDNN's fp32 convolutions outrun
MKL's fp32 GEMM by ~2x). Reduced-precision models keep a few modules in float32; the
entropy path is float64, on the CPU whatever the device. On CUDA the stages are timed between
synchronisations and each row also gives ``torch.cuda.max_memory_allocated`` over its
timed runs (*untested*: the project's machine has no GPU). Every row names its machine.
Prints JSON lines and a Markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import machine  # noqa: E402


def sync(device: str) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()


def best_seconds(fn, reps: int = 3, device: str = "cpu") -> float:
    """The fastest of ``reps`` calls of ``fn`` after a warm-up call (a kernel's rate)."""
    fn()
    ts = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return min(ts)


def matmul_rate(dtype: torch.dtype, device: str = "cpu", n: int = 4096, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / best_seconds(lambda: a @ b, reps, device)


def conv_rate(dtype: torch.dtype, device: str = "cpu", reps: int = 3) -> float:
    """A 3x3 convolution at the VAE decoder's 1/4 level (512 -> 512 at 128x192), the better of
    both memory formats: oneDNN's convolutions can outrun the BLAS GEMM (fp32 on this
    project's family-26 AMD CPU: ~430-540 against ~205 GFLOP/s), and a floor must be reachable by neither."""
    best = 0.0
    with torch.no_grad():
        for fmt in (torch.contiguous_format, torch.channels_last):
            conv = torch.nn.Conv2d(512, 512, 3, padding=1, bias=False).to(device=device, dtype=dtype, memory_format=fmt)
            x = torch.randn(1, 512, 128, 192, device=device, dtype=dtype).contiguous(memory_format=fmt)
            best = max(best, 2 * 512 * 512 * 9 * 128 * 192 / best_seconds(lambda: conv(x), reps, device))
    return best


def rate_key(device: str, dtype: torch.dtype | None) -> str:
    """'bfloat16' for a CPU dtype, 'cuda/bfloat16' on a GPU (the entropy path stays on the CPU)."""
    name = str(dtype).removeprefix("torch.")
    return name if device == "cpu" else f"{device}/{name}"


def flops(fn) -> dict[str, int]:
    """FLOPs of ``fn`` by the device and dtype each op computes in (:func:`rate_key`;
    reduced-precision models keep some modules in float32; the entropy path is float64, on
    the CPU)."""
    from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop

    # torch counts its CUDA attention kernels but not the CPU one that F.scaled_dot_product_attention
    # picks in float32; without this the float32 attention FLOPs (and floor) were left out.
    cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if cpu_flash not in flop_registry:
        register_flop_formula(cpu_flash, get_raw=True)(sdpa_flop)  # sdpa_flop is registered, so wrapped, already

    class ByDtype(FlopCounterMode):
        # FlopCounterMode totals over dtypes; its per-op hook is the one place that sees the
        # operands, so this overrides it (private API, benchmark only).
        def __init__(self):
            super().__init__(display=False)
            self.by_dtype = collections.Counter()

        def _count_flops(self, func_packet, out, args, kwargs):
            if func_packet in self.flop_registry:
                t = next((a for a in args if isinstance(a, torch.Tensor)), None)
                key = rate_key(t.device.type, t.dtype) if t is not None else "unknown"
                self.by_dtype[key] += int(self.flop_registry[func_packet](*args, **kwargs, out_val=out))
            return super()._count_flops(func_packet, out, args, kwargs)

    with ByDtype() as fc:
        fn()
    assert sum(fc.by_dtype.values()) == fc.get_total_flops()
    return dict(fc.by_dtype)


def timed(fn, repeat: int, device: str = "cpu") -> float:
    ts = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def full_stages(cache: Path, precision: str, h: int, w: int, repeat: int, max_memory: str | None = None,
                device: str = "cpu"):
    """The stages as ``StableCodecModel.compress``/``reconstruct`` run them, with the tile
    plan the library picks for this (padded) size and memory budget."""
    import stablecodec

    t0 = time.perf_counter()
    codec = stablecodec.Codec("ft8", weights_dir=cache, device=device, precision=precision, max_memory=max_memory)
    loaded = codec.get_model()
    m = loaded.model
    m.denoiser  # noqa: B018 -- load the UNet now, counted as model load
    load_s = time.perf_counter() - t0
    s = m.stride
    h, w = -(-h // s) * s, -(-w // s) * s  # the padded size the codec works on
    codec._plan(loaded, h, w)  # the library's own planner; sets m.plan
    print(f"plan at {w}x{h}: {m.last_plan}", file=sys.stderr)
    dt = m.dtype
    x = m._layout(torch.rand(1, 3, h, w, dtype=dt, device=m.device))
    c = m.codec
    enc_plan, dec_plan, window = m.vae_plan(False), m.vae_plan(True), m.plan.encoder_window
    st = {}
    with torch.no_grad():
        l_sd = m.vae.encode(x * 2 - 1, enc_plan) * m.scaling_factor
        l_aux = m.elic(x, tile=window)
        y = c.g_a(l_sd, l_aux)
        comp = c.compress_y(y.float().cpu())
        y_hat = m._layout(comp.y_hat.to(m.device, dt))
        l_t = m.synthesis_of(c.g_s, y_hat)
        l0 = m.vae_input(m.denoise(l_t), m.synthesis_of(c.aux, y_hat))
        st["VAE encoder"] = (lambda: m.vae.encode(x * 2 - 1, enc_plan))
        st["ELIC encoder"] = (lambda: m.elic(x, tile=window))
        st["g_a + h_a"] = (lambda: c.h_a(c.g_a(l_sd, l_aux)))
        st["entropy encoding"] = (lambda: c.compress_y(y.float().cpu()))
        st["entropy decoding"] = (lambda: c.decompress(comp.payload, comp.symbol_crc, comp.y_shape))
        st["g_s"] = (lambda: m.synthesis_of(c.g_s, y_hat))
        st["auxiliary decoder"] = (lambda: m.synthesis_of(c.aux, y_hat))
        st["UNet"] = (lambda: m.denoise(l_t))
        st["VAE decoder"] = (lambda: m.vae.decode(l0, dec_plan))
        return load_s, st


def lite_stages(precision: str, h: int, w: int, repeat: int, device: str = "cpu"):
    import stablecodec
    from stablecodec.models.latent_codec import RULES_MAJOR

    t0 = time.perf_counter()
    codec = stablecodec.Codec("lite-3", device=device, precision=precision)
    m = codec.get_model().model
    load_s = time.perf_counter() - t0
    s = m.stride
    h, w = -(-h // s) * s, -(-w // s) * s  # the padded size the codec works on
    x = torch.rand(1, 3, h, w, dtype=m.dtype, device=device)
    net, c = m.net, m.net.codec
    st = {}
    with torch.no_grad():
        f = net.analysis(x)
        y = (c.g_a(f).float() * c.gain_y[m.rate].detach()[None, :, None, None]).cpu()  # the entropy path's side
        rules = m.coding_rules(RULES_MAJOR)  # what the model's files use (V1 for the default model)
        comp = c.compress_y(y, m.rate, rules)
        y_hat = c.dequantize(comp.y_hat, m.rate).to(device, m.dtype)
        g = c.g_s(y_hat)
        st["analysis"] = (lambda: net.analysis(x))
        st["g_a + h_a"] = (lambda: c.h_a(c.g_a(f)))
        st["entropy encoding"] = (lambda: c.compress_y(y, m.rate, rules))
        st["entropy decoding"] = (lambda: c.decompress(comp.payload, comp.symbol_crc, comp.y_shape, m.rate, rules))
        st["g_s"] = (lambda: c.g_s(y_hat))
        st["synthesis"] = (lambda: net.synthesis(g))
    return load_s, st


def compare_decode(cache: Path, model: str, h: int, w: int, precisions: list[str], out: str | None,
                   repeat: int, device: str = "cpu") -> None:
    """Decode one file at each precision side by side: median wall time of ``repeat`` decodes
    after a warm-up one, and the relative L2 of the image to float32's."""
    import numpy as np

    import stablecodec

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.4 * np.sin(xx / 97 + c) * np.cos(yy / 71 - c) for c in range(3)], -1)
    img = np.clip(img + 0.02 * rng.standard_normal(img.shape).astype(np.float32), 0, 1)
    kw = dict(weights_dir=cache) if model != "lite-3" else {}
    data = stablecodec.Codec(model, device=device, precision="fp32", **kw).encode(img)
    ref = None
    for prec in precisions:
        codec = stablecodec.Codec(model, device=device, precision=prec, **kw)
        codec.decode_array(data)  # loads the model and warms up
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            x = codec.decode_array(data)  # returns a CPU array: the device's work is done
            times.append(round(time.perf_counter() - t, 2))
        sec = statistics.median(times)
        if prec == "fp32":
            ref = x
        rel = None if ref is None else float(np.linalg.norm(x - ref) / np.linalg.norm(ref))
        row = {"compare": "decode", "model": model, "size": f"{w}x{h}", "precision": prec, "seconds": round(sec, 2),
               "all_s": times, "rel_l2_vs_fp32": rel, "threads": torch.get_num_threads(),
               "last_stages_s": dict(getattr(codec.get_model().model, "last_timings", {})),  # of the last decode
               "machine": machine(), **device_info(device)}
        print(json.dumps(row), flush=True)
        if out:
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")


def device_info(device: str) -> dict:
    """On CUDA: the GPU's name and the peak memory PyTorch allocated since the last reset."""
    if device != "cuda":
        return {"device": device}
    return {"device": device, "gpu": torch.cuda.get_device_name(),
            "cuda_max_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["full", "lite"], default="full")
    ap.add_argument("--size", default="768x512", help="WIDTHxHEIGHT")
    ap.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/stablecodec-bench/full"))
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument("--max-memory", default=None, help="the budget the tile plan is chosen for (the library's default if unset)")
    ap.add_argument("--compare", action="store_true", help="whole decodes side by side (fp32 first) instead of stages")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda where present")
    a = ap.parse_args()
    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    w, h = (int(v) for v in a.size.split("x"))
    if a.model == "full":
        from full_size import ensure_release

        ensure_release(Path(a.cache))
    if a.compare:
        precs = ["fp32"] + [p for p in a.precision if p != "fp32"]
        compare_decode(Path(a.cache), "ft8" if a.model == "full" else "lite-3", h, w, precs, a.out, a.repeat, device)
        return
    rows = []
    gemm: dict[str, float] = {}
    conv: dict[str, float] = {}
    rates: dict[str, float] = {}  # the floor's: the better of the two
    for prec in a.precision:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
        for dev, dt in {(device, dtype), (device, torch.float32), ("cpu", torch.float64)}:
            k = rate_key(dev, dt)
            if k not in rates:
                gemm[k] = matmul_rate(dt, dev)
                if dt != torch.float64:  # no float64 oneDNN convolutions; the entropy path is GEMMs
                    conv[k] = conv_rate(dt, dev)
                rates[k] = max(gemm[k], conv.get(k, 0.0))
        if a.model == "full":
            load_s, stages = full_stages(Path(a.cache), prec, h, w, a.repeat, a.max_memory, device)
        else:
            load_s, stages = lite_stages(prec, h, w, a.repeat, device)
        for name, fn in stages.items():
            with torch.no_grad():
                by_dtype = flops(fn)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sec = timed(fn, a.repeat, device)
            fl = sum(by_dtype.values())
            f32 = rate_key(device, torch.float32)  # for ops in a dtype without a measured rate
            floor = sum(n / rates.get(k, rates[f32]) for k, n in by_dtype.items())
            gemm_floor = sum(n / gemm.get(k, gemm[f32]) for k, n in by_dtype.items())
            row = {"model": a.model, "size": a.size, "precision": prec, "stage": name, "seconds": round(sec, 3),
                   "gflop": round(fl / 1e9, 1), "floor_s": round(floor, 3), "ratio": round(sec / floor, 2) if floor else None,
                   # the floor at the GEMM rates alone (the definition; this file's until 2026-12-01)
                   "gemm_floor_s": round(gemm_floor, 3), "gemm_ratio": round(sec / gemm_floor, 2) if gemm_floor else None,
                   "gflop_by_dtype": {k: round(n / 1e9, 1) for k, n in by_dtype.items()},
                   "matmul_gflops": {k: round(r / 1e9) for k, r in gemm.items()},
                   "conv_gflops": {k: round(r / 1e9) for k, r in conv.items()},
                   "floor_gflops": {k: round(r / 1e9) for k, r in rates.items()},
                   "load_s": round(load_s, 1), "threads": torch.get_num_threads(), "machine": machine(),
                   **device_info(device)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n| precision | stage | s | GFLOP | floor s | x floor | x GEMM floor |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['stage']} | {r['seconds']} | {r['gflop']} | {r['floor_s']} | {r['ratio']} "
              f"| {r['gemm_ratio']} |")


if __name__ == "__main__":
    main()
