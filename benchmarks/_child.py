"""One measured encode or decode in a fresh process (peak RSS is per process).

    python benchmarks/_child.py encode|decode INPUT OUTPUT [--model ft8] [--weights-dir D]
        [--precision fp32] [--device cpu] [--max-memory 9GB] [--threads N]

Prints one JSON line: load and run seconds, peak resident memory of the process (and on
CUDA ``torch.cuda.max_memory_allocated``), bytes, and the tile plan the model used.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["encode", "decode"])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--model", default=None)
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-memory", default=None)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    import stablecodec

    codec = stablecodec.Codec(a.model, weights_dir=a.weights_dir, device=a.device, precision=a.precision,
                              max_memory=a.max_memory, progress=False)
    t_import = time.perf_counter() - t0
    loaded = codec.get_model()
    t_load = time.perf_counter() - t0 - t_import
    t1 = time.perf_counter()
    if a.mode == "encode":
        data = codec.encode(a.input)
        Path(a.output).write_bytes(data)
        nbytes = len(data)
    else:
        data = Path(a.input).read_bytes()
        codec.decode(data).save(a.output)
        nbytes = len(data)
    t_run = time.perf_counter() - t1
    plan = getattr(loaded.model, "last_plan", None)
    print(json.dumps({
        "mode": a.mode, "model": loaded.name, "precision": a.precision, "import_s": round(t_import, 2),
        "load_s": round(t_load, 2), "run_s": round(t_run, 2), "total_s": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "bytes": nbytes,
        "threads": torch.get_num_threads(), "plan": plan, "stages_s": getattr(loaded.model, "last_timings", None),
        # on a GPU, what PyTorch allocated there at most (untested: no GPU on the project's machine)
        **({"cuda_max_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20)} if a.device == "cuda" else {}),
    }))


if __name__ == "__main__":
    main()
