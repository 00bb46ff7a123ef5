"""The ``stablecodec`` command: files, folders, streams and exit codes; no tensor math.

Exit status: 0 success; 1 failure (a user error such as a missing or corrupt file,
missing weights, an image too large -- one line on stderr -- or any file of a batch
failing); 2 usage error (bad option or argument); 130 interrupted (Ctrl-C), with no
partial output left behind. Outputs are written to a temporary name and renamed, and an
existing output is never replaced without ``--force``: a single file is refused, a file
of a batch is skipped, so an interrupted batch resumes by running the same command.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import StableCodecError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
SCDC = ".scdc"


class Failure(Exception):
    """A one-line message for the user; exits with status 1."""


def _fail(msg: str) -> None:
    click.echo(f"stablecodec: error: {msg}", err=True)


# ---------------------------------------------------------------------------------------
# Output files


def write_atomic(path: Path, data: bytes, force: bool) -> None:
    """Write via a temporary file in the same folder and rename; never clobber without force."""
    if path.exists() and not force:
        raise FileExistsError(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not force and path.exists():
            raise FileExistsError(str(path))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def _shard(spec: str | None):
    if spec is None:
        return None
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise click.BadParameter("must be I/N, e.g. 1/4", param_hint="--shard") from None
    if not (n >= 1 and 1 <= i <= n):
        raise click.BadParameter(f"needs 1 <= I <= N, got {spec}", param_hint="--shard")
    return i, n


def in_shard(rel: str, shard) -> bool:
    """Deterministic 1/N split by a hash of the relative path (stable when files are added)."""
    if shard is None:
        return True
    i, n = shard
    return int(hashlib.blake2b(rel.encode(), digest_size=8).hexdigest(), 16) % n == i - 1


def plan_jobs(inputs: tuple[str, ...], output: str | None, recursive: bool, exts: tuple[str, ...], out_suffix: str,
              shard=None) -> tuple[list[tuple[str, str]], bool]:
    """Returns the (source, destination) list and whether this is a batch (folder) run."""
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
            if output and output != "-" and Path(output).is_dir():
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
    jobs = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(it):
                if f.is_file() and f.suffix.lower() in exts and not f.name.startswith("."):
                    rel = f.relative_to(p)
                    base = Path(output) if output else p
                    jobs.append((str(f), str((base / rel).with_suffix(out_suffix)), rel.as_posix()))
        else:
            dst = (Path(output) / (p.stem + out_suffix)) if output else p.with_suffix(out_suffix)
            jobs.append((s, str(dst), p.name))
    return [(src, dst) for src, dst, rel in jobs if in_shard(rel, shard)], True


# ---------------------------------------------------------------------------------------
# Shared options


def model_options(f):
    opts = [
        click.option("--model", "-m", metavar="NAME", help="Model name (see `stablecodec models`); default: lite-3 or $STABLECODEC_MODEL."),
        click.option("--weights-dir", type=click.Path(file_okay=False), help="Folder of model weights (default: $STABLECODEC_HOME, else the user data dir)."),
        click.option("--sd-turbo", type=click.Path(), help="SD-Turbo folder (diffusers layout), with --checkpoint and --elic."),
        click.option("--checkpoint", type=click.Path(), help="stablecodec_ft*.pkl, with --sd-turbo and --elic."),
        click.option("--elic", type=click.Path(), help="elic_official.pth, with --sd-turbo and --checkpoint."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
                     help="auto: fp16/bf16 on CUDA, bf16 on CPUs with native bf16 (StableCodec models), else fp32."),
        click.option("--max-memory", metavar="SIZE", help="Peak memory budget, e.g. 9GB (default: 9GB on CUDA, what fits this machine on CPU)."),
        click.option("--force", "-f", is_flag=True, help="Overwrite existing outputs."),
        click.option("--recursive", "-r", is_flag=True, help="Walk input folders recursively."),
        click.option("--shard", metavar="I/N", help="Process only the I-th of N deterministic parts of the inputs."),
        click.option("--json", "json_report", type=click.Path(dir_okay=False), help="Write a per-file JSON report here."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _codec(model=None, bpp=None, weights_dir=None, sd_turbo=None, checkpoint=None, elic=None, device="auto",
           precision="auto", max_memory=None, color_fix=True, alpha="refuse", quiet=False):
    from .api import Codec

    return Codec(model, bpp=bpp, weights_dir=weights_dir, sd_turbo=sd_turbo, checkpoint=checkpoint, elic=elic,
                 device=device, precision=precision, max_memory=max_memory, color_fix=color_fix, alpha=alpha,
                 progress=None if quiet else _tty())


def _tty() -> bool:
    return sys.stderr.isatty()


def run_jobs(kind: str, jobs, batch: bool, work, force: bool, quiet: bool, json_report: str | None) -> int:
    """Run ``work(src_bytes) -> (out_bytes, record)`` over jobs; report; return the exit status."""
    records, failed, skipped, done = [], 0, 0, 0
    total_bytes, t_start = 0, time.time()
    bar = None
    if batch and not quiet and _tty():
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=kind, unit="file", dynamic_ncols=True, file=sys.stderr)
    interrupted = False
    try:
        for src, dst in jobs:
            rec = {"input": src, "output": dst, "bytes": None, "bpp": None, "seconds": None, "error": None}
            t0 = time.time()
            try:
                if dst != "-" and Path(dst).exists() and not force:
                    if not batch:
                        raise Failure(f"{dst} exists; use --force to overwrite")
                    rec["skipped"] = True
                    skipped += 1
                    records.append(rec)
                    continue
                data = _read_input(src)
                out, extra = work(data, src, dst)
                if dst == "-":
                    sys.stdout.buffer.write(out)
                    sys.stdout.buffer.flush()
                else:
                    write_atomic(Path(dst), out, force)
                rec.update(extra)
                rec["seconds"] = round(time.time() - t0, 3)
                total_bytes += extra.get("bytes") or 0
                done += 1
            except FileExistsError:
                rec["error"] = f"{dst} appeared while encoding; not overwritten (use --force)"
            except (StableCodecError, Failure) as e:
                rec["error"] = str(e)
            except MemoryError:
                rec["error"] = "out of memory; lower --max-memory or downscale the image"
            if rec["error"]:
                failed += 1
                msg = rec["error"] if rec["error"].startswith(src) or not batch else f"{src}: {rec['error']}"
                if bar:
                    bar.write(f"stablecodec: error: {msg}", file=sys.stderr)
                else:
                    _fail(msg)
            records.append(rec)
            if bar:
                bar.update(1)
                bpps = [r["bpp"] for r in records if r.get("bpp") is not None]
                if bpps:
                    bar.set_postfix(bpp=f"{sum(bpps) / len(bpps):.4f}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar:
            bar.close()
    elapsed = time.time() - t_start
    if batch and not quiet:
        bpps = [r["bpp"] for r in records if r.get("bpp") is not None]
        mean = f", mean {sum(bpps) / len(bpps):.4f} bpp" if bpps else ""
        click.echo(f"{kind}: {done} done, {skipped} skipped, {failed} failed, {_size(total_bytes)} written{mean}, "
                   f"{elapsed:.1f} s" + (" (interrupted)" if interrupted else ""), err=True)
    if json_report:
        summary = {"files": len(records), "done": done, "skipped": skipped, "failed": failed, "bytes": total_bytes,
                   "seconds": round(elapsed, 3), "interrupted": interrupted, "results": records}
        write_atomic(Path(json_report), json.dumps(summary, indent=2).encode(), force=True)
    if interrupted:
        return 130
    return 1 if failed else 0


def _size(n: int) -> str:
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


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", help="Output file, folder (several inputs) or - for standard output.")
@click.option("--bpp", type=float, metavar="TARGET", help="Pick the model closest to this bit rate.")
@click.option("--alpha", type=click.Choice(["refuse", "drop"]), default="refuse", show_default=True,
              help="What to do with an alpha channel.")
@model_options
def encode(inputs, output, bpp, alpha, model, weights_dir, sd_turbo, checkpoint, elic, device, precision, max_memory,
           force, recursive, shard, json_report, quiet):
    """Compress images (files, folders, or - for standard input) to .scdc."""
    if model and bpp:
        raise click.UsageError("give either --model or --bpp, not both")
    jobs, batch = plan_jobs(inputs, output, recursive, IMAGE_EXTENSIONS, SCDC, _shard(shard))
    try:
        codec = _codec(model, bpp, weights_dir, sd_turbo, checkpoint, elic, device, precision, max_memory,
                       alpha=alpha, quiet=quiet)
    except StableCodecError as e:
        _fail(str(e))
        sys.exit(1)

    def work(data: bytes, src: str, dst: str):
        from .imageio import load

        notes: list[str] = []
        img = load(data if src == "-" else src, alpha=alpha)
        out = codec.encode(img, notes=notes)
        if notes and not quiet and not batch:
            click.echo(f"stablecodec: note: {'; '.join(notes)}", err=True)
        return out, {"bytes": len(out), "bpp": round(len(out) * 8 / (img.width * img.height), 6),
                     "width": img.width, "height": img.height, "notes": notes}

    sys.exit(run_jobs("encode", jobs, batch, work, force, quiet, json_report))


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", help="Output image (format from its extension, PNG by default), folder, or -.")
@click.option("--no-color-fix", is_flag=True, help="Skip the AdaIN colour correction (Eq. 9).")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "webp", "tiff", "bmp"]), help="Output format for folders and -.")
@model_options
def decode(inputs, output, no_color_fix, fmt, model, weights_dir, sd_turbo, checkpoint, elic, device, precision,
           max_memory, force, recursive, shard, json_report, quiet):
    """Decompress .scdc files (files, folders, or - for standard input) to images."""
    suffix = f".{fmt}" if fmt else ".png"
    jobs, batch = plan_jobs(inputs, output, recursive, (SCDC,), suffix, _shard(shard))
    try:
        codec = _codec(model, None, weights_dir, sd_turbo, checkpoint, elic, device, precision, max_memory,
                       color_fix=not no_color_fix, quiet=quiet)
    except StableCodecError as e:
        _fail(str(e))
        sys.exit(1)

    def work(data: bytes, src: str, dst: str):
        from .imageio import encode_image, format_for

        img = codec.decode(data)
        target = fmt.upper().replace("JPG", "JPEG") if fmt and (dst == "-" or not Path(dst).suffix) else format_for(None if dst == "-" else dst)
        return encode_image(img, target), {"bytes": len(data), "bpp": round(len(data) * 8 / (img.width * img.height), 6),
                                           "width": img.width, "height": img.height}

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
            click.echo(f"{d['file']}: {d['width']}x{d['height']}{' grey' if d['greyscale'] else ''}, model {d['model']} "
                       f"(weights {d['fingerprint']}), {d['bytes']} bytes = {d['bpp']:.4f} bpp, format {d['format_version']}, "
                       f"header {d['header_bytes']} B + colour {0 if d['color_mean'] is None else 2 * (len(d['color_mean']) * 2)} B"
                       f"{'' if d['crc_ok'] else ', CRC MISMATCH (corrupt)'}")
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
        click.echo(f"{mark} {r['name']:<8} {r['bpp']:>7.3f} bpp  {state:<8} {r['description']}")
    click.echo("(* default; bpp: typical rate, lite on the val photos, released models on Kodak)")


@cli.command()
@click.option("--sd-turbo", type=click.Path(), required=True, help="SD-Turbo folder (diffusers layout).")
@click.option("--checkpoint", type=click.Path(), required=True, help="stablecodec_ft*.pkl")
@click.option("--elic", type=click.Path(), required=True, help="elic_official.pth")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Output file (default: stablecodec-<name>.safetensors in the weights dir).")
@click.option("--name", help="Registry name (default: from the checkpoint's file name).")
@click.option("--weights-dir", type=click.Path(file_okay=False))
@click.option("--force", "-f", is_flag=True)
def convert(sd_turbo, checkpoint, elic, output, name, weights_dir, force):
    """Turn the released files into one safetensors file (LoRA merged, tables and prompt stored)."""
    from . import registry
    from .weights import convert as do_convert

    if name is None:
        stem = Path(checkpoint).stem
        name = stem[len("stablecodec_"):] if stem.startswith("stablecodec_") else stem
    try:
        spec = registry.get(name)
        out = Path(output) if output else registry.weights_dir(weights_dir) / spec.converted
        if out.exists() and not force:
            raise Failure(f"{out} exists; use --force to overwrite")
        out.parent.mkdir(parents=True, exist_ok=True)
        fp = do_convert(Path(sd_turbo), Path(checkpoint), Path(elic), out, spec.name)
    except (StableCodecError, Failure) as e:
        _fail(str(e))
        sys.exit(1)
    click.echo(f"wrote {out} (model {spec.name}, fingerprint {fp})")


def main() -> None:
    try:
        cli.main(prog_name="stablecodec", standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("stablecodec: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
