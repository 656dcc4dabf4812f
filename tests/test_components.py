"""Training components beyond the paper: weight EMA, AdamW/LAMB, gradient clipping, BCE loss, and
their place in TrainConfig, config.json, resume and the CLI."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from resnet_keras.cli.main import cli
from resnet_keras.config.schema import COMPONENT_FIELDS, ModelConfig
from resnet_keras.core.errors import ConfigError, UsageError
from resnet_keras.data.pipeline import DataConfig
from resnet_keras.runs.rundir import RunDir
from resnet_keras.training.hooks import Hook
from resnet_keras.training.train import TrainConfig, make_optimizer, train
from resnet_keras.training.trainer import make_train_step, per_example_loss

TINY = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=10)
DIGITS = DataConfig(dataset="digits")


class RecordWeights(Hook):
    """The trained model's float weights after every step (user hooks run after the built-in ones)."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, epoch, step, values):
        self.steps.append([np.array(w) for w in self.trainer.model.weights if "float" in str(w.dtype)])


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """A tiny digits run with a weight EMA: one epoch of 3 steps, then resumed for a second."""
    path = tmp_path_factory.mktemp("ema")
    decay = 0.4  # below the warm-up's (1 + t) / (10 + t) from step 4 on: both regimes are exercised
    config = TrainConfig(epochs=1, batch_size=64, learning_rate=0.05, steps_per_epoch=3, ema_decay=decay)
    first, second = RecordWeights(), RecordWeights()

    class Start(Hook):
        def on_train_begin(self):
            self.weights = [np.array(w) for w in self.trainer.model.weights if "float" in str(w.dtype)]

    start = Start()
    train(TINY, DIGITS, config, path, log=lambda _: None, hooks=[start, first])
    metrics = train(
        TINY, DIGITS, config.__class__(**{**config.to_dict(), "epochs": 2}), path, log=lambda _: None, hooks=[second]
    )
    return dict(path=path, decay=decay, initial=start.weights, steps=first.steps + second.steps, metrics=metrics)


def test_ema_equals_the_analytic_average_through_a_resume(ema_run):
    decay, steps = ema_run["decay"], ema_run["steps"]
    assert len(steps) == 6 and ema_run["metrics"]["epochs"] == 2
    expected = ema_run["initial"]
    for t, weights in enumerate(steps, start=1):  # the optimizer has taken t steps
        d = min(decay, (1 + t) / (10 + t))  # warm-up: 0.18, 0.27, ... then the decay
        expected = [d * e + (1 - d) * w for e, w in zip(expected, weights)]
    saved = keras.saving.load_model(ema_run["path"] / "model.keras", safe_mode=True)  # the final model is the average
    got = [np.array(w) for w in saved.weights if "float" in str(w.dtype)]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(g, w, atol=1e-6) for g, w in zip(got, steps[-1]))  # not the raw weights
    assert json.loads((ema_run["path"] / "config.json").read_text())["train"]["ema_decay"] == decay


def test_validation_reads_the_average_and_evaluate_averages_test_time_views(ema_run):
    from resnet_keras.data.pipeline import make_dataset
    from resnet_keras.training.evaluate import evaluate

    path = ema_run["path"]
    plain = evaluate(path, split="val", write=False)
    assert plain["accuracy"] == pytest.approx(RunDir(path).read_history()[-1]["val_accuracy"])
    model = keras.saving.load_model(path / "model.keras", safe_mode=True)
    batches = list(make_dataset(DIGITS, "val", image_size=16, batch_size=512, training=False))
    images = np.concatenate([np.asarray(x) for x, _ in batches])
    labels = np.concatenate([np.asarray(y) for _, y in batches])

    def probabilities(views):
        return np.mean([keras.ops.convert_to_numpy(keras.activations.softmax(model(v))) for v in views], axis=0)

    flipped = probabilities([images, images[:, :, ::-1]])
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])  # 16 // 8 = 2 pixels
    crops = [padded[:, t : t + 16, c : c + 16] for t, c in [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]]
    ten = probabilities(crops + [c[:, :, ::-1] for c in crops])
    one = np.pad(images, [(0, 0), (1, 1), (1, 1), (0, 0)])
    shifted = [one[:, t : t + 16, c : c + 16] for t, c in [(1, 1), (0, 0), (2, 2)]]
    six = probabilities(shifted + [s[:, :, ::-1] for s in shifted])
    for tta, expected in (("flip", flipped), ("shifts", six), ("crops", ten)):
        result = evaluate(path, split="val", write=False, tta=tta)
        assert result["accuracy"] == pytest.approx(np.mean(expected.argmax(-1) == labels))
        assert result["loss"] == pytest.approx(-np.mean(np.log(expected[np.arange(len(labels)), labels])), rel=1e-4)
        assert result["tta"] == tta
    assert not np.allclose(flipped, probabilities([images]))


@pytest.mark.parametrize("tta", ["shifts", "crops"])
def test_shifted_and_cropped_views_are_refused_for_the_imagenet_view(ema_run, tta):
    from resnet_keras.training.evaluate import evaluate

    with pytest.raises(UsageError, match=f"tta='{tta}' with the imagenet evaluation view"):
        evaluate(ema_run["path"], data_config=dataclasses.replace(DIGITS, augment="imagenet"), tta=tta, write=False)


def _tiny_model():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_decoupled_weight_decay_spares_batch_norm_and_biases(optimizer):
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    model.get_layer(index=2).gamma.assign(np.full(4, 2.0, "float32"))
    config = TrainConfig(optimizer=optimizer, weight_decay=0.5, learning_rate=0.1)
    opt = make_optimizer(config, 0.1, model.trainable_variables)
    opt.build(model.trainable_variables)
    before = [np.array(v) for v in model.trainable_variables]
    model.get_layer(index=4).bias.assign(np.ones(3, "float32"))
    before[-1] = np.ones(3, "float32")
    opt.apply([tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables)
    for variable, old in zip(model.trainable_variables, before):
        factor = (1 - 0.1 * 0.5) if len(variable.shape) > 1 else 1.0  # zero gradient: only the decay moves
        np.testing.assert_allclose(np.array(variable), old * factor, rtol=1e-6)


def test_sgd_keeps_weight_decay_in_the_model_and_adamw_moves_it_to_the_optimizer():
    from resnet_keras.training.train import model_weight_decay

    assert model_weight_decay(TrainConfig(weight_decay=1e-4)) == 1e-4
    assert model_weight_decay(TrainConfig(weight_decay=0.05, optimizer="adamw")) == 0.0


def test_gradient_clipping_bounds_the_step_to_lr_times_the_norm():
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    lr, clip = 0.5, 1e-3
    opt = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    opt.build(model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    images = tf.random.stateless_uniform([8, 4, 4, 3], [1, 2], 0, 255)
    labels = tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
    iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    step = make_train_step(
        model,
        opt,
        strategy,
        num_classes=3,
        global_batch=8,
        label_smoothing=0.0,
        loss_scaling=False,
        xla=False,
        clip_norm=clip,
    )
    before = [np.array(v) for v in model.trainable_variables]
    step(iterator)
    moved = np.sqrt(sum(np.sum((np.array(v) - b) ** 2) for v, b in zip(model.trainable_variables, before)))
    assert moved == pytest.approx(lr * clip, rel=1e-3)  # first momentum step: lr x the clipped gradient


def test_bce_loss_matches_keras_and_takes_mixed_labels():
    logits = tf.constant([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
    labels = tf.constant([0, 2])
    ours = per_example_loss(tf, labels, logits, 3, 0.0, "bce")
    keras_bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)
    np.testing.assert_allclose(ours, keras_bce(tf.one_hot(labels, 3), logits), rtol=1e-6)
    mixed = tf.constant([[0.7, 0.0, 0.3], [0.0, 0.4, 0.6]])
    np.testing.assert_allclose(
        per_example_loss(tf, mixed, logits, 3, 0.0), keras.losses.categorical_crossentropy(mixed, logits, True), 1e-6
    )


def test_components_are_train_config_fields_checked_and_recorded(tmp_path):
    config = TrainConfig(optimizer="lamb", loss="bce", clip_norm=1.0, ema_decay=0.99, mixup=0.2, cutmix=1.0)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    plain = TrainConfig()
    expected = ["sgd", "softmax", 0.0, 0.0, 0.0, 0.0, 0.0, "none", "random", None]
    assert [getattr(plain, f) for f in COMPONENT_FIELDS] == expected
    assert TrainConfig.from_dict(TrainConfig(flip="alternating").to_dict()).flip == "alternating"
    bad = [("optimizer", "rmsprop"), ("ema_decay", 1.0), ("random_erasing", 2), ("clip_norm", -1), ("flip", "vertical")]
    for field, value in bad:
        with pytest.raises(ConfigError, match=f"{field}="):
            TrainConfig(**{field: value})
    # A run directory written before these fields existed still resumes.
    run = RunDir(tmp_path / "old")
    configs = {"model": TINY.to_dict(), "data": DIGITS.to_dict(), "train": plain.to_dict()}
    old = json.loads(json.dumps(configs))
    for field in COMPONENT_FIELDS:
        del old["train"][field]
    run.start(old, ("a",))
    (run.path / "checkpoints").mkdir()
    assert run.check_resumable(configs, overwrite=False)


def test_cli_options_come_from_the_constants(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--dataset", "digits", "--depth", "8", "--optimizer", "rmsprop"])
    assert result.exit_code == 2 and "'sgd', 'adamw', 'lamb'" in result.output
    args = ["train", "--dataset", "digits", "--depth", "8", "--width", "0.25", "--image-size", "16", "--epochs", "1"]
    args += ["--batch-size", "64", "--optimizer", "adamw", "--lr", "0.003", "--weight-decay", "0.05", "--loss", "bce"]
    args += ["--mixup", "0.2", "--cutmix", "1.0", "--random-erasing", "0.25", "--ema-decay", "0.9", "--clip-norm", "1"]
    args += [
        "--auto-augment",
        "ta_wide",
        "--se-ratio",
        "0.25",
        "--drop-path",
        "0.1",
        "--model-dir",
        str(tmp_path / "run"),
    ]
    # digits are seen as they are ("none" view): alternating flips are refused before the run exists.
    result = runner.invoke(cli, [*args, "--flip", "alternating"])
    assert result.exit_code == 2 and "flip='alternating' with the 'none' view" in result.output
    assert not (tmp_path / "run").exists()
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["optimizer"] == "adamw" and saved["train"]["cutmix"] == 1.0
    assert saved["model"]["se_ratio"] == 0.25 and saved["model"]["weight_decay"] == 0.0


def test_modern_recipes_cite_their_sources_and_round_trip_through_config_json_and_resume(tmp_path):
    from resnet_keras.config import recipes

    torchvision = TrainConfig(recipe="torchvision", family="imagenet", batch_size=1024)
    assert (torchvision.learning_rate, torchvision.weight_decay, torchvision.epochs) == (0.5, 2e-5, 600)
    assert (torchvision.mixup, torchvision.cutmix, torchvision.random_erasing) == (0.2, 1.0, 0.1)
    assert torchvision.auto_augment == "ta_wide"
    assert torchvision.label_smoothing == 0.1 and torchvision.ema_decay > 0.9999 and torchvision.warmup_epochs == 5
    a3 = TrainConfig(recipe="rsb_a3", family="imagenet", batch_size=512)
    assert (a3.optimizer, a3.loss, a3.weight_decay, a3.epochs) == ("lamb", "bce", 0.02, 100)
    assert a3.learning_rate == pytest.approx(8e-3 * 0.5)  # square-root scaling from batch 2048
    assert "strikes back" in recipes.RECIPES["rsb_a3"].source and "torchvision" in recipes.RECIPES["torchvision"].source
    config = TrainConfig(recipe="rsb_a3", epochs=1, batch_size=64, steps_per_epoch=2, warmup_epochs=0)
    logs = []
    train(TINY, DIGITS, config, tmp_path, log=logs.append)
    saved = RunDir(tmp_path).read_configs()["train"]
    assert TrainConfig.from_dict(saved) == config
    train(TINY, DIGITS, TrainConfig.from_dict({**saved, "epochs": 2}), tmp_path, log=logs.append)
    assert any("Resuming" in line for line in logs)
    assert [row["epoch"] for row in RunDir(tmp_path).read_history()] == [1, 2]
