"""What the torchvision and "ResNet strikes back" recipes prescribe beyond optimizer and schedule: a
training size below the test size (FixRes), the warm-up's starting rate, and their record in
config.json, resume and the CLI."""

import dataclasses
import json

import pytest
from click.testing import CliRunner

from resnet_keras.cli.main import cli
from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import ConfigError
from resnet_keras.data.pipeline import DataConfig, make_dataset
from resnet_keras.runs.rundir import RunDir
from resnet_keras.training.train import TrainConfig, train

TINY = ModelConfig(depth=8, width=0.25, image_size=32, num_classes=10)
DIGITS = DataConfig(dataset="digits", deterministic=True)


def test_recipes_give_their_train_size_as_a_share_of_the_image_size():
    resnet = ModelConfig(depth=18, image_size=160)
    assert TrainConfig(recipe="torchvision", family="imagenet").for_model(resnet).train_image_size == round(
        160 * 176 / 224
    )
    at_224 = ModelConfig(depth=18)
    assert TrainConfig(recipe="rsb_a3", family="imagenet").for_model(at_224).train_image_size == 160
    assert TrainConfig(recipe="torchvision", family="imagenet").for_model(at_224).train_size(at_224) == 176
    # The paper's recipe and CIFAR nets train at the test size; that is recorded as None.
    assert TrainConfig(family="imagenet").for_model(at_224).train_image_size is None
    assert TrainConfig(recipe="torchvision").for_model(TINY).train_image_size is None
    explicit = TrainConfig(recipe="torchvision", family="imagenet", train_image_size=224)
    assert explicit.for_model(at_224).train_image_size is None  # the full size, asked for
    assert TrainConfig(train_image_size=20).for_model(TINY).train_size(TINY) == 20


@pytest.mark.parametrize(
    "value, message",
    [
        (40, "to the model's image_size=32"),  # larger than the test size
        (3, "an integer from 4"),  # below what the network's stem and stages downsample by
    ],
)
def test_a_train_size_the_model_cannot_use_is_one_clear_error(value, message):
    with pytest.raises(ConfigError, match=f"Received: train_image_size={value}; expected .*{message}"):
        TrainConfig(train_image_size=value).for_model(TINY)


@pytest.mark.parametrize("value", ["24", 24.0, True, 0])
def test_a_train_size_that_is_no_integer_is_refused_by_the_config(value):
    with pytest.raises(ConfigError, match="Received: train_image_size="):
        TrainConfig(train_image_size=value)


def test_cli_refuses_a_train_size_larger_than_the_image_size_before_writing(tmp_path):
    args = ["train", "--dataset", "digits", "--depth", "8", "--image-size", "16", "--epochs", "1"]
    result = CliRunner().invoke(cli, [*args, "--train-image-size", "20", "--model-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "train_image_size=20" in errors[0] and "image_size=16" in errors[0]
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(cli, [*args, "--train-image-size", "big"])
    assert result.exit_code == 2 and "'big' is not a valid integer" in result.output


def test_training_below_the_test_size_learns_validates_at_the_test_size_and_resumes(tmp_path):
    # The training model's input is 24 and the validated one's 32: Keras refuses any other image
    # shape, so a run that completes fed each the size it was built for.
    config = TrainConfig(
        recipe="short", epochs=3, batch_size=64, learning_rate=0.1, steps_per_epoch=12, train_image_size=24
    )
    logs = []
    train(TINY, DIGITS, dataclasses.replace(config, epochs=2), tmp_path, log=logs.append)
    saved = RunDir(tmp_path).read_configs()
    assert saved["train"]["train_image_size"] == 24 and saved["model"]["image_size"] == 32
    assert TrainConfig.from_dict(saved["train"]) == dataclasses.replace(config, epochs=2)
    train(TINY, DIGITS, TrainConfig.from_dict({**saved["train"], "epochs": 3}), tmp_path, log=logs.append)
    assert any("Resuming" in line for line in logs)
    history = RunDir(tmp_path).read_history()
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(0.0 <= row["val_accuracy"] <= 1.0 and row["val_loss"] > 0 for row in history)
    import keras

    model = keras.models.load_model(tmp_path / "model.keras")
    assert model.input_shape == (None, 32, 32, 3)
    # Another training size is another run.
    with pytest.raises(Exception, match="train_image_size"):
        train(TINY, DIGITS, dataclasses.replace(config, epochs=4, train_image_size=28), tmp_path, log=logs.append)


def test_cli_records_the_train_size_in_config_json(tmp_path):
    args = ["train", "--dataset", "digits", "--depth", "8", "--width", "0.25", "--image-size", "16", "--epochs", "1"]
    args += ["--batch-size", "64", "--train-image-size", "12", "--model-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["train_image_size"] == 12 and saved["model"]["image_size"] == 16


@pytest.mark.parametrize("cache", [True, False])  # decoded and cropped, or decoded-and-cropped from the JPEG
def test_training_crops_have_the_train_size_and_evaluation_the_image_size(image_data, cache):
    # 80 pixels: the ImageNet view (random-resized crops; centre crop for evaluation).
    config = DataConfig(dataset="folder", data_dir=str(image_data / "cifar10-mini"), cache=cache)
    train_images, _ = next(
        iter(make_dataset(config, "train", image_size=80, crop_size=56, batch_size=4, training=True))
    )
    val_images, _ = next(iter(make_dataset(config, "val", image_size=80, crop_size=56, batch_size=4, training=False)))
    assert train_images.shape == (4, 56, 56, 3) and val_images.shape == (4, 80, 80, 3)
    # The CIFAR view cuts its crops smaller (tests/test_data.py checks the pixels).
    small, _ = next(iter(make_dataset(config, "train", image_size=32, crop_size=24, batch_size=4, training=True)))
    assert small.shape == (4, 24, 24, 3)


def test_torchvision_warms_up_from_one_percent_of_the_rate():
    from resnet_keras.training.train import make_schedule

    config = TrainConfig(recipe="torchvision", family="imagenet", epochs=10, warmup_epochs=1, learning_rate=0.4)
    schedule = make_schedule(config, steps_per_epoch=100)  # 100 warm-up steps
    assert float(schedule(0)) == pytest.approx(0.4 * (0.01 + 0.99 / 100))
    assert float(schedule(49)) == pytest.approx(0.4 * (0.01 + 0.99 * 0.5))
    assert float(schedule(99)) == pytest.approx(0.4)  # the last warm-up step is at the peak
    assert float(schedule(100)) == pytest.approx(0.4)  # the cosine starts there
    copy = type(schedule).from_config(schedule.get_config())
    assert float(copy(0)) == pytest.approx(float(schedule(0)))
    # The paper and short recipes start from 0; rsb_a3 from timm's 1e-6 under its 8e-3.
    short = make_schedule(TrainConfig(recipe="short", epochs=10, warmup_epochs=1, learning_rate=0.4), 100)
    assert float(short(0)) == pytest.approx(0.4 / 100) and float(short(49)) == pytest.approx(0.2)
    a3 = make_schedule(TrainConfig(recipe="rsb_a3", epochs=10, warmup_epochs=1, learning_rate=8e-3), 100)
    assert float(a3(0)) == pytest.approx(1e-6 + (8e-3 - 1e-6) / 100)
    assert float(a3(99)) == pytest.approx(8e-3)


def test_rsb_a3_trains_with_randaugment_m6_and_torchvision_with_trivialaugment():
    from resnet_keras.config import recipes
    from resnet_keras.config.schema import AUTO_AUGMENTS, RAND_AUGMENTS

    a3 = TrainConfig(recipe="rsb_a3", family="imagenet")
    assert a3.auto_augment == "rand_m6_mstd0.5" and RAND_AUGMENTS[a3.auto_augment] == (6.0, 0.5)
    assert TrainConfig(recipe="torchvision").auto_augment == "ta_wide"
    assert set(RAND_AUGMENTS) <= set(AUTO_AUGMENTS)
    for name in ("rsb_a3", "torchvision"):
        assert "Not reproduced" not in recipes.RECIPES[name].source
    assert "rand-m6-mstd0.5-inc1" in recipes.RECIPES["rsb_a3"].source
