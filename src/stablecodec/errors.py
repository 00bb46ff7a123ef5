"""The project's exceptions: every failure a user can cause or meet is one of these.

The CLI prints ``str(error)`` as a single line and exits non-zero; library users catch
:class:`StableCodecError`. Each message names the problem and, where one exists, the fix.
No torch import here, so the container and the CLI can use these cheaply.
"""

from __future__ import annotations


class StableCodecError(Exception):
    """Base class of every error stablecodec raises on purpose."""


class FormatError(StableCodecError):
    """A ``.scdc`` file that is not one, is corrupt, truncated or from an unknown version."""


class DesyncError(FormatError):
    """The entropy decoder's symbols do not match the encoder's check value.

    The file is intact (its CRC matched) but these weights or this machine compute other
    entropy parameters than the encoder did. Never silently ignored.
    """


class WeightsError(StableCodecError):
    """Model weights are missing, unreadable, unsafe or do not match the file."""


class ImageError(StableCodecError):
    """An input image that cannot be read or is not acceptable (alpha, size, bomb)."""


class LimitError(StableCodecError):
    """A request exceeds a limit: image size, memory budget."""


class ConfigError(StableCodecError):
    """A bad argument value (device, precision, model name, memory budget...)."""
