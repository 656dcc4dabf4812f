"""Durable writes: a file or a folder appears whole under its final name, or not at all.

Everything the package writes for others to read (run-directory files, SavedModel versions
that TF Serving polls, TFLite files, feature extractors) goes through these: write under a
hidden temporary name, flush it to disk, then rename, which is atomic on one filesystem. A
crash or a kill at any point leaves the previous file or folder, never half of a new one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

from resnet_keras.errors import UsageError


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8) to `path` through a fsynced temporary sibling and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def save_model_atomic(model, output: str | os.PathLike) -> None:
    """Saves a `.keras` file that loads anywhere (`portable.save_model`: stock layers wherever ours are
    only a kernel choice) to a hidden sibling (Keras wants the suffix), then renames: all or nothing."""
    from resnet_keras.portable import save_model
    from resnet_keras.storage import local_file_for

    with local_file_for(output, suffix=".keras") as local:  # a URL's file is copied up from a local one
        save_model(model, local)
