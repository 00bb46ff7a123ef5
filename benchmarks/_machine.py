"""Which CPU a benchmark row was measured on.

Sessions of this project have run on different CPUs (an AMD family-25 EPYC whose bf16
GEMMs ran at ~2x float32, a family-26 one where they run at ~4x), and the bf16 speed-up
and every floor depend on that, so each result row names its machine.
"""

from __future__ import annotations

import functools
import os
import platform
import re


@functools.lru_cache(maxsize=1)
def machine() -> dict:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "flags") and key not in info:
                    info[key] = value.strip()
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    try:  # the system's transparent-huge-page mode, e.g. "madvise"
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = re.search(r"\[(\w+)\]", f.read()).group(1)
    except (OSError, AttributeError):
        thp = None
    return {
        "cpu": info.get("model name", platform.processor() or platform.machine()),
        "family": info.get("cpu family"),
        "cpu_model": info.get("model"),
        "bf16": sorted(flags & {"avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"}),
        "thp": thp,
        "thp_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),  # what PyTorch's allocator was told
    }


def append_rows(path: str | None, rows: list[dict], command: list[str] | None = None) -> None:
    """Result rows, each with the command and the machine, appended to a JSON-lines file."""
    import json
    import sys

    if not path:
        return
    extra = {"command": " ".join(command if command is not None else sys.argv), "machine": machine()}
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps({**r, **{k: v for k, v in extra.items() if k not in r}}) + "\n")
