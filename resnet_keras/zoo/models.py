"""Assembling networks from the depth table: stem, stages, backbone and classifier.

He et al. 2015, Table 1 (ImageNet) and section 4.2 (CIFAR); He et al. 2016 for the
pre-activation (v2) networks, which end with a final BN-ReLU (`post_bn`, `post_relu`)
because their blocks leave the sum un-normalised.

Every model takes raw pixels ([batch, H, W, C] float32 in 0..255) and normalises them
inside (`normalize`), so exports need no preprocessing code. The classifier outputs
logits from a Dense layer named `predictions`; softmax belongs to the loss and the export.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any

import keras
from keras import layers

from resnet_keras.config.schema import ModelConfig
from resnet_keras.config.specs import scaled, stem_filters
from resnet_keras.zoo import blocks

IMAGE_INPUT = "image"


def _inputs(config: ModelConfig):
    inputs = keras.Input((config.image_size, config.image_size, config.channels), name=IMAGE_INPUT)
    x = layers.Normalization(
        mean=list(config.input_mean),
        variance=[s * s for s in config.input_std],
        name="normalize",
    )(inputs)
    return inputs, x


def backbone_features(x, config: ModelConfig) -> dict[str, Any]:
    """Runs the stem and every stage on `x`; returns each stage's output by name (`conv2`, ...)."""
    keras_layout = config.layout == "keras"
    x = blocks.STEMS[config.stem](
        x,
        scaled(stem_filters(config.family), config.width),
        preact=config.preact,
        weight_decay=config.weight_decay,
        use_bias=keras_layout,
    )
    features = {}
    stages = config.stages
    rates = drop_path_rates(config)
    for index, stage in enumerate(stages, start=2):
        # The keras layout moves each stage's downsampling to the last block of the stage before.
        following = stages[index - 1].stride if index - 1 < len(stages) else 1
        x = blocks.residual_stage(
            x,
            stage.block,
            stage.filters,
            stage.blocks,
            stride=1 if keras_layout else stage.stride,
            last_stride=following if keras_layout else 1,
            layout=config.layout,
            name=f"conv{index}",
            shortcut_option=config.shortcut,
            preact=config.preact,
            stride_in_3x3=config.stride_in_3x3,
            zero_init=config.zero_init_residual,
            weight_decay=config.weight_decay,
            se_ratio=config.se_ratio,
            avg_down=config.avg_down,
            drop_path_rates=[rates.pop(0) for _ in range(stage.blocks)] if rates else (),
        )
        features[f"conv{index}"] = x
    if config.preact:
        last = list(features)[-1]
        features[last] = blocks.bn_relu(x, name="post")
    return features


def drop_path_rates(config: ModelConfig) -> list[float]:
    """Each block's stochastic-depth rate, in network order; empty when `config.drop_path` is 0.

    Linear in depth (Huang et al. 2016, "linear decay rule"): block i of N (from 0) drops with
    probability drop_path * i / (N - 1), so early blocks, whose features every later block reads,
    are kept and the last one is dropped at `drop_path` (timm's `drop_path_rate`).
    """
    if not config.drop_path:
        return []
    count = sum(stage.blocks for stage in config.stages)
    return [config.drop_path * i / max(count - 1, 1) for i in range(count)]


def build_backbone(config: ModelConfig) -> keras.Model:
    """A feature extractor: image -> {"conv2": [b, H/4, W/4, C2], ..., "conv5": ...} (ImageNet)."""
    inputs, x = _inputs(config)
    return keras.Model(inputs, backbone_features(x, config), name=f"{config.name}_backbone")


def build_classifier(config: ModelConfig) -> keras.Model:
    """image [batch, H, W, C] raw pixels -> logits [batch, num_classes] (float32)."""
    inputs, x = _inputs(config)
    x = list(backbone_features(x, config).values())[-1]
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if config.dropout:
        x = blocks.Dropout(config.dropout, name="dropout")(x)
    # Logits stay float32 under mixed precision so the loss is computed accurately.
    logits = layers.Dense(
        config.num_classes,
        kernel_regularizer=keras.regularizers.L2(config.weight_decay / 2) if config.weight_decay else None,
        dtype="float32",
        name="predictions",
    )(x)
    return keras.Model(inputs, logits, name=config.name)


def build_model(config: ModelConfig) -> keras.Model:
    """The classifier when `config.include_top`, else the per-stage backbone."""
    # Keras walks the functional graph recursively (a few frames per layer); ResNet-1202
    # has about 3,600 layers, past Python's default limit of 1,000 frames.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * config.depth + 1000))
    return build_classifier(config) if config.include_top else build_backbone(config)


def create_model(name: str, **overrides: Any) -> keras.Model:
    """A model from a named preset, e.g. `create_model("resnet56", num_classes=100)`, randomly
    initialised (`resnet_keras.create_model` also takes pretrained `weights=`)."""
    return build_model(ModelConfig.preset(name, **overrides))


def resnet18(**overrides):
    return create_model("resnet18", **overrides)  # noqa: E704


def resnet34(**overrides):
    return create_model("resnet34", **overrides)  # noqa: E704


def resnet50(**overrides):
    return create_model("resnet50", **overrides)  # noqa: E704


def resnet101(**overrides):
    return create_model("resnet101", **overrides)  # noqa: E704


def resnet152(**overrides):
    return create_model("resnet152", **overrides)  # noqa: E704


def resnet20(**overrides):
    return create_model("resnet20", **overrides)  # noqa: E704


def resnet32(**overrides):
    return create_model("resnet32", **overrides)  # noqa: E704


def resnet44(**overrides):
    return create_model("resnet44", **overrides)  # noqa: E704


def resnet56(**overrides):
    return create_model("resnet56", **overrides)  # noqa: E704


def resnet110(**overrides):
    return create_model("resnet110", **overrides)  # noqa: E704


def resnet1202(**overrides):
    return create_model("resnet1202", **overrides)  # noqa: E704


def count_parameters(model: keras.Model) -> tuple[int, int]:
    """(trainable, total) parameter counts; BN moving statistics are non-trainable."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    total = sum(math.prod(w.shape) for w in model.weights)
    return int(trainable), int(total)


def count_multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one forward pass, counted as the paper counts FLOPs.

    Sums convolutions (H_out * W_out * k_h * k_w * C_in * C_out) and dense layers
    (inputs * outputs); BN, ReLU, pooling and additions are left out, as in Table 1.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kernel = layer.kernel.shape
            total += height * width * math.prod(kernel)
        elif isinstance(layer, layers.Dense):
            total += math.prod(layer.kernel.shape)
    return int(total)


def describe(config: ModelConfig) -> dict[str, Any]:
    """Builds the model and reports its structure and cost (for `resnet-keras info`)."""
    model = build_model(config)
    trainable, total = count_parameters(model)
    stages = config.stages
    return {
        "name": config.name,
        "family": config.family,
        "variant": config.variant,
        "depth": config.depth,
        "block": stages[0].block,
        "blocks_per_stage": [stage.blocks for stage in stages],
        "shortcut": config.shortcut,
        "stem": config.stem,
        "width": config.width,
        "image_size": config.image_size,
        "num_classes": config.num_classes,
        "trainable_params": trainable,
        "total_params": total,
        "multiply_adds": count_multiply_adds(model),
    }


@contextlib.contextmanager
def dtype_policy(name: str):
    """Builds models under the Keras dtype policy `name` ("float32", "mixed_float16", ...), then
    restores the previous global policy (Keras reads it when each layer is created)."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def at_input_size(model: keras.Model, size: int) -> keras.Model:
    """`model` taking `size` x `size` images: the same layers and weights behind a new input.

    Training at a smaller size than testing (FixRes) needs this: a Keras 3 functional model refuses
    inputs of another shape than its `keras.Input` ("expected shape=(None, 224, 224, 3)"), though
    convolutions and the global pooling before `predictions` work at any size. The view shares
    every layer (and so every variable) with `model`; `model` keeps its input, its saved config and
    its exports. Returns `model` itself when `size` is already its input size.
    """
    if tuple(model.input_shape[1:3]) == (size, size):
        return model
    inputs = keras.Input((size, size, model.input_shape[-1]), name=IMAGE_INPUT)
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer)
