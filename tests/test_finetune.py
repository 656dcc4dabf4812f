"""Fine-tuning through the one training loop: sources, freeze and BN policies, backbone learning
rate, two phases and their resume, bad sources, the CLI, and the feature-extraction export.

A tiny ResNet-8 (width 0.25, 16x16 digits) is pretrained once per module; every fine-tuning run
starts from it and takes a few steps.
"""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from resnet_keras.cli.main import cli
from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import ConfigError, UsageError
from resnet_keras.data.pipeline import DataConfig
from resnet_keras.pretrained import finetune, ours, resolve
from resnet_keras.training.train import TrainConfig, train
from resnet_keras.zoo.models import build_model

TINY = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=10)
DIGITS = DataConfig(dataset="digits")
THREE = DataConfig(dataset="synthetic", synthetic_classes=3, synthetic_examples=96)


def quiet(_message):
    pass


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pre") / "run"
    train(TINY, DIGITS, TrainConfig(epochs=1, batch_size=64, learning_rate=0.1, steps_per_epoch=4), run, log=quiet)
    return run


def weights_of(model, prefix=""):
    return {
        f"{layer.name}/{i}": w.numpy().copy()
        for layer in model.layers
        if layer.name.startswith(prefix)
        for i, w in enumerate(layer.weights)
    }


def finetune_run(pretrained, model_dir, data=THREE, **options):
    init = resolve.normalize(str(pretrained))
    config = finetune.model_config_for(init, num_classes=3)
    base = dict(epochs=2, batch_size=32, learning_rate=0.05, steps_per_epoch=2, init_from=init)
    train(config, data, TrainConfig(**{**base, **options}), model_dir, log=quiet)
    return keras.saving.load_model(model_dir / "model.keras", safe_mode=True, compile=False)


def source_model(pretrained):
    return keras.saving.load_model(pretrained / "model.keras", safe_mode=True, compile=False)


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        ModelConfig(depth=8, width=0.25, image_size=16, num_classes=4, variant="v2", shortcut="B", dropout=0.1),
        ModelConfig(depth=50, variant="v1.5", width=0.125, image_size=32, stem="imagenet"),
        ModelConfig(
            depth=50,
            variant="v2",
            width=0.125,
            image_size=32,
            stem="imagenet",
            layout="keras",
            input_mean=(127.5,) * 3,
            input_std=(127.5,) * 3,
        ),
    ],
)
def test_infer_config_reads_our_models(config):
    assert ours.infer_config(build_model(config)) == config


def test_infer_config_refuses_foreign_models():
    foreign = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv1_conv")])
    with pytest.raises(UsageError, match="not a resnet-keras model"):
        ours.infer_config(foreign)


def test_finetuning_options_are_validated():
    with pytest.raises(UsageError, match="freeze='backbone' without init_from"):
        TrainConfig(freeze="backbone")
    with pytest.raises(ConfigError, match="head_epochs=3; expected an integer in"):
        TrainConfig(epochs=3, head_epochs=3, init_from="imagenet")
    with pytest.raises(ConfigError, match="freeze='stages-4'"):
        TrainConfig(init_from="imagenet", freeze="stages-4")
    config = TrainConfig(
        epochs=4, init_from="/x", freeze="stem", bn_policy="frozen", head_epochs=1, backbone_lr_multiplier=0.1
    )
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.slow
def test_frozen_backbone_keeps_every_pretrained_weight_and_trains_a_new_head(pretrained, tmp_path):
    model = finetune_run(pretrained, tmp_path / "ft", freeze="backbone")
    source = source_model(pretrained)
    before, after = weights_of(source), weights_of(model)
    assert model.get_layer("predictions").kernel.shape == (16, 3)  # new head for 3 classes
    backbone = [key for key in before if not key.startswith("predictions")]
    assert backbone and all(np.array_equal(before[key], after[key]) for key in backbone)  # BN stats too
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["train"]["init_from"] == str(pretrained) and config["train"]["freeze"] == "backbone"


@pytest.mark.slow
def test_frozen_bn_keeps_statistics_while_convolutions_learn(pretrained, tmp_path):
    model = finetune_run(pretrained, tmp_path / "ft", bn_policy="frozen")
    before, after = weights_of(source_model(pretrained)), weights_of(model)
    bn = [k for k in before if "_bn/" in k]
    conv = [k for k in before if "_conv/" in k]
    assert all(np.array_equal(before[k], after[k]) for k in bn)
    assert any(not np.array_equal(before[k], after[k]) for k in conv)
    trained = finetune_run(pretrained, tmp_path / "bn-train", bn_policy="train")
    assert any(not np.array_equal(before[k], weights_of(trained)[k]) for k in bn)  # the policy matters


@pytest.mark.slow
def test_backbone_lr_multiplier_scales_the_backbone_updates(pretrained, tmp_path):
    """SGD without momentum, one step, same data: the backbone moves by exactly multiplier x."""
    before = weights_of(source_model(pretrained), "conv")
    same_batches = dataclasses.replace(THREE, augment="none", deterministic=True)
    moves = {}
    for multiplier in (1.0, 0.25):
        model = finetune_run(
            pretrained,
            tmp_path / f"m{multiplier}",
            data=same_batches,
            epochs=1,
            steps_per_epoch=1,
            momentum=0.0,
            weight_decay=0.0,
            bn_policy="frozen",
            backbone_lr_multiplier=multiplier,
        )
        after = weights_of(model, "conv")
        moves[multiplier] = np.concatenate([(after[k] - before[k]).ravel() for k in before if "_conv/" in k])
    assert np.abs(moves[1.0]).max() > 0
    np.testing.assert_allclose(moves[0.25], 0.25 * moves[1.0], rtol=1e-3, atol=1e-7)


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_two_phase_run_resumes_in_the_right_phase(pretrained, tmp_path):
    run = tmp_path / "two-phase"
    init = resolve.normalize(str(pretrained))
    config = finetune.model_config_for(init, num_classes=3)
    train_config = TrainConfig(
        epochs=3, head_epochs=2, batch_size=32, learning_rate=0.05, steps_per_epoch=2, init_from=init
    )
    messages = []

    def stop_after_first_epoch(message):
        messages.append(message)
        if message.startswith("epoch 1/3"):
            raise Interrupt  # like a crash right after the epoch-1 checkpoint

    def conv_weights(epoch):  # checkpoints are named by global step: 2 steps per epoch
        reader = tf.train.load_checkpoint(str(run / "checkpoints" / f"ckpt-{2 * epoch}"))
        shapes = reader.get_variable_to_shape_map()
        # the model's variables are saved under the optimizer's list of the variables it trains
        keys = sorted(
            k for k in shapes if "_trainable_variables/" in k and "OPTIMIZER" not in k and len(shapes[k]) == 4
        )
        assert keys
        return [reader.get_tensor(k) for k in keys]

    with pytest.raises(Interrupt):
        train(config, THREE, train_config, run, log=stop_after_first_epoch)
    assert any(m.startswith("phase head") for m in messages)
    first = conv_weights(1)  # the checkpoint manager keeps only the last two
    messages.clear()
    train(config, THREE, train_config, run, log=messages.append)
    assert messages[0].startswith("Resuming") and not any(m.startswith("Initialised") for m in messages)
    phases = [m.split(":")[0] for m in messages if m.startswith("phase")]
    assert phases == ["phase head", "phase finetune"]  # epoch 2 is still head-only, epoch 3 fine-tunes

    second, third = conv_weights(2), conv_weights(3)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))  # head phase: the backbone did not move
    assert any(not np.array_equal(b, c) for b, c in zip(second, third))


@pytest.mark.slow
def test_cli_finetunes_from_a_run_and_refuses_bad_sources(pretrained, tmp_path):
    base = ["train", "--dataset", "digits", "--batch-size", "64", "--epochs", "1"]
    ok = CliRunner().invoke(
        cli,
        base
        + [
            "--init-from",
            str(pretrained),
            "--freeze",
            "stages-2-3",
            "--head-epochs",
            "0",
            "--model-dir",
            str(tmp_path / "ok"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "Initialised" in ok.output and "freeze=stages-2-3" in ok.output
    cases = [
        (["--init-from", str(tmp_path / "missing")], "does not exist"),
        (["--init-from", str(pretrained), "--depth", "14"], "--depth 14 (source: 8)"),
        (["--init-from", "imagenet", "--depth", "18"], "keras.applications has ImageNet weights only for depth"),
        (["--freeze", "backbone"], "without init_from"),
    ]
    for extra, message in cases:
        model_dir = tmp_path / "bad"
        result = CliRunner().invoke(cli, base + extra + ["--model-dir", str(model_dir)])
        assert result.exit_code == 2, (extra, result.output)
        assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
        assert not model_dir.exists()


def test_weights_that_do_not_fit_leave_no_run_directory(pretrained, tmp_path):
    config = dataclasses.replace(TINY, depth=14, num_classes=3)
    with pytest.raises(UsageError, match=r"depth=14 \(source: 8\)"):
        train(config, THREE, TrainConfig(epochs=1, init_from=str(pretrained)), tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_export_features_signatures_return_embeddings(pretrained, tmp_path):
    output = tmp_path / "features"
    result = CliRunner().invoke(cli, ["export-features", str(pretrained), "--output", str(output)])
    assert result.exit_code == 0, result.output
    loaded = tf.saved_model.load(str(output))
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    embedding = loaded.signatures["serving_default"](image=tf.constant(images))["embedding"].numpy()
    stages = loaded.signatures["stage_features"](image=tf.constant(images))
    assert embedding.shape == (2, 16)
    assert sorted(stages) == ["conv2", "conv2_pool", "conv3", "conv3_pool", "conv4", "conv4_pool"]
    source = source_model(pretrained)
    last = keras.Model(source.input, source.get_layer("avg_pool").output).predict(images, verbose=0)
    np.testing.assert_allclose(embedding, last, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stages["conv4_pool"].numpy(), last, rtol=1e-5, atol=1e-6)
    again = CliRunner().invoke(cli, ["export-features", str(pretrained), "--output", str(output)])
    assert again.exit_code == 2 and "exists" in again.output
