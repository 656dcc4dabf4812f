"""Importing keras-hub ResNet presets into our models, exactly.

keras-hub's `ResNetBackbone` with `block_type="basic_block"` or `"bottleneck_block"` and no
pre-activation is torchvision's layout (its presets `resnet_18/50/101/152_imagenet` are timm's
`resnet*.a1_in1k` weights, converted): a 7x7/2 stem padded by 3, stride on the bottleneck's 3x3
("v1.5") padded by 1 on each side, 1x1 projections, BN epsilon 1e-5. So its layers map one to
one onto ours and only the names change: `stack{i}_block{j}_{k}_conv` is our
`conv{i+2}_block{j+1}_{k}_conv` (keras-hub counts stacks and blocks from 0), `conv1_*` and the
classifier's `predictions` keep theirs. The preset's image converter (x * scale + offset)
becomes our `normalize` layer: mean = -offset / scale, std = 1 / scale, in pixel units.

A preset is a folder (`config.json`, `model.weights.h5`, and for a classifier `task.json`,
`task.weights.h5`, `image_converter.json`); named presets are found in kagglehub's cache
(`download.kagglehub_cache()`). Its architecture is read from the JSON files without
keras-hub; loading the weights needs keras-hub, which is not a dependency: its wheel requires
tensorflow-text and so the full `tensorflow` distribution beside `tensorflow-cpu`. Install it
with `pip install --no-deps keras-hub` plus `tokenizers sentencepiece regex kagglehub`.
ResNetV2 and ResNet-vd presets are refused with the reason (`registry.REGISTRY`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from resnet_keras.config import specs
from resnet_keras.config.schema import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from resnet_keras.core.errors import UsageError
from resnet_keras.pretrained.state_dicts import model_config

# What our zoo's ImageNet ResNets have; a preset must match it to import exactly.
_EXPECTED = {
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
    "stackwise_num_filters": [64, 128, 256, 512],
    "stackwise_num_strides": [1, 2, 2, 2],
    "use_pre_activation": False,
}
_BLOCKS = {"basic_block": "basic", "bottleneck_block": "bottleneck"}
_INSTALL = "pip install --no-deps keras-hub && pip install tokenizers sentencepiece regex kagglehub"


def is_preset_dir(text: str) -> bool:
    """A folder saved by keras-hub (`save_to_preset`): its config.json names a keras_hub class."""
    config = Path(str(text)).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        return str(json.loads(config.read_text()).get("registered_name", "")).startswith("keras_hub>")
    except (OSError, ValueError, AttributeError):
        return False


def _read_json(path: Path, where: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"{where}: cannot read {path.name} ({error})") from None


def read_preset_config(path: str | os.PathLike, where: str, *, depth: int | None = None) -> ModelConfig:
    """Our ModelConfig for the keras-hub preset folder `path`, read from its JSON files."""
    path = Path(path)
    backbone = _read_json(path / "config.json", where)
    if backbone.get("class_name") != "ResNetBackbone":
        raise UsageError(f"{where} holds a keras-hub {backbone.get('class_name')!r}; expected a ResNetBackbone preset")
    options = backbone.get("config", {})
    block = _BLOCKS.get(options.get("block_type"))
    if block is None:
        raise UsageError(
            f"{where} has block_type={options.get('block_type')!r} (ResNet-vd: deep stem, average-pool shortcuts), "
            "which our zoo does not have yet; supported: basic_block, bottleneck_block"
        )
    for key, value in _EXPECTED.items():
        if options.get(key) != value:
            raise UsageError(f"{where} has {key}={options.get(key)!r}; our ResNets need {value!r} to hold it exactly")
    counts = tuple(options.get("stackwise_num_blocks", ()))
    found = next((d for d, (k, c) in specs.IMAGENET_DEPTHS.items() if (k, c) == (block, counts)), None)
    if found is None:
        raise UsageError(f"{where} has {'/'.join(map(str, counts))} {block} blocks per stage, which is no ResNet depth")
    if depth is not None and depth != found:
        raise UsageError(f"{where} holds ResNet-{found} weights; expected ResNet-{depth}")
    include_top, num_classes = False, 1000
    if (path / "task.json").is_file():
        task = _read_json(path / "task.json", where).get("config", {})
        if task.get("pooling", "avg") != "avg":
            raise UsageError(f"{where}: the classifier pools with {task.get('pooling')!r}; ours averages")
        include_top, num_classes = True, int(task.get("num_classes", 1000))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if (path / "image_converter.json").is_file():
        converter = _read_json(path / "image_converter.json", where).get("config", {})
        scale, offset = converter.get("scale"), converter.get("offset")
        if isinstance(scale, list) and isinstance(offset, list):
            std = tuple(round(1.0 / s, 4) for s in scale)
            mean = tuple(round(-o / s, 4) for o, s in zip(offset, scale))
    return model_config(found, num_classes=num_classes, include_top=include_top, mean=mean, std=std)


def import_keras_hub(label: str):
    """keras_hub, or UsageError saying how to install it (it is not a dependency)."""
    try:
        import keras_hub
    except ImportError:
        raise UsageError(f"reading the keras-hub preset {label} needs keras-hub ({_INSTALL})") from None
    return keras_hub


def our_name(name: str) -> str:
    """keras-hub layer name -> ours (`stack0_block0_1_conv` -> `conv2_block1_1_conv`)."""
    match = re.fullmatch(r"stack(\d+)_block(\d+)_(\d+_(?:conv|bn))", name)
    return f"conv{int(match.group(1)) + 2}_block{int(match.group(2)) + 1}_{match.group(3)}" if match else name


def load_weights(path: str, config: ModelConfig, label: str, *, include_top: bool) -> dict[str, list[np.ndarray]]:
    """Our layer weights from the preset folder `path` (the classifier's head too when `include_top` and
    the preset has one); `resolve.check_fit` checks them against our model."""
    keras_hub = import_keras_hub(label)
    try:
        if include_top and config.include_top:
            classifier = keras_hub.models.ImageClassifier.from_preset(path)
            backbone, head = classifier.backbone, classifier.get_layer("predictions")
        else:
            backbone, head = keras_hub.models.Backbone.from_preset(path), None
    except Exception as error:  # noqa: BLE001 - damaged or foreign preset files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load the keras-hub preset {label}: {reason}") from None
    result = {our_name(layer.name): [w.numpy() for w in layer.weights] for layer in backbone.layers if layer.weights}
    if head is not None:
        result["predictions"] = [w.numpy() for w in head.weights]
    return result
