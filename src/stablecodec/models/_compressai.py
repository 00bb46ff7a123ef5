"""CompressAI's entropy models and attention block, imported without the rest of CompressAI.

``import compressai`` imports every subpackage, including point-cloud datasets that pull
in torch_geometric: seconds at every start of the command-line tool, for classes this
project never uses. The two modules needed here import nothing of that, so they are
loaded with the package's ``__init__`` bypassed; the stand-in package is removed right
after, so a later ``import compressai`` anywhere still runs the real ``__init__`` (and
reuses these already-loaded submodules). Their module-level ``import scipy.stats`` (0.7 s
here, for one call to ``norm.ppf`` when CDF tables are built) is left to happen on first
use, which SciPy's own lazy submodule attributes allow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
import warnings


@contextlib.contextmanager
def _lean_package():
    """While active, ``compressai`` is a bare package: its submodules import, its __init__ does not run.

    The stand-in answers the two questions the entropy models ask the package at
    construction time (which entropy coder to proxy: its rANS, which this project never
    calls -- coding goes through constriction).
    """
    if "compressai" in sys.modules:  # already imported for real (training, tests)
        yield
        return
    spec = importlib.util.find_spec("compressai")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("compressai is not installed (pip install compressai)")
    stub = types.ModuleType("compressai")
    stub.__path__ = list(spec.submodule_search_locations)
    stub.available_entropy_coders = lambda: ["ans"]
    stub.get_entropy_coder = lambda: "ans"
    sys.modules["compressai"] = stub
    try:
        with warnings.catch_warnings():  # compressai's import-time torch.jit.script deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if sys.modules.get("compressai") is stub:
            del sys.modules["compressai"]


@contextlib.contextmanager
def _stats_on_first_use():
    """While active, ``import scipy.stats`` finds an empty placeholder; afterwards the
    placeholder is gone, so ``scipy.stats.norm`` in compressai's code imports the real
    module through ``scipy.__getattr__`` when it first runs. (importlib's LazyLoader does
    not help: the import statement itself reads the module's ``__spec__``, which loads it.)"""
    if "scipy.stats" in sys.modules or importlib.util.find_spec("scipy") is None:
        yield
        return
    import scipy

    placeholder = types.ModuleType("scipy.stats")
    sys.modules["scipy.stats"] = placeholder
    try:
        yield
    finally:
        if sys.modules.get("scipy.stats") is placeholder:
            del sys.modules["scipy.stats"]
        if scipy.__dict__.get("stats") is placeholder:
            del scipy.stats


with _lean_package(), _stats_on_first_use():
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.layers import AttentionBlock


def entropy_bottleneck(channels: int) -> EntropyBottleneck:
    with _lean_package():
        return EntropyBottleneck(channels)


def gaussian_conditional() -> GaussianConditional:
    with _lean_package():
        return GaussianConditional(None)


__all__ = ["EntropyBottleneck", "GaussianConditional", "AttentionBlock", "entropy_bottleneck", "gaussian_conditional"]
