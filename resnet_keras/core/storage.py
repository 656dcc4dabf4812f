"""Where a run's files live: a local path (`pathlib.Path`) or a URL that `tf.io.gfile` opens
(``gs://``, ``ram://``, and ``s3://`` or ``hdfs://`` where a TensorFlow plug-in registers them).

`as_path(value)` is the one place a name becomes a path: a local name stays a `pathlib.Path`
(today's behaviour, byte for byte), a URL becomes a `UrlPath`, which has the `pathlib` methods
the package uses and does every I/O through `tf.io.gfile`. `UrlPath` has no `__fspath__` on
purpose: `open()`, `os.*` and `Path()` refuse it instead of writing a local folder named ``gs:``.

What is atomic where:
- local: a file is written to a hidden sibling, fsynced and `os.replace`d (`files.write_atomic`).
- a URL: a file is written whole under a hidden temporary name, then renamed over the final name
  (`tf.io.gfile.rename(overwrite=True)`). On GCS a rename is a server-side copy then a delete:
  an object only becomes visible once its upload completes, so a reader sees the old file or
  the new one, never half of one; a killed writer can leave a ``.<name>.tmp-<pid>`` object.
- a folder on a URL is never renamed (GCS renames it object by object, TensorFlow's ``ram://``
  loses the children): what is built as a folder (checkpoints) relies on its own completeness
  marker, `tf.train.CheckpointManager`'s ``checkpoint`` state file, written after the data.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from resnet_keras.core import files
from resnet_keras.core.errors import UsageError, first_line
from resnet_keras.core.files import URL_SCHEME

_SCHEME = URL_SCHEME
# How long the first look at a store may take before the command gives up (no network, a DNS
# that never answers). TensorFlow's GCS client retries for minutes on some failures.
REACH_TIMEOUT_ENV = "RESNET_KERAS_STORE_TIMEOUT"
REACH_TIMEOUT_S = 20.0


def is_url(value) -> bool:
    """True for ``scheme://...`` names (``file://`` included: tf.io.gfile handles it too)."""
    return isinstance(value, (str, UrlPath)) and bool(_SCHEME.match(str(value)))


def as_path(value: str | os.PathLike) -> Path | UrlPath:
    """A local `Path`, or a `UrlPath` for a URL; a path of either kind comes back as it is."""
    if isinstance(value, (Path, UrlPath)):
        return value
    value = os.fspath(value)  # a str, or a PathLike such as a RunDir (whose fspath may be a URL)
    return UrlPath(value) if is_url(value) else Path(value)


def local_folder(value: str | os.PathLike, *, what: str) -> Path:
    """`value` as a local `Path`; a URL is refused (UsageError) for `what`, a folder that readers
    must never see half-written and that no object store can rename atomically."""
    path = as_path(value)
    if isinstance(path, UrlPath):
        raise UsageError(
            f"Received: {str(path)!r}; {what} is a folder published by a rename, which {path.scheme}:// "
            "cannot do atomically (a reader could load half of it): write it to a local folder, then copy it"
        )
    return path


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


class UrlPath:
    """A ``scheme://bucket/key`` name with the pathlib methods the package uses, through tf.io.gfile."""

    def __init__(self, url: str | UrlPath):
        url = str(url)
        match = _SCHEME.match(url)
        if not match:
            raise UsageError(f"Received: {url!r}; expected a URL such as gs://bucket/folder")
        self._root = match.group(0)
        rest = posixpath.normpath(url[len(self._root) :]) if url[len(self._root) :] else ""
        self._key = "" if rest == "." else rest.rstrip("/")

    # -- names ---------------------------------------------------------------------------

    def __str__(self) -> str:
        return self._root + self._key

    def __repr__(self) -> str:
        return f"UrlPath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, UrlPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, name: str) -> UrlPath:
        return UrlPath(self._root + posixpath.join(self._key, str(name)))

    @property
    def scheme(self) -> str:
        return self._root[:-3]

    @property
    def name(self) -> str:
        return posixpath.basename(self._key)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> UrlPath:
        return UrlPath(self._root + posixpath.dirname(self._key))

    def with_name(self, name: str) -> UrlPath:
        return self.parent / name

    def resolve(self) -> UrlPath:
        return self

    # -- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        return _gfile().exists(str(self))

    def is_dir(self) -> bool:
        return _gfile().isdir(str(self))

    def is_file(self) -> bool:
        return self.exists() and not self.is_dir()

    def iterdir(self) -> Iterator[UrlPath]:
        for name in _gfile().listdir(str(self)):
            yield self / name.rstrip("/")

    def glob(self, pattern: str) -> Iterator[UrlPath]:
        for name in _gfile().glob(str(self / pattern)):
            yield UrlPath(name)

    def rglob(self, pattern: str) -> Iterator[UrlPath]:
        import fnmatch

        for parent, _, names in _gfile().walk(str(self)):
            for name in names:
                if fnmatch.fnmatch(name, pattern):
                    yield UrlPath(parent) / name

    def read_bytes(self) -> bytes:
        with _gfile().GFile(str(self), "rb") as handle:
            return handle.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def size(self) -> int:
        return _gfile().stat(str(self)).length

    # -- writing -------------------------------------------------------------------------

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        # Object stores have no folders to create one level at a time: makedirs is the only kind.
        if self.is_dir() and not exist_ok:
            raise FileExistsError(str(self))
        _gfile().makedirs(str(self))

    def write_bytes(self, data: bytes) -> None:
        with _gfile().GFile(str(self), "wb") as handle:
            handle.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def write_atomic(self, data: str | bytes) -> None:
        """Writes `data` whole under a hidden temporary name, then renames it over this name."""
        tmp = self.with_name(f".{self.name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(data.encode() if isinstance(data, str) else data)
            _gfile().rename(str(tmp), str(self), overwrite=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def upload(self, local: str | os.PathLike) -> None:
        """Copies the local file `local` here, through a temporary name (as `write_atomic`)."""
        tmp = self.with_name(f".{self.name}.tmp-{os.getpid()}")
        try:
            _gfile().copy(os.fspath(local), str(tmp), overwrite=True)
            _gfile().rename(str(tmp), str(self), overwrite=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            _gfile().remove(str(self))
        except Exception:  # tf.errors.NotFoundError; other errors are re-raised below
            if not (missing_ok and not self.exists()):
                raise


# ----------------------------------------------------------------------------- either kind


def write_atomic(path: str | os.PathLike | UrlPath, data: str | bytes) -> None:
    """All or nothing at `path` (see the module docstring for what a URL's store guarantees)."""
    path = as_path(path)
    if isinstance(path, UrlPath):
        path.write_atomic(data)
    else:
        files.write_atomic(path, data)


def rmtree(path: Path | UrlPath) -> None:
    if isinstance(path, UrlPath):
        _gfile().rmtree(str(path))
    else:
        shutil.rmtree(path)


def copy_folder(source: Path | UrlPath, target: Path | UrlPath, *, marker: str) -> None:
    """Copies the folder `source` to `target`, which counts as complete once its file `marker` exists.

    Locally the copy is made under a hidden sibling and renamed into place (atomic). On a URL it
    is copied object by object with `marker` last, so a copy killed midway has no `marker` and
    a reader treats it as absent; an incomplete `target` left that way is replaced here.
    """
    if not isinstance(source, UrlPath) and not isinstance(target, UrlPath):
        tmp = target.with_name(f".{target.name}.copy")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        os.replace(tmp, target)
        return
    gfile = _gfile()
    if gfile.exists(str(target)):
        gfile.rmtree(str(target))
    last = []
    for parent, _, names in gfile.walk(str(source)):
        relative = parent[len(str(source)) :].strip("/")
        folder = as_path(target) / relative if relative else as_path(target)
        gfile.makedirs(str(folder))
        for name in names:
            pair = (posixpath.join(str(parent), name), str(folder / name))
            if not relative and name == marker:
                last.append(pair)
            else:
                gfile.copy(*pair, overwrite=True)
    for pair in last:
        gfile.copy(*pair, overwrite=True)


@contextlib.contextmanager
def local_file_for(final: Path | UrlPath, *, suffix: str) -> Iterator[Path]:
    """A local file name (ending in `suffix`, which Keras wants) to write; on success it is moved
    or copied to `final` in one step (`os.replace` locally, `UrlPath.upload` on a URL)."""
    final = as_path(final)
    if isinstance(final, UrlPath):
        with tempfile.TemporaryDirectory(prefix="resnet-keras-") as scratch:
            local = Path(scratch) / f"upload{suffix}"
            yield local
            final.upload(local)
        return
    local = final.with_name(f".{final.name.removesuffix(suffix)}.tmp-{os.getpid()}{suffix}")
    try:
        yield local
        os.replace(local, final)
    finally:
        local.unlink(missing_ok=True)


@contextlib.contextmanager
def local_copy(path: Path | UrlPath) -> Iterator[Path]:
    """`path` itself when local; a URL's file copied to a local temporary file (same name) otherwise."""
    path = as_path(path)
    if not isinstance(path, UrlPath):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="resnet-keras-") as scratch:
        local = Path(scratch) / path.name
        _gfile().copy(str(path), str(local))
        yield local


_reached: set[str] = set()


def check_reachable(path: Path | UrlPath, *, timeout: float | None = None) -> None:
    """Raises UsageError in one line, within `timeout` seconds, when a URL's store cannot be used here.

    The first look (`exists`) runs in a thread so that a store that does not answer (offline,
    DNS that never replies, TensorFlow's GCS retries) costs at most `timeout`, and a scheme
    tf.io.gfile lacks (s3:// without its plug-in) says so. Local paths and stores seen once pass.
    """
    if not isinstance(path, UrlPath):
        return
    root = str(path).split("/", 3)[:3]
    key = "/".join(root)
    if key in _reached:
        return
    if timeout is None:
        timeout = float(os.environ.get(REACH_TIMEOUT_ENV, REACH_TIMEOUT_S))
    outcome: list = []

    def look():
        try:
            outcome.append(path.exists())
        except Exception as error:  # tf.errors.* from the store: the message is the answer
            outcome.append(error)

    thread = threading.Thread(target=look, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise UsageError(f"{path}: no answer from the {path.scheme}:// store within {timeout:g} s; check the network")
    if isinstance(outcome[0], Exception):
        error = outcome[0]
        reason = first_line(error)
        if type(error).__name__ == "UnimplementedError":
            reason += f" (this TensorFlow has no {path.scheme}:// file system; tensorflow-io provides some)"
        raise UsageError(f"{path} cannot be used: {reason}")
    _reached.add(key)
