"""The operational skeleton: recipes as data, the run directory, the trainer's hooks, evaluation on
other labelled folders and option files that cannot delete a run by a quoted boolean."""

import json
import shutil

import pytest
from click.testing import CliRunner

from resnet_keras.cli.main import cli
from resnet_keras.config import recipes
from resnet_keras.config.schema import DataConfig, ModelConfig, TrainConfig
from resnet_keras.core.errors import DataError, UsageError
from resnet_keras.runs.rundir import RunDir
from resnet_keras.training.evaluate import evaluate
from resnet_keras.training.train import train
from resnet_keras.training.trainer import Hook

TINY = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=10)


def quiet(_message):
    pass


# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", recipes.names())
@pytest.mark.parametrize("family", recipes.FAMILIES)
def test_train_config_defaults_come_from_the_recipe(name, family):
    recipe = recipes.RECIPES[name]
    config = TrainConfig(recipe=name, family=family, batch_size=512)
    assert config.epochs == recipe.epochs[family]
    scale = (512 / recipe.reference_batch[family]) ** (0.5 if recipe.lr_scaling == "sqrt" else 1)
    assert config.learning_rate == pytest.approx(recipe.learning_rate[family] * scale)
    assert config.weight_decay == recipe.weight_decay[family]
    assert (config.nesterov, config.label_smoothing) == (recipe.nesterov, recipe.label_smoothing)
    assert config.warmup_epochs == recipe.warmup_epochs(config.epochs)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_the_paper_recipe_is_the_papers():
    cifar = TrainConfig(recipe="paper", family="cifar")
    # He et al. 2015, sec. 4.2: lr 0.1 at batch 128, weight decay 1e-4, momentum 0.9, 64k iterations.
    assert (cifar.learning_rate, cifar.weight_decay, cifar.momentum, cifar.epochs) == (0.1, 1e-4, 0.9, 182)
    imagenet = TrainConfig(recipe="paper", family="imagenet", batch_size=256)
    assert (imagenet.learning_rate, imagenet.epochs) == (0.1, 90)
    assert TrainConfig(recipe="paper").uses_low_lr_start(ModelConfig(depth=110))
    assert not TrainConfig(recipe="paper").uses_low_lr_start(ModelConfig(depth=56))
    assert not TrainConfig(recipe="short").uses_low_lr_start(ModelConfig(depth=110))


def test_cli_recipe_choices_and_help_come_from_the_registry():
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    for recipe in recipes.RECIPES.values():
        assert recipe.name in result.output
    result = CliRunner().invoke(cli, ["train", "--recipe", "nope"])
    assert result.exit_code == 2 and "'paper'" in result.output and "'short'" in result.output


# ----------------------------------------------------------------------------- the run directory


def test_run_dir_never_deletes_what_is_not_a_run(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a run directory"):
        RunDir(tmp_path / "file").check_resumable({}, overwrite=True)
    assert (tmp_path / "file").read_text() == "x"
    with pytest.raises(UsageError, match="not a run directory"):
        RunDir(tmp_path).read_configs()
    with pytest.raises(UsageError, match="not found"):
        RunDir(tmp_path / "missing").read_configs()


def test_run_dir_start_writes_configs_and_labels(tmp_path):
    run = RunDir(tmp_path / "run")
    configs = {"model": TINY.to_dict(), "data": DataConfig(dataset="digits").to_dict(), "train": {}}
    assert run.check_resumable(configs, overwrite=False) is False
    run.start(configs, tuple("abcdefghij"))
    assert run.is_run() and run.model_config() == TINY
    assert run.class_names(10) == tuple("abcdefghij")
    assert run.check_resumable(configs, overwrite=False) is True
    with pytest.raises(UsageError, match="no trained model"):
        run.load_model()


# ----------------------------------------------------------------------------- hooks


class Recorder(Hook):
    def __init__(self):
        self.calls = []

    def on_train_begin(self):
        self.calls.append(("begin", self.trainer.start_epoch))

    def on_epoch_begin(self, epoch):
        self.calls.append(("epoch", epoch))

    def on_train_batch_end(self, epoch, step, values):
        assert values[2] == 64  # [loss sum, correct, count] of one batch
        self.calls.append(("step", epoch, step))

    def on_epoch_end(self, epoch, logs):
        self.calls.append(("epoch_end", epoch, sorted(logs)))

    def on_train_end(self):
        self.calls.append(("end",))


def test_a_hook_sees_every_step_and_epoch_and_resumes_where_the_run_stopped(tmp_path):
    data = DataConfig(dataset="digits")
    first = Recorder()
    config = dict(batch_size=64, learning_rate=0.1, steps_per_epoch=2)
    train(TINY, data, TrainConfig(epochs=1, **config), tmp_path, log=quiet, hooks=[first])
    keys = sorted(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "finished_at"])
    assert first.calls == [("begin", 0), ("epoch", 1), ("step", 1, 1), ("step", 1, 2), ("epoch_end", 1, keys), ("end",)]
    second = Recorder()
    train(TINY, data, TrainConfig(epochs=2, **config), tmp_path, log=quiet, hooks=[second])
    assert second.calls[:2] == [("begin", 1), ("epoch", 2)] and len(second.calls) == 6
    assert [row["epoch"] for row in RunDir(tmp_path).read_history()] == [1, 2]


def test_a_hook_that_raises_stops_the_run_with_the_epoch_checkpointed(tmp_path):
    class Stop(Hook):
        def on_epoch_end(self, epoch, logs):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            TINY,
            DataConfig(dataset="digits"),
            TrainConfig(epochs=3, batch_size=64, steps_per_epoch=1),
            tmp_path,
            log=quiet,
            hooks=[Stop()],
        )
    assert RunDir(tmp_path).latest_checkpoint().endswith("ckpt-1")
    metrics = train(
        TINY, DataConfig(dataset="digits"), TrainConfig(epochs=3, batch_size=64, steps_per_epoch=1), tmp_path, log=quiet
    )
    assert metrics["epochs"] == 3 and metrics["trained_epochs_this_run"] == 2
    # A rerun of the finished run trains nothing and keeps the record of the runs that trained.
    again = train(
        TINY, DataConfig(dataset="digits"), TrainConfig(epochs=3, batch_size=64, steps_per_epoch=1), tmp_path, log=quiet
    )
    assert again == metrics == json.loads((tmp_path / "metrics.json").read_text())


def test_a_file_system_that_refuses_writes_is_one_line_exit_2(tmp_path, monkeypatch):
    def refuse(self, *args):
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.setattr(RunDir, "start", refuse)
    args = ["train", "--dataset", "digits", "--depth", "8", "--width", "0.25", "--image-size", "16"]
    result = CliRunner().invoke(cli, [*args, "--epochs", "1", "--model-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: Permission denied: {tmp_path / 'run'}"


# ----------------------------------------------------------------------------- evaluation on other folders


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, image_data):
    run = tmp_path_factory.mktemp("folder") / "run"
    data = DataConfig(dataset="folder", data_dir=str(image_data / "cifar10-mini"))
    train(TINY, data, TrainConfig(epochs=1, batch_size=100, learning_rate=0.1), run, log=quiet)
    return run


def copy_classes(source, target, classes, per_class=5):
    for name in classes:
        (target / name).mkdir(parents=True)
        for path in sorted((source / name).iterdir())[:per_class]:
            shutil.copy(path, target / name / path.name)


@pytest.mark.parametrize("layout", ["test-split-only", "class-folders-only"])
def test_evaluate_on_a_labelled_folder_matches_classes_by_name(folder_run, image_data, tmp_path, layout):
    val = image_data / "cifar10-mini" / "val"
    root = tmp_path / "new"
    copy_classes(val, root / "test" if layout == "test-split-only" else root, ["cat", "truck", "airplane"])
    result = evaluate(folder_run, DataConfig(dataset="folder", data_dir=str(root)), "test", write=False)
    assert result["examples"] == 15
    names = RunDir(folder_run).class_names(10)
    assert result["class_names"] == list(names)
    counts = dict(zip(names, map(sum, result["confusion_matrix"])))
    assert counts == {name: (5 if name in ("cat", "truck", "airplane") else 0) for name in names}
    assert result["per_class_accuracy"]["dog"] is None

    args = ["evaluate", "--model-dir", str(folder_run), "--data-dir", str(root), "--json"]
    output = CliRunner().invoke(cli, args)
    assert output.exit_code == 0, output.output
    assert json.loads(output.output)["examples"] == 15


def test_evaluate_refuses_a_class_the_run_does_not_know(folder_run, image_data, tmp_path):
    root = tmp_path / "new"
    copy_classes(image_data / "cifar10-mini" / "val", root / "test", ["cat"])
    (root / "test" / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        evaluate(folder_run, DataConfig(dataset="folder", data_dir=str(root)), "test", write=False)


# ----------------------------------------------------------------------------- option files


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('overwrite: "false"', "'false' is not true or false"),
        ("export: 'no'", "'no' is not true or false"),
        ("epochs: 1.5", "1.5 is not a valid integer"),
        ("depth: [8]", "is not a valid integer"),
        ("base: &a [1, 2]\nepochs: *a", "aliases"),
    ],
)
def test_option_file_values_are_checked_like_the_command_line(tmp_path, line, fragment):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    options = tmp_path / "options.yaml"
    options.write_text(f"dataset: digits\n{line}\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(options), "--model-dir", str(run)])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert (run / "keep.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- durable publishing


def test_an_overwrite_killed_between_its_two_renames_is_undone_by_the_next_writer(tmp_path):
    import subprocess
    import sys
    import textwrap

    from resnet_keras.core.files import recover_replaced, remove_stale_temps

    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_text("old version")
    (tmp_path / ".tmp-1-x").mkdir()
    code = textwrap.dedent(f"""
        import os
        from resnet_keras.core import files
        real_rename = os.rename
        def rename(src, dst):
            real_rename(src, dst)
            if ".old-" in str(dst):
                os._exit(9)  # killed right after moving the old version aside
        os.rename = rename
        files.publish_dir({str(tmp_path / ".tmp-1-x")!r}, {str(tmp_path / "1")!r}, overwrite=True)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert not (tmp_path / "1").exists() and len(list(tmp_path.glob(".old-1-*"))) == 1
    assert recover_replaced(tmp_path) == [tmp_path / "1"]
    assert (tmp_path / "1" / "saved_model.pb").read_text() == "old version"
    remove_stale_temps(tmp_path)  # the killed writer's .tmp-1-x has no host-pid tag: not ours to judge
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-1-x", "1"]


def test_ctrl_c_ends_the_command_with_130_and_the_same_command_resumes(tmp_path):
    import signal
    import subprocess
    import sys

    command = [
        sys.executable,
        "-c",
        "from resnet_keras.cli.main import main; main()",
        "train",
        *["--dataset", "digits", "--depth", "8", "--width", "0.25", "--image-size", "16", "--batch-size", "64"],
        *["--epochs", "200", "--model-dir", str(tmp_path / "run")],
    ]
    # A shell starts background jobs with SIGINT ignored; a terminal's foreground job has it on.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in process.stdout:
        if line.startswith("epoch 1/"):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "Aborted." and "Traceback" not in stderr
    resumed = subprocess.run([*command[:-4], "--epochs", "2", *command[-2:]], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming" in resumed.stdout and "epoch 2/2" in resumed.stdout
