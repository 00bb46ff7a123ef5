"""Writing outputs and messages as the command does, for every command (``encode``,
``decode``, ``eval``) and engine (the local loop, the Ray workers): a file is written to a
hidden temporary name and renamed, and never replaces another without ``force``; a user's
mistake is one line on standard error. No click commands here, so no import cycles.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import click


class Failure(Exception):
    """A one-line message for the user; exits with status 1."""


def _fail(msg: str) -> None:
    click.echo(f"stablecodec: error: {msg}", err=True)


def _note(msg: str) -> None:
    click.echo(f"stablecodec: note: {msg}", err=True)


# ---------------------------------------------------------------------------------------
# Output files


def write_atomic(path: Path, data: bytes, force: bool) -> None:
    """Write via a temporary file in the same folder and rename; never clobber without force.

    The temporary file is ``.<name>.<pid>.part`` (hidden, so a folder walk skips it) and is
    removed on any failure or interruption: ``path`` either has all of ``data`` or is not
    touched. Raises :class:`FileExistsError` if ``path`` exists (or appears meanwhile) and
    not ``force``.
    """
    if path.exists() and not force:
        raise FileExistsError(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where a folder should be: not "the output exists"
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of its folder", str(path.parent)) from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:  # atomic no-clobber: a hard link fails if the name exists
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise FileExistsError(str(path)) from None
                os.replace(tmp, path)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def _tty() -> bool:
    return sys.stderr.isatty()


def _stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
