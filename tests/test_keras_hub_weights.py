"""keras-hub ResNet presets: exact parity, named presets from kagglehub's cache, refused variants.

keras-hub is a Keras library, so no fixtures are needed: its `ResNetBackbone` and
`ResNetImageClassifier` are built with random weights and randomised BN statistics, saved with
keras-hub's own `save_to_preset` (the format of its published presets), imported, and compared
on the same images: logits and the four stage outputs, relative error below 1e-4.
"""

import sys

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from resnet_keras import create_model
from resnet_keras.cli.main import cli
from resnet_keras.core import network
from resnet_keras.core.errors import UsageError
from resnet_keras.pretrained import keras_hub as keras_hub_weights
from resnet_keras.pretrained import resolve

keras_hub = pytest.importorskip("keras_hub")

SIZE = 64
TOLERANCE = 1e-4
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
BLOCKS = {18: ("basic_block", [2, 2, 2, 2]), 50: ("bottleneck_block", [3, 4, 6, 3])}


def random_classifier(depth, *, block_type=None, seed=0):
    block, counts = BLOCKS[depth]
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=counts,
        stackwise_num_strides=[1, 2, 2, 2],
        block_type=block_type or block,
        use_pre_activation=False,
        image_shape=(None, None, 3),
    )
    rng = np.random.default_rng(seed)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.5, n), rng.uniform(0.5, 2.0, n)]
            )
    converter = keras_hub.layers.ResNetImageConverter(scale=list(1 / (255 * STD)), offset=list(-MEAN / STD))
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    classifier = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=1000, preprocessor=preprocessor)
    head = classifier.get_layer("predictions")
    head.set_weights([rng.normal(0, 0.05, head.kernel.shape), rng.normal(0, 0.1, head.bias.shape)])
    return classifier


def images():
    return np.random.default_rng(7).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)


def relative_error(got, reference):
    return float(np.abs(got - reference).max() / np.abs(reference).max())


def reference(classifier):
    """keras-hub's logits and stage outputs, with its own normalisation (x * scale + offset)."""
    x = ((images() / 255.0 - MEAN) / STD).astype(np.float32)
    stages = {f"conv{int(k[1:])}": v for k, v in classifier.backbone.pyramid_outputs.items()}
    probe = keras.Model(classifier.backbone.input, stages)
    return keras.ops.convert_to_numpy(classifier(x)), probe.predict(x, verbose=0)


_PRESETS = {}


def saved_preset(depth, tmp_path_factory):
    """A random classifier of `depth` saved as a keras-hub preset, once per module, with its outputs."""
    if depth not in _PRESETS:
        classifier = random_classifier(depth)
        path = tmp_path_factory.mktemp(f"hub{depth}") / "preset"
        classifier.save_to_preset(str(path))
        _PRESETS[depth] = depth, path, reference(classifier)
    return _PRESETS[depth]


@pytest.fixture(scope="module", params=[18, 50])
def preset(request, tmp_path_factory):
    return saved_preset(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def preset18(tmp_path_factory):
    return saved_preset(18, tmp_path_factory)


def test_preset_imports_exactly(preset):
    depth, path, (logits, stages) = preset
    source = resolve.resolve(str(path))
    assert source.config.name == f"resnet{depth}" + ("_v1.5" if depth == 50 else "")
    assert source.config.input_mean == (123.675, 116.28, 103.53) and source.config.input_std == (58.395, 57.12, 57.375)
    model, config = resolve.build(source, image_size=SIZE)
    assert relative_error(model.predict(images(), verbose=0), logits) < TOLERANCE
    backbone, _ = resolve.build(source, image_size=SIZE, include_top=False)
    ours = backbone.predict(images(), verbose=0)
    for name in ("conv2", "conv3", "conv4", "conv5"):
        assert ours[name].shape == stages[name].shape
        assert relative_error(ours[name], stages[name]) < TOLERANCE, name


def test_named_preset_from_the_kagglehub_cache_offline(preset18, tmp_path, monkeypatch):
    _, path, (logits, _) = preset18
    cache = tmp_path / "kaggle"
    target = cache / "models" / "keras" / "resnetv1" / "keras" / "resnet_18_imagenet" / "3"
    target.parent.mkdir(parents=True)
    target.symlink_to(path, target_is_directory=True)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    monkeypatch.setattr(network, "network_available", lambda *a, **k: pytest.fail("must not touch the network"))
    model = create_model("resnet18", weights="keras-hub:resnet_18_imagenet", image_size=SIZE)
    assert relative_error(model.predict(images(), verbose=0), logits) < TOLERANCE
    output = tmp_path / "r18.keras"
    result = CliRunner().invoke(cli, ["convert", "keras-hub:resnet_18_imagenet", "--output", str(output)])
    assert result.exit_code == 0 and "keras-hub:resnet_18_imagenet as resnet18" in result.output, result.output


def test_unsupported_presets_are_one_line_errors(tmp_path, monkeypatch):
    vd = tmp_path / "vd"
    random_classifier(18, block_type="basic_block_vd").save_to_preset(str(vd))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(network, "network_available", lambda *a, **k: False)
    cases = [
        (str(vd), "block_type='basic_block_vd' (ResNet-vd"),
        ("keras-hub:resnet_v2_50_imagenet", "pads its first max pool with -inf"),
        ("keras-hub:resnet_34_imagenet", "expected a keras-hub ResNet preset: resnet_18_imagenet"),
        ("keras-hub:resnet_50_imagenet", "no network"),
    ]
    for source, message in cases:
        result = CliRunner().invoke(cli, ["convert", source, "--output", str(tmp_path / "x.keras")])
        assert result.exit_code == 2, (source, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], (message, result.output)
        assert not (tmp_path / "x.keras").exists()


def test_without_keras_hub_the_error_says_how_to_install(preset18, monkeypatch):
    _, path, _ = preset18
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    source = resolve.resolve(str(path))  # the architecture comes from JSON alone
    assert source.config.depth in BLOCKS
    with pytest.raises(UsageError, match="needs keras-hub \\(pip install --no-deps keras-hub"):
        resolve.load(source)


def test_layer_names_map_to_ours():
    assert keras_hub_weights.our_name("stack0_block0_1_conv") == "conv2_block1_1_conv"
    assert keras_hub_weights.our_name("stack3_block2_0_bn") == "conv5_block3_0_bn"
    assert keras_hub_weights.our_name("conv1_conv") == "conv1_conv"
