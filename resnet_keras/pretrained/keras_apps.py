"""Importing keras.applications ResNet weights into our models, exactly.

keras.applications has `ResNet50/101/152` (He et al. 2015, converted from the authors' Caffe
models: BGR "caffe" preprocessing, a bias on every convolution) and `ResNet50V2/101V2/152V2`
(He et al. 2016, pre-activation, "tf" preprocessing x / 127.5 - 1). Our models take raw RGB
pixels and have bias-free convolutions before BN, so the import rewrites the weights instead
of the network wherever that is exact:

- caffe preprocessing: mean subtraction goes into the model's `normalize` layer (std 1); the
  RGB->BGR flip is a permutation of conv1's input channels (its kernel's axis 2 reversed).
- a conv bias b followed by BN: BN(Wx + b) with moving mean m equals BN(Wx) with mean m - b.
- keras' BN epsilon 1.001e-5 vs our 1e-5: moving variance + 1e-8 gives the same denominator.

ResNetV2 needs our `layout="keras"` (ModelConfig): its conv1 bias meets the max pool's zero
padding before any BN (not foldable), its residual-stream biases would shift the per-stage
features if folded, and it downsamples on the last block of a stage with a subsampled shortcut.

Weights come from `imagenet` (the official files through Keras' cache `~/.keras/models`, or
`$KERAS_HOME/models`; offline without a cached file it says so at once) or a weights file of a
keras.applications model: the official legacy `.h5` format (layer names inside, so the
architecture is read from the file) or a Keras 3 `.weights.h5` (identified by layer counts).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from resnet_keras.config import specs
from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import UsageError
from resnet_keras.pretrained.registry import KERAS_APPLICATIONS

# keras.applications name -> KerasApp(depth, variant, constructor, top1, top5): the registry's table.
KERAS_APPS = KERAS_APPLICATIONS
# keras.applications.resnet.preprocess_input ("caffe"): BGR minus these means, in RGB order here.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
# keras.applications.resnet_v2.preprocess_input ("tf"): x / 127.5 - 1.
TF_MEAN, TF_STD = (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)
KERAS_BN_EPSILON = 1.001e-5
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
# (convolutions, batch norms) in a Keras 3 `.weights.h5`, whose layer names are not the model's.
_LAYER_COUNTS = {
    (53, 53): "resnet50",
    (104, 104): "resnet101",
    (155, 155): "resnet152",
    (53, 49): "resnet50v2",
    (104, 100): "resnet101v2",
    (155, 151): "resnet152v2",
}


def app_for(depth: int, variant: str) -> str:
    """The keras.applications name for our (depth, variant), or UsageError naming what exists."""
    for name, app in KERAS_APPS.items():
        if (app.depth, app.variant) == (depth, variant):
            return name
    raise UsageError(
        f"Received: depth={depth}, variant={variant!r}; keras.applications has ImageNet weights "
        "only for depth 50/101/152 with variant 'v1' or 'v2' (" + ", ".join(KERAS_APPS) + ")"
    )


def check_app(name: str) -> str:
    key = name.lower().replace("_", "")
    if key not in KERAS_APPS:
        raise UsageError(f"Received: {name!r}; expected a keras.applications ResNet: {', '.join(KERAS_APPS)}")
    return key


def describe_app(name: str) -> str:
    return f"keras.applications {KERAS_APPS[name][2]}"


def model_config_for(
    app: str, *, image_size: int = 224, include_top: bool = True, num_classes: int = 1000, **overrides
) -> ModelConfig:
    """Our ModelConfig that holds `app`'s weights exactly (ImageNet stem at any image size)."""
    depth, variant = KERAS_APPS[check_app(app)][:2]
    caffe = variant == "v1"
    return ModelConfig(
        depth=depth,
        family="imagenet",
        variant=variant,
        shortcut="B",
        stem="imagenet",
        image_size=image_size,
        num_classes=num_classes,
        include_top=include_top,
        input_mean=CAFFE_MEAN_RGB if caffe else TF_MEAN,
        input_std=(1.0, 1.0, 1.0) if caffe else TF_STD,
        layout="paper" if caffe else "keras",
        **overrides,
    )


def build_keras_app(app: str, *, include_top: bool = True, image_size: int = 224, logits: bool = True):
    """The keras.applications model with random weights (`weights=None`): never downloads."""
    import keras

    constructor = getattr(keras.applications, KERAS_APPS[check_app(app)][2])
    return constructor(
        weights=None,
        include_top=include_top,
        input_shape=(image_size, image_size, 3),
        classifier_activation=None if logits else "softmax",
    )


def keras_preprocess(app: str, images):
    """keras.applications' own preprocessing for `app` (numpy float32 RGB 0-255 in)."""
    import keras

    module = keras.applications.resnet if KERAS_APPS[check_app(app)][1] == "v1" else keras.applications.resnet_v2
    return module.preprocess_input(np.array(images, dtype=np.float32, copy=True))


# ----------------------------------------------------------------------------- weight files


def inspect_weights_file(path: str | os.PathLike) -> tuple[str, bool]:
    """(keras.applications name, has the 1000-class head) of a weights file, read from its layers."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist")
    try:
        with h5py.File(path, "r") as handle:
            group = handle["model_weights"] if "model_weights" in handle else handle
            if "layer_names" in group.attrs:  # legacy Keras 2 format: the official files
                names = {n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]}
                weighted = {n for n in names if n in group and len(group[n].attrs.get("weight_names", []))}
                return _app_from_names(path, weighted), "predictions" in weighted
            if "layers" in handle:  # Keras 3 `.weights.h5`: class-based names, identified by counts
                kinds = [re.sub(r"(_\d+)?$", "", key) for key in handle["layers"].keys()]
                counts = (kinds.count("conv2d"), kinds.count("batch_normalization"))
                if counts in _LAYER_COUNTS:
                    return _LAYER_COUNTS[counts], "dense" in kinds
                raise UsageError(
                    f"{path} holds {counts[0]} convolutions and {counts[1]} batch norms; expected "
                    "a keras.applications ResNet (ResNet-50: 53 and 53, ResNet50V2: 53 and 49)"
                )
    except OSError as error:
        raise UsageError(f"{path} is not an HDF5 weights file ({str(error).splitlines()[0]})") from None
    raise UsageError(f"{path} is not a Keras weights file (no layer_names and no layers group)")


def _app_from_names(path: Path, names: set[str]) -> str:
    if "conv1_conv" not in names:
        raise UsageError(f"{path} holds no layer conv1_conv; expected the weights of a keras.applications ResNet")
    blocks = {}
    for name in names:
        match = re.match(r"conv(\d)_block(\d+)_", name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block)
    counts = tuple(blocks.get(stage, 0) for stage in (2, 3, 4, 5))
    variant = "v2" if "post_bn" in names else "v1"
    for app, known in KERAS_APPS.items():
        if known.variant == variant and specs.IMAGENET_DEPTHS[known.depth][1] == counts:
            return app
    raise UsageError(
        f"{path} holds a ResNet with {'/'.join(map(str, counts))} blocks per stage; expected a "
        "keras.applications ResNet (50: 3/4/6/3, 101: 3/4/23/3, 152: 3/8/36/3)"
    )


# ----------------------------------------------------------------------------- conversion


def convert_weights(keras_model, app: str, model) -> dict[str, list[np.ndarray]]:
    """Our layer name -> weights for `model` (built from `model_config_for(app)`), from `keras_model`.

    Folds conv biases into the following BN, the BN epsilon into the moving variance and (v1)
    the BGR flip into conv1. Raises UsageError when any weighted layer of either model has no
    counterpart or a different shape: the result covers every weight or nothing.
    """
    from keras import layers

    app = check_app(app)
    caffe = KERAS_APPS[app][1] == "v1"
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    theirs = {layer.name: layer for layer in keras_model.layers if layer.weights}
    source = describe_app(app)
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    if missing or extra:
        raise UsageError(
            f"the weights of {source} ({len(theirs)} weighted layers) do not fit {model.name} "
            f"({len(ours)}): {_first(missing, 'not in our model')}{_first(extra, 'not in the weights')}"
        )
    folded: dict[str, np.ndarray] = {}
    result: dict[str, list[np.ndarray]] = {}
    for name, layer in theirs.items():  # convs first: their biases fold into the BN that follows
        if isinstance(layer, layers.Conv2D):
            kernel = layer.kernel.numpy()
            if caffe and name == "conv1_conv":
                kernel = kernel[:, :, ::-1, :]  # our inputs are RGB; keras' caffe models read BGR
            values = [kernel]
            if layer.use_bias and ours[name].use_bias:
                values.append(layer.bias.numpy())
            elif layer.use_bias:
                bn_name = name[: -len("_conv")] + "_bn"
                if not (name.endswith("_conv") and isinstance(ours.get(bn_name), layers.BatchNormalization)):
                    raise UsageError(
                        f"{source}: {name} has a bias and our {model.name} has no BN after it to fold it into"
                    )
                folded[bn_name] = layer.bias.numpy()
            result[name] = values
    for name, layer in theirs.items():
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, variance = (
                w.numpy() for w in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)
            )
            mean = mean - folded.get(name, 0.0)  # BN(Wx + b; m) == BN(Wx; m - b)
            variance = variance + (layer.epsilon - ours[name].epsilon)
            result[name] = [gamma, beta, mean, variance]
        elif not isinstance(layer, layers.Conv2D):
            result[name] = [w.numpy() for w in layer.weights]
    for name, values in result.items():
        expected = [tuple(w.shape) for w in ours[name].weights]
        found = [tuple(v.shape) for v in values]
        if expected != found:
            raise UsageError(
                f"the weights of {source} do not fit {model.name}: layer {name} has shapes {found}, expected {expected}"
            )
    return result


def _first(names: list[str], what: str) -> str:
    if not names:
        return ""
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"{names[0]}{more} {what}; "


def load_weights(app: str, path: str, *, file_top: bool, include_top: bool) -> dict[str, list[np.ndarray]]:
    """Our layer weights from `path`, a weights file of keras.applications' `app` (`file_top`: it holds
    the 1000-class head), without the head unless `include_top`."""
    image_size = 64  # the weights do not depend on the input size; small is quick to build
    keras_model = build_keras_app(app, include_top=file_top, image_size=image_size)
    try:
        keras_model.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        raise UsageError(f"cannot load {path} into {describe_app(app)}: {str(error).splitlines()[0]}") from None
    from resnet_keras.zoo.models import build_model

    ours = build_model(model_config_for(app, image_size=image_size, include_top=file_top))
    weights = convert_weights(keras_model, app, ours)
    if file_top and not include_top:
        weights.pop("predictions", None)
    return weights
