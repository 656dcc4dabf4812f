"""Training loop, run directory, resume, distribution, NaN handling, evaluation and the CLI.

Tiny models (ResNet-8 at width 0.25 on 16x16 digits) keep each run to a few seconds; the
subprocess tests (MirroredStrategy over two logical CPUs, SIGKILL and resume) pay a fresh
TensorFlow start-up each.
"""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_keras.cli.main import cli
from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import ConfigError, TrainingFailure, UsageError
from resnet_keras.data.pipeline import DataConfig
from resnet_keras.training.train import TrainConfig, evaluate, make_schedule, train
from resnet_keras.training.trainer import Hook

TINY = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=10)
DIGITS = DataConfig(dataset="digits")
FAST = dict(batch_size=64, learning_rate=0.1)
TINY_CLI = ["--dataset", "digits", "--depth", "8", "--width", "0.25", "--image-size", "16", "--batch-size", "64"]


def quiet(_message):
    pass


def history(model_dir):
    with open(os.path.join(model_dir, "history.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- config and schedule


def test_train_config_recipe_defaults_and_round_trip():
    paper = TrainConfig(batch_size=256)
    assert (paper.epochs, paper.learning_rate, paper.nesterov, paper.label_smoothing, paper.warmup_epochs) == (
        182,
        pytest.approx(0.2),
        False,
        0.0,
        0,
    )
    short = TrainConfig(recipe="short", epochs=20)
    assert short.nesterov and short.label_smoothing == 0.1 and short.warmup_epochs == 2
    # The budget values measured on CIFAR-10 (ResNet-20, 6 epochs: 80.7 % vs 77.9 % with the paper's).
    budget = TrainConfig(recipe="short", epochs=8, batch_size=256)
    assert (budget.learning_rate, budget.weight_decay, budget.warmup_epochs) == (pytest.approx(0.4), 5e-4, 0.5)
    assert paper.weight_decay == 1e-4 and TrainConfig(weight_decay=0.0).weight_decay == 0.0
    imagenet = TrainConfig(recipe="short", family="imagenet", epochs=8, batch_size=256)
    assert (imagenet.learning_rate, imagenet.weight_decay) == (pytest.approx(0.1), 1e-4)
    for config in (paper, short):
        assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "field, value",
    [
        ("recipe", "fast"),
        ("epochs", 0),
        ("batch_size", 1.5),
        ("mixed_precision", "int8"),
        ("strategy", "tpu"),
        ("label_smoothing", 1),
    ],
)
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=f"Received: {field}="):
        TrainConfig(**{field: value})


def test_paper_schedule_divides_by_ten_at_half_and_three_quarters():
    schedule = make_schedule(TrainConfig(epochs=4, learning_rate=0.1), steps_per_epoch=100)
    rates = [float(schedule(step)) for step in (0, 199, 200, 299, 300, 399)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_short_schedule_warms_up_then_decays_to_zero():
    schedule = make_schedule(TrainConfig(recipe="short", epochs=10, warmup_epochs=1, learning_rate=0.4), 10)
    assert float(schedule(0)) == pytest.approx(0.04)
    assert float(schedule(9)) == pytest.approx(0.4)
    assert float(schedule(10)) == pytest.approx(0.4)
    assert float(schedule(55)) == pytest.approx(0.2, abs=0.01)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-6)


def test_linear_schedule_decays_in_a_straight_line_where_cosine_would_bend():
    budget = make_schedule(TrainConfig(recipe="short_linear", epochs=10, warmup_epochs=1, learning_rate=0.4), 10)
    short = make_schedule(TrainConfig(recipe="short", epochs=10, warmup_epochs=1, learning_rate=0.4), 10)
    assert float(budget(9)) == pytest.approx(0.4)
    # A quarter and three quarters of the way through the decay: linear 0.3 / 0.1, cosine 0.34 / 0.06.
    assert [float(budget(s)) for s in (10 + 22.5, 10 + 67.5)] == pytest.approx([0.3, 0.1], abs=1e-6)
    assert [float(short(s)) for s in (10 + 22.5, 10 + 67.5)] == pytest.approx([0.3414, 0.0586], abs=1e-4)
    assert float(budget(100)) == pytest.approx(0.0, abs=1e-6)


def test_imagenet_paper_recipe_uses_batch_256_reference_and_thirds():
    config = TrainConfig(family="imagenet", batch_size=128)
    assert (config.epochs, config.learning_rate) == (90, pytest.approx(0.05))  # 0.1 at batch 256
    schedule = make_schedule(TrainConfig(family="imagenet", epochs=90, batch_size=256), steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 299, 300, 599, 600, 899)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_low_rate_start_only_for_the_paper_recipe_on_deep_cifar_nets():
    paper, short = TrainConfig(), TrainConfig(recipe="short")
    assert paper.uses_low_lr_start(ModelConfig.preset("resnet110"))
    assert paper.uses_low_lr_start(ModelConfig.preset("resnet1202"))
    assert not paper.uses_low_lr_start(ModelConfig.preset("resnet56"))
    assert not short.uses_low_lr_start(ModelConfig.preset("resnet110"))
    assert TrainConfig(low_lr_start=True).uses_low_lr_start(ModelConfig.preset("resnet20"))
    assert not TrainConfig(low_lr_start=False).uses_low_lr_start(ModelConfig.preset("resnet110"))


def test_train_refuses_a_config_for_the_other_family(tmp_path):
    with pytest.raises(UsageError, match="family"):
        train(
            ModelConfig.preset("resnet18", width=0.25, image_size=32, num_classes=10),
            DIGITS,
            TrainConfig(epochs=1),
            tmp_path / "run",
            log=quiet,
        )


def test_low_rate_start_runs_at_a_tenth_until_train_error_is_below_80_percent(tmp_path):
    messages = []
    config = TrainConfig(epochs=3, low_lr_start=True, **FAST)
    train(TINY, DIGITS, config, tmp_path / "run", log=messages.append)
    rows = history(tmp_path / "run")
    assert float(rows[0]["lr"]) == pytest.approx(0.01)  # 0.1 / 10 while the error is high
    done = [message for message in messages if message.startswith("low-rate start done")]
    assert len(done) == 1 and "at epoch 3 " not in done[0], messages
    steps = 1294 // 64  # digits train examples // batch
    full_rate = float(make_schedule(config, steps)(2 * steps))
    assert float(rows[-1]["lr"]) == pytest.approx(full_rate)  # the last epoch runs on the full schedule


def test_global_batch_must_split_over_replicas():
    from resnet_keras.training.distribute import check_global_batch

    with pytest.raises(UsageError, match="batch_size=7.*2 replicas"):
        check_global_batch(7, types.SimpleNamespace(num_replicas_in_sync=2))
    assert check_global_batch(8, types.SimpleNamespace(num_replicas_in_sync=2)) == 4


# ----------------------------------------------------------------------------- training and run dir


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run") / "digits"
    metrics = train(TINY, DIGITS, TrainConfig(epochs=4, **FAST), model_dir, log=quiet)
    return model_dir, metrics


def test_training_learns_digits(digits_run):
    _, metrics = digits_run
    assert metrics["epochs"] == 4
    assert metrics["final_loss"] < 1.5
    assert metrics["final_val_accuracy"] > 0.5  # chance is 0.1
    assert metrics["best_val_accuracy"] >= metrics["final_val_accuracy"]
    assert metrics["images_per_second"] > 0


def test_run_directory_contents(digits_run):
    import keras

    model_dir, _ = digits_run
    for name in ("config.json", "history.csv", "metrics.json", "curves.png", "model.keras", "best.weights.h5"):
        assert (model_dir / name).stat().st_size > 0, name
    assert list((model_dir / "logs").iterdir()), "no TensorBoard events"
    assert (model_dir / "checkpoints" / "checkpoint").exists()
    configs = json.loads((model_dir / "config.json").read_text())
    assert ModelConfig.from_dict(configs["model"]).weight_decay == 1e-4  # from TrainConfig
    assert DataConfig.from_dict(configs["data"]) == DIGITS
    assert TrainConfig.from_dict(configs["train"]).epochs == 4
    rows = history(model_dir)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert set(json.loads((model_dir / "metrics.json").read_text())) >= {
        "final_val_accuracy",
        "best_val_accuracy",
        "wall_seconds",
        "images_per_second",
    }
    import resnet_keras.zoo.blocks  # noqa: F401  registers ZeroPadShortcut

    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    assert model.output.shape == (None, 10)


def test_evaluate_reports_per_class_and_confusion(digits_run):
    model_dir, metrics = digits_run
    result = evaluate(model_dir, batch_size=100)
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == result["examples"] == 359
    assert result["accuracy"] == pytest.approx(np.trace(confusion) / 359)
    assert result["accuracy"] > 0.5 and result["top5_accuracy"] >= result["accuracy"]
    assert len(result["per_class_accuracy"]) == 10
    assert (model_dir / "confusion.png").stat().st_size > 0
    val = evaluate(model_dir, split="val", weights="best", write=False)
    assert val["accuracy"] == pytest.approx(metrics["best_val_accuracy"])


def test_evaluate_refuses_a_directory_without_a_model(tmp_path):
    with pytest.raises(UsageError, match="no config.json"):
        evaluate(tmp_path)


def test_resume_continues_after_the_last_epoch_and_refuses_other_configs(tmp_path):
    model_dir = tmp_path / "run"
    train(TINY, DIGITS, TrainConfig(epochs=1, **FAST), model_dir, log=quiet)
    first = history(model_dir)
    messages = []
    metrics = train(TINY, DIGITS, TrainConfig(epochs=2, **FAST), model_dir, log=messages.append)
    assert any("Resuming" in m and "after epoch 1" in m for m in messages)
    assert [m for m in messages if m.startswith("epoch ")][0].startswith("epoch 2/2")  # epoch 1 not recomputed
    rows = history(model_dir)
    assert len(rows) == 2 and rows[0] == first[0] and metrics["epochs"] == 2

    with pytest.raises(UsageError, match=r"train\.learning_rate.*--overwrite"):
        train(TINY, DIGITS, TrainConfig(epochs=2, batch_size=64, learning_rate=0.05), model_dir, log=quiet)
    with pytest.raises(UsageError, match=r"model\.depth"):
        train(
            ModelConfig(depth=14, width=0.25, image_size=16, num_classes=10),
            DIGITS,
            TrainConfig(epochs=2, **FAST),
            model_dir,
            log=quiet,
        )

    # A run directory written before newer config fields existed still resumes when they keep defaults.
    configs = json.loads((model_dir / "config.json").read_text())
    for section, key in (("train", "init_from"), ("train", "low_lr_start"), ("model", "layout")):
        del configs[section][key]
    (model_dir / "config.json").write_text(json.dumps(configs))
    messages = []
    train(TINY, DIGITS, TrainConfig(epochs=2, **FAST), model_dir, log=messages.append)
    assert any("already trained for 2 epochs" in m for m in messages), messages

    train(TINY, DIGITS, TrainConfig(epochs=1, batch_size=64, learning_rate=0.05), model_dir, overwrite=True, log=quiet)
    assert len(history(model_dir)) == 1
    assert json.loads((model_dir / "config.json").read_text())["train"]["learning_rate"] == 0.05


def test_a_resumed_run_trains_on_the_data_an_uninterrupted_run_sees(tmp_path):
    class Crash(Exception):
        pass

    def crash_after_epoch_1(message):
        if message.startswith("epoch 1/"):  # logged once the epoch's checkpoint is saved
            raise Crash

    data = DataConfig(dataset="digits", deterministic=True, augment="cifar")
    config = TrainConfig(epochs=2, **FAST)
    train(TINY, data, config, tmp_path / "straight", log=quiet)
    with pytest.raises(Crash):
        train(TINY, data, config, tmp_path / "resumed", log=crash_after_epoch_1)
    train(TINY, data, config, tmp_path / "resumed", log=quiet)
    straight, resumed = history(tmp_path / "straight"), history(tmp_path / "resumed")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        # Epoch 2 reads epoch 2's order and crops, not epoch 1's again.
        assert float(resumed[1][key]) == pytest.approx(float(straight[1][key]), rel=1e-4, abs=1e-4), key


def test_steps_per_loop_changes_when_the_host_reads_not_what_is_computed(tmp_path):
    """Seven steps per call of the compiled step (20 steps an epoch: loops of 7, 7 and 6) give the
    history of one step per call; a bad value is refused before the run directory exists."""
    data = DataConfig(dataset="digits", deterministic=True)
    config = TrainConfig(epochs=2, **FAST)
    seen = []

    class Steps(Hook):
        def on_train_batch_end(self, epoch, step, values):
            seen.append((epoch, step, int(values[2])))

    train(TINY, data, config, tmp_path / "one", log=quiet)
    train(TINY, data, config, tmp_path / "seven", log=quiet, hooks=[Steps()], steps_per_loop=7)
    assert seen[:3] == [(1, 7, 7 * 64), (1, 14, 7 * 64), (1, 20, 6 * 64)]
    for one, seven in zip(history(tmp_path / "one"), history(tmp_path / "seven")):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(seven[key]) == pytest.approx(float(one[key]), rel=1e-4, abs=1e-4), key
    with pytest.raises(ConfigError, match="steps_per_loop"):
        train(TINY, data, config, tmp_path / "bad", log=quiet, steps_per_loop=0)
    assert not (tmp_path / "bad").exists()


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(UsageError, match="not a run directory"):
        train(TINY, DIGITS, TrainConfig(epochs=1, **FAST), tmp_path, overwrite=True, log=quiet)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import tensorflow as tf

    import resnet_keras.training.trainer as trainer_module

    poison = tf.Variable(1.0)
    original = trainer_module.per_example_loss
    monkeypatch.setattr(trainer_module, "per_example_loss", lambda *args: original(*args) * poison)

    def log(message):  # after epoch 1 is checkpointed, the loss turns NaN
        if message.startswith("epoch 1/"):
            poison.assign(float("nan"))

    # Checkpoints are named by global step: epoch 1 of digits at batch 64 is 20 steps.
    with pytest.raises(TrainingFailure, match=r"NaN at epoch 2 step 1; last good checkpoint: .*ckpt-20"):
        train(TINY, DIGITS, TrainConfig(epochs=3, **FAST), tmp_path, log=log)
    assert [p.name for p in (tmp_path / "checkpoints").glob("ckpt-*.index")] == ["ckpt-20.index"]
    assert len(history(tmp_path)) == 1


def test_exploding_learning_rate_fails_cleanly(tmp_path):
    with pytest.raises(TrainingFailure, match="loss became NaN at epoch"):
        train(
            TINY,
            DIGITS,
            TrainConfig(epochs=3, batch_size=64, learning_rate=1e10, weight_decay=0.0),
            tmp_path,
            log=quiet,
        )


def test_num_classes_must_match_the_dataset(tmp_path):
    with pytest.raises(UsageError, match="num_classes=5"):
        train(
            ModelConfig(depth=8, width=0.25, image_size=16, num_classes=5),
            DIGITS,
            TrainConfig(epochs=1),
            tmp_path,
            log=quiet,
        )


@pytest.mark.slow
@pytest.mark.parametrize("precision, xla", [("float16", False), ("none", True)])
def test_mixed_precision_and_xla_train(tmp_path, precision, xla):
    import keras

    metrics = train(
        TINY, DIGITS, TrainConfig(epochs=1, mixed_precision=precision, xla=xla, **FAST), tmp_path, log=quiet
    )
    assert math.isfinite(metrics["final_loss"]) and metrics["final_accuracy"] > 0.1
    assert keras.mixed_precision.dtype_policy().name == "float32"  # the global policy is restored


# ----------------------------------------------------------------------------- CLI


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_cli_train_and_evaluate(tmp_path):
    result = run("train", *TINY_CLI, "--epochs", "1", "--model-dir", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output and "Done:" in result.output
    result = run("evaluate", "--model-dir", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["examples"] == 359


def test_cli_bad_depth_is_one_line_exit_2(tmp_path):
    result = run("train", "--dataset", "digits", "--depth", "9", "--model-dir", str(tmp_path))
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "depth=9" in result.output
    result = run("evaluate", "--model-dir", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "no config.json" in result.output


def test_cli_config_file_with_a_flag_overriding_it(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("dataset: digits\ndepth: 8\nwidth: 0.25\nimage-size: 16\nbatch_size: 64\nepochs: 1\nlr: 0.05\n")
    result = run("train", "--config", str(config), "--epochs", "2", "--model-dir", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["epochs"] == 2  # the flag wins
    assert saved["train"]["batch_size"] == 64 and saved["train"]["learning_rate"] == 0.05  # the file fills the rest
    assert saved["model"]["depth"] == 8 and saved["model"]["image_size"] == 16
    config.write_text("depth: 8\nbogus: 1\n")
    result = run("train", "--config", str(config))
    assert result.exit_code == 2 and "bogus" in result.output


# ----------------------------------------------------------------------------- subprocesses

PYTHON = sys.executable
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    script = textwrap.dedent(f"""
        import json, numpy as np
        from resnet_keras.training.distribute import split_cpu, make_strategy
        split_cpu(2)
        from resnet_keras.config.schema import ModelConfig
        from resnet_keras.data.pipeline import DataConfig
        from resnet_keras.core.errors import UsageError
        from resnet_keras.training.train import TrainConfig, train
        import keras, resnet_keras.zoo.blocks
        model = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=10)
        try:
            train(model, DataConfig(dataset="digits"), TrainConfig(epochs=1, batch_size=33, strategy="mirrored"),
                  {str(tmp_path / "bad")!r}, log=lambda m: None)
            refused = None
        except UsageError as error:
            refused = str(error)
        try:
            train(model, DataConfig(dataset="digits"), TrainConfig(epochs=1, strategy="mirrored", xla=True),
                  {str(tmp_path / "xla")!r}, log=lambda m: None)
            xla_refused = None
        except UsageError as error:
            xla_refused = str(error)
        metrics = train(model, DataConfig(dataset="digits"),
                        TrainConfig(epochs=1, batch_size=64, learning_rate=0.1, strategy="mirrored"),
                        {str(tmp_path / "run")!r}, log=lambda m: None)
        weights = keras.saving.load_model({str(tmp_path / "run" / "model.keras")!r}).get_weights()
        print(json.dumps(dict(replicas=metrics["replicas"], loss=metrics["final_loss"], refused=refused,
                              xla_refused=xla_refused, finite=all(bool(np.isfinite(w).all()) for w in weights))))
    """)
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=ENV, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["finite"] and math.isfinite(result["loss"])
    assert "batch_size=33" in result["refused"] and "2 replicas" in result["refused"]
    assert "xla=True" in result["xla_refused"]


def test_mirrored_replicas_read_one_pipeline_per_worker_and_resume_exactly(tmp_path):
    """MirroredStrategy over two logical CPUs: the dataset function runs once (one pipeline, with
    its private thread pool), replica r gets what a one-replica worker r of 2 would read, and a
    stream resumed mid-epoch continues with exactly the batches an uninterrupted one reads."""
    script = textwrap.dedent("""
        import json, types
        from resnet_keras.training.distribute import split_cpu, make_strategy, input_threads
        split_cpu(2)
        import numpy as np, tensorflow as tf
        from resnet_keras.data import pipeline as data_lib
        from resnet_keras.training import train as train_lib
        from resnet_keras.config.schema import ModelConfig, TrainConfig
        from resnet_keras.data.pipeline import DataConfig
        strategy = make_strategy("mirrored")
        model = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=10)
        data = DataConfig(dataset="digits", deterministic=True, augment="cifar")
        config = TrainConfig(epochs=2, batch_size=64, mixup=0.2, cutmix=1.0, auto_augment="ta_wide",
                             strategy="mirrored").for_model(model)
        calls, threads = [], []
        original = strategy.distribute_datasets_from_function
        def counting(fn, options=None):
            def wrapped(ctx):
                calls.append([ctx.input_pipeline_id, ctx.num_input_pipelines])
                ds = fn(ctx)
                threads.append(ds.options().threading.private_threadpool_size)
                return ds
            return original(wrapped, options)
        strategy.distribute_datasets_from_function = counting
        # 5 steps an epoch (fewer than the stream's 22): steps and stream epochs need not align.
        setup = types.SimpleNamespace(model_config=model, data_config=data, train_config=config,
                                      strategy=strategy, steps_per_epoch=5)
        def steps(start_epoch, start_step, n):
            iterator = iter(train_lib._train_input(setup, start_epoch, start_step))
            return [[np.asarray(v) for v in strategy.experimental_local_results(next(iterator)[0])]
                    for _ in range(n)]
        straight, resumed = steps(0, 0, 25), steps(4, 3, 2)  # steps 23 and 24: in the stream's 2nd epoch
        workers = [list(data_lib.training_stream(model, data, config, first_step=0,
                        input_context=tf.distribute.InputContext(2, r, 2)).take(25).as_numpy_iterator())
                   for r in range(2)]
        print(json.dumps(dict(
            calls=calls, threads=threads, expected_threads=input_threads(),
            resumed=all(np.array_equal(a, b) for i in range(2) for a, b in zip(resumed[i], straight[23 + i])),
            as_workers=all(np.array_equal(straight[s][r], workers[r][s][0]) for s in range(25) for r in range(2)),
            replicas_differ=not np.array_equal(straight[0][0], straight[0][1]),
            shape=list(straight[0][0].shape))))
    """)
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=ENV, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["calls"] == [[0, 1], [0, 1]]  # one pipeline per worker, for each of the two streams
    assert result["threads"] == [result["expected_threads"]] * 2
    assert result["shape"] == [32, 16, 16, 3]  # per-replica batches of the global 64
    assert result["as_workers"] and result["replicas_differ"]
    assert result["resumed"]


@pytest.mark.slow
def test_sigkill_mid_training_then_the_same_command_resumes(tmp_path):
    model_dir = tmp_path / "run"
    command = [
        PYTHON,
        "-m",
        "resnet_keras.cli.main",
        "train",
        *TINY_CLI[:-1],
        "32",
        "--epochs",
        "6",
        "--model-dir",
        str(model_dir),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    deadline = time.time() + 120
    while not (model_dir / "checkpoints" / "checkpoint").exists():
        assert process.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_rows = history(model_dir)
    assert 1 <= len(killed_rows) < 6 and not (model_dir / "model.keras").exists()

    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Resuming" in done.stdout
    rows = history(model_dir)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0] == killed_rows[0]  # the first epoch was kept, not recomputed
    assert (model_dir / "model.keras").exists()
