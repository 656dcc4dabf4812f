"""Durable writes: a file or a folder appears whole under its final name, or not at all.

Everything the package writes for others to read (run-directory files, SavedModel versions
that TF Serving polls, TFLite files, feature extractors) goes through these: write under a
hidden temporary name, flush it to disk, then rename, which is atomic on one filesystem. A
crash or a kill at any point leaves the previous file or folder, never half of a new one.

A full file system is met in one place too (`space_for`): a writer says how many bytes it needs,
that much must be free before anything is written (HDF5 and TensorFlow's writers included, which
report a failed write as raw text or, in libhdf5, may crash), and a full disk met while writing
anyway becomes one `DiskFull` naming the path and the space, once the writer removed its temporary.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from resnet_keras.core.errors import DiskFull, UsageError

#: A `scheme://` name (`file://` included: tf.io.gfile handles it too); `storage` gives URLs their meaning.
URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# A full file system: no blocks left, or the user's quota spent.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# The same, as TensorFlow (ResourceExhaustedError "<file>; No space left on device") and h5py
# ("errno = 28, error message = 'No space left on device'") report it: text, not an errno.
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


def is_no_space(error: BaseException) -> bool:
    """Whether `error` says the file system is full."""
    if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
        return True
    return any(text in str(error) for text in _NO_SPACE_TEXT)


def free_bytes(path) -> int | None:
    """Bytes this process may still write on the file system of `path` (or of its nearest existing
    parent: it may not exist yet); None where that cannot be told (a URL, a failing statvfs)."""
    if hasattr(path, "scheme") or URL_SCHEME.match(str(path)):  # a URL (`storage.is_url`)
        return None
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _size(count: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def disk_full(path, needed: int = 0, free: int | None = None) -> DiskFull:
    """The one-line DiskFull for `path`: what it needs and what is free."""
    free = free_bytes(path) if free is None else free
    need = f"it needs {_size(needed)}" if needed else "it needs more space"
    have = f", {_size(free)} free" if free is not None else ""
    return DiskFull(
        f"no space left on the device for {path} ({need}{have}); nothing half-written was kept: "
        "free some space and run the same command again"
    )


def ensure_space(path, needed: int) -> None:
    """DiskFull unless `needed` bytes are free for `path` (always true where free space is unknown)."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise disk_full(path, needed, free)


@contextlib.contextmanager
def space_for(path, needed: int = 0) -> Iterator[None]:
    """Around the writes of `path` (a file or a folder): `needed` bytes must be free before the
    block starts, and a full file system met inside it leaves as DiskFull naming `path`. The block
    removes its own temporary files (its `except` or `finally`) before the error leaves it."""
    if needed:
        ensure_space(path, needed)
    try:
        yield
    except DiskFull:
        raise
    except Exception as error:
        if not is_no_space(error):
            raise
        raise disk_full(path, needed) from error


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8) to `path` through a fsynced temporary sibling and a rename.

    DiskFull (the temporary removed, `path` untouched) when its file system has no room for it.
    """
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with space_for(path, len(data)):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                view = memoryview(data)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def remove_own_temps(folder: str | os.PathLike) -> None:
    """Deletes the `.<name>.tmp-<pid>...` files `write_atomic` and `storage.local_file_for` left in
    `folder` when a writer was killed mid-write (or an older version met a full disk). For a folder
    whose writer lock this process holds: no other writer can be using them."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.glob(".*.tmp-*"):
        pid = re.search(r"\.tmp-(\d+)", path.name)
        if pid and int(pid.group(1)) != os.getpid() and (path.is_symlink() or path.is_file()):
            path.unlink(missing_ok=True)


def saved_size(model) -> int:
    """About the bytes a `.keras` or `.weights.h5` file of `model` takes (measured: the weights'
    bytes plus under 1 KB of HDF5 metadata per variable), for `space_for`."""
    return variables_size(model.weights)


def variables_size(variables) -> int:
    """About the bytes a file of `variables` takes: their data plus 1 KB each and 64 KB for the rest."""
    return sum(_itemsize(v.dtype) * math.prod(v.shape) + 1024 for v in variables) + 65536


def _itemsize(dtype) -> int:
    bits = re.findall(r"\d+", str(dtype))  # "float32" (Keras), "<dtype: 'bfloat16'>" (TensorFlow)
    return max(int(bits[-1]) // 8, 1) if bits else 8


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a directory's entries (the names a rename created) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """Flushes every file and directory under root to disk (a rename alone does not order the data)."""
    for parent, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(parent, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(parent)


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike, *, overwrite: bool) -> None:
    """Renames the finished folder `tmp` to `final` (atomic on one filesystem).

    An existing `final` is refused unless `overwrite`; then it is moved aside first and deleted
    only once the new folder is in place.
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        if not overwrite:
            raise UsageError(f"{final} appeared during the export; nothing was overwritten")
        old = final.with_name(f".old-{final.name}-{owner_tag()}")
        os.rename(final, old)  # a kill from here to the next rename is undone by recover_replaced()
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def owner_tag() -> str:
    """``<host>-<pid>``: who writes a temporary folder, so a cleanup on a shared file system only
    ever removes its own host's leftovers of processes that are gone."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _dead_here(tag: str) -> bool:
    """Whether `<host>-<pid>` names a process of this host that no longer runs."""
    host, _, pid = tag.rpartition("-")
    if host != owner_tag().rpartition("-")[0] or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_temps(parent: str | os.PathLike, prefix: str = ".tmp-") -> None:
    """Deletes `<prefix>...-<host>-<pid>` folders of this host's writers that were killed mid-write.

    Another host's folder is never touched (its pid means nothing here), nor a live writer's.
    """
    for path in Path(parent).glob(f"{prefix}*"):
        if _dead_here(path.name[len(prefix) :].split("-", 1)[-1]):
            shutil.rmtree(path, ignore_errors=True)


def recover_replaced(parent: str | os.PathLike) -> list[Path]:
    """Undoes an `--overwrite` publish killed between its two renames: `.old-<name>-<host>-<pid>` goes
    back to `<name>` when `<name>` is missing (the new folder never arrived); when `<name>` exists the
    old copy was already replaced and is deleted. Only this host's dead writers are recovered."""
    restored = []
    for old in Path(parent).glob(".old-*"):
        name, host, pid = (old.name[len(".old-") :].rsplit("-", 2) + ["", ""])[:3]
        if not _dead_here(f"{host}-{pid}"):
            continue
        final = old.with_name(name)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, final)
            restored.append(final)
    return restored


def check_output_file(output: str | os.PathLike, *, suffix: str, overwrite: bool) -> Path:
    """The path a command is asked to write: its suffix, no silent overwrite, an existing folder."""
    output = Path(output)
    if output.suffix != suffix:
        raise UsageError(f"Received: output={str(output)!r}; expected a file name ending in {suffix}")
    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise UsageError(f"Received: output={str(output)!r}; the folder {output.parent} does not exist")
    return output
