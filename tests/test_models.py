"""Model zoo: published sizes, layer names, variants, options, serialization."""

import json

import keras
import numpy as np
import pytest

from resnet_keras import (
    PRESETS,
    ConfigError,
    ModelConfig,
    build_model,
    count_multiply_adds,
    count_parameters,
    create_model,
)
from resnet_keras.zoo.blocks import ZeroPadShortcut, basic_block, bottleneck_block

# torchvision's trainable counts (1000 classes, 224x224); He et al. Table 1 FLOPs (multiply-adds).
IMAGENET_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
IMAGENET_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
# He et al. section 4.2, option A, 10 classes (0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M).
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


@pytest.mark.parametrize("depth, variant", [(d, "v1") for d in IMAGENET_PARAMS] + [(50, "v1.5"), (101, "v1.5")])
def test_imagenet_parameter_counts_match_torchvision(depth, variant):
    model = build_model(ModelConfig(depth=depth, variant=variant))
    assert count_parameters(model)[0] == IMAGENET_PARAMS[depth]


@pytest.mark.parametrize("depth", sorted(IMAGENET_GMACS))
def test_imagenet_multiply_adds_match_the_paper(depth):
    macs = count_multiply_adds(build_model(ModelConfig(depth=depth)))
    assert macs / 1e9 == pytest.approx(IMAGENET_GMACS[depth], abs=0.07)


def test_v1_5_costs_more_multiply_adds_than_v1():
    v15 = count_multiply_adds(build_model(ModelConfig(depth=50, variant="v1.5")))
    assert v15 / 1e9 == pytest.approx(4.1, abs=0.02)


def test_v2_parameter_difference_is_only_batch_norm():
    """Pre-activation moves BN (input-channel BN per block, one final BN, no BN on projections)."""
    v1, v2 = (build_model(ModelConfig(depth=50, variant=v)) for v in ("v1", "v2"))

    def non_bn(model):
        return sum(
            int(np.prod(w.shape))
            for layer in model.layers
            if not isinstance(layer, keras.layers.BatchNormalization)
            for w in layer.trainable_weights
        )

    assert non_bn(v1) == non_bn(v2)
    assert count_parameters(v2)[0] == 25_549_352


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_option_a_parameter_counts_match_the_paper(depth):
    model = create_model(f"resnet{depth}")
    assert count_parameters(model)[0] == CIFAR_PARAMS[depth]
    conv_and_dense = [ly for ly in model.layers if isinstance(ly, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(conv_and_dense) == depth  # 6n+2 weighted layers, no projection convs


@pytest.mark.slow
def test_resnet1202_has_19_4_million_parameters():
    assert count_parameters(create_model("resnet1202"))[0] == 19_421_274


def test_option_b_adds_projections_only_where_dimensions_change():
    a = create_model("resnet20")
    b = create_model("resnet20", shortcut="B")
    # Two projections (16->32, 32->64), each a 1x1 conv and a BN.
    extra = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert count_parameters(b)[0] - count_parameters(a)[0] == extra
    assert {ly.name for ly in b.layers} >= {"conv3_block1_0_conv", "conv4_block1_0_bn"}
    assert "conv2_block1_0_conv" not in {ly.name for ly in b.layers}


def test_layer_names_follow_the_paper_stages():
    names = [ly.name for ly in create_model("resnet50").layers]
    for name in [
        "conv1_conv",
        "conv1_bn",
        "pool1_pool",
        "conv2_block1_0_conv",
        "conv2_block1_1_conv",
        "conv2_block1_3_bn",
        "conv2_block1_add",
        "conv2_block1_out",
        "conv5_block3_out",
        "avg_pool",
        "predictions",
    ]:
        assert name in names
    v2_names = {ly.name for ly in create_model("resnet50_v2").layers}
    assert {"conv2_block1_preact_bn", "conv3_block1_0_conv", "post_bn", "post_relu"} <= v2_names


@pytest.mark.parametrize(
    "variant, strided", [("v1", "conv3_block1_1_conv"), ("v1.5", "conv3_block1_2_conv"), ("v2", "conv3_block1_2_conv")]
)
def test_bottleneck_stride_placement(variant, strided):
    model = build_model(ModelConfig(depth=50, variant=variant, image_size=64, stem="imagenet"))
    strides = {ly.name: ly.strides for ly in model.layers if isinstance(ly, keras.layers.Conv2D)}
    assert strides[strided] == (2, 2)
    assert [
        name
        for name, s in strides.items()
        if s == (2, 2) and name.startswith("conv3_block1_") and not name.endswith("_0_conv")
    ] == [strided]


def test_convolutions_have_no_bias_and_head_outputs_float32_logits():
    model = create_model("resnet20")
    assert all(not ly.use_bias for ly in model.layers if isinstance(ly, keras.layers.Conv2D))
    assert model.get_layer("predictions").activation is keras.activations.linear
    assert model.output.dtype == "float32"


@pytest.mark.parametrize("name", ["resnet20", "resnet20_v2", "resnet18", "resnet50_v1.5", "resnet50_v2"])
def test_output_shapes_and_feature_maps(name):
    image_size = 32 if name.startswith("resnet20") else 64
    config = ModelConfig.preset(name, image_size=image_size, num_classes=7, width=0.25)
    logits = build_model(config)(np.zeros((2, image_size, image_size, 3), "float32"))
    assert logits.shape == (2, 7)
    backbone = build_model(ModelConfig.preset(name, image_size=image_size, width=0.25, include_top=False))
    features = backbone(np.zeros((1, image_size, image_size, 3), "float32"))
    expected_stages = 3 if config.family == "cifar" else 4
    assert list(features) == [f"conv{i}" for i in range(2, 2 + expected_stages)]
    sizes = [features[k].shape[1] for k in features]
    assert sizes == [image_size // s for s in ([1, 2, 4] if config.family == "cifar" else [1, 2, 4, 8])]


def test_imagenet_stem_divides_resolution_by_32():
    backbone = build_model(ModelConfig(depth=18, width=0.125, image_size=128, stem="imagenet", include_top=False))
    assert [t.shape[1] for t in backbone.outputs] == [32, 16, 8, 4]


def test_width_multiplier_scales_channels():
    model = create_model("resnet20", width=2)
    assert model.get_layer("conv4_block3_out").output.shape[-1] == 128
    assert model.get_layer("conv1_conv").output.shape[-1] == 32


def test_zero_init_residual_makes_every_block_start_as_identity():
    model = create_model("resnet20", zero_init_residual=True)
    gammas = [model.get_layer(f"conv{s}_block{b}_2_bn").gamma.numpy() for s in (2, 3, 4) for b in (1, 2, 3)]
    assert all(np.all(g == 0) for g in gammas)
    assert np.all(model.get_layer("conv2_block1_1_bn").gamma.numpy() == 1)
    v2 = create_model("resnet20_v2", zero_init_residual=True)
    assert np.all(v2.get_layer("conv3_block2_2_conv").kernel.numpy() == 0)


def test_weight_decay_applies_to_kernels_only():
    model = create_model("resnet20", weight_decay=1e-4)
    regularised = [ly.name for ly in model.layers if getattr(ly, "kernel_regularizer", None) is not None]
    assert len(regularised) == 20  # 19 convs and the dense layer
    assert not any(isinstance(model.get_layer(n), keras.layers.BatchNormalization) for n in regularised)
    model(np.zeros((1, 32, 32, 3), "float32"))
    expected = sum(1e-4 / 2 * float(np.sum(model.get_layer(n).kernel.numpy() ** 2)) for n in regularised)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)


def test_dropout_sits_before_the_head():
    model = create_model("resnet20", dropout=0.3)
    names = [ly.name for ly in model.layers]
    assert names[-3:] == ["avg_pool", "dropout", "predictions"]


def test_normalisation_is_inside_the_model():
    config = ModelConfig.preset("resnet20", input_mean=(10.0, 20.0, 30.0), input_std=(2.0, 4.0, 8.0))
    model = build_model(config)
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    out = normalize(np.full((1, 32, 32, 3), 42.0, "float32")).numpy()
    np.testing.assert_allclose(out[0, 0, 0], [16.0, 5.5, 1.5], rtol=1e-5)


def test_zero_pad_shortcut_subsamples_and_pads():
    x = np.arange(2 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 3)
    y = ZeroPadShortcut(8, 2)(x).numpy()
    assert y.shape == (2, 2, 2, 8)
    np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
    assert np.all(y[..., 3:] == 0)


def test_block_factories_take_and_return_tensors():
    x = keras.Input((8, 8, 16))
    y = basic_block(x, 32, stride=2, shortcut_option="A", name="b")
    z = bottleneck_block(x, 8, stride=2, name="c")
    assert tuple(y.shape) == (None, 4, 4, 32) and tuple(z.shape) == (None, 4, 4, 32)


@pytest.mark.parametrize("name", ["resnet20", "resnet20_v2", "resnet18_v2"])
def test_keras_round_trip_with_safe_mode(tmp_path, name):
    model = create_model(name, image_size=32, width=0.5, dropout=0.1, weight_decay=1e-4)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    # One training-mode call moves the BN statistics away from their initial values.
    model(x, training=True)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert [ly.name for ly in loaded.layers] == [ly.name for ly in model.layers]


def test_config_json_round_trip_and_resolved_defaults():
    config = ModelConfig(depth=56)
    assert (config.family, config.shortcut, config.stem, config.image_size, config.num_classes) == (
        "cifar",
        "A",
        "small",
        32,
        10,
    )
    assert ModelConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["depth"] == 56
    big = ModelConfig(depth=50)
    assert (big.family, big.shortcut, big.stem, big.image_size, big.num_classes) == (
        "imagenet",
        "B",
        "imagenet",
        224,
        1000,
    )
    assert ModelConfig(depth=50, family="cifar").stages[0].blocks == 8
    assert ModelConfig(depth=50, image_size=64).stem == "small"


def test_presets_cover_the_paper():
    for name in [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet1202",
        "resnet50_v1.5",
        "resnet50_v2",
    ]:
        assert name in PRESETS
    assert ModelConfig.preset("resnet110").stages[0].blocks == 18
    assert ModelConfig.preset("resnet1202").stages[0].blocks == 200


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth=51), "depth=51"),
        (dict(depth=50, family="imagenet", variant="v3"), "variant='v3'"),
        (dict(depth=20, width=0), "width=0"),
        (dict(depth=20, shortcut="C"), "shortcut='C'"),
        (dict(depth=26, family="imagenet"), "ImageNet family"),
        (dict(depth=50, image_size=16, stem="imagenet"), "image_size=16"),
        (dict(depth=20, num_classes=0), "num_classes=0"),
        (dict(depth=20, dropout=1.0), "dropout=1.0"),
        (dict(depth=20, input_mean=(1.0,)), "input_mean"),
    ],
)
def test_bad_configs_name_the_field_and_what_is_accepted(kwargs, message):
    with pytest.raises(ConfigError, match="expected") as error:
        ModelConfig(**kwargs)
    assert message in str(error.value)


def test_unknown_preset_and_config_keys():
    with pytest.raises(ConfigError, match="resnet20"):
        ModelConfig.preset("resnet21")
    with pytest.raises(ConfigError, match="unknown model config keys"):
        ModelConfig.from_dict({"depth": 20, "colour": "red"})


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_fused_batch_norm_matches_keras_batch_norm_in_training(policy):
    """blocks.FusedBatchNormalization (TensorFlow's fused kernel) = Keras BN: outputs, gradients, moving stats."""
    import tensorflow as tf

    from resnet_keras.zoo.blocks import FusedBatchNormalization

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        ours, theirs = (
            FusedBatchNormalization(momentum=0.9, epsilon=1e-5),
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
        )
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    x = tf.cast(tf.random.stateless_normal([8, 5, 5, 6], [1, 2]) * 3 + 1, ours.compute_dtype)
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, 6))
        layer.beta.assign(np.linspace(-1, 1, 6))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outputs = [layer(x, training=True) for layer in (ours, theirs)]
        losses = [tf.reduce_sum(tf.cast(y, tf.float32) ** 2) for y in outputs]
    grads = [tape.gradient(loss, [x, layer.gamma, layer.beta]) for loss, layer in zip(losses, (ours, theirs))]
    tol = 1e-4 if policy == "float32" else 1e-2
    assert outputs[0].dtype == outputs[1].dtype
    np.testing.assert_allclose(np.float32(outputs[0]), np.float32(outputs[1]), atol=tol)
    for mine, keras_grad in zip(*grads):
        np.testing.assert_allclose(np.float32(mine), np.float32(keras_grad), rtol=tol, atol=tol)
    np.testing.assert_allclose(ours.moving_mean.numpy(), theirs.moving_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), theirs.moving_variance.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.float32(ours(x, training=False)), np.float32(theirs(x, training=False)), atol=tol)


def test_models_use_the_fused_batch_norm_and_reload_with_safe_mode(tmp_path):
    from resnet_keras.zoo.blocks import FusedBatchNormalization

    model = build_model(ModelConfig.preset("resnet20", width=0.25))
    assert isinstance(model.get_layer("conv1_bn"), FusedBatchNormalization)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(loaded.get_layer("conv1_bn"), FusedBatchNormalization)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-5)


# -- ResNet-C/D, squeeze-and-excitation, stochastic depth ---------------------------------------

# timm 1.0.31 `sum(p.numel() for p in model.parameters())`, 1000 classes (see STACK-FACTS).
TIMM_PARAMS = {"resnet50d": 25_576_264, "resnet18d": 11_708_744, "seresnet50": 28_088_024}


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_resnet_d_and_se_parameter_counts_match_timm(name):
    model = create_model(name)
    assert count_parameters(model)[0] == TIMM_PARAMS[name]
    assert ModelConfig.preset(name).name == name  # export folders and `info` use the preset's name
    names = {ly.name for ly in model.layers}
    if name.endswith("d"):  # deep stem 32/32/64, pooled projections of strided blocks only
        assert model.get_layer("conv1_1_conv").kernel.shape == (3, 3, 3, 32)
        assert model.get_layer("conv1_3_conv").kernel.shape == (3, 3, 32, 64)
        assert {"conv3_block1_0_pool", "conv5_block1_0_pool"} <= names and "conv2_block1_0_pool" not in names
    else:  # SE squeezes 256 -> 16 channels in conv2 (ratio 1/16), before the sum
        assert model.get_layer("conv2_block1_se_reduce").kernel.shape == (1, 1, 256, 16)
        assert model.get_layer("conv2_block1_add").input[1] is model.get_layer("conv2_block1_se_excite").output


def test_se_width_rounds_as_timm_and_basic_blocks_take_every_option():
    from resnet_keras.zoo.blocks import se_channels

    assert [se_channels(c, 1 / 16) for c in (16, 64, 200, 256, 2048)] == [8, 8, 16, 16, 128]
    config = ModelConfig(
        depth=8, family="cifar", shortcut="B", stem="deep", avg_down=True, se_ratio=0.25, drop_path=0.2
    )
    assert config.name == "seresnet8d" and config.output_stride == 16
    logits = build_model(config)(np.zeros((2, 32, 32, 3), "float32"))
    assert logits.shape == (2, 10)
    with pytest.raises(ConfigError, match="avg_down=True"):
        ModelConfig(depth=20, avg_down=True)  # option A has no projection to pool before


def test_avg_down_pools_odd_maps_like_timm():
    """2x2/2 average over the pixels that exist (ceil mode, padding not counted), then the 1x1 conv."""
    from resnet_keras.zoo.blocks import shortcut

    inputs = keras.Input((7, 7, 4))
    out = shortcut(inputs, 8, stride=2, option="B", preact=True, avg_down=True, name="s")
    model = keras.Model(inputs, [out, keras.Model(inputs, out).get_layer("s_0_pool").output])
    x = np.random.default_rng(0).normal(size=(1, 7, 7, 4)).astype("float32")
    projected, pooled = (np.asarray(t) for t in model(x))
    expected = np.array(
        [[x[0, r : r + 2, c : c + 2].mean(axis=(0, 1)) for c in range(0, 7, 2)] for r in range(0, 7, 2)]
    )
    np.testing.assert_allclose(pooled[0], expected, rtol=1e-6)
    assert projected.shape == (1, 4, 4, 8)


def test_drop_path_keeps_the_expected_value_and_is_identity_at_inference():
    from resnet_keras.zoo.blocks import DropPath

    keras.utils.set_random_seed(1)
    rate, n = 0.3, 20_000
    layer = DropPath(rate)
    x = np.ones((n, 2, 2, 3), "float32")
    y = np.asarray(layer(x, training=True))
    per_example = y.reshape(n, -1)
    assert np.all(per_example == per_example[:, :1])  # the whole example is kept or dropped
    np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / (1 - rate)], rtol=1e-6)
    sigma = np.sqrt(rate * (1 - rate) / n) / (1 - rate)  # standard error of the mean
    assert abs(y.mean() - 1.0) < 5 * sigma
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)


def test_drop_path_rates_grow_linearly_with_depth():
    from resnet_keras.zoo.models import drop_path_rates

    config = ModelConfig.preset("resnet20", drop_path=0.2)
    rates = drop_path_rates(config)
    np.testing.assert_allclose(rates, np.linspace(0, 0.2, 9))
    model = build_model(config)
    layers = [ly for ly in model.layers if ly.name.endswith("_drop_path")]
    assert [ly.name for ly in layers][:2] == ["conv2_block2_drop_path", "conv2_block3_drop_path"]  # block 1 keeps 0
    np.testing.assert_allclose([ly.rate for ly in layers], rates[1:])


def test_modern_options_round_trip_through_json_and_safe_mode(tmp_path):
    config = ModelConfig(
        depth=8, family="cifar", shortcut="B", stem="deep", avg_down=True, se_ratio=0.25, drop_path=0.1, num_classes=3
    )
    assert ModelConfig.from_json(config.to_json()) == config
    model = build_model(config)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)
