"""Our own weights as a source: a run directory (its `model.keras`, else `best.weights.h5`) or a `.keras`
file written by resnet-keras, whose architecture is read back from its layers (`infer_config`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from resnet_keras.config import specs
from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import UsageError


def weights_path(path: Path, label: str) -> tuple[ModelConfig, str]:
    """(the architecture, the weights file) of a run directory or one of our `.keras` files."""
    if path.is_dir():
        from resnet_keras.runs.rundir import RunDir

        run = RunDir(path)
        if not run.is_run():
            raise UsageError(f"Received: {label!r}, a folder that is not a run directory (no {RunDir.CONFIG})")
        config = run.model_config()
        for name in (RunDir.FINAL_MODEL, RunDir.BEST_WEIGHTS):
            if run.file(name).is_file():
                return config, str(run.file(name))
        raise UsageError(
            f"Received: {label!r}, a run directory with no trained weights "
            f"({RunDir.FINAL_MODEL} or {RunDir.BEST_WEIGHTS}); train it first"
        )
    return infer_config(_load_keras_file(path)), str(path)


def load_weights(path: str, config: ModelConfig) -> dict[str, list[np.ndarray]]:
    """Every weighted layer's values from one of our `.keras` files, or a `.weights.h5` of `config`."""
    if path.endswith(".keras"):
        model = _load_keras_file(Path(path))
    else:
        from resnet_keras.zoo.models import build_model

        model = build_model(config)
        try:
            model.load_weights(path)
        except Exception as error:  # noqa: BLE001
            raise UsageError(f"cannot load {path}: {str(error).splitlines()[0]}") from None
    return {layer.name: [w.numpy() for w in layer.weights] for layer in model.layers if layer.weights}


def _load_keras_file(path: Path):
    import keras

    import resnet_keras.zoo.blocks  # noqa: F401  registers the custom layers (ZeroPadShortcut) for loading

    try:
        return keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a user input problem
        raise UsageError(
            f"cannot load {path} as a Keras model: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None


def infer_config(model) -> ModelConfig:
    """Our ModelConfig of a model built by `models.build_model`, read from its layers.

    Checked by rebuilding: every weighted layer must exist with the same shapes, else
    UsageError (the model is not one of ours).
    """
    names = {layer.name: layer for layer in model.layers}
    if "conv1_conv" not in names or "normalize" not in names:
        raise UsageError(f"{model.name} is not a resnet-keras model (no conv1_conv / normalize layer)")
    blocks: dict[int, int] = {}
    for name in names:
        match = re.match(r"conv(\d)_block(\d+)_", name)
        if match:
            blocks[int(match.group(1))] = max(blocks.get(int(match.group(1)), 0), int(match.group(2)))
    counts = tuple(blocks[k] for k in sorted(blocks))
    bottleneck = any(name.endswith("_3_conv") for name in names)
    family = "cifar" if len(counts) == 3 else "imagenet"
    if family == "cifar":
        depth = 6 * counts[0] + 2
    else:
        matches = [
            d for d, (kind, c) in specs.IMAGENET_DEPTHS.items() if c == counts and (kind == "bottleneck") == bottleneck
        ]
        if not matches:
            raise UsageError(f"{model.name}: {'/'.join(map(str, counts))} blocks per stage match no ResNet depth")
        depth = matches[0]
    preact = "post_bn" in names
    variant = "v2" if preact else "v1"
    if bottleneck and not preact and names["conv3_block1_1_conv"].strides == (1, 1):
        variant = "v1.5"
    last = len(counts) + 1
    base = (specs.CIFAR_FILTERS if family == "cifar" else specs.IMAGENET_FILTERS)[-1]
    width = names[f"conv{last}_block1_1_conv"].filters / base
    normalize = names["normalize"].get_config()
    include_top = "predictions" in names
    image_size = model.input.shape[1]
    conv1 = names["conv1_conv"]
    config = ModelConfig(
        depth=depth,
        family=family,
        variant=variant,
        shortcut="A" if any(name.endswith("_0_pad") for name in names) else "B",
        stem="imagenet" if conv1.kernel_size == (7, 7) else "small",
        width=width,
        channels=model.input.shape[-1],
        image_size=image_size,
        include_top=include_top,
        num_classes=names["predictions"].units if include_top else 1000,
        dropout=names["dropout"].rate if "dropout" in names else 0.0,
        input_mean=tuple(normalize["mean"]),
        input_std=tuple(float(np.sqrt(v)) for v in normalize["variance"]),
        layout="keras" if conv1.use_bias else "paper",
    )
    from resnet_keras.zoo.models import build_model

    shapes = lambda m: {ly.name: [tuple(w.shape) for w in ly.weights] for ly in m.layers if ly.weights}  # noqa: E731
    found, rebuilt = shapes(model), shapes(build_model(config))
    if found != rebuilt:
        name = sorted(n for n in set(found) | set(rebuilt) if found.get(n) != rebuilt.get(n))[0]
        raise UsageError(
            f"{model.name} is not a resnet-keras model: layer {name} has {found.get(name)}, "
            f"{config.name} would have {rebuilt.get(name)}"
        )
    return config
