"""Multi-worker training (MultiWorkerMirroredStrategy from TF_CONFIG) with real worker processes.

Two workers on localhost ports train a ResNet-8 at width 0.25 on the real cifar10-mini JPEGs
through `scripts/launch_workers.py`. Each subprocess pays a TensorFlow start-up; the slow tests
together take about two minutes on an idle two-core machine.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_keras.cli.main import cli
from resnet_keras.core.errors import UsageError
from resnet_keras.training.distribute import WORKER_TIMEOUT_ENV, worker_info, worker_timeout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "scripts", "launch_workers.py")
PYTHON = sys.executable
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
MODEL = [
    "--depth",
    "8",
    "--width",
    "0.25",
    "--image-size",
    "32",
    "--batch-size",
    "32",
    "--seed",
    "0",
    "--deterministic",
]


def cluster(workers, index, kind="worker"):
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": kind, "index": index}})


def train_args(image_data, model_dir, epochs):
    return [
        "--dataset",
        "folder",
        "--data-dir",
        str(image_data / "cifar10-mini"),
        *MODEL,
        "--epochs",
        str(epochs),
        "--model-dir",
        str(model_dir),
    ]


def history(model_dir):
    with open(os.path.join(model_dir, "history.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def load_launcher():
    import importlib.util

    spec = importlib.util.spec_from_file_location("launch_workers", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def weights(path):
    import keras

    import resnet_keras.zoo.blocks  # noqa: F401  registers the custom layers

    return keras.saving.load_model(str(path), compile=False).get_weights()


# ----------------------------------------------------------------------------- TF_CONFIG, no TensorFlow cluster


def test_worker_info_reads_tf_config_and_elects_the_chief(monkeypatch):
    two = ["localhost:1", "localhost:2"]
    monkeypatch.setenv("TF_CONFIG", cluster(two, 1))
    info = worker_info()
    assert (info.task_type, info.task_id, info.num_workers, info.is_chief) == ("worker", 1, 2, False)
    monkeypatch.setenv("TF_CONFIG", cluster(two, 0))
    assert worker_info().is_chief  # no chief job: worker 0 is the chief, as in TensorFlow
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": two}, "task": {"type": "worker", "index": 0}})
    )
    assert not worker_info().is_chief and worker_info().num_workers == 3


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "needs TF_CONFIG"),
        ("{not json", "not valid JSON"),
        ('{"cluster": {}}', "'cluster' and a 'task'"),
        (cluster(["localhost"], 0), "host:port"),
        (cluster(["localhost:1"], 3), "is not a chief or worker"),
    ],
)
def test_bad_tf_config_is_a_usage_error(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(UsageError, match=message):
        worker_info()


def test_worker_timeout_setting(monkeypatch):
    monkeypatch.setenv(WORKER_TIMEOUT_ENV, "12.5")
    assert worker_timeout() == 12.5
    monkeypatch.setenv(WORKER_TIMEOUT_ENV, "0")
    with pytest.raises(UsageError, match=WORKER_TIMEOUT_ENV):
        worker_timeout()


def test_cli_multi_worker_without_tf_config_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = CliRunner().invoke(
        cli, ["train", "--dataset", "digits", "--strategy", "multi-worker", "--model-dir", str(tmp_path / "run")]
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "TF_CONFIG" in result.output
    assert not (tmp_path / "run").exists()


def test_launcher_refuses_a_strategy_option():
    done = subprocess.run(
        [PYTHON, LAUNCHER, "--", "--strategy", "mirrored"], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert done.returncode == 2 and "--strategy" in done.stderr


# ----------------------------------------------------------------------------- real workers


def launch(args, workers=2, timeout=None):
    command = [PYTHON, LAUNCHER, "--workers", str(workers)]
    if timeout is not None:
        command += ["--worker-timeout", str(timeout)]
    return command + ["--", *args]


@pytest.mark.slow
def test_two_workers_agree_with_each_other_and_with_one_process_of_two_replicas(tmp_path, image_data):
    """Both workers finish with bit-identical weights; a single process with MirroredStrategy over
    two logical CPUs (same global batch 32, seed and replica-to-shard assignment) matches them.

    Why two replicas and not one: BatchNorm normalises each replica's 16 images with their own
    statistics, so one replica of 32 is a different computation. With two replicas the remaining
    differences are the all-reduce (ring collective vs add_n on one device: the same sum for two
    terms, but a different kernel) and Eigen's threaded convolutions, hence a tolerance.
    """
    run, scratch = tmp_path / "mw", tmp_path / "scratch"
    done = subprocess.run(
        launch(train_args(image_data, run, 1)),
        capture_output=True,
        text=True,
        timeout=400,
        env=dict(ENV, RESNET_KERAS_WORKER_SCRATCH=str(scratch)),
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "[launcher] all 2 workers finished" in done.stdout
    assert re.search(r"\[worker 1\] epoch 1/1", done.stdout) and re.search(r"\[worker 0\] epoch 1/1", done.stdout)
    # Only the chief wrote the run directory; worker 1 wrote the same files to its scratch.
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (scratch / "worker-1").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["global_batch_size"] == 32 and metrics["steps_per_epoch"] == 31
    chief, other = weights(run / "model.keras"), weights(scratch / "worker-1" / "model.keras")
    assert all(np.array_equal(a, b) for a, b in zip(chief, other))

    single = tmp_path / "single"
    script = textwrap.dedent(f"""
        from resnet_keras.training.distribute import split_cpu
        split_cpu(2)
        from resnet_keras.config.schema import ModelConfig
        from resnet_keras.data.pipeline import DataConfig
        from resnet_keras.training.train import TrainConfig, train
        train(ModelConfig(depth=8, width=0.25, image_size=32, num_classes=10),
              DataConfig(dataset="folder", data_dir={str(image_data / "cifar10-mini")!r}, deterministic=True),
              TrainConfig(epochs=1, batch_size=32, seed=0, strategy="mirrored"), {str(single)!r}, log=print)
    """)
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = weights(single / "model.keras")
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(chief, reference))
    assert worst < 1e-4, f"largest weight difference {worst}"
    row, ref_row = history(run)[0], history(single)[0]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert float(row[key]) == pytest.approx(float(ref_row[key]), abs=1e-4), key


def start_workers(args, timeout):
    """Two `train --strategy multi-worker` processes on free localhost ports, as a scheduler starts them."""
    peers = [f"localhost:{port}" for port in load_launcher().free_ports(2)]
    command = [PYTHON, "-m", "resnet_keras.cli", "train", "--strategy", "multi-worker", *args]
    return [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(ENV, TF_CONFIG=cluster(peers, index), **{WORKER_TIMEOUT_ENV: str(timeout)}),
        )
        for index in range(2)
    ]


@pytest.mark.slow
def test_sigkill_one_worker_the_other_fails_and_the_same_command_resumes(tmp_path, image_data):
    run = tmp_path / "mw"
    args = train_args(image_data, run, 4)
    chief, worker = start_workers(args, timeout=60)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint").exists():
        assert chief.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)  # mid-epoch 2: the chief is in, or soon in, an all-reduce with it
    killed_at = time.time()
    output = chief.communicate(timeout=240)[0]
    worker.communicate()
    # The survivor notices on its own (collective timeout / coordination-service heartbeat).
    assert chief.returncode == 1, output[-3000:]
    assert "Error: lost contact with another worker" in output
    assert time.time() - killed_at < 150
    kept = history(run)
    assert 1 <= len(kept) < 4 and not (run / "model.keras").exists()
    # Checkpoints are named by global step: 31 steps per epoch.
    saved = sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("ckpt-*.index"))
    assert saved and saved[-1] == 31 * len(kept)

    # A restart of every worker with the same command continues from the chief's last epoch.
    outputs = [process.communicate(timeout=400)[0] for process in start_workers(args, timeout=60)]
    assert all(f"Resuming {run} after epoch {len(kept)}." in out for out in outputs), outputs[0][-2000:]
    rows = history(run)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert rows[: len(kept)] == kept  # epochs done before the kill were kept, not recomputed
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.index")) == ["ckpt-124.index", "ckpt-93.index"]
    assert (run / "model.keras").exists()


@pytest.mark.slow
def test_a_worker_whose_peer_never_starts_fails_within_the_timeout(tmp_path, image_data):
    peers = [f"localhost:{port}" for port in load_launcher().free_ports(2)]  # nobody listens on the second
    env = dict(ENV, TF_CONFIG=cluster(peers, 0), **{WORKER_TIMEOUT_ENV: "10"})
    command = [
        PYTHON,
        "-m",
        "resnet_keras.cli.main",
        "train",
        "--strategy",
        "multi-worker",
        *train_args(image_data, tmp_path / "run", 1),
    ]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    elapsed = time.time() - started
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "could not reach all 2 workers" in errors[0]
    assert elapsed < 180  # 10 s timeout + TensorFlow start-up; a hang would run into the 240 s limit


@pytest.mark.extended
def test_sigterm_to_one_worker_stops_every_worker_at_the_same_step_and_the_restart_resumes(tmp_path, image_data):
    """Each worker learns at every step whether any worker got SIGTERM (one small all-reduce), so
    the collective save happens at the same step everywhere and every worker exits 143."""
    run = tmp_path / "mw"
    args = [*train_args(image_data, run, 2), "--checkpoint-every", "5"]
    chief, worker = start_workers(args, timeout=60)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint").exists():  # the first step checkpoint: step 5 of epoch 1
        assert chief.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)  # the non-chief only
    outputs = [process.communicate(timeout=240)[0] for process in (chief, worker)]
    assert [chief.returncode, worker.returncode] == [143, 143], outputs[0][-2000:]
    steps = [re.search(r"stopped by SIGTERM.* at epoch 1 step (\d+)", out) for out in outputs]
    assert all(steps) and steps[0].group(1) == steps[1].group(1), outputs
    assert "(sent to another worker)" in outputs[0] and "(sent to another worker)" not in outputs[1]

    outputs = [process.communicate(timeout=400)[0] for process in start_workers(args, timeout=60)]
    assert all(f"at epoch 1 step {steps[0].group(1)}." in out for out in outputs), outputs[0][-2000:]
    assert [int(row["epoch"]) for row in history(run)] == [1, 2] and (run / "model.keras").exists()


THREADS = """
import sys
from resnet_keras.config.schema import DataConfig, ModelConfig, TrainConfig
from resnet_keras.training.train import train
from resnet_keras.training.trainer import Hook

def threads():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Threads:")).split()[1])

class Count(Hook):
    def on_train_batch_end(self, epoch, step, values):
        if (epoch, step) == (1, 10):
            print("threads at step 10", threads(), flush=True)

    def on_epoch_end(self, epoch, logs):
        print(f"threads after epoch {epoch}", threads(), flush=True)

train(ModelConfig(depth=8, width=0.25, image_size=16, num_classes=10),
      DataConfig(dataset="synthetic", synthetic_examples=1024),
      TrainConfig(epochs=2, batch_size=16, strategy="multi-worker"), sys.argv[1], hooks=[Count()], log=print)
"""


@pytest.mark.slow
def test_a_workers_thread_count_stays_flat_over_steps(tmp_path):
    """No thread per collective: TensorFlow's `CommunicationOptions.timeout_seconds` (documented as
    debug-only) starts one per collective, alive for the timeout, so a long run at GPU step rates
    would run out of threads. 128 steps here, several collectives each."""
    peers = [f"localhost:{port}" for port in load_launcher().free_ports(2)]
    workers = [
        subprocess.Popen(
            [PYTHON, "-c", THREADS, str(tmp_path / "run")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(ENV, TF_CONFIG=cluster(peers, index), **{WORKER_TIMEOUT_ENV: "120"}),
        )
        for index in range(2)
    ]
    outputs = [worker.communicate(timeout=400)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][-3000:]
    for output in outputs:
        counts = {
            line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1])
            for line in output.splitlines()
            if line.startswith("threads ")
        }
        assert set(counts) == {"threads at step 10", "threads after epoch 1", "threads after epoch 2"}, output[-2000:]
        assert counts["threads after epoch 2"] - counts["threads at step 10"] < 20, counts
