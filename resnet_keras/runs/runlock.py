"""One writer per run directory and per search directory.

`train` and `tune` hold an exclusive lock on their directory for their whole life; a second
writer of the same directory gets one line naming the holder's host and pid (UsageError, exit 2)
before it reads or deletes anything, `--overwrite` included. Readers (`evaluate`, `export`)
take no lock.

The lock is `fcntl.flock` on a hidden sibling file, `<parent>/.<name>.writer.lock`: a sibling
because `--overwrite` deletes the directory itself, which would delete a lock file inside it
while it is held. The kernel releases a flock when its process dies, however it dies, so a lock
left by a killed writer is simply taken over. The file's JSON body (host, pid, command, start
time) only names the holder in the message. A clean release deletes the file; whoever locks it
checks afterwards that the path still names the file it locked (a releaser unlinks before it
unlocks), so two writers can never hold two different files.

What is guaranteed where: on a local disk, one writer. On NFS, Linux clients turn flock into
byte-range locks the server arbitrates, so the lock holds across clients unless the mount uses
`local_lock=flock` or `local_lock=all` (then only within one client); a dead client's lock lasts
until the server's lease expires. Where flock is refused (ENOLCK: no lock service) the holder is
judged by the file's body: a live pid on this host, or any other host, is refused (delete the
file when that writer is surely gone); this has a race between two writers starting at the same
moment. Paths with a scheme (`gs://`, `s3://`) have no locks at all: a note is logged and nothing
stops a second writer.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import inspect
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from resnet_keras.core.errors import UsageError

LOCK_SUFFIX = ".writer.lock"
_MAX_BODY = 4096  # the body is a few fields; a larger file is not ours to trust
# flock unsupported by the file system (NFS without a lock service, some FUSE mounts).
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclasses.dataclass
class WriterLock:
    """A held lock (`fd` open, `path` its file) or none (`path` None: an object store)."""

    path: Path | None = None
    fd: int | None = None
    body: dict | None = None
    made: list[Path] = dataclasses.field(default_factory=list)  # parents created for the lock file

    def release(self) -> None:
        """Deletes the lock file (while still locked, see the module docstring), then unlocks."""
        if self.fd is None:
            return
        try:
            if self.path is not None and _read_body(self.path) == self.body:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a lock file we cannot delete is taken over by the next writer
        finally:
            os.close(self.fd)
            self.fd = None
        for parent in reversed(self.made):  # a refused command leaves no folder behind
            try:
                parent.rmdir()
            except OSError:
                break  # not empty: the run was written there

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        if self.fd is not None:
            os.close(self.fd)


def lock_file(directory: str | os.PathLike) -> Path:
    """`<parent>/.<name>.writer.lock` of `directory` (symlinks resolved, so two names lock alike)."""
    path = Path(os.path.realpath(os.fspath(directory)))
    return path.parent / f".{path.name}{LOCK_SUFFIX}"


def acquire(directory: str | os.PathLike, *, command: str, log: Callable[[str], None] = print) -> WriterLock:
    """The writer lock of `directory` for this process; UsageError naming the holder when another has it."""
    text = str(directory) if hasattr(directory, "scheme") else os.fspath(directory)  # storage.UrlPath: str
    if "://" in text:
        log(f"Note: {text} is on an object store, which has no file locks; nothing stops a second writer.")
        return WriterLock()
    path = lock_file(directory)
    made = [parent for parent in (path.parent, *path.parent.parents) if not parent.exists()][::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"host": socket.gethostname(), "pid": os.getpid(), "command": command, "started": _now()}
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:  # a run folder that is writable inside a read-only parent still trains
            if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            log(f"Note: cannot create {path} ({error.strerror}); {text} has no writer lock.")
            return WriterLock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(_held_message(text, _read_body(path), path)) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in _NO_FLOCK:
                raise
            return _acquire_by_body(text, path, body, log, made)
        try:
            same = _same_file(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # released (and deleted) between our open and our flock: lock the new file
            os.close(fd)
            continue
        previous = _read_body(path)
        _write_body(fd, body)
        if previous and previous.get("pid") != os.getpid():
            log(f"Took over the lock of {text} left by {_holder(previous)}, which no longer holds it.")
        return WriterLock(path, fd, body, made)


def holds_lock(directory: str, command: str, *, writer: Callable[[dict], bool] = lambda arguments: True):
    """Decorator: the call holds the writer lock of its argument `directory` while it runs,
    when `writer(arguments)` (the bound arguments by name) says this process writes it."""

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if not writer(bound.arguments):
                return function(*args, **kwargs)
            log = bound.arguments.get("log") or print
            with acquire(bound.arguments[directory], command=command, log=log):
                return function(*args, **kwargs)

        return locked

    return decorate


def _acquire_by_body(text: str, path: Path, body: dict, log, made: list[Path]) -> WriterLock:
    """The lock on a file system without flock: judged by the body's host and pid (racy; see above)."""
    previous = _read_body(path)
    if previous and previous.get("pid") != os.getpid() and not _gone(previous):
        raise UsageError(
            _held_message(text, previous, path) + f"; if that process is gone, delete {path} (no file locks here)"
        )
    log(f"Note: {path.parent} has no file locks (flock refused); the writer lock is judged by host and pid.")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    _write_body(fd, body)
    return WriterLock(path, fd, body, made)


def _gone(holder: dict) -> bool:
    """Whether the holder is a process of this host that no longer runs (another host's: unknown)."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _held_message(text: str, holder: dict | None, path: Path) -> str:
    who = _holder(holder) if holder else "another process (it has not written its name yet)"
    return f"{text} is being written by {who}; wait for it to finish or stop it (lock {path})"


def _holder(holder: dict) -> str:
    command = holder.get("command") or "a writer"
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"{command} pid {holder.get('pid')} on host {holder.get('host')}{since}"


def _read_body(path: Path) -> dict | None:
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read(_MAX_BODY).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_body(fd: int, body: dict) -> None:
    data = (json.dumps(body) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
