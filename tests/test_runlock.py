"""One writer per run and per search directory, with real concurrent processes: a second `train`
of a run being trained, `--overwrite` of it and a second `tune` of one results directory are
refused with one line naming the holder; a lock whose holder was SIGKILLed is taken over.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_keras.cli.main import cli
from resnet_keras.core.errors import UsageError
from resnet_keras.runs import runlock

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
TINY_CLI = ["--dataset", "digits", "--depth", "8", "--width", "0.25", "--image-size", "16", "--batch-size", "64"]


def run(*args):
    return CliRunner().invoke(cli, list(args))


def refused_by(result, pid: int) -> str:
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "Traceback" not in result.output
    assert f"pid {pid} on host {socket.gethostname()}" in line and "is being written by" in line
    return line


def wait_for(condition, process, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the writer ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def holder_pid(directory: Path):
    try:
        return json.loads(runlock.lock_file(directory).read_text()).get("pid")
    except (OSError, ValueError):
        return None


def test_the_lock_is_exclusive_across_open_files_and_released_whole(tmp_path):
    run_dir = tmp_path / "runs" / "new" / "run"
    first = runlock.acquire(run_dir, command="train", log=lambda m: None)
    with pytest.raises(UsageError, match=f"train pid {os.getpid()} on host"):
        runlock.acquire(run_dir, command="train", log=lambda m: None)
    first.release()
    assert not runlock.lock_file(run_dir).exists() and not (tmp_path / "runs").exists()  # nothing left behind
    notes = []
    with runlock.acquire("gs://bucket/run", command="train", log=notes.append) as held:
        assert held.path is None
    assert "no file locks" in notes[0]


@pytest.mark.slow
def test_a_second_train_and_an_overwrite_are_refused_and_a_killed_holder_is_taken_over(tmp_path):
    model_dir = tmp_path / "run"
    command = [PYTHON, "-m", "resnet_keras.cli", "train", *TINY_CLI, "--epochs", "400", "--model-dir", str(model_dir)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for(lambda: (model_dir / "checkpoints" / "checkpoint").exists(), first, "its first checkpoint")
        assert holder_pid(model_dir) == first.pid

        # A second training process of the same run: refused before it reads or writes anything.
        second = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
        assert first.poll() is None, "the first writer ended before the second one was refused"
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid} on host {socket.gethostname()}" in lines[0], second.stderr

        # --overwrite while it trains: refused, nothing deleted.
        line = refused_by(
            run("train", *TINY_CLI, "--epochs", "400", "--overwrite", "--model-dir", str(model_dir)), first.pid
        )
        assert "train pid" in line
        assert (model_dir / "config.json").exists() and list((model_dir / "checkpoints").glob("ckpt-*.index"))

        # Readers are not writers.
        assert run("evaluate", "--model-dir", str(model_dir), "--weights", "best").exit_code == 0

        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
        first.wait()
    assert holder_pid(model_dir) == first.pid  # a SIGKILLed process leaves its lock file behind
    result = run("train", *TINY_CLI, "--epochs", "1", "--model-dir", str(model_dir))
    assert f"Took over the lock of {model_dir} left by train pid {first.pid}" in result.output
    assert result.exit_code == 0 and "already trained" in result.output, result.output
    assert not runlock.lock_file(model_dir).exists()


@pytest.mark.slow
def test_a_second_tune_of_one_results_dir_is_refused(tmp_path):
    results = tmp_path / "search"
    args = ["--dataset", "digits", "--image-size", "16", "--depths", "8", "--widths", "0.125,0.25", "--shortcuts", "A"]
    args += ["--epochs-per-trial", "50", "--batch-size", "64", "--max-trials", "2", "--results-dir", str(results)]
    first = subprocess.Popen(
        [PYTHON, "-m", "resnet_keras.cli", "tune", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
    )
    try:
        wait_for(
            lambda: holder_pid(results) == first.pid and (results / "search.json").exists(),
            first,
            "the search to start",
        )
        trials_before = sorted(p.name for p in (results / "kerastuner").glob("trial_*"))
        refused_by(run("tune", *args), first.pid)
        refused_by(run("tune", *args, "--overwrite"), first.pid)
        assert (results / "search.json").exists()
        assert set(trials_before) <= {p.name for p in (results / "kerastuner").glob("trial_*")}  # none deleted
    finally:
        first.kill()
        first.wait()
