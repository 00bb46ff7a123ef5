"""Encoding and decoding past one machine: stablecodec as a Ray Data workload.

    rows = encode_dataset("s3://bucket/photos/", "s3://bucket/packed/", workers=8, gpus_per_worker=1)
    rows = decode_dataset("packed/", "restored/", address="ray://head:10001")

The driver lists the source (a local folder, a list of paths, or an ``s3://`` / ``gs://`` /
... prefix, through pyarrow's file systems), mirrors relative paths under the destination
as the CLI does, and leaves out the files whose outputs exist (unless ``force``: an
interrupted job resumes by running it again). Ray Data reads the rest with its own binary
reader and sends them in batches to an actor pool (``map_batches`` with a callable class
and ``ActorPoolStrategy``): each actor loads its model once and keeps it, codes each file
with the same per-file work as the CLI (:mod:`jobs`, the same thread count as the driver),
so its outputs are byte for byte the CLI's, and writes them itself: to a temporary name
and renamed on a local file system (as the CLI does), straight to the final key on an
object store (an object becomes visible only whole). A file that fails becomes an error
row and the job goes on; an actor that dies (killed, out of memory) is restarted and its
batch retried by Ray, and outputs already written are not coded again. Every file yields
one status row: input, output, bytes, bpp, seconds, error, skipped.

Ray is an extra: ``pip install 'stablecodec[ray]'``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError, StableCodecError

RAY_EXTRA = "pip install 'stablecodec[ray]'"
_ROW = ("input", "output", "size", "bpp", "width", "height", "seconds", "error", "skipped")


def _require_ray():
    try:
        import pyarrow.fs  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed: {RAY_EXTRA}") from None
    return ray


def _fs(uri: str):
    """(pyarrow file system, path in it, whether it is the local one) for a path or URI."""
    import pyarrow.fs as pafs

    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/"), isinstance(fs, pafs.LocalFileSystem)
    return pafs.LocalFileSystem(), str(Path(uri).resolve()), True


def _join(root: str, rel: str, local: bool) -> str:
    return str(Path(root) / rel) if local else f"{root.rstrip('/')}/{rel}"


def plan(sources: str | Iterable[str], destination: str, exts: tuple[str, ...], suffix: str, recursive: bool = True,
         force: bool = False) -> tuple[list[tuple[str, str]], list[tuple[str, str]], Any]:
    """(jobs to run, jobs skipped because their output exists, the file system) as
    (input, output) pairs: a folder's files with one of ``exts`` (hidden ones never), mirrored
    under ``destination`` with ``suffix``; or explicit files, each into ``destination``."""
    import pyarrow.fs as pafs

    sources = [str(sources)] if isinstance(sources, (str, os.PathLike)) else [str(x) for x in sources]
    destination = str(destination)
    if not sources:
        raise ConfigError("no input given")
    fs, _, local = _fs(sources[0])
    dfs, droot, dlocal = _fs(destination)
    jobs: list[tuple[str, str]] = []
    for src in sources:
        sfs, root, _ = _fs(src)
        if type(sfs) is not type(fs):
            raise ConfigError("all inputs must be on one file system")
        info = sfs.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            for f in sorted(sfs.get_file_info(pafs.FileSelector(root, recursive=recursive)), key=lambda f: f.path):
                rel = f.path[len(root):].lstrip("/")
                if f.type != pafs.FileType.File or any(p.startswith(".") for p in rel.split("/")):
                    continue
                if os.path.splitext(rel)[1].lower() in exts:
                    jobs.append((f.path, _join(droot, os.path.splitext(rel)[0] + suffix, dlocal)))
        elif info.type == pafs.FileType.File:
            jobs.append((root, _join(droot, os.path.splitext(os.path.basename(root))[0] + suffix, dlocal)))
        else:
            raise ConfigError(f"{src}: no such file or folder")
    outs = [o for _, o in jobs]
    if len(set(outs)) != len(outs):
        raise ConfigError("two inputs would be written to the same output; rename one of them")
    if force or not jobs:
        return jobs, [], fs
    existing = {f.path for f in dfs.get_file_info(outs) if f.type == pafs.FileType.File}
    return [j for j in jobs if j[1] not in existing], [j for j in jobs if j[1] in existing], fs


class CodecWorker:
    """One actor of the pool: a Codec loaded once, then batches of files coded and written."""

    def __init__(self, direction: str, codec_kwargs: dict, options, force: bool, destination: str, threads: int,
                 device: str = "auto"):
        import torch

        from .api import Codec

        torch.set_num_threads(threads)  # the driver's: the float image path's bits depend on it
        self.direction, self.options, self.force = direction, options, force
        self.codec = Codec(**codec_kwargs, device=device, progress=False)
        self.dfs, _, self.local = _fs(destination)
        if direction == "encode":
            self.codec.get_model()  # the model loads once per actor, before the first batch

    def work(self, data: bytes, src: str, dst: str):
        from .jobs import decode_one, encode_one

        if self.direction == "encode":
            return encode_one(self.codec, data, src, self.options)
        return decode_one(self.codec, data, dst, self.options)

    def _write(self, dst: str, out: bytes) -> None:
        if self.local:
            from .files import write_atomic

            write_atomic(Path(dst), out, self.force)
            return
        parent = dst.rsplit("/", 1)[0]
        self.dfs.create_dir(parent, recursive=True)
        with self.dfs.open_output_stream(dst) as f:  # an object is visible only once complete
            f.write(out)

    def __call__(self, batch: dict) -> dict:
        rows: dict[str, list] = {k: [] for k in _ROW}
        for data, src, dst in zip(batch["bytes"], batch["path"], batch["output"]):
            t0 = time.perf_counter()
            row = dict.fromkeys(_ROW)
            row.update(input=str(src), output=str(dst), skipped=False)
            try:
                if not self.force and self.local and Path(dst).exists():  # a retried batch: done before
                    row["skipped"] = True
                else:
                    out, fields = self.work(bytes(data), str(src), str(dst))
                    self._write(str(dst), out)
                    row.update(size=fields.get("size"), bpp=fields.get("bpp"), width=fields.get("width"),
                               height=fields.get("height"))
            except FileExistsError:
                row["skipped"] = True
            except StableCodecError as e:
                row["error"] = str(e)
            except MemoryError:
                row["error"] = "out of memory; lower --max-memory or downscale the image"
            except OSError as e:
                row["error"] = f"system error: {e.strerror or e}"
            except Exception as e:  # one broken file must not end a job of millions
                row["error"] = f"internal error {type(e).__name__}: {str(e)[:200]}"
            row["seconds"] = round(time.perf_counter() - t0, 3)
            for k in _ROW:
                rows[k].append(row[k])
        return rows


def run(direction: str, sources, destination: str, *, codec_kwargs: dict | None = None, options=None,
        force: bool = False, recursive: bool = True, address: str | None = None, workers: int = 1,
        gpus_per_worker: float = 0.0, batch_size: int = 8, manifest: str | None = None, worker=CodecWorker,
        ray_init: dict | None = None) -> list[dict]:
    """Code ``sources`` into ``destination`` on Ray; returns one status row per file (skipped
    ones included). ``codec_kwargs``: :class:`~stablecodec.api.Codec` options (model, weights,
    precision, memory budget...); ``options``: :class:`jobs.EncodeOptions` / ``DecodeOptions``."""
    import torch

    from . import jobs

    ray = _require_ray()
    if workers < 1 or batch_size < 1 or gpus_per_worker < 0:
        raise ConfigError("--workers and --batch-size must be at least 1, --gpus-per-worker at least 0")
    if direction == "encode":
        from .imageio import FOLDER_EXTENSIONS as exts
        suffix, options = ".scdc", options or jobs.EncodeOptions()
    else:
        exts, options = (".scdc",), options or jobs.DecodeOptions()
        suffix = f".{options.fmt}" if options.fmt else ".png"
    destination = str(destination)
    todo, skipped, fs = plan(sources, destination, exts, suffix, recursive, force)
    rows = [{**dict.fromkeys(_ROW), "input": i, "output": o, "skipped": True} for i, o in skipped]
    if todo:
        import logging

        for name in ("ray", "ray.data", "ray._private", "ray.serve"):  # our one summary line says how it went
            logging.getLogger(name).setLevel(logging.ERROR)
        if not ray.is_initialized():
            ray.init(address=address, **(ray_init or {}), log_to_driver=False, include_dashboard=False,
                     logging_level=logging.ERROR)
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        out_of = dict(todo)
        # Reading is I/O: it takes no CPU slot from the actors (which would otherwise hold every
        # slot of a small machine and leave the reads unscheduled).
        ds = ray.data.read_binary_files([i for i, _ in todo], include_paths=True, filesystem=fs, num_cpus=0)
        ds = ds.map(lambda r: {**r, "output": out_of[r["path"] if r["path"] in out_of else "/" + r["path"]]},
                    num_cpus=0)
        device = "cuda" if gpus_per_worker > 0 else (codec_kwargs or {}).get("device", "auto")
        kwargs = {k: v for k, v in (codec_kwargs or {}).items() if k != "device"}
        # A callable class with a fixed concurrency: Ray Data's actor-pool compute, one model per actor.
        ds = ds.map_batches(worker, batch_size=batch_size, concurrency=workers,
                            fn_constructor_kwargs=dict(direction=direction, codec_kwargs=kwargs, options=options,
                                                       force=force, destination=destination,
                                                       threads=torch.get_num_threads(), device=device),
                            num_gpus=gpus_per_worker or None)  # Ray Data restarts dead actors and retries their batches
        if manifest:
            ds = ds.materialize()
            ds.write_parquet(manifest)
        rows += list(ds.iter_rows())
    return sorted(rows, key=lambda r: r["input"])


def encode_dataset(sources, destination: str, **kwargs) -> list[dict]:
    """Encode images (a folder, paths or a URI prefix) into ``.scdc`` files under ``destination``."""
    return run("encode", sources, destination, **kwargs)


def decode_dataset(sources, destination: str, **kwargs) -> list[dict]:
    """Decode ``.scdc`` files into images under ``destination``."""
    return run("decode", sources, destination, **kwargs)
