"""The ``stablecodec`` command: files, folders, streams and exit codes; no tensor math.

Exit status: 0 success; 1 failure (a user error such as a missing or corrupt file,
missing weights, an image too large -- one line on stderr -- or any file of a batch
failing); 2 usage error (bad option or argument); 130 interrupted (Ctrl-C or SIGTERM),
with no partial output left behind. Outputs are written to a temporary name and renamed,
and an existing output is never replaced without ``--force``: a single file is refused,
a file of a batch is skipped, so an interrupted batch resumes by running the same command.

A batch (a folder, or several inputs) mirrors the inputs' relative paths under the output
folder, loads the model once, shows one progress bar over files (on a terminal), goes on
past a file that fails, and ends with a summary line; ``--json`` writes a per-file report.
``--shard I/N`` keeps the files whose relative path hashes to part I of N
(:func:`in_shard`), so the same command can run on N machines.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .cli_eval import eval_command
from .errors import StableCodecError
from .files import Failure, _fail, _note, _stdout_is_tty, _tty, write_atomic  # noqa: F401  (also the CLI's API)
from .imageio import FOLDER_EXTENSIONS as IMAGE_EXTENSIONS  # imageio imports no torch

if TYPE_CHECKING:  # pragma: no cover
    from .api import Codec

SCDC = ".scdc"

Shard = tuple[int, int]  # (I, N), 1 <= I <= N
Job = tuple[str, str]  # (input, output); "-" for standard input/output
#: ``work(input_bytes, input_name, output_name) -> (output_bytes, fields for the report)``
Work = Callable[[bytes, str, str], "tuple[bytes, dict[str, Any]]"]


def _read_input(src: str) -> bytes:
    if src == "-":
        return sys.stdin.buffer.read()
    p = Path(src)
    if not p.exists():
        raise Failure(f"{src}: no such file")
    if p.is_dir():
        raise Failure(f"{src}: is a directory")
    try:
        return p.read_bytes()
    except OSError as e:
        raise Failure(f"{src}: cannot read ({e.strerror})") from None


# ---------------------------------------------------------------------------------------
# Jobs: (input, output) pairs from the command line


def parse_shard(spec: str | None) -> Shard | None:
    """``"I/N"`` -> ``(I, N)``; None -> None. Raises :class:`click.BadParameter` (exit 2)."""
    if spec is None:
        return None
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise click.BadParameter("must be I/N, e.g. 1/4", param_hint="--shard") from None
    if not (n >= 1 and 1 <= i <= n):
        raise click.BadParameter(f"needs 1 <= I <= N, got {spec}", param_hint="--shard")
    return i, n


_shard = parse_shard  # the earlier name


def in_shard(rel: str, shard: Shard | None) -> bool:
    """Whether the file at relative path ``rel`` belongs to shard ``(I, N)`` (None: all do).

    A hash (BLAKE2b) of the relative path, modulo N: deterministic on every machine, the N
    shards partition any set of files, and adding or removing files never moves another
    file to a different shard.
    """
    if shard is None:
        return True
    i, n = shard
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n == i - 1


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def plan_jobs(inputs: tuple[str, ...], output: str | None, recursive: bool, exts: tuple[str, ...], out_suffix: str,
              shard: Shard | None = None) -> tuple[list[Job], bool]:
    """The (input, output) list and whether this is a batch (a folder or several inputs).

    A folder contributes its files with one of ``exts`` (its subfolders' too if
    ``recursive``; hidden files and folders never), mirrored under ``output`` (default:
    beside the inputs) with ``out_suffix``. Raises :class:`click.UsageError` (exit 2) for
    impossible combinations and for two inputs that would write the same output.
    """
    if not inputs:
        raise click.UsageError("no input given")
    dirs = [s for s in inputs if s != "-" and Path(s).is_dir()]
    batch = bool(dirs) or len(inputs) > 1
    if not batch:
        src = inputs[0]
        if src == "-":
            dst = output or "-"
        else:
            dst = output or str(Path(src).with_suffix(out_suffix))
            if output and output != "-" and (Path(output).is_dir() or output.endswith(("/", os.sep))):
                dst = str(Path(output) / (Path(src).stem + out_suffix))
        if src != "-" and dst != "-" and Path(src).resolve() == Path(dst).resolve():
            raise click.UsageError(f"output {dst} would overwrite the input")
        return [(src, dst)], False
    if "-" in inputs:
        raise click.UsageError("'-' (standard input) cannot be combined with other inputs")
    if output == "-":
        raise click.UsageError("several inputs cannot go to standard output; give an output folder")
    if output is not None and Path(output).exists() and not Path(output).is_dir():
        raise click.UsageError(f"output {output} must be a folder for several inputs")
    jobs: list[tuple[str, str, str]] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(it):
                rel = f.relative_to(p)
                if f.suffix.lower() in exts and not _hidden(rel) and f.is_file():
                    base = Path(output) if output else p
                    jobs.append((str(f), str((base / rel).with_suffix(out_suffix)), rel.as_posix()))
        else:
            dst = (Path(output) / (p.stem + out_suffix)) if output else p.with_suffix(out_suffix)
            jobs.append((s, str(dst), p.name))
    seen: dict[str, str] = {}
    for src, dst, _ in jobs:
        key = os.path.normcase(os.path.abspath(dst))
        if key in seen:
            raise click.UsageError(f"{seen[key]} and {src} would both be written to {dst}; "
                                   "rename one of them or run them separately")
        seen[key] = src
    return [(src, dst) for src, dst, rel in jobs if in_shard(rel, shard)], True


_BYTE_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 10**6, "MB": 10**6, "MIB": 1 << 20}


def parse_bytes(text: str) -> int:
    """A file size for ``--target-size``: "2048", "2KB" or "2kB" (2000), "2KiB" (2048), "1.5MB"."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _BYTE_UNITS:
        raise click.BadParameter(f"cannot read {text!r}; write e.g. 2048, 2KB (2000 bytes) or 2KiB (2048 bytes)",
                                 param_hint="--target-size")
    n = int(float(m.group(1)) * _BYTE_UNITS[unit])
    if n < 1:
        raise click.BadParameter(f"must be at least 1 byte, got {text!r}", param_hint="--target-size")
    return n


def pick_model(bpp: float, weights_dir: str | os.PathLike | None = None) -> str:
    """The name of the model closest to ``bpp`` among those whose weights are present."""
    from . import registry

    return registry.closest(bpp, weights=registry.weights_dir(weights_dir)).name


# ---------------------------------------------------------------------------------------
# Shared options


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--model", "-m", metavar="NAME", help="Model name (see `stablecodec models`); default: lite-3 or $STABLECODEC_MODEL."),
        click.option("--weights-dir", type=click.Path(file_okay=False), help="Folder of model weights (default: $STABLECODEC_HOME, else the user data dir)."),
        click.option("--sd-turbo", type=click.Path(), help="SD-Turbo folder (diffusers layout), with --checkpoint and --elic or --half-decoder."),
        click.option("--checkpoint", type=click.Path(), help="stablecodec_ft*.pkl (with --elic) or AEIC_*_ft*.pkl (with --half-decoder)."),
        click.option("--elic", type=click.Path(), help="elic_official.pth, for a StableCodec checkpoint."),
        click.option("--half-decoder", type=click.Path(), help="AdcSR's halfDecoder.ckpt, for an AEIC checkpoint."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
                     help="auto: fp16/bf16 on CUDA, bf16 on CPUs with native bf16 (StableCodec models), else fp32."),
        click.option("--max-memory", metavar="SIZE", help="Peak memory budget, e.g. 9GB (default: 9GB on CUDA, what fits this machine on CPU)."),
        click.option("--force", "-f", is_flag=True, help="Overwrite existing outputs (default: refuse a file, skip it in a folder)."),
        click.option("--recursive", "-r", is_flag=True, help="Walk input folders recursively."),
        click.option("--shard", metavar="I/N", help="Process only the I-th of N deterministic parts of a folder's files."),
        click.option("--json", "json_report", type=click.Path(dir_okay=False), help="Write a per-file JSON report here."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar, notes or summary; errors only."),
        click.option("--compile", "compile_", is_flag=True, help="torch.compile the UNet (slow first image; meant for GPUs, untested there)."),
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="ray: a Ray Data pipeline over a local Ray instance or a cluster (docs/scale-out.md)."),
        click.option("--address", metavar="ADDR", help="--engine ray: the cluster to join (default: start a local Ray instance)."),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="--engine ray: actors, one model each."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True, help="--engine ray: GPUs per actor."),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="--engine ray: files per batch."),
        click.option("--manifest", type=click.Path(), help="--engine ray: also write the status rows as Parquet here."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _codec(model: str | None = None, bpp: float | None = None, weights_dir: str | None = None,
           files: dict[str, str | None] | None = None, device: str = "auto",
           precision: str = "auto", max_memory: str | None = None, color_fix: bool = True, alpha: str = "refuse",
           metadata: str = "none", quiet: bool = False, compile_: bool = False) -> Codec:
    from .api import Codec

    return Codec(model, bpp=bpp, weights_dir=weights_dir, **(files or {}), device=device, precision=precision,
                 max_memory=max_memory, color_fix=color_fix, alpha=alpha, metadata=metadata,
                 progress=None if quiet else _tty(), compile=compile_)


def _files(sd_turbo, checkpoint, elic, half_decoder) -> dict[str, str | None]:
    return dict(sd_turbo=sd_turbo, checkpoint=checkpoint, elic=elic, half_decoder=half_decoder)


def run_jobs(kind: str, jobs: list[Job], batch: bool, work: Work, force: bool, quiet: bool,
             json_report: str | None) -> int:
    """Run ``work`` over jobs, write outputs atomically, report; return the exit status.

    A failing file is reported (one line) and the run goes on; Ctrl-C stops after the
    current file's temporary output is removed. Status: 0, 1 if any file failed, 130 if
    interrupted.
    """
    records: list[dict[str, Any]] = []
    failed = skipped = done = 0
    total_bytes = total_pixels = 0
    bpp_sum, bpp_count = 0.0, 0
    t_start = time.perf_counter()
    bar = None
    if batch and not quiet and _tty():
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=kind, unit="file", dynamic_ncols=True, file=sys.stderr)
    interrupted = False
    try:
        for src, dst in jobs:
            rec: dict[str, Any] = {"input": src, "output": dst, "size": None, "bpp": None, "seconds": None,
                                   "error": None, "skipped": False}
            t0 = time.perf_counter()
            try:
                if dst != "-" and Path(dst).exists() and not force:
                    if not batch:
                        raise Failure(f"{dst} exists; use --force to overwrite")
                    rec["skipped"] = True
                    skipped += 1
                    records.append(rec)
                    if bar:
                        bar.update(1)
                    continue
                if dst == "-" and _stdout_is_tty():
                    raise Failure("refusing to write binary data to a terminal; redirect standard output or use -o FILE")
                data = _read_input(src)
                out, extra = work(data, src, dst)
                _write(dst, out, force)
                rec.update(extra)
                rec["seconds"] = round(time.perf_counter() - t0, 3)
                total_bytes += extra.get("size") or 0
                total_pixels += (extra.get("width") or 0) * (extra.get("height") or 0)
                if extra.get("bpp") is not None:
                    bpp_sum, bpp_count = bpp_sum + extra["bpp"], bpp_count + 1
                done += 1
            except FileExistsError:
                rec["error"] = f"{dst} appeared meanwhile; not overwritten (use --force)"
            except (StableCodecError, Failure) as e:
                rec["error"] = str(e)
            except MemoryError:
                rec["error"] = "out of memory; lower --max-memory or downscale the image"
            except OSError as e:  # e.g. a full disk under a spill-to-file buffer
                rec["error"] = f"system error: {e.strerror or e}"
            except Exception as e:  # a bug: one line, and a broken file must not end a batch
                if os.environ.get("STABLECODEC_DEBUG"):
                    raise
                rec["error"] = (f"internal error {type(e).__name__}: {str(e)[:200]} (please report this; "
                                "STABLECODEC_DEBUG=1 shows the traceback)")
            if rec["error"]:
                failed += 1
                msg = rec["error"] if rec["error"].startswith(src) or not batch else f"{src}: {rec['error']}"
                if bar:
                    bar.write(f"stablecodec: error: {msg}", file=sys.stderr)
                else:
                    _fail(msg)
            records.append(rec)
            if bar:
                if bpp_count:
                    bar.set_postfix(bpp=f"{bpp_sum / bpp_count:.4f}", refresh=False)
                bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar:
            bar.close()
    elapsed = time.perf_counter() - t_start
    if interrupted and not batch:
        click.echo("stablecodec: interrupted; no output written", err=True)
    return report(kind, records, len(jobs), elapsed, interrupted, quiet, json_report, batch)


def report(kind: str, records: list[dict[str, Any]], planned: int, elapsed: float, interrupted: bool, quiet: bool,
           json_report: str | None, batch: bool) -> int:
    """The summary line and the ``--json`` report of a run; returns the exit status."""
    done = sum(1 for r in records if not r["error"] and not r["skipped"])
    skipped = sum(1 for r in records if r["skipped"])
    failed = sum(1 for r in records if r["error"])
    ok = [r for r in records if not r["error"] and not r["skipped"] and r.get("size") is not None]
    total_bytes = sum(r["size"] or 0 for r in ok)
    total_pixels = sum((r.get("width") or 0) * (r.get("height") or 0) for r in ok)
    bpps = [r["bpp"] for r in ok if r.get("bpp") is not None]
    mean_bpp = sum(bpps) / len(bpps) if bpps else None
    overall_bpp = total_bytes * 8 / total_pixels if total_pixels else None
    if batch and not quiet:
        rate = f"{overall_bpp:.4f} bpp overall, mean {mean_bpp:.4f} bpp" if overall_bpp is not None else (
            f"mean {mean_bpp:.4f} bpp" if mean_bpp is not None else "no bpp")
        speed = f", {elapsed / done:.2f} s/file" if done else ""
        click.echo(f"{kind}: {len(records)} of {planned} files: {done} done, {skipped} skipped, {failed} failed; "
                   f"{_size(total_bytes)} compressed, {rate}; {elapsed:.1f} s{speed}"
                   + (" (interrupted: run the same command again to resume)" if interrupted else ""), err=True)
    status = 130 if interrupted else (1 if failed else 0)
    if json_report:
        summary = {"command": kind, "planned": planned, "files": len(records), "done": done, "skipped": skipped,
                   "failed": failed, "bytes": total_bytes, "pixels": total_pixels,
                   "bpp": None if overall_bpp is None else round(overall_bpp, 6),
                   "mean_bpp": None if mean_bpp is None else round(mean_bpp, 6),
                   "seconds": round(elapsed, 3), "interrupted": interrupted, "exit_status": status, "results": records}
        try:
            write_atomic(Path(json_report), json.dumps(summary, indent=2).encode(), force=True)
        except OSError as e:
            _fail(f"cannot write the report {json_report} ({e.strerror or e})")
            return status or 1
    return status


def _write(dst: str, out: bytes, force: bool) -> None:
    """Standard output or an atomic file; write errors become one-line failures."""
    try:
        if dst == "-":
            stream = sys.stdout.buffer
            stream.write(out)
            stream.flush()
        else:
            write_atomic(Path(dst), out, force)
    except FileExistsError:
        raise
    except BrokenPipeError:
        _silence_stdout()
        raise Failure("standard output was closed before the output was written") from None
    except OSError as e:
        target = "standard output" if dst == "-" else dst
        raise Failure(f"cannot write {target} ({e.strerror or e}); check the folder's permissions and free space") from None


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so Python's exit flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


# ---------------------------------------------------------------------------------------
# Commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stablecodec")
def cli() -> None:
    """Extreme image compression (0.005-0.1 bits per pixel) with StableCodec.

    \b
      stablecodec encode photo.png -o photo.scdc
      stablecodec decode photo.scdc -o photo.png
      stablecodec encode photos/ -o compressed/ -r

    Exit status: 0 success, 1 failure (one line on stderr), 2 usage error, 130 interrupted.
    """


def _ray(kind: str, inputs, output, codec_kwargs: dict, options, force: bool, recursive: bool, shard, json_report,
         quiet: bool, address, workers: int, gpus_per_worker: float, batch_size: int, manifest) -> int:
    """``--engine ray``: the same job as a Ray Data pipeline (:mod:`raydata`); the same report."""
    from . import raydata

    if shard is not None:
        raise click.UsageError("--shard splits work for schedulers without Ray; with --engine ray, Ray splits it")
    if output is None or output == "-" or "-" in inputs:
        raise click.UsageError("--engine ray needs an output folder (-o DIR or -o s3://bucket/prefix/) and no '-'")
    t0 = time.perf_counter()
    try:
        if codec_kwargs.get("model") is not None:
            from . import registry

            registry.get(codec_kwargs["model"])
        rows = raydata.run(kind, list(inputs), output, codec_kwargs={k: v for k, v in codec_kwargs.items() if v is not None},
                           options=options, force=force, recursive=True if recursive is None else recursive,
                           address=address, workers=workers, gpus_per_worker=gpus_per_worker, batch_size=batch_size,
                           manifest=manifest)
    except StableCodecError as e:
        _fail(str(e))
        return 1
    if not rows:
        _nothing_found(tuple(inputs), "images" if kind == "encode" else f"{SCDC} files", recursive)
    for r in rows:
        if r["error"]:
            _fail(r["error"] if r["error"].startswith(r["input"]) else f"{r['input']}: {r['error']}")
    return report(kind, rows, len(rows), time.perf_counter() - t0, False, quiet, json_report, batch=True)


def _nothing_found(inputs: tuple[str, ...], what: str, recursive: bool) -> None:
    """A folder given as input that holds nothing to code is a mistake (a typo, a folder
    named like a file): one line and exit 1, not a silent "0 of 0 files"."""
    hint = "" if recursive else "; use -r to include subfolders"
    _fail(f"no {what} found in the folder {', '.join(inputs)}{hint}")
    sys.exit(1)


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", help="Output file, folder (several inputs) or - for standard output.")
@click.option("--bpp", type=click.FloatRange(min=0, min_open=True), metavar="TARGET",
              help="Pick the model closest to this bit rate among those whose weights are present.")
@click.option("--target-size", metavar="SIZE",
              help="Largest file, e.g. 2KB (2000 bytes), 2KiB or 2048: the highest-rate model present whose file fits.")
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True), metavar="BPP",
              help="Largest rate of the image (metadata not counted): the highest-rate model present that fits.")
@click.option("--family", metavar="NAME", help="With --target-size/--target-bpp: consider only this model family.")
@click.option("--alpha", type=click.Choice(["refuse", "drop"]), default="refuse", show_default=True,
              help="What to do with an alpha channel.")
@click.option("--metadata", type=click.Choice(["none", "exif", "all"]), default="none", show_default=True,
              help="Keep EXIF (upright, no thumbnail), or EXIF, XMP and the ICC profile, in the file for decode to write back.")
@model_options
def encode(inputs, output, bpp, target_size, target_bpp, family, alpha, metadata, model, weights_dir, sd_turbo,
           checkpoint, elic, half_decoder, device, precision, max_memory, force, recursive, shard, json_report, quiet,
           compile_, engine, address, workers, gpus_per_worker, batch_size, manifest):
    """Compress images (files, folders, or - for standard input) to .scdc."""
    choosers = [n for n, v in (("--model", model), ("--bpp", bpp), ("--target-size", target_size),
                               ("--target-bpp", target_bpp)) if v]
    if len(choosers) > 1:
        raise click.UsageError(f"give one of {', '.join(choosers)}, not several: each picks the model")
    files = _files(sd_turbo, checkpoint, elic, half_decoder)
    if choosers and choosers[0] != "--model" and any(files.values()):
        raise click.UsageError(f"{choosers[0]} picks a named model; with --sd-turbo/--checkpoint/--elic/--half-decoder "
                               "the files give the model")
    if family and not (target_size or target_bpp):
        raise click.UsageError("--family goes with --target-size or --target-bpp")
    max_bytes = parse_bytes(target_size) if target_size else None
    if engine == "ray":
        from .jobs import EncodeOptions

        if bpp:
            model = pick_model(bpp, weights_dir)
        options = EncodeOptions(alpha=alpha, metadata=metadata, max_bytes=max_bytes, target_bpp=target_bpp, family=family)
        kwargs = dict(model=model, weights_dir=weights_dir, **files, device=device, precision=precision,
                      max_memory=max_memory, alpha=alpha, metadata=metadata, compile=compile_)
        sys.exit(_ray("encode", inputs, output, kwargs, options, force, recursive, shard, json_report, quiet, address,
                      workers, gpus_per_worker, batch_size, manifest))
    jobs, batch = plan_jobs(inputs, output, recursive, IMAGE_EXTENSIONS, SCDC, parse_shard(shard))
    if batch and not jobs and shard is None:
        _nothing_found(inputs, "images (" + ", ".join(IMAGE_EXTENSIONS) + ")", recursive)
    try:
        if bpp:
            model = pick_model(bpp, weights_dir)
            if not quiet:
                from . import registry

                _note(f"--bpp {bpp:g}: model {model} (typically {registry.get(model).bpp:g} bpp)")
        codec = _codec(model, None, weights_dir, files, device, precision, max_memory,
                       alpha=alpha, metadata=metadata, quiet=quiet, compile_=compile_)
        if target_size or target_bpp:
            from . import registry

            if family:
                registry.family(family)
            if not registry.rate_ladder(registry.weights_dir(weights_dir), family):
                raise StableCodecError("no model's weights are present" + (f" for family {family}" if family else "")
                                       + "; see `stablecodec models`")
        elif batch and any(force or not Path(dst).exists() for _, dst in jobs):
            codec.get_model()  # once, before the loop: missing weights fail once, not per file
    except StableCodecError as e:
        _fail(str(e))
        sys.exit(1)

    from .jobs import EncodeOptions, encode_one

    options = EncodeOptions(alpha=alpha, metadata=metadata, max_bytes=max_bytes, target_bpp=target_bpp, family=family)

    def work(data: bytes, src: str, dst: str) -> tuple[bytes, dict[str, Any]]:
        out, fields = encode_one(codec, data, "standard input" if src == "-" else src, options)
        if fields["notes"] and not quiet and not batch:
            _note("; ".join(fields["notes"]))
        return out, fields

    sys.exit(run_jobs("encode", jobs, batch, work, force, quiet, json_report))


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", help="Output image (format from its extension, PNG by default), folder, or -.")
@click.option("--no-color-fix", is_flag=True, help="Skip the AdaIN colour correction (Eq. 9).")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "webp", "tiff", "bmp"]),
              help="Output format for folders, - and output names without an extension (default: png).")
@model_options
def decode(inputs, output, no_color_fix, fmt, model, weights_dir, sd_turbo, checkpoint, elic, half_decoder, device,
           precision, max_memory, force, recursive, shard, json_report, quiet, compile_, engine, address, workers,
           gpus_per_worker, batch_size, manifest):
    """Decompress .scdc files (files, folders, or - for standard input) to images."""
    if engine == "ray":
        from .jobs import DecodeOptions

        kwargs = dict(model=model, weights_dir=weights_dir, **_files(sd_turbo, checkpoint, elic, half_decoder),
                      device=device, precision=precision, max_memory=max_memory, color_fix=not no_color_fix,
                      compile=compile_)
        sys.exit(_ray("decode", inputs, output, kwargs, DecodeOptions(fmt=fmt), force, recursive, shard, json_report,
                      quiet, address, workers, gpus_per_worker, batch_size, manifest))
    suffix = f".{fmt}" if fmt else ".png"
    jobs, batch = plan_jobs(inputs, output, recursive, (SCDC,), suffix, parse_shard(shard))
    if batch and not jobs and shard is None:
        _nothing_found(inputs, f"{SCDC} files", recursive)
    try:
        codec = _codec(model, None, weights_dir, _files(sd_turbo, checkpoint, elic, half_decoder), device, precision,
                       max_memory, color_fix=not no_color_fix, quiet=quiet, compile_=compile_)
    except StableCodecError as e:
        _fail(str(e))
        sys.exit(1)

    from .jobs import DecodeOptions, decode_one

    options = DecodeOptions(fmt=fmt)

    def work(data: bytes, src: str, dst: str) -> tuple[bytes, dict[str, Any]]:
        out, fields = decode_one(codec, data, dst, options)
        if fields["notes"] and not quiet and not batch:
            _note("; ".join(fields["notes"]))
        return out, fields

    sys.exit(run_jobs("decode", jobs, batch, work, force, quiet, json_report))


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(files, as_json):
    """Show what .scdc files contain (model, size, rate, colour statistics) without decoding."""
    from .api import info as file_info

    status, out = 0, []
    for f in files:
        try:
            d = file_info(_read_input(f))
            d["file"] = f
            out.append(d)
        except (StableCodecError, Failure) as e:
            _fail(f"{f}: {e}" if not str(e).startswith(f) else str(e))
            status = 1
    if as_json:
        click.echo(json.dumps(out if len(files) > 1 else (out[0] if out else {}), indent=2))
    else:
        for d in out:
            meta = ""
            if d["metadata"]:
                m = d["metadata"]
                parts = [f"{k.upper()} {m[k]} B" for k in ("exif", "xmp", "icc") if k in m]
                fields = ", ".join(f"{k} {v}" for k, v in (m.get("exif_fields") or {}).items())
                meta = (f"; metadata {d['metadata_bytes']} B ({', '.join(parts)}"
                        f"{'; ' + fields if fields else ''}{'; ICC ' + repr(m['icc_name']) if 'icc_name' in m else ''})")
            coded = d["coded_size"]
            coded = "" if coded == [d["width"], d["height"]] else f" (coded at {coded[0]}x{coded[1]})"
            click.echo(f"{d['file']}: {d['width']}x{d['height']}{coded}{' grey' if d['greyscale'] else ''}, model {d['model']} "
                       f"(weights {d['fingerprint']}), {d['bytes']} bytes, image {d['bpp']:.4f} bpp, format {d['format_version']}, "
                       f"header {d['header_bytes']} B + colour {0 if d['color_mean'] is None else 2 * (len(d['color_mean']) * 2)} B"
                       f"{meta}{'' if d['crc_ok'] else ', CRC MISMATCH (corrupt)'}")
    sys.exit(status)


@cli.command()
@click.option("--weights-dir", type=click.Path(file_okay=False), help="Folder of model weights.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(weights_dir, as_json):
    """List the named models, their typical rates, and whether their weights are present."""
    from . import registry

    wd = registry.weights_dir(weights_dir)
    rows = []
    for m in registry.MODELS:
        a = registry.locate(m, wd)
        rows.append({"name": m.name, "family": m.family, "bpp": m.bpp, "present": a.present, "where": a.where,
                     "default": m.name == registry.default_name(), "description": m.description})
    if as_json:
        click.echo(json.dumps({"weights_dir": str(wd), "models": rows}, indent=2))
        return
    click.echo(f"weights directory: {wd}")
    for r in rows:
        mark = "*" if r["default"] else " "
        state = "present" if r["present"] else "missing"
        click.echo(f"{mark} {r['name']:<13} {r['bpp']:>7.4f} bpp  {state:<8} {r['description']}")
    click.echo("(* default; bpp: typical rate, lite on the val photos, released models on Kodak)")


@cli.command()
@click.option("--sd-turbo", type=click.Path(), help="SD-Turbo folder (diffusers layout).")
@click.option("--checkpoint", type=click.Path(), help="stablecodec_ft*.pkl or AEIC_*_ft*.pkl")
@click.option("--elic", type=click.Path(), help="elic_official.pth (StableCodec)")
@click.option("--half-decoder", type=click.Path(), help="halfDecoder.ckpt (AEIC); alone: extract its tensors safely")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Output file (default: <model>.safetensors in the weights dir).")
@click.option("--name", help="Registry name (default: from the checkpoint's file name).")
@click.option("--weights-dir", type=click.Path(file_okay=False))
@click.option("--force", "-f", is_flag=True)
def convert(sd_turbo, checkpoint, elic, half_decoder, output, name, weights_dir, force):
    """Turn a model's released files into one safetensors file (LoRA merged, tables stored).

    \b
      stablecodec convert --sd-turbo sd-turbo --checkpoint stablecodec_ft8.pkl --elic elic_official.pth
      stablecodec convert --sd-turbo sd-turbo --checkpoint AEIC_SE_ft8.pkl --half-decoder halfDecoder.ckpt
      stablecodec convert --half-decoder halfDecoder.ckpt   # only its tensors, no code from the file
    """
    from . import registry, weights

    files = _files(sd_turbo, checkpoint, elic, half_decoder)
    try:
        if half_decoder and not (sd_turbo or checkpoint or elic):
            out = Path(output) if output else None
            if out is not None and out.exists() and not force:
                raise Failure(f"{out} exists; use --force to overwrite")
            written = weights.loader("aeic").convert_half_decoder(Path(half_decoder), out)
            click.echo(f"wrote {written} (the halfDecoder's tensors; no code of the checkpoint was run)")
            return
        rec = weights.explicit_family(files)
        if name is None:
            name = weights.loader(rec).name_from_checkpoint(Path(checkpoint))
            if name is None:
                raise Failure(f"cannot tell the model from the file name {Path(checkpoint).name}; give --name "
                              f"(one of {', '.join(m.name for m in registry.MODELS if m.family == rec.name)})")
        spec = registry.get(name)
        if spec.family != rec.name:
            raise Failure(f"--name {name} is a {spec.family} model, the files are {rec.name}'s")
        out = Path(output) if output else registry.weights_dir(weights_dir) / spec.converted
        if out.exists() and not force:
            raise Failure(f"{out} exists; use --force to overwrite")
        out.parent.mkdir(parents=True, exist_ok=True)
        fp = weights.convert_model(spec, files, out)
    except (StableCodecError, Failure) as e:
        _fail(str(e))
        sys.exit(1)
    click.echo(f"wrote {out} (model {spec.name}, fingerprint {fp})")


@cli.command()
@click.argument("name")
@click.option("--from", "source", metavar="PATH_OR_URL",
              help="Where files that need a browser were saved: a folder, a file, or an http(s) URL (of a file, or a folder ending in /).")
@click.option("--weights-dir", type=click.Path(file_okay=False), help="Where to put them (default: $STABLECODEC_HOME, else the user data dir).")
@click.option("--no-convert", is_flag=True, help="Keep the released files only; do not write the one-file form.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def download(name, source, weights_dir, no_convert, quiet):
    """Fetch the files model NAME needs (SD-Turbo from the Hugging Face Hub; the authors'
    checkpoints from --from), check them, record their SHA-256 and convert them."""
    from . import registry
    from .download import download as fetch

    try:
        spec = registry.get(name)
        wd = registry.weights_dir(weights_dir)
        if spec.family == "lite":
            click.echo(f"{spec.name} ships with stablecodec ({registry.locate(spec, wd).where}): nothing to download")
            return
        fetch(spec, wd, source, progress=not quiet and _tty(), echo=click.echo)
        if not no_convert:
            from . import weights

            out = wd / spec.converted
            files = {k: wd / p for k, p in zip([k for k, _ in spec.record.explicit], _released_paths(spec))}
            fp = weights.convert_model(spec, files, out)
            click.echo(f"wrote {out} (model {spec.name}, fingerprint {fp})")
    except StableCodecError as e:
        _fail(str(e))
        sys.exit(1)


def _released_paths(spec) -> list[str]:
    """The weights-directory paths of a family's explicit files, in its ``explicit`` order."""
    from . import registry

    by_flag = {"sd_turbo": registry.SD_TURBO_DIR, "checkpoint": spec.checkpoint, "elic": registry.ELIC_FILE,
               "half_decoder": registry.HALF_DECODER_FILE}
    return [by_flag[k] for k, _ in spec.record.explicit]


cli.add_command(eval_command)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (schedulers, kill) stops as cleanly as Ctrl-C


def _usage_line(e: click.ClickException, argv: list[str]) -> str:
    """A usage error in one line (click prints usage, a hint and the error on three)."""
    msg = e.format_message().rstrip(".")
    if isinstance(e, click.NoSuchOption):
        name = e.option_name
        if any(a.startswith(name) and Path(a).exists() for a in argv):
            return f"{msg}; to name a file that starts with '-', write ./{next(a for a in argv if a.startswith(name))} or put -- before it"
    if isinstance(e, click.UsageError) and e.ctx is not None:
        return f"{msg} (see '{e.ctx.command_path} --help')"
    return msg


def main(argv: list[str] | None = None) -> None:
    """The console entry point: exit statuses 0, 1, 2 and 130 (see the module docstring)."""
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except (ValueError, OSError):  # not the main thread
        pass
    try:
        rv = cli.main(args=argv, prog_name="stablecodec", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        # click turns Ctrl-C outside run_jobs (e.g. while a model loads) into Abort
        if isinstance(e, click.exceptions.Abort) and isinstance(e.__cause__, EOFError):
            sys.exit(1)
        click.echo("stablecodec: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare `stablecodec` or `stablecodec encode`: the help
            e.show()
        else:
            click.echo(f"stablecodec: error: {_usage_line(e, sys.argv[1:] if argv is None else argv)}", err=True)
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
