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
(`weight_sets.kagglehub_cache()`). Its architecture is read from the JSON files without
keras-hub; loading the weights needs keras-hub, which is not a dependency: its wheel requires
tensorflow-text and so the full `tensorflow` distribution beside `tensorflow-cpu`. Install it
with `pip install --no-deps keras-hub` plus `tokenizers sentencepiece regex kagglehub`.
ResNetV2 and ResNet-vd presets are refused with the reason (`weight_sets.REGISTRY`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from resnet_keras.config import specs
from resnet_keras.config.schema import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from resnet_keras.core.errors import UsageError
from resnet_keras.pretrained import registry as weight_sets

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


@dataclasses.dataclass(frozen=True)
class KerasHubSource:
    """A keras-hub preset folder and our config that holds its weights."""

    label: str
    path: str
    config: ModelConfig
    weight_set: weight_sets.WeightSet | None = None


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
    from resnet_keras.pretrained.state_dicts import model_config

    return model_config(found, num_classes=num_classes, include_top=include_top, mean=mean, std=std)


def resolve(source: str, *, depth: int | None = None, log: Callable[[str], None] = print) -> KerasHubSource:
    """`keras-hub:PRESET` (from kagglehub's cache, or downloaded) or a preset folder."""
    weight_set = None
    if weight_sets.is_weight_name(source):
        weight_set = weight_sets.lookup(source, depth=depth)
        path, label = weight_sets.weights_file(weight_set, log=log), weight_set.name
    else:
        path, label = os.path.abspath(os.path.expanduser(source)), source
    return KerasHubSource(label, str(path), read_preset_config(path, label, depth=depth), weight_set)


def _keras_hub(label: str):
    try:
        import keras_hub
    except ImportError:
        raise UsageError(f"reading the keras-hub preset {label} needs keras-hub ({_INSTALL})") from None
    return keras_hub


def download_preset(preset: str) -> str:
    """Fetches a named preset into kagglehub's cache (through keras-hub) and returns its folder."""
    keras_hub = _keras_hub(preset)
    try:
        keras_hub.models.ImageClassifier.from_preset(preset)
    except Exception as error:  # noqa: BLE001 - network and hub failures become one line
        raise UsageError(f"cannot download keras-hub:{preset}: {str(error).splitlines()[0]}") from None
    found, looked = weight_sets.cached_file(weight_sets.lookup(f"keras-hub:{preset}"))
    if found is None:
        raise UsageError(f"keras-hub:{preset} was downloaded but is not in {looked}")
    return str(found)


def our_name(name: str) -> str:
    """keras-hub layer name -> ours (`stack0_block0_1_conv` -> `conv2_block1_1_conv`)."""
    match = re.fullmatch(r"stack(\d+)_block(\d+)_(\d+_(?:conv|bn))", name)
    return f"conv{int(match.group(1)) + 2}_block{int(match.group(2)) + 1}_{match.group(3)}" if match else name


def load_weights(source: KerasHubSource, *, include_top: bool | None = None) -> dict[str, list[np.ndarray]]:
    """Our layer weights for `source.config` (without the head if `include_top` is False)."""
    keras_hub = _keras_hub(source.label)
    top = source.config.include_top if include_top is None else include_top and source.config.include_top
    try:
        if top:
            classifier = keras_hub.models.ImageClassifier.from_preset(source.path)
            backbone, head = classifier.backbone, classifier.get_layer("predictions")
        else:
            backbone, head = keras_hub.models.Backbone.from_preset(source.path), None
    except Exception as error:  # noqa: BLE001 - damaged or foreign preset files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load the keras-hub preset {source.label}: {reason}") from None
    result = {our_name(layer.name): [w.numpy() for w in layer.weights] for layer in backbone.layers if layer.weights}
    if head is not None:
        result["predictions"] = [w.numpy() for w in head.weights]
    config = dataclasses.replace(source.config, include_top=top)
    from resnet_keras.pretrained.state_dicts import layer_map

    expected = set(layer_map(config).values())
    missing, extra = sorted(expected - set(result)), sorted(set(result) - expected)
    if missing or extra:
        raise UsageError(
            f"{source.label} does not fit {config.name}: "
            + "; ".join(p for p in (missing and f"{missing[0]} missing", extra and f"{extra[0]} unexpected") if p)
        )
    return result
