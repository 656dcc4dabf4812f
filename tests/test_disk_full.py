"""A full disk: one `Error:` line naming the path and the space needed (exit 2), the previous
checkpoint, best weights and history whole and in agreement, no temporary file left, and the same
command resuming once space is freed.

Two kinds of full disk, so that CI always meets the class: a real 2 MB tmpfs filled up (needs
root or CAP_SYS_ADMIN to mount; skipped with the reason otherwise), and, unprivileged, the
system calls themselves answering ENOSPC: `os.statvfs` reporting too little free space, or
`os.write` failing at the Nth byte of a file under the test's folder.

One tiny real run (ResNet-8 at width 0.25 on 16x16 digits, 2 epochs) is trained once and copied
into each test, which continues it to 4 epochs.
"""

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_runstate import TINY_CLI, one_error_line, run

from resnet_keras.core.errors import DiskFull
from resnet_keras.runs.rundir import RunDir


def tree(path: Path) -> dict:
    """Every file under `path` with its hash, but what the continued command rightly rewrites before
    training: config.json (now train.epochs 4) and logs/ (a new event file)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in path.rglob("*")
        if p.is_file() and p.relative_to(path).parts[0] not in ("logs", "config.json")
    }


def leftovers(path: Path) -> list[str]:
    """Temporary files and folders: hidden names (`.<name>.tmp-<pid>`) and TensorFlow's `*_temp`."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.name.startswith(".") or "_temp" in p.name)


def checkpoint_epochs(path: Path) -> int:
    import tensorflow as tf

    from resnet_keras.core import tf_compat

    latest = tf.train.latest_checkpoint(str(path / "checkpoints"))
    return int(tf_compat.checkpoint_reader(latest).get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE"))


def assert_resumes(copy: Path):
    """The same command, once space is freed, finishes the run, and its files agree."""
    result = run("train", *TINY_CLI, "--epochs", "4", "--model-dir", str(copy))
    assert result.exit_code == 0, result.output
    assert "Resuming" in result.output and "after epoch 2" in result.output
    assert [row["epoch"] for row in RunDir(copy).read_history()] == [1, 2, 3, 4]
    assert checkpoint_epochs(copy) == 4
    assert leftovers(copy) == []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run("train", *TINY_CLI, "--epochs", "2", "--model-dir", str(model_dir))
    assert result.exit_code == 0, result.output
    return model_dir


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def with_stale_temp(copy: Path) -> Path:
    """What an older version left after a full disk while writing best weights."""
    stale = copy / f".best.tmp-{dead_pid()}.weights.h5"
    stale.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 4000)
    return stale


# ----------------------------------------------------------------------------- a real small file system


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MB tmpfs mounted for the test (skipped where mounting is not permitted)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    command = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave: int) -> Path:
    """Fills the file system of `mount` until `leave` bytes are free; returns the filler file."""
    stat = os.statvfs(mount)
    filler = mount / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return filler


def test_train_on_a_full_tmpfs_stops_before_writing_the_epoch_and_resumes(small_fs, finished_run):
    copy = small_fs / "run"
    shutil.copytree(finished_run, copy)
    stale = with_stale_temp(copy)
    before = {name: digest for name, digest in tree(copy).items() if name != stale.name}
    filler = fill(small_fs, leave=40_000)  # less than a checkpoint and best weights (~160 KB)
    line = one_error_line(run("train", *TINY_CLI, "--epochs", "4", "--model-dir", str(copy)))
    assert str(copy) in line and "no space left" in line and "needs" in line and "KB free" in line, line
    assert tree(copy) == before  # checkpoints, best weights, history as they were
    assert leftovers(copy) == []  # the old version's temporary went too
    assert checkpoint_epochs(copy) == 2 and len(RunDir(copy).read_history()) == 2
    filler.unlink()
    assert_resumes(copy)


def test_a_write_that_meets_the_full_tmpfs_midway_leaves_whole_files(small_fs, finished_run, monkeypatch):
    """The disk fills after the check (another process, or an estimate too small): the kernel's
    ENOSPC on the best weights or the checkpoint is still one line, no file is half-written, no
    temporary stays, nothing crashes in HDF5, and the resume drops what the checkpoint lacks."""
    copy = small_fs / "run"
    shutil.copytree(finished_run, copy)
    checkpoints, best = tree(copy / "checkpoints"), (copy / "best.weights.h5").read_bytes()
    filler = fill(small_fs, leave=24_000)  # the history row fits; best weights or a checkpoint do not
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=2**30, f_frsize=1))  # the check passes
    line = one_error_line(run("train", *TINY_CLI, "--epochs", "4", "--model-dir", str(copy)))
    monkeypatch.setattr(os, "statvfs", real)
    assert "no space left" in line and ("best.weights.h5" in line or "checkpoints" in line), line
    assert tree(copy / "checkpoints") == checkpoints and (copy / "best.weights.h5").read_bytes() == best
    assert leftovers(copy) == []
    assert checkpoint_epochs(copy) == 2
    filler.unlink()
    assert_resumes(copy)


def test_a_checkpoint_save_on_the_full_tmpfs_removes_its_temporary_folder(small_fs, monkeypatch):
    import tensorflow as tf

    from resnet_keras.training.hooks import Checkpoint
    from resnet_keras.training.trainer import EpochProgress

    weights = tf.Variable(tf.ones([64_000]))  # 256 KB, and 2 MB on the file system: one save fits
    epoch = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(w=weights, epoch=epoch), str(small_fs / "ck"), 2)
    hook = Checkpoint(manager, epoch)
    model = SimpleNamespace(weights=[weights])
    hook.trainer = SimpleNamespace(
        steps_per_epoch=10, start_epoch=0, progress=EpochProgress(), model=model, eval_model=model, optimizer=model
    )
    model.variables = []  # the optimizer's
    hook.on_train_begin()
    first = hook.save(1, 0)
    saved = tree(small_fs / "ck")
    fill(small_fs, leave=100_000)
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=2**30, f_frsize=1))
    with pytest.raises(DiskFull, match="no space left on the device for .*ck") as caught:
        hook.save(2, 0)  # TensorFlow's own write fails: ResourceExhaustedError, "No space left on device"
    assert "needs 2" in str(caught.value)  # the last checkpoint's size (~250 KB) and a margin
    assert tree(small_fs / "ck") == saved and manager.latest_checkpoint == first
    assert leftovers(small_fs / "ck") == []


def test_export_on_a_full_tmpfs_leaves_no_version_folder(small_fs, finished_run):
    filler = fill(small_fs, leave=40_000)
    base = small_fs / "saved"
    line = one_error_line(run("export", "--model-dir", str(finished_run), "--base-dir", str(base)))
    assert "no space left" in line and str(base) in line and "needs" in line, line
    assert leftovers(base) == [] and not list(base.rglob("saved_model.pb"))
    filler.unlink()


def test_prepare_on_a_full_tmpfs_keeps_whole_shards_and_resumes(small_fs, image_data):
    out = small_fs / "records"
    argv = ["prepare", "--data-dir", str(image_data / "cifar10-mini"), "--output", str(out)]
    argv += ["--images-per-shard", "200", "--processes", "1"]
    filler = fill(small_fs, leave=500_000)  # a few of the ~1.3 MB of shards
    line = one_error_line(run(*argv))
    assert "no space left" in line and str(out) in line and "needs" in line, line
    assert leftovers(out) == [".prepare-plan.json"]  # the listing to resume, kept on purpose
    filler.unlink()
    result = run(*argv)
    assert result.exit_code == 0, result.output
    assert leftovers(out) == [] and (out / "manifest.json").is_file()


# ---------------------------------------------------------------------- unprivileged: the system calls say ENOSPC


def low_statvfs(monkeypatch, under: Path, free: int):
    """`os.statvfs` reports `free` bytes for paths under `under` (the rest of the machine as it is)."""
    real = os.statvfs

    def statvfs(path):
        if str(path).startswith(str(under)):
            return SimpleNamespace(f_bavail=free, f_frsize=1)
        return real(path)

    monkeypatch.setattr(os, "statvfs", statvfs)


def enospc_after(monkeypatch, under: Path, budget: int):
    """`os.write` to a file under `under` raises ENOSPC once `budget` bytes were written there."""
    real, written = os.write, [0]

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(str(under)):
            if written[0] + len(data) > budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written[0] += len(data)
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_train_refuses_an_epoch_the_disk_cannot_hold_and_resumes(finished_run, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    stale = with_stale_temp(copy)
    before = {name: digest for name, digest in tree(copy).items() if name != stale.name}
    low_statvfs(monkeypatch, tmp_path, free=50_000)
    line = one_error_line(run("train", *TINY_CLI, "--epochs", "4", "--model-dir", str(copy)))
    assert str(copy) in line and "needs" in line and "48.8 KB free" in line, line
    assert tree(copy) == before and leftovers(copy) == []
    monkeypatch.undo()
    assert_resumes(copy)


@pytest.mark.parametrize("writer", ["history", "config", "best weights"])
def test_a_run_file_write_failing_at_the_nth_byte_keeps_the_old_file(finished_run, tmp_path, monkeypatch, writer):
    import keras

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    rundir = RunDir(copy)
    name, write = {
        "history": ("history.csv", lambda: rundir.write_history(rundir.read_history() * 3)),
        "config": ("config.json", lambda: rundir.write_json("config.json", rundir.read_configs())),
        "best weights": ("best.weights.h5", lambda: rundir.save_best_weights(keras.models.clone_model(model))),
    }[writer]
    model = rundir.load_model("best")
    old = (copy / name).read_bytes()
    enospc_after(monkeypatch, tmp_path, budget=len(old) // 2)  # the new file is at least as long as the old
    with pytest.raises(DiskFull) as caught:
        write()
    message = str(caught.value)
    assert str(copy / name) in message and "it needs" in message and "\n" not in message
    assert (copy / name).read_bytes() == old and leftovers(copy) == []
