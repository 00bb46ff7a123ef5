"""Getting a model's released files into the weights directory (``stablecodec download NAME``).

What a model needs, and where each file is published, is its registry record's
(``registry.Family.released_files``): SD-Turbo and AdcSR's halfDecoder come from the
Hugging Face Hub through ``huggingface_hub`` (resumable, with progress bars, only the
sub-folders the family reads; ``HF_ENDPOINT`` selects another Hub); the authors'
checkpoints are in Google Drive folders that need a browser, so they come from
``--from`` (a folder or file a person downloaded them to, or an http(s) URL, resumed with
a Range request). Every file is checked -- its size, that it loads, and its SHA-256, which
is recorded in ``SHA256SUMS`` in the weights directory the first time and compared on
every later run -- and then the model is converted to its one-file form.

Nothing else in stablecodec reaches a network: loading sets ``HF_HUB_OFFLINE`` unless the
user set it, and this module turns it off only for its own requests (a user's explicit
``HF_HUB_OFFLINE=1`` is respected: then only ``--from`` works).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from . import registry
from .errors import StableCodecError

SUMS = "SHA256SUMS"


class DownloadError(StableCodecError):
    """A file could not be fetched or failed its check; the message says where to put it by hand."""


@dataclasses.dataclass
class Fetched:
    path: str  # relative to the weights directory
    bytes: int
    sha256: str
    how: str  # "hub", "from", "present"
    check: str = ""


def _user_offline() -> bool:
    from .weights.common import USER_HF_OFFLINE  # the value before stablecodec defaulted it to 1

    return (USER_HF_OFFLINE or "").strip().lower() in ("1", "true", "yes", "on")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sums(weights: Path) -> dict[str, str]:
    f = weights / SUMS
    if not f.is_file():
        return {}
    out = {}
    for line in f.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if digest and name:
            out[name.strip()] = digest.strip()
    return out


def _write_sums(weights: Path, sums: dict[str, str]) -> None:
    tmp = weights / f".{SUMS}.{os.getpid()}.part"
    tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    os.replace(tmp, weights / SUMS)


def _hub_url(repo: str, path: str) -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo}/resolve/main/{path}"


def _from_hub(f: registry.ReleasedFile, weights: Path, progress: bool) -> None:
    repo, name = f.hub
    dest = weights / f.path
    if _user_offline():
        raise DownloadError(f"{f.path}: HF_HUB_OFFLINE is set, so it cannot be fetched from the Hugging Face Hub "
                            f"({repo}); download {_hub_url(repo, name)} by hand to {dest}, or unset HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "0"
    try:
        import huggingface_hub
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:
        raise DownloadError("downloading from the Hugging Face Hub needs huggingface_hub (pip install huggingface_hub)") from None
    constants.HF_HUB_OFFLINE = False  # our own default, set for loading, does not apply here
    (enable_progress_bars if progress else disable_progress_bars)()
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its retry warnings: our one line says what failed
    # Into a folder named after the repository, then moved: the Hub's layout (unet/config.json ...)
    # is ours below sd-turbo/, and the cache folder it keeps for resuming stays out of the way.
    staging = weights / ".downloads" / repo.replace("/", "--")
    try:
        got = Path(hf_hub_download(repo, name, local_dir=staging))
    except Exception as e:  # connection errors, 404, timeouts: one line with the way out
        text = " ".join(str(x) for x in (e, e.__cause__, e.__context__) if x is not None).lower()
        if "connect" in text or "resolve" in text or "timed out" in text or "network" in text:
            reason = f"cannot reach {os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}: offline?"
        elif "404" in text or "not found" in text:
            reason = "no such file there"
        else:
            reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise DownloadError(f"could not fetch {f.path} from the Hugging Face Hub ({repo}: {reason}); download "
                            f"{_hub_url(repo, name)} by hand to {dest}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got, dest)
    del huggingface_hub


def _fetch_url(url: str, dest: Path, progress: bool) -> None:
    """An http(s) file into ``dest``, resuming a partial ``.part`` with a Range request."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            if have and r.status != 206:  # the server ignored the range: start over
                have = 0
            total = r.headers.get("Content-Length")
            total = int(total) + have if total is not None else None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, leave=False)
            with open(part, "ab" if have else "wb") as out:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(f"could not fetch {url} ({getattr(e, 'reason', e)}); download it by hand to {dest}") from None
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size:,} of {total:,} bytes; run the same command again to resume")
    os.replace(part, dest)


def _from_source(f: registry.ReleasedFile, source: str, weights: Path, progress: bool) -> bool:
    """The file from ``--from``: a folder holding it (by its name, or its path below the
    weights directory), the file itself, or a URL (of the file, or of a folder ending in /)."""
    dest = weights / f.path
    base = Path(f.path).name
    if source.startswith(("http://", "https://")):
        if f.hub is not None:  # a URL stands in for a browser download; the Hub's files come from the Hub
            return False
        if source.endswith("/"):
            url = source + base
        elif source.rsplit("/", 1)[-1] == base:
            url = source
        else:
            return False
        _fetch_url(url, dest, progress)
        return True
    src = Path(source).expanduser()
    for cand in ((src / base, src / f.path) if src.is_dir() else (src,) if src.name == base else ()):
        if cand.is_file():
            if cand.resolve() != dest.resolve():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
                shutil.copyfile(cand, tmp)
                os.replace(tmp, dest)
            return True
    return False


def _check(f: registry.ReleasedFile, spec: registry.ModelSpec, weights: Path) -> str:
    """Whether a fetched file is what it should be: it parses, and a checkpoint loads."""
    from . import weights as w

    p = weights / f.path
    if p.stat().st_size == 0:
        raise DownloadError(f"{p} is empty; delete it and download it again")
    if p.suffix == ".json":
        try:
            json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError):
            raise DownloadError(f"{p} is not valid JSON; delete it and download it again") from None
        return "JSON"
    if p.suffix == ".safetensors":
        from .weights.common import _safetensors_bytes

        _safetensors_bytes(p)
        return "safetensors"
    if p.suffix in (".pkl", ".pth", ".ckpt"):
        try:
            return w.loader(spec.record).check_file(p)
        except StableCodecError as e:
            raise DownloadError(f"{p} does not load ({e}); delete it and download it again") from None
    return "file"


def download(spec: registry.ModelSpec, weights: Path, source: str | None = None, progress: bool = True,
             echo: Callable[[str], None] = print) -> list[Fetched]:
    """Fetch, check and record every released file ``spec`` needs into ``weights``."""
    weights = Path(weights)
    weights.mkdir(parents=True, exist_ok=True)
    sums = read_sums(weights)
    done: list[Fetched] = []
    files = spec.record.released_files(spec)
    how: dict[str, str] = {}
    manual = []
    for f in files:  # what can be fetched first; what needs a person is reported together at the end
        dest = weights / f.path
        if dest.is_file():
            how[f.path] = "present"
        elif source and _from_source(f, source, weights, progress):
            how[f.path] = "from"
        elif f.hub is not None:
            _from_hub(f, weights, progress)
            how[f.path] = "hub"
        else:
            manual.append(f)
    if manual:
        pages = sorted({f.page for f in manual if f.page})
        where = f" (published at {', '.join(pages)}; that needs a browser)" if pages else ""
        raise DownloadError(f"{', '.join(f.path for f in manual)} not in {weights}{where}: download "
                            f"{'them' if len(manual) > 1 else 'it'} by hand and run `stablecodec download {spec.name} "
                            f"--from DOWNLOAD_FOLDER`, or put {'them' if len(manual) > 1 else 'it'} in {weights}")
    for f in files:
        dest = weights / f.path
        check = _check(f, spec, weights)
        digest = sha256(dest)
        known = sums.get(f.path)
        if known is not None and known != digest:
            raise DownloadError(f"{dest} has SHA-256 {digest}, not the {known} recorded when it was first downloaded "
                                f"({SUMS}); delete it and download it again")
        if known is None:
            sums[f.path] = digest
            _write_sums(weights, sums)
        done.append(Fetched(f.path, dest.stat().st_size, digest, how[f.path], check))
        echo(f"{how[f.path]:>7}  {digest}  {f.path}  ({dest.stat().st_size:,} bytes, {check})")
    shutil.rmtree(weights / ".downloads", ignore_errors=True)
    return done
