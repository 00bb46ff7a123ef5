"""Loading a StableCodec model asks PyTorch's CPU allocator for transparent huge pages
(``api.prefer_huge_pages``); the default model does not, and an explicit setting in the
environment wins. Checked through the kernel's own accounting of the mapping that holds
a large tensor allocated after the model loaded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    try:
        return re.search(r"\[(\w+)\]", THP.read_text()).group(1)
    except (OSError, AttributeError):
        return None


# Loads a model, then prints the setting and the huge-page kB of the mapping that holds a
# 256 MB tensor's data.
PROBE = r"""
import os, sys
import stablecodec, torch
model, wdir = sys.argv[1], sys.argv[2] or None
stablecodec.Codec(model, weights_dir=wdir, device="cpu", precision="fp32").get_model()
x = torch.empty(64 << 20); x.fill_(1.0)
p = x.data_ptr()
huge, inside = None, False
for line in open("/proc/self/smaps"):
    head = line.split()[0]
    if "-" in head and ":" not in head:
        lo, hi = (int(v, 16) for v in head.split("-"))
        inside = lo <= p < hi
    elif inside and head == "AnonHugePages:":
        huge = int(line.split()[1])
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), huge)
"""


def probe(model: str, weights_dir, env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    r = subprocess.run([sys.executable, "-c", PROBE, model, str(weights_dir or "")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    setting, huge = r.stdout.split()[-2:]
    return setting, int(huge)


@pytest.mark.skipif(thp_mode() not in ("madvise", "always"), reason="no transparent huge pages on this system")
def test_a_stablecodec_model_gets_huge_pages(tiny_release):
    setting, huge = probe("ft8", tiny_release["dir"], None)
    assert setting == "1"
    assert huge > 0  # some of the tensor's 256 MB lie in 2 MB pages


@pytest.mark.skipif(thp_mode() != "madvise", reason="huge pages only on request: needs THP mode 'madvise'")
def test_the_default_model_does_not_ask_for_them():
    setting, huge = probe("lite-3", None, None)
    assert setting == "None"
    assert huge == 0


@pytest.mark.skipif(thp_mode() != "madvise", reason="huge pages only on request: needs THP mode 'madvise'")
def test_an_explicit_opt_out_is_left_alone(tiny_release):
    setting, huge = probe("ft8", tiny_release["dir"], "0")
    assert setting == "0"
    assert huge == 0
