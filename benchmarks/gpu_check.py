"""The GPU path in one short run: correctness, speed and memory of StableCodec on CUDA (issue 18).

    python benchmarks/gpu_check.py                        # on a CUDA machine: full-size architecture
    python benchmarks/gpu_check.py --device cpu --quick   # the same code on CPU, tiny configuration

From a bare checkout with the project installed, it writes random weights in the released
layouts with the project's own helpers (``stablecodec.testing``; full-size SD-Turbo and
StableCodec, or ``tiny()`` with ``--quick``), loads them through the public path, and checks:

* **correctness** -- a file encoded on the CPU (fp32) decodes on the device to exactly the
  encoder's ŷ, and one encoded on the device decodes on the CPU to the device encoder's ŷ;
  the exact entropy-parameter path gives the same ŷ on the device as on the CPU; the
  device's image at fp16 and bf16 is finite (no NaN or inf) and within relative L2 1e-2 of
  the CPU fp32 image;
* **speed** -- the paper's Table 6 stages at 768x512 (median of ``--reps`` after a warm-up,
  synchronised), at fp32, bf16 and fp16, without and with ``--compile``, and images per
  second over a folder of 16 images;
* **memory** -- ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` for encode
  and decode at 768x512, 2048x1365 and 3840x2160 under ``--max-memory 9GB``, with the plan
  chosen; each must stay within 9 GB.

It writes ``results.json`` and ``results.md`` into ``--out`` (default ``gpu-check/``) and
exits 1 if a correctness or memory check fails. On CPU the memory figures are the
process's peak RSS, and fp16 (not supported there) is left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine  # noqa: E402

import stablecodec  # noqa: E402  (before the first tensor, as the other benchmarks)

GB = 1 << 30


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = [0.5 + 0.3 * np.sin(rng.uniform(1, 4) * yy / h * 3.14 + rng.uniform(1, 4) * xx / w * 3.14 + c) for c in range(3)]
    return np.clip(np.stack(out, -1) + 0.03 * rng.standard_normal((h, w, 3)).astype(np.float32), 0, 1)


class Check:
    def __init__(self, device: str, quick: bool, out: Path, reps: int):
        import torch

        self.torch, self.device, self.quick, self.out, self.reps = torch, device, quick, out, reps
        self.cuda = device == "cuda"
        self.results: dict = {"device": device, "quick": quick, "machine": machine(), "failures": []}
        if self.cuda:
            p = torch.cuda.get_device_properties(0)
            self.results["gpu"] = {"name": p.name, "memory_gb": round(p.total_memory / GB, 1),
                                   "torch": torch.__version__, "cuda": torch.version.cuda}

    def fail(self, what: str) -> None:
        self.results["failures"].append(what)
        print(f"FAIL: {what}", flush=True)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    # -- set-up ---------------------------------------------------------------------------

    def weights(self, cache: Path) -> dict:
        from stablecodec import testing

        t = time.perf_counter()
        d = cache / ("tiny" if self.quick else "full")
        if not (d / "done").exists():
            testing.write_released(d, testing.tiny() if self.quick else testing.full(), name="ft8")
            (d / "done").write_text("")
        self.results["weights_s"] = round(time.perf_counter() - t, 1)
        return {"sd_turbo": d / "sd-turbo", "checkpoint": d / "stablecodec_ft8.pkl", "elic": d / "elic_official.pth"}

    def codec(self, files: dict, device: str, precision: str, compile: bool = False, **kw):
        return stablecodec.Codec(**files, device=device, precision=precision, compile=compile, progress=False, **kw)

    @staticmethod
    def y_hat(codec, data: bytes):
        from stablecodec import container

        h, payload = container.unpack(data)
        m = codec.get_model().model
        hp, wp = -(-h.height // m.stride) * m.stride, -(-h.width // m.stride) * m.stride
        return m.codec.decompress(payload, h.symbol_crc, m.y_shape((hp, wp)), rules=m.coding_rules(h.version[0]))

    # -- the checks -----------------------------------------------------------------------

    def correctness(self, files: dict) -> None:
        torch = self.torch
        h, w = (192, 256) if self.quick else (512, 768)
        img = image(h, w)
        cpu = self.codec(files, "cpu", "fp32")
        dev = self.codec(files, self.device, "auto")
        data_cpu = cpu.encode(img)
        ref = cpu.decode_array(data_cpu)
        y_cpu = self.y_hat(cpu, data_cpu)
        r = {"size": f"{w}x{h}", "auto_precision": str(dev.get_model().model.dtype).replace("torch.", "")}
        # the exact path on the device and on the CPU: the same ŷ from the same file
        y_dev = self.y_hat(dev, data_cpu)
        r["cpu_file_device_y_hat_equal"] = bool(torch.equal(y_dev, y_cpu))
        if not r["cpu_file_device_y_hat_equal"]:
            self.fail("a file encoded on the CPU decodes on the device to another ŷ")
        data_dev = dev.encode(img)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous().mul_(255).round_().div_(255)
        from stablecodec.tiling import pad_to_multiple

        m = dev.get_model().model
        comp = m.compress(pad_to_multiple(x, m.stride))
        r["device_file_cpu_y_hat_equal"] = bool(torch.equal(self.y_hat(cpu, data_dev), comp.y_hat))
        if not r["device_file_cpu_y_hat_equal"]:
            self.fail("a file encoded on the device decodes on the CPU to another ŷ than the encoder's")
        # random latents through the exact path on both devices (many elements, escapes)
        lc_cpu, lc_dev = cpu.get_model().model.codec, m.codec
        g = torch.Generator().manual_seed(1)
        y = torch.randn(1, lc_cpu.cfg.M, 8, 12, generator=g) * 4
        a, b = lc_cpu.compress_y(y), lc_dev.compress_y(y)
        r["random_latent_payload_equal"] = a.payload == b.payload and torch.equal(a.y_hat, b.y_hat)
        if not r["random_latent_payload_equal"]:
            self.fail("the exact path codes a random latent differently on the device")
        precisions = ("fp16", "bf16") if self.cuda else ("bf16",)
        # 1e-2 is the full-size model's bound; the tiny random network of --quick is less well
        # conditioned (its bf16 image is ~1.2e-2 away on CPU), so --quick checks the mechanics at 5e-2.
        bound = 5e-2 if self.quick else 1e-2
        r["rel_l2_bound"] = bound
        for p in precisions:
            img_p = self.codec(files, self.device, p).decode_array(data_cpu)
            finite = bool(np.isfinite(img_p).all())
            rel = float(np.linalg.norm(img_p - ref) / max(np.linalg.norm(ref), 1e-12))
            r[f"{p}_finite"], r[f"{p}_rel_l2_to_cpu_fp32"] = finite, round(rel, 5)
            if not finite:
                self.fail(f"the {p} image has NaN or inf")
            if rel > bound:
                self.fail(f"the {p} image is {rel:.4f} (relative L2) from the CPU fp32 image, over {bound:g}")
        self.results["correctness"] = r

    def speed(self, files: dict) -> None:
        h, w = (192, 256) if self.quick else (512, 768)
        img = image(h, w, seed=3)
        rows = []
        precisions = ("fp32", "bf16", "fp16") if self.cuda else ("fp32", "bf16")
        for p in precisions:
            for compiled in ((False, True) if self.cuda else (False,)):
                codec = self.codec(files, self.device, p, compile=compiled)
                data = codec.encode(img)  # warm-up (and compilation)
                codec.decode_array(data)
                m = codec.get_model().model
                enc, dec, stages = [], [], {}
                for _ in range(self.reps):
                    self.sync()
                    t = time.perf_counter()
                    data = codec.encode(img)
                    self.sync()
                    enc.append(time.perf_counter() - t)
                    for k, v in m.last_timings.items():
                        stages.setdefault(k, []).append(v)
                    t = time.perf_counter()
                    codec.decode_array(data)
                    self.sync()
                    dec.append(time.perf_counter() - t)
                    for k, v in m.last_timings.items():
                        stages.setdefault(k, []).append(v)
                rows.append({"precision": p, "compile": compiled, "size": f"{w}x{h}",
                             "encode_s": round(statistics.median(enc), 4), "decode_s": round(statistics.median(dec), 4),
                             "stages_s": {k: round(statistics.median(v), 4) for k, v in stages.items()}})
                print(json.dumps(rows[-1]), flush=True)
        # images per second over a folder of 16
        codec = self.codec(files, self.device, "auto")
        imgs = [image(h, w, seed=10 + i) for i in range(16)]
        codec.encode(imgs[0])
        self.sync()
        t = time.perf_counter()
        blobs = [codec.encode(x) for x in imgs]
        self.sync()
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        for b in blobs:
            codec.decode_array(b)
        self.sync()
        t_dec = time.perf_counter() - t
        self.results["speed"] = {"stages": rows, "folder_of_16": {"encode_images_per_s": round(16 / t_enc, 2),
                                                                  "decode_images_per_s": round(16 / t_dec, 2)}}

    def memory(self, files: dict) -> None:
        torch = self.torch
        sizes = [(192, 256), (384, 512)] if self.quick else [(512, 768), (1365, 2048), (2160, 3840)]
        budget = 9 * GB
        codec = self.codec(files, self.device, "auto", max_memory="9GB")
        rows = []
        for h, w in sizes:
            img = image(h, w, seed=5)
            row = {"size": f"{w}x{h}"}
            for phase in ("encode", "decode"):
                if self.cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                if phase == "encode":
                    data = codec.encode(img)
                else:
                    codec.decode_array(data)
                self.sync()
                row[f"{phase}_s"] = round(time.perf_counter() - t, 2)
                if self.cuda:
                    row[f"{phase}_allocated_gb"] = round(torch.cuda.max_memory_allocated() / GB, 3)
                    row[f"{phase}_reserved_gb"] = round(torch.cuda.max_memory_reserved() / GB, 3)
                    if torch.cuda.max_memory_reserved() > budget:
                        self.fail(f"{phase} at {w}x{h} reserved {torch.cuda.max_memory_reserved() / GB:.2f} GB, over 9 GB")
                else:
                    import resource

                    row[f"{phase}_peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
                row[f"{phase}_plan"] = codec.get_model().model.last_plan
            rows.append(row)
            print(json.dumps(row), flush=True)
        self.results["memory"] = rows

    # -- output ---------------------------------------------------------------------------

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2) + "\n")
        r = self.results
        lines = [f"# GPU check: {r.get('gpu', {}).get('name', r['device'])}", "",
                 f"quick: {r['quick']}; failures: {len(r['failures'])}", ""]
        if "correctness" in r:
            lines += ["| correctness | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in r["correctness"].items()] + [""]
        if "speed" in r:
            lines += ["| precision | compile | encode s | decode s | stages (s) |", "|---|---|---:|---:|---|"]
            for s in r["speed"]["stages"]:
                st = ", ".join(f"{k} {v}" for k, v in s["stages_s"].items())
                lines.append(f"| {s['precision']} | {s['compile']} | {s['encode_s']} | {s['decode_s']} | {st} |")
            f16 = r["speed"]["folder_of_16"]
            lines += ["", f"Folder of 16: {f16['encode_images_per_s']} images/s encoding, "
                          f"{f16['decode_images_per_s']} decoding.", ""]
        if "memory" in r:
            keys = [k for k in r["memory"][0] if k != "size"]
            lines += ["| size | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            lines += [f"| {m['size']} | " + " | ".join(str(m[k]) for k in keys) + " |" for m in r["memory"]]
        lines += ["", *[f"- FAIL: {f}" for f in r["failures"]]]
        (self.out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="the tiny test configuration and small sizes")
    ap.add_argument("--out", default="gpu-check")
    ap.add_argument("--cache", default=None, help="where the random weights go (default: a temporary folder)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip", nargs="*", default=[], choices=("correctness", "speed", "memory"))
    a = ap.parse_args(argv)
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu --quick to test the script", file=sys.stderr)
        return 2
    check = Check(a.device, a.quick, Path(a.out), a.reps)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        files = check.weights(Path(a.cache) if a.cache else Path(tmp))
        for part in ("correctness", "speed", "memory"):
            if part in a.skip:
                continue
            try:
                getattr(check, part)(files)
            except Exception as e:  # a part that breaks is a failure, reported; the others still run
                check.fail(f"{part} raised {type(e).__name__}: {str(e)[:300]}")
                traceback.print_exc()
            check.write()
    check.results["wall_s"] = round(time.perf_counter() - t0, 1)
    check.write()
    print(f"gpu_check: {len(check.results['failures'])} failures, {check.results['wall_s']} s; {a.out}/results.md")
    return 1 if check.results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
