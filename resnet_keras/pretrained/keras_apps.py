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

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from resnet_keras.config.schema import ModelConfig
from resnet_keras.core import network, tf_compat
from resnet_keras.core.errors import UsageError
from resnet_keras.core.files import check_output_file
from resnet_keras.zoo.portable import save_model_atomic

# keras.applications name -> (depth, variant, keras constructor). v1 is the paper's layout.
KERAS_APPS = {
    "resnet50": (50, "v1", "ResNet50"),
    "resnet101": (101, "v1", "ResNet101"),
    "resnet152": (152, "v1", "ResNet152"),
    "resnet50v2": (50, "v2", "ResNet50V2"),
    "resnet101v2": (101, "v2", "ResNet101V2"),
    "resnet152v2": (152, "v2", "ResNet152V2"),
}
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
    for name, (app_depth, app_variant, _) in KERAS_APPS.items():
        if (app_depth, app_variant) == (depth, variant):
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
    depth, variant, _ = KERAS_APPS[check_app(app)]
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
    for app, (depth, app_variant, _) in KERAS_APPS.items():
        from resnet_keras.config import specs

        if app_variant == variant and specs.IMAGENET_DEPTHS[depth][1] == counts:
            return app
    raise UsageError(
        f"{path} holds a ResNet with {'/'.join(map(str, counts))} blocks per stage; expected a "
        "keras.applications ResNet (50: 3/4/6/3, 101: 3/4/23/3, 152: 3/8/36/3)"
    )


def imagenet_weights_file(app: str, *, include_top: bool = True, log: Callable[[str], None] = print) -> str:
    """The official ImageNet weights of `app`, from Keras' cache or downloaded into it.

    A file already in `<keras home>/models` is used as it is (no network). Otherwise a 3 s
    probe decides: offline -> UsageError at once (instead of a download that fails or hangs).
    Neither step imports TensorFlow, so the answer comes in well under a second.
    """
    app = check_app(app)
    fname = f"{app}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
    cached = Path(tf_compat.keras_home()) / "models" / fname
    if cached.is_file():
        return str(cached)
    if not network.network_available(WEIGHTS_URL + fname):
        raise UsageError(
            f"ImageNet weights for {app} are not in the Keras cache ({cached}) and there is no "
            f"network to download them; copy {fname} there (from {WEIGHTS_URL}) or pass the file's path"
        )
    hashes = tf_compat.keras_applications_hashes().get(app)
    file_hash = hashes[0 if include_top else 1] if hashes else None
    log(f"Downloading {fname} into {cached.parent}")
    import keras

    try:
        return keras.utils.get_file(fname, WEIGHTS_URL + fname, cache_subdir="models", file_hash=file_hash)
    except Exception as error:  # noqa: BLE001 - network and hash failures become one line
        raise UsageError(f"cannot download {WEIGHTS_URL + fname}: {str(error).splitlines()[0]}") from None


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


def assign(model, weights: dict[str, list[np.ndarray]], *, skip: tuple[str, ...] = ()) -> int:
    """Sets each named layer's weights; returns the number of layers set."""
    count = 0
    for name, values in weights.items():
        if name in skip:
            continue
        model.get_layer(name).set_weights([np.asarray(v, dtype=np.float32) for v in values])
        count += 1
    return count


@dataclasses.dataclass(frozen=True)
class KerasSource:
    """A keras.applications model's weights: `weights` is "imagenet" or a file path."""

    app: str
    weights: str
    include_top: bool


def resolve_keras_source(source: str, *, app: str | None = None) -> KerasSource:
    """`imagenet` (needs `app`), a keras.applications name (ImageNet weights) or a weights file.

    With `app` and a file holding another architecture: UsageError naming both.
    """
    if source == "imagenet":
        if app is None:
            raise UsageError("Received: imagenet weights without an architecture; name one of " + ", ".join(KERAS_APPS))
        return KerasSource(check_app(app), "imagenet", True)
    key = source.lower().replace("_", "")
    if key in KERAS_APPS and not os.path.exists(source):
        if app is not None and check_app(app) != key:
            raise UsageError(f"Received: {source}; expected weights for {describe_app(check_app(app))}")
        return KerasSource(key, "imagenet", True)
    if not os.path.exists(source) and not source.endswith((".h5", ".hdf5")):
        raise UsageError(
            f"Received: {source!r}; expected a keras.applications ResNet: {', '.join(KERAS_APPS)}, "
            "or a weights .h5 file of one"
        )
    found, top = inspect_weights_file(source)
    if app is not None and check_app(app) != found:
        raise UsageError(f"{source} holds {describe_app(found)} weights; expected {describe_app(check_app(app))}")
    return KerasSource(found, os.path.abspath(source), top)


def load_keras_weights(
    source: KerasSource, *, include_top: bool | None = None, log: Callable[[str], None] = print
) -> tuple[dict[str, list[np.ndarray]], ModelConfig]:
    """Our layer weights for `source` and the ModelConfig that holds them (image_size 224).

    `include_top=False` drops the 1000-class head (fine-tuning); a notop file has none.
    """
    top = source.include_top if include_top is None else (include_top and source.include_top)
    path = source.weights
    if path == "imagenet":
        path = imagenet_weights_file(source.app, include_top=top, log=log)
        file_top = top
    else:
        file_top = source.include_top
    image_size = 64  # the weights do not depend on the input size; small is quick to build
    keras_model = build_keras_app(source.app, include_top=file_top, image_size=image_size)
    try:
        keras_model.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        raise UsageError(f"cannot load {path} into {describe_app(source.app)}: {str(error).splitlines()[0]}") from None
    config = model_config_for(source.app, image_size=image_size, include_top=file_top)
    from resnet_keras.zoo.models import build_model

    ours = build_model(config)
    weights = convert_weights(keras_model, source.app, ours)
    if file_top and not top:
        weights.pop("predictions", None)
    return weights, dataclasses.replace(config, include_top=top, image_size=224)


def import_keras_model(source: KerasSource, *, image_size: int = 224, log: Callable[[str], None] = print):
    """Our classifier (or, from a notop file, backbone) holding `source`'s weights exactly."""
    weights, config = load_keras_weights(source, log=log)  # before any TensorFlow import: offline fails fast
    from resnet_keras.zoo.models import build_model

    config = dataclasses.replace(config, image_size=image_size)
    model = build_model(config)
    assign(model, weights)
    return model, config


def convert(
    source: str,
    output: str | os.PathLike,
    *,
    app: str | None = None,
    image_size: int = 224,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> ModelConfig:
    """Writes `source` (see `resolve_keras_source`) as our `.keras` model: raw RGB 0-255 in, logits out.

    The file is written to a hidden sibling and renamed, so a failure leaves nothing behind.
    """
    output = check_output_file(output, suffix=".keras", overwrite=overwrite)
    resolved = resolve_keras_source(source, app=app)
    model, config = import_keras_model(resolved, image_size=image_size, log=log)
    save_model_atomic(model, output)
    what = "logits [batch, 1000]" if config.include_top else "per-stage features (notop weights)"
    log(
        f"Wrote {output}: {describe_app(resolved.app)} as {config.name} ({config.layout} layout), "
        f"raw RGB 0-255 [batch, {image_size}, {image_size}, 3] in, {what} out"
    )
    return config
