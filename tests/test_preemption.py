"""Mid-epoch checkpoints and preemption: SIGTERM saves at the next step and exits 143, SIGKILL
loses at most the checkpoint interval, and a resumed run ends with the weights of an
uninterrupted one (deterministic data, ResNet-8 at width 0.25 on 16x16 digits)."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import Preempted, UsageError
from resnet_keras.data.pipeline import DataConfig
from resnet_keras.runs.rundir import RunDir
from resnet_keras.training.hooks import CheckpointInterval
from resnet_keras.training.train import TrainConfig, train
from resnet_keras.training.trainer import Hook

TINY = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=10)
DATA = DataConfig(dataset="digits", deterministic=True, augment="cifar")
# 8 steps per epoch: a preemption at step 5 of epoch 2 is mid-epoch.
CONFIG = TrainConfig(epochs=2, batch_size=64, learning_rate=0.1, steps_per_epoch=8)
PYTHON = sys.executable
ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "TF_CPP_MIN_LOG_LEVEL": "2"}


def quiet(_message):
    pass


def rows(model_dir):
    with open(os.path.join(model_dir, "history.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def final_weights(model_dir):
    return RunDir(model_dir).load_model().get_weights()


class SignalAt(Hook):
    """Sends this process a real signal after step `step` of epoch `epoch`."""

    def __init__(self, epoch, step, signum=signal.SIGTERM):
        self.at, self.signum = (epoch, step), signum

    def on_train_batch_end(self, epoch, step, values):
        if (epoch, step) == self.at:
            os.kill(os.getpid(), self.signum)


def test_checkpoint_interval_parses_steps_and_times_and_refuses_the_rest():
    assert CheckpointInterval.parse("500") == CheckpointInterval(steps=500)
    assert CheckpointInterval.parse("10m") == CheckpointInterval(seconds=600.0)
    assert CheckpointInterval.parse("90s").seconds == 90 and CheckpointInterval.parse("1h").seconds == 3600
    assert CheckpointInterval.parse(None) is None
    for bad in ("0", "-3", "ten", "5x", "m", "0m", "infh", ""):
        with pytest.raises(UsageError, match="checkpoint_every"):
            CheckpointInterval.parse(bad)


def test_sigterm_mid_epoch_saves_then_the_rerun_matches_an_uninterrupted_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(TINY, DATA, CONFIG, straight, log=quiet)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match=r"SIGTERM at epoch 2 step 5; saved .*ckpt-13;") as stopped:
        train(TINY, DATA, CONFIG, resumed, log=quiet, hooks=[SignalAt(2, 4)])
    assert stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    assert len(rows(resumed)) == 1 and not (resumed / "model.keras").exists()

    messages = []
    train(TINY, DATA, CONFIG, resumed, log=messages.append)
    assert f"Resuming {resumed} at epoch 2 step 5." in messages
    # The resumed epoch's row (totals carried in the checkpoint) and the final weights are the
    # uninterrupted run's: the rerun read batches 6..8 of epoch 2, not epoch 2 from its start.
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert [float(r[key]) for r in rows(resumed)] == pytest.approx([float(r[key]) for r in rows(straight)]), key
    for a, b in zip(final_weights(straight), final_weights(resumed), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_crash_loses_at_most_the_interval_and_resumes_from_the_last_step_checkpoint(tmp_path):
    class Crash(Exception):
        pass

    class CrashAt(Hook):  # like SIGKILL: no handler runs, only what was saved stays
        def on_train_batch_end(self, epoch, step, values):
            if (epoch, step) == (2, 7):
                raise Crash

    with pytest.raises(Crash):
        train(TINY, DATA, CONFIG, tmp_path, log=quiet, hooks=[CrashAt()], checkpoint_every="3")
    # Saved at steps 3 and 6 of each epoch and at the end of epoch 1 (8): the last two are kept.
    kept = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "checkpoints").glob("ckpt-*.index"))
    assert kept == [11, 14]  # epoch 2 steps 3 and 6: one step lost of the 15 done
    messages = []
    train(TINY, DATA, CONFIG, tmp_path, log=messages.append, checkpoint_every="3")
    assert f"Resuming {tmp_path} at epoch 2 step 6." in messages
    assert [int(r["epoch"]) for r in rows(tmp_path)] == [1, 2]


@pytest.mark.slow
def test_cli_sigterm_exits_143_with_one_line_and_the_same_command_resumes(tmp_path):
    run = tmp_path / "run"
    command = [PYTHON, "-m", "resnet_keras.cli", "train", "--dataset", "digits", "--depth", "8", "--width", "0.25"]
    command += ["--image-size", "16", "--batch-size", "64", "--epochs", "2", "--deterministic"]
    command += ["--checkpoint-every", "2", "--model-dir", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "checkpoint").exists():  # the first step checkpoint: mid-epoch 1
        assert process.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert err.strip().count("\n") == 0 and err.startswith("Error: stopped by SIGTERM at epoch 1 step"), err
    assert not (run / "model.keras").exists()

    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resuming" in done.stdout and "at epoch 1 step" in done.stdout
    assert [int(r["epoch"]) for r in rows(run)] == [1, 2] and (run / "model.keras").exists()
