"""The library's exceptions: one small hierarchy the CLI maps to exit codes.

`UsageError` is a user mistake (bad option, missing folder, unknown dataset): exit
code 2. `TrainingFailure` is a run that started and could not finish (a loss that
became NaN), `ExportFailure` an export that was written but failed its check against
the Keras model (nothing is published): exit code 1. `DiskFull` is a write that found its
file system full: exit code 2. Library code never calls `sys.exit` or imports click.
"""

import math
import numbers


class ResNetKerasError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class UsageError(ResNetKerasError, ValueError):
    """The caller asked for something invalid; the message says what is accepted."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration value is out of range or inconsistent."""


class DataError(UsageError):
    """A dataset cannot be found, read or decoded."""


class TrainingFailure(ResNetKerasError):
    """Training started but could not finish (for example the loss became NaN)."""

    exit_code = 1


class ExportFailure(ResNetKerasError):
    """An export was converted but disagrees with the Keras model or loses too much accuracy."""

    exit_code = 1


class DiskFull(ResNetKerasError):
    """A write found no space left on its file system (ENOSPC, or a disk quota); the message names
    the path and the space needed. Nothing half-written is left: the previous files stay whole and
    the same command resumes once space is freed.

    Exit code 2, as for the other faults the user fixes outside the program (a read-only folder):
    restarting it without freeing space would only fill the disk again.
    """

    exit_code = 2


class Preempted(ResNetKerasError):
    """Training stopped on SIGTERM after saving a checkpoint; the same command resumes it.

    Exit code 143 (128 + SIGTERM) is what a shell or an orchestrator reports for a process that
    SIGTERM killed: a job controller that restarts on failure restarts it, and the restart resumes.
    """

    exit_code = 143


def expect(ok: bool, field: str, value, expected: str) -> None:
    """Raises ConfigError("Received: field=value; expected ...") unless `ok`."""
    if not ok:
        raise ConfigError(f"Received: {field}={value!r}; expected {expected}.")


def is_int(value) -> bool:
    """An integer (Python's or NumPy's) that is not a bool (True is an int in Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (or its type name): what one-line errors quote."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
