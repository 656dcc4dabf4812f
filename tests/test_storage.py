"""Run directories on object storage: `resnet_keras.core.storage` and everything that reaches a run through it.

TensorFlow's in-process ``ram://`` file system stands in for a bucket: the same `tf.io.gfile`
calls a ``gs://`` run makes, with no network. It lives in one process, so the training, resume,
evaluation, export and search tests call the Python API; the CLI test checks the offline failure
of a real ``gs://`` name. ``ram://`` matches names by prefix (``ram://a/run`` "exists" when
``ram://a/run2/x`` does), so every test writes under a root of its own.
"""

import csv
import io
import os
import subprocess
import sys
import time
import uuid

import pytest

from resnet_keras.config.schema import ModelConfig
from resnet_keras.core import storage
from resnet_keras.core.errors import UsageError
from resnet_keras.core.storage import UrlPath, as_path, copy_folder, write_atomic
from resnet_keras.data.pipeline import DataConfig
from resnet_keras.runs.rundir import RunDir
from resnet_keras.training.train import TrainConfig, evaluate, train

TINY = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=10)
DIGITS = DataConfig(dataset="digits")
FAST = dict(batch_size=64, learning_rate=0.1)


def quiet(_message):
    pass


def ram_root() -> str:
    return f"ram://test-{uuid.uuid4().hex}"


def listing(url: str) -> set[str]:
    """Every file under `url`, relative to it."""
    import tensorflow as tf

    return {
        os.path.relpath(os.path.join(parent, name), url).replace(os.sep, "/")
        for parent, _, names in tf.io.gfile.walk(url)
        for name in names
    }


# ----------------------------------------------------------------------------- the path layer


def test_a_url_keeps_its_scheme_and_open_refuses_it():
    path = as_path("gs://bucket/runs/r1")
    assert isinstance(path, UrlPath) and isinstance(as_path("runs/r1"), os.PathLike)
    assert str(path / "checkpoints" / "ckpt-20") == "gs://bucket/runs/r1/checkpoints/ckpt-20"
    assert (path.name, str(path.parent), str(path.with_name("r2"))) == ("r1", "gs://bucket/runs", "gs://bucket/runs/r2")
    assert str(as_path("gs://bucket/runs/r1/")) == "gs://bucket/runs/r1" and path.scheme == "gs"
    assert (path / "best.weights.h5").suffix == ".h5"
    root = ram_root()
    assert as_path(RunDir(f"{root}/run")) == UrlPath(f"{root}/run")  # a RunDir is PathLike: its URL survives
    with pytest.raises(TypeError):  # no __fspath__: a URL can never become a local folder named gs:
        open(path)


def test_write_atomic_on_a_url_replaces_whole_and_leaves_no_temporary(monkeypatch):
    import tensorflow as tf

    root = ram_root()
    target = as_path(f"{root}/run/history.csv")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, "old\n")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n" and listing(root) == {"run/history.csv"}

    def broken_rename(*args, **kwargs):  # the store fails after the upload, before the rename
        raise tf.errors.UnavailableError(None, None, "connection reset")

    monkeypatch.setattr(tf.io.gfile, "rename", broken_rename)
    with pytest.raises(tf.errors.UnavailableError):
        write_atomic(target, "half\n")
    assert target.read_text() == "new\n" and listing(root) == {"run/history.csv"}


def test_a_folder_copy_killed_midway_is_not_a_run_and_the_next_copy_replaces_it(monkeypatch):
    import tensorflow as tf

    root = ram_root()
    source = as_path(f"{root}/a/run")
    RunDir(source).start({"model": {}, "data": {}}, ("cat", "dog"))
    (source / "checkpoints").mkdir(parents=True)
    write_atomic(source / "checkpoints" / "checkpoint", "state\n")
    real_copy, copies = tf.io.gfile.copy, []

    def dies_on_the_second_copy(*args, **kwargs):
        copies.append(args)
        if len(copies) == 2:
            raise KeyboardInterrupt  # a kill between two objects
        return real_copy(*args, **kwargs)

    target = as_path(f"{root}/b/run")
    monkeypatch.setattr(tf.io.gfile, "copy", dies_on_the_second_copy)
    with pytest.raises(KeyboardInterrupt):
        copy_folder(source, target, marker=RunDir.CONFIG)
    assert target.exists() and not RunDir(target).is_run()  # config.json is copied last
    monkeypatch.setattr(tf.io.gfile, "copy", real_copy)
    copy_folder(source, target, marker=RunDir.CONFIG)
    assert listing(str(target)) == {"config.json", "labels.txt", "checkpoints/checkpoint"}
    assert RunDir(target).class_names(2) == ("cat", "dog")


def test_an_unanswering_store_fails_in_one_line_within_the_timeout(monkeypatch):
    path = as_path(f"{ram_root()}/run")
    monkeypatch.setattr(UrlPath, "exists", lambda self: time.sleep(30))
    start = time.perf_counter()
    with pytest.raises(UsageError, match=r"no answer from the ram:// store within 0\.5 s"):
        storage.check_reachable(path, timeout=0.5)
    assert time.perf_counter() - start < 5


def test_a_scheme_this_tensorflow_lacks_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"s3://bucket/run cannot be used: .*no s3:// file system"):
        train(TINY, DIGITS, TrainConfig(epochs=1, **FAST), "s3://bucket/run", log=quiet)
    assert list(tmp_path.iterdir()) == []  # no local folder named s3:


# ----------------------------------------------------------------------------- a run on ram://


def test_a_run_on_ram_trains_resumes_evaluates_and_exports(tmp_path, monkeypatch):
    from resnet_keras.serving import export as export_lib

    monkeypatch.chdir(tmp_path)  # a URL written as a local folder would appear here
    url = f"{ram_root()}/run"
    train(TINY, DIGITS, TrainConfig(epochs=1, **FAST), url, log=quiet)
    files = listing(url)
    assert {
        "config.json",
        "labels.txt",
        "history.csv",
        "metrics.json",
        "model.keras",
        "best.weights.h5",
        "curves.png",
        "checkpoints/checkpoint",
        "checkpoints/ckpt-20.index",
    } <= files, files
    assert any(name.startswith("logs/events.out.tfevents") for name in files)
    assert not [name for name in files if ".tmp" in name]  # every temporary was renamed or removed
    assert list(tmp_path.iterdir()) == []

    messages = []
    metrics = train(TINY, DIGITS, TrainConfig(epochs=2, **FAST), url, log=messages.append)
    assert any(m.startswith(f"Resuming {url} after epoch 1") for m in messages)
    rows = list(csv.DictReader(io.StringIO(as_path(url + "/history.csv").read_text())))
    assert [row["epoch"] for row in rows] == ["1", "2"] and metrics["epochs"] == 2
    assert "checkpoints/ckpt-40.index" in listing(url)

    result = evaluate(url, split="test", batch_size=64)
    assert result["examples"] > 0 and {"eval-test.json", "confusion.png"} <= listing(url)
    assert RunDir(url).read_json("eval-test.json")["accuracy"] == result["accuracy"]
    assert RunDir(url).load_model("best").count_params() == RunDir(url).load_model("final").count_params()

    report = export_lib.export_saved_model(url, tmp_path / "models", log=quiet)
    assert report["max_probability_difference"] < export_lib.SAVED_MODEL_TOLERANCE
    assert (tmp_path / "models" / "resnet8_w0.25" / "1" / "saved_model.pb").is_file()
    with pytest.raises(UsageError, match=r"cannot do atomically"):
        export_lib.export_saved_model(url, f"{ram_root()}/models", log=quiet)
    tflite = export_lib.export_tflite(url, f"{url}-exports/model.tflite", eval_samples=32, log=quiet)
    assert tflite["path"] == f"{url}-exports/model.tflite"
    assert listing(f"{url}-exports") == {"model.tflite", "model.tflite.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


@pytest.mark.slow
def test_a_hyperband_search_on_ram_promotes_a_trial_from_its_copied_run(image_data):
    from resnet_keras.tune import space as tune_space
    from resnet_keras.tune import tuner as tune_tuner

    url = f"{ram_root()}/search"
    tune = tune_space.TuneConfig(tuner="hyperband", epochs_per_trial=2, hyperband_factor=2, max_trials=3)
    space = tune_space.SearchSpace(depths=(8,), widths=(0.125,), shortcuts=("A",))
    data = DataConfig(dataset="folder", data_dir=str(image_data / "cifar10-mini"))
    result = tune_tuner.search(
        space, tune, data, TrainConfig(epochs=2, batch_size=16, steps_per_epoch=2), url, log=quiet
    )
    rows = {row["trial"]: row for row in result.rows}
    (promoted,) = [row for row in rows.values() if row["continued_from"]]
    run = f"{url}/kerastuner/trial_{promoted['trial']}/run"
    history = list(csv.DictReader(io.StringIO(as_path(run + "/history.csv").read_text())))
    source = f"{url}/kerastuner/trial_{promoted['continued_from']}/run/history.csv"
    assert [row["epoch"] for row in history] == ["1", "2"]
    assert history[0] == next(csv.DictReader(io.StringIO(as_path(source).read_text())))  # not retrained
    assert {"trials.csv", "best.yaml", "search.json"} <= listing(url)


# ----------------------------------------------------------------------------- offline, from the CLI


def test_train_into_a_bucket_offline_is_one_line_exit_2_and_writes_nothing_here(tmp_path):
    # A proxy on a closed port makes every GCS request fail the way a dead network does, so
    # TensorFlow's client retries (about 200 s measured); the store probe gives up after 3 s.
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        https_proxy="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        RESNET_KERAS_STORE_TIMEOUT="3",
    )
    command = [sys.executable, "-m", "resnet_keras.cli", "train", "--dataset", "digits", "--depth", "8"]
    command += ["--width", "0.25", "--image-size", "16", "--epochs", "1", "--model-dir", "gs://no-such-bucket/run"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    elapsed = time.perf_counter() - start
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == "Error: gs://no-such-bucket/run: no answer from the gs:// store within 3 s; check the network"
    assert list(tmp_path.iterdir()) == []  # no folder named gs:
    assert elapsed < 90
