"""The ``stablecodec eval`` command: options, progress, report files and exit codes.

The measuring is :mod:`stablecodec.evaluate`'s; this module only turns the command line
into an :class:`~stablecodec.evaluate.Evaluation` and its report into a table and files
(:mod:`stablecodec.reports`).
Exit status as for the other commands: 0 success, 1 failure (one line on stderr per
problem; any image or model that failed makes the run a failure), 2 usage error, 130
interrupted (the reports then hold what was measured so far).

Helpers shared with :mod:`stablecodec.cli` are imported when the command runs, so that
``cli`` can import this module at its top without a cycle.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import registry

from .errors import StableCodecError


def _floats(value: str | None, param_hint: str) -> list[float]:
    if value is None:
        return []
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"must be comma-separated numbers, e.g. 0.01,0.03,0.1; got {value!r}",
                                 param_hint=param_hint) from None
    bad = [v for v in out if not v > 0 or v == float("inf")]
    if bad or not out:
        raise click.BadParameter(f"targets must be positive bits per pixel, got {value!r}", param_hint=param_hint)
    return out


def _names(value: str | None, known: tuple[str, ...], param_hint: str) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names or ("none" in names and len(names) > 1):
        raise click.BadParameter(f"choose from {', '.join(known)} (comma-separated), got {value!r}",
                                 param_hint=param_hint)
    return names


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="DIR...")
@click.option("--model", "-m", "models", multiple=True, metavar="NAME",
              help="Model to evaluate (repeatable; 'none' for baselines only). Default: the model closest to each "
                   "--bpp target, else lite-3 (or $STABLECODEC_MODEL).")
@click.option("--bpp", metavar="LIST", help="Target rates, e.g. 0.01,0.03,0.1: the baselines are matched to each "
                                            "(default: the typical rates of the models evaluated).")
@click.option("--family", type=click.Choice(sorted(registry.FAMILIES)), default="lite",
              show_default=True,
              help="Model family that --bpp picks from when no --model is given.")
@click.option("--baselines", metavar="LIST",
              help="Classic codecs at matched rate: jpeg,webp,avif or none (default: all that Pillow supports).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write one row per image x codec x rate here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full report (rows, averages, FID/KID) here.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False),
              help="Write a rate-distortion PNG per metric into this folder (needs matplotlib).")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="Folder of model weights (default: $STABLECODEC_HOME, else the user data dir).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--max-memory", metavar="SIZE", help="Peak memory budget for the models, e.g. 9GB.")
@click.option("--alpha", type=click.Choice(["refuse", "drop"]), default="refuse", show_default=True,
              help="What to do with an alpha channel.")
@click.option("--recursive", "-r", is_flag=True, help="Walk input folders recursively.")
@click.option("--force", "-f", is_flag=True, help="Overwrite existing report files.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes (the table is still printed).")
def eval_command(inputs, models, bpp, family, baselines, csv_path, json_path, plot_dir, weights_dir, device, precision,
                 max_memory, alpha, recursive, force, quiet):
    """Measure rate and quality of models and of JPEG/WebP/AVIF at matched rates.

    Every image in DIR is coded and decoded; bpp is the real file size (header included)
    per pixel; PSNR and MS-SSIM always, LPIPS, DISTS and FID/KID (256x256 patches) when
    their packages and weights are installed locally. See docs/evaluation.md.

    \b
      stablecodec eval kodak/ --model ft2 --model ft8 --weights-dir W --csv kodak.csv
      stablecodec eval photos/ --bpp 0.01,0.03,0.1 --baselines jpeg,webp,avif --plot rd/
    """
    from .files import Failure, _fail, _tty, write_atomic
    from .baselines import BASELINES
    from .evaluate import Evaluation, find_images
    from .metrics import METRICS
    from .reports import format_table, plot_files, to_csv, to_json

    targets = _floats(bpp, "--bpp")
    baseline_names = _names(baselines, (*BASELINES, "none"), "--baselines")
    outputs = [Path(p) for p in (csv_path, json_path) if p]
    if plot_dir:
        outputs += [Path(plot_dir) / f"rd_{m}.png" for m in METRICS]
    bar = None

    def say(prefix: str, msg: str) -> None:
        line = f"stablecodec: {prefix}: {msg}"
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def note(msg: str) -> None:
        if not quiet:
            say("note", msg)

    try:
        for p in outputs:
            if p.exists() and not force:
                raise Failure(f"{p} exists; use --force to overwrite")
        images = find_images(inputs, recursive)
        ev = Evaluation(models=models, targets=targets, baselines=baseline_names, family=family,
                        weights_dir=weights_dir, device=device, precision=precision, max_memory=max_memory,
                        alpha=alpha, note=note)
        if not ev.models and not ev.baselines:
            raise Failure("nothing to evaluate: no model weights installed and no baselines")
        if not quiet and _tty():
            from tqdm import tqdm

            bar = tqdm(total=ev.units(len(images)), desc="eval", unit="run", dynamic_ncols=True, file=sys.stderr)
        try:
            report = ev.run(images, advance=bar.update if bar else None, error=lambda m: say("error", m))
        finally:
            if bar is not None:
                bar.close()
                bar = None
        click.echo(format_table(report))
        if csv_path:
            write_atomic(Path(csv_path), to_csv(report.results).encode(), force)
        if json_path:
            write_atomic(Path(json_path), to_json(report).encode(), force)
        if plot_dir:
            _write_plots(Path(plot_dir), report, force, note, plot_files, write_atomic)
    except (StableCodecError, Failure) as e:
        _fail(str(e))
        sys.exit(1)
    except FileExistsError as e:
        _fail(f"{e} appeared while evaluating; not overwritten (use --force)")
        sys.exit(1)
    except OSError as e:  # reading a folder or writing a report
        _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        sys.exit(1)
    except MemoryError:
        _fail("out of memory; lower --max-memory or evaluate smaller images")
        sys.exit(1)
    if report.interrupted:
        click.echo("stablecodec: interrupted; the reports hold what was measured so far", err=True)
        sys.exit(130)
    sys.exit(1 if report.errors else 0)


def _write_plots(folder: Path, report, force: bool, note, plot_files, write_atomic) -> None:
    try:
        files = plot_files(report)
    except ImportError:
        note("--plot needs matplotlib (pip install 'stablecodec[eval]'); no plots written")
        return
    if not files:
        note("nothing to plot: no codec reached any target")
        return
    for name, data in files.items():
        write_atomic(folder / name, data, force)
