"""Weight import from keras.applications: exact parity, weights files, `convert`, offline behaviour.

Parity runs offline: the keras.applications model is built with random weights (`weights=None`),
its BN statistics, gammas, betas and conv biases randomised too (so the folding is really
exercised), then imported; logits, probabilities and every stage's features must agree on the
same raw RGB images. ResNet-50 (v1 and v2) at 64x64 runs in CI; 101 and 152 in the extended suite.
"""

import dataclasses
import time

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner

from resnet_keras.cli.main import cli
from resnet_keras.core import network
from resnet_keras.core.errors import UsageError
from resnet_keras.pretrained import keras_apps as weights
from resnet_keras.pretrained import resolve
from resnet_keras.zoo.models import build_model

SIZE = 64
TOLERANCE = 1e-4  # relative to the largest magnitude of the reference


def randomized_keras_app(app, *, seed=0, include_top=True):
    model = weights.build_keras_app(app, image_size=SIZE, include_top=include_top)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.5, n), rng.uniform(0.5, 2.0, n)]
            )
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.normal(0, 0.2, layer.bias.shape))
    return model


def relative_error(got, reference):
    return float(np.abs(got - reference).max() / np.abs(reference).max())


def keras_stage_outputs(keras_model, config):
    names = {f"conv{i}": f"conv{i}_block{stage.blocks}_out" for i, stage in enumerate(config.stages, start=2)}
    if config.preact:
        names["conv5"] = "post_relu"  # our v2 backbone ends its last stage with the final BN-ReLU
    return keras.Model(keras_model.input, {k: keras_model.get_layer(v).output for k, v in names.items()})


def check_parity(app):
    keras_model = randomized_keras_app(app)
    config = weights.model_config_for(app, image_size=SIZE)
    ours = build_model(config)
    converted = weights.convert_weights(keras_model, app, ours)
    resolve.assign(ours, converted)
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    preprocessed = weights.keras_preprocess(app, images)

    reference = keras_model.predict(preprocessed, verbose=0)
    logits = ours.predict(images, verbose=0)
    assert np.abs(reference).max() > 1.0  # a real signal, not all zeros
    assert relative_error(logits, reference) < TOLERANCE
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    assert relative_error(probabilities, keras.ops.convert_to_numpy(keras.ops.softmax(reference))) < TOLERANCE

    backbone = build_model(dataclasses.replace(config, include_top=False))
    resolve.assign(backbone, converted, skip=("predictions",))
    features = backbone.predict(images, verbose=0)
    expected = keras_stage_outputs(keras_model, config).predict(preprocessed, verbose=0)
    assert sorted(features) == ["conv2", "conv3", "conv4", "conv5"]
    for name in expected:
        assert features[name].shape == expected[name].shape
        assert relative_error(features[name], expected[name]) < TOLERANCE, name


@pytest.mark.slow
@pytest.mark.parametrize("app", ["resnet50", "resnet50v2"])
def test_resnet50_import_matches_keras_applications(app):
    check_parity(app)


@pytest.mark.extended
@pytest.mark.parametrize("app", ["resnet101", "resnet152", "resnet101v2", "resnet152v2"])
def test_deep_import_matches_keras_applications(app):
    check_parity(app)


@pytest.mark.slow
def test_folding_is_needed_for_parity():
    """Guards the test itself: without the BGR flip, the v1 import would be visibly wrong."""
    keras_model = randomized_keras_app("resnet50")
    config = weights.model_config_for("resnet50", image_size=SIZE)
    ours = build_model(config)
    converted = weights.convert_weights(keras_model, "resnet50", ours)
    converted["conv1_conv"] = [converted["conv1_conv"][0][:, :, ::-1, :]]  # undo the flip
    resolve.assign(ours, converted)
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    reference = keras_model.predict(weights.keras_preprocess("resnet50", images), verbose=0)
    assert relative_error(ours.predict(images, verbose=0), reference) > 1e-2


def test_v2_weights_need_the_keras_layout():
    keras_model = weights.build_keras_app("resnet50v2", image_size=SIZE)
    paper = build_model(dataclasses.replace(weights.model_config_for("resnet50v2", image_size=SIZE), layout="paper"))
    with pytest.raises(UsageError, match="has a bias and our resnet50_v2 has no BN after it"):
        weights.convert_weights(keras_model, "resnet50v2", paper)


def test_keras_layout_strides_last_block_and_keeps_total_stride():
    config = weights.model_config_for("resnet50v2", image_size=SIZE, include_top=False)
    model = build_model(config)
    assert [tuple(model.output[k].shape[1:3]) for k in ("conv2", "conv3", "conv4", "conv5")] == [
        (8, 8),
        (4, 4),
        (2, 2),
        (2, 2),
    ]  # keras' ResNetV2: each stage downsamples at its end
    assert model.get_layer("conv2_block3_2_conv").strides == (2, 2)
    assert model.get_layer("conv2_block1_2_conv").strides == (1, 1)
    assert model.get_layer("conv1_conv").use_bias and model.get_layer("conv2_block1_3_conv").use_bias
    assert not model.get_layer("conv2_block1_1_conv").use_bias


def test_wrong_architecture_is_refused_before_anything_is_loaded():
    keras_model = weights.build_keras_app("resnet50", image_size=SIZE)
    ours = build_model(weights.model_config_for("resnet101", image_size=SIZE))
    with pytest.raises(
        UsageError,
        match=r"ResNet50 \(107 weighted layers\) do not fit resnet101 \(209\): "
        r"conv4_block\d+_\w+ and 101 more not in the weights",
    ):
        weights.convert_weights(keras_model, "resnet50", ours)


# ----------------------------------------------------------------------------- files, convert, offline


def write_legacy_h5(model, path):
    """The official keras.applications files' format (Keras 2 HDF5, layer names inside)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return path


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A random ResNet50 (with head) saved like the official weights file, and its model."""
    model = randomized_keras_app("resnet50", seed=3)
    path = tmp_path_factory.mktemp("keras_home") / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    path.parent.mkdir()
    return write_legacy_h5(model, path), model


@pytest.mark.slow
def test_convert_weights_file_writes_an_exact_keras_model(resnet50_file, tmp_path):
    path, keras_model = resnet50_file
    assert weights.inspect_weights_file(path) == ("resnet50", True)
    output = tmp_path / "r50.keras"
    result = CliRunner().invoke(cli, ["convert", str(path), "--output", str(output), "--image-size", str(SIZE)])
    assert result.exit_code == 0, result.output
    assert "ResNet50 as resnet50" in result.output
    loaded = keras.saving.load_model(output, safe_mode=True, compile=False)
    images = np.random.default_rng(2).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    reference = keras_model.predict(weights.keras_preprocess("resnet50", images), verbose=0)
    assert relative_error(loaded.predict(images, verbose=0), reference) < TOLERANCE
    again = CliRunner().invoke(cli, ["convert", str(path), "--output", str(output)])
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output


@pytest.mark.slow
def test_imagenet_comes_from_the_keras_cache_without_network(resnet50_file, tmp_path, monkeypatch):
    path, keras_model = resnet50_file
    monkeypatch.setenv("KERAS_HOME", str(path.parent.parent))
    monkeypatch.setattr(network, "network_available", lambda *a, **k: pytest.fail("must not touch the network"))
    output = tmp_path / "cached.keras"
    result = CliRunner().invoke(cli, ["convert", "resnet50", "--output", str(output), "--image-size", str(SIZE)])
    assert result.exit_code == 0, result.output
    loaded = keras.saving.load_model(output, safe_mode=True, compile=False)
    images = np.full((1, SIZE, SIZE, 3), 128.0, "float32")
    reference = keras_model.predict(weights.keras_preprocess("resnet50", images), verbose=0)
    assert relative_error(loaded.predict(images, verbose=0), reference) < TOLERANCE


def test_imagenet_offline_says_so_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(network, "network_available", lambda *a, **k: False)
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["convert", "resnet101v2", "--output", str(tmp_path / "x.keras")])
    assert time.perf_counter() - start < 5
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert (
        len(lines) == 1 and "no network" in lines[0] and "resnet101v2_weights_tf_dim_ordering_tf_kernels.h5" in lines[0]
    )
    assert not (tmp_path / "x.keras").exists()


def test_network_probe_is_bounded_and_false_offline():
    start = time.perf_counter()
    assert network.network_available("https://nonexistent.invalid/x", timeout=1.0) is False
    assert time.perf_counter() - start < 2.5


@pytest.mark.slow
def test_weights_file_of_another_depth_is_refused(resnet50_file, tmp_path):
    path, _ = resnet50_file
    output = tmp_path / "r101.keras"
    result = CliRunner().invoke(cli, ["convert", "resnet101", "--weights", str(path), "--output", str(output)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: {path} holds keras.applications ResNet50 weights; expected keras.applications ResNet101"
    )
    assert not output.exists()


def test_bad_sources_are_one_line_and_exit_2(tmp_path):
    not_h5 = tmp_path / "junk.h5"
    not_h5.write_text("not hdf5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle.attrs["layer_names"] = [b"dense"]
        handle.create_group("dense").attrs["weight_names"] = [b"dense/kernel"]
    cases = [
        (["convert", str(tmp_path / "missing.h5"), "--output", str(tmp_path / "a.keras")], "does not exist"),
        (["convert", str(not_h5), "--output", str(tmp_path / "a.keras")], "is not an HDF5 weights file"),
        (["convert", str(other), "--output", str(tmp_path / "a.keras")], "holds no layer conv1_conv"),
        (["convert", "resnet18", "--output", str(tmp_path / "a.keras")], "expected a keras.applications ResNet"),
        (["convert", "resnet50", "--output", str(tmp_path / "a.h5")], "ending in .keras"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
    assert not (tmp_path / "a.keras").exists()


def test_keras3_weights_file_is_identified_by_layer_counts(tmp_path):
    model = weights.build_keras_app("resnet50v2", image_size=32, include_top=False)
    path = tmp_path / "v2.weights.h5"
    model.save_weights(path)
    assert weights.inspect_weights_file(path) == ("resnet50v2", False)


def test_app_names_follow_depth_and_variant():
    assert weights.app_for(101, "v2") == "resnet101v2"
    with pytest.raises(UsageError, match="variant='v1.5'"):
        weights.app_for(50, "v1.5")
    config = weights.model_config_for("resnet50")
    assert config.input_mean == weights.CAFFE_MEAN_RGB and config.input_std == (1.0, 1.0, 1.0)
    assert config.stem == "imagenet" and config.layout == "paper"
