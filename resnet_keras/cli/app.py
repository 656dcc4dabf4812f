"""The `resnet-keras` group: every error as one line on stderr and an exit code, Ctrl-C, and the
quiet TensorFlow import that every command but `--help` makes.

Exit codes: 2 for a user mistake (bad options, a missing file, a read-only folder), 1 for a failed
run, 130 for Ctrl-C. The commands live in the modules beside this one; resnet_keras.cli.main adds
them to `cli`.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from resnet_keras import __version__
from resnet_keras.core.errors import ResNetKerasError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal

TRACEBACK_ENV = "RESNET_KERAS_TRACEBACK"
# Set by main() (the console script) only: in-process callers such as tests get SystemExit instead.
_PROCESS_EXIT_ON_INTERRUPT = False
# errno values that mean the user pointed us at the wrong place (exit 2), not a failed run (exit 1).
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT}


class ResNetGroup(click.Group):
    """A click group whose errors are one line, never a traceback or a usage dump."""

    def main(self, args=None, prog_name=None, **extra):
        extra["standalone_mode"] = False
        try:
            result = super().main(args, prog_name, **extra)
        except click.ClickException as error:  # bad options: exit 2
            click.echo(f"Error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except ResNetKerasError as error:
            _error_line(error)
            sys.exit(error.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Aborted.", err=True)
            if _PROCESS_EXIT_ON_INTERRUPT:  # the console script: skip TensorFlow's slow teardown
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            sys.exit(130)
        except OSError as error:  # the file system refused: a read-only folder, a file where a folder goes, a full disk
            where = f": {error.filename}" if error.filename else ""
            _error_line(f"{error.strerror or error}{where}")
            sys.exit(2 if error.errno in _USER_ERRNOS else 1)
        except MemoryError:
            _error_line("out of memory; use a smaller --batch-size or --image-size")
            sys.exit(1)
        except Exception as error:  # noqa: BLE001 - a bug or a library failure: one line, the traceback on request
            if os.environ.get(TRACEBACK_ENV):
                raise
            _error_line(f"{type(error).__name__}: {error} (set {TRACEBACK_ENV}=1 for the traceback)")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and not ctx.resilient_parsing and not {"-h", "--help"} & set(rest):
            _import_tensorflow_quietly()  # every command needs it, its --help does not
        return name, command, rest


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with file descriptor 2 pointed at /dev/null.

    TensorFlow's C++ start-up lines ("oneDNN custom operations are on", CPU feature notes) are
    written before its logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot silence them; without
    this an error of ours would not be the only line on stderr.
    """
    if "tensorflow" in sys.modules:
        return
    fd = 2  # the process's own stderr, where C++ writes, whatever Python's sys.stderr is now
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no stderr to protect
        import tensorflow  # noqa: F401

        return
    try:
        os.dup2(devnull, fd)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _error_line(message) -> None:
    """One line on stderr: messages from libraries may hold newlines."""
    click.echo("Error: " + " ".join(str(message).split())[:2000], err=True)


@click.group(cls=ResNetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="resnet-keras")
def cli():
    """Build, train, tune and export the ResNets of He et al. (2015, 2016) on TensorFlow and Keras 3."""


def _exit_promptly_on_ctrl_c(grace_seconds: float = 2.0) -> None:
    """Ends the process within `grace_seconds` of Ctrl-C, even inside a long TensorFlow call.

    Python raises KeyboardInterrupt only between bytecodes, so a Ctrl-C during graph tracing or a
    long kernel waits for it to return (seconds to minutes), and interpreter teardown with
    TensorFlow loaded takes another 1-2 s. A thread watching the signal wake-up fd gives the main
    thread `grace_seconds` to unwind, then exits with 130. That is no worse than kill -9, which
    runs survive: every file is written atomically and training resumes from the last checkpoint.
    """
    import signal
    import threading
    import time

    if threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        return

    def watch():
        while signal.SIGINT not in os.read(read_fd, 64):
            pass
        time.sleep(grace_seconds)
        os.write(2, b"Aborted.\n")
        os._exit(130)

    threading.Thread(target=watch, name="ctrl-c-watchdog", daemon=True).start()


def main():  # console-script entry point (resnet_keras.cli.main:main, once the commands are added)
    global _PROCESS_EXIT_ON_INTERRUPT
    _PROCESS_EXIT_ON_INTERRUPT = True
    _exit_promptly_on_ctrl_c()
    cli()
