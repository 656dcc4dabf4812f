"""Every pretrained weight source through one door: `resolve` parses a source string (the only
place that does), `load` reads it with its format's loader, `check_fit` is the one check that
values fit our model, and `build`, `convert` and `create_model` are made of those three.
`convert`, `create_model(weights=)`, `train --init-from` (fine-tuning) and `export-features`
all go through here, so they accept the same names:

- a weight set of the registry: `torchvision:resnet50.IMAGENET1K_V2`, `timm:resnet50.a1_in1k`,
  `keras-hub:resnet_50_imagenet`; a tag alone (`torchvision:IMAGENET1K_V2`) with a depth;
- our own weights, installed with the package (`shipped`): `resnet-keras:resnet20.cifar10`, or
  `cifar10` alone (unless a run directory or file of that name is there);
- keras.applications' ImageNet weights: `resnet50` ... `resnet152v2`, or `imagenet` (the one of
  the depth and variant given);
- a file or folder: a PyTorch `.pth`/`.pt`/`.bin`/`.ckpt` or `.safetensors` state dict of a
  torchvision/timm ResNet, a keras.applications weights `.h5`, a keras-hub preset folder, one of
  our run directories or `.keras` files.

Formats (one loader each): `state_dicts` (torchvision/timm), `keras_apps` (keras.applications),
`keras_hub` (presets), `ours` (our runs, files and installed weights). Files are found or fetched by
`download`; our installed ones are found by `shipped`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from resnet_keras.config import specs
from resnet_keras.config.schema import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from resnet_keras.core.errors import UsageError
from resnet_keras.core.files import check_output_file
from resnet_keras.pretrained import download, keras_apps, keras_hub, ours, registry, shipped, state_dicts
from resnet_keras.zoo.portable import save_model_atomic

STATE_DICT, KERAS_APP, KERAS_HUB, OURS = "state-dict", "keras-app", "keras-hub", "ours"
HEAD_LAYERS = ("avg_pool", "dropout", "predictions")
STATE_DICT_SUFFIXES = state_dicts.PICKLE_SUFFIXES + (state_dicts.SAFETENSORS_SUFFIX,)
KERAS_WEIGHTS_SUFFIXES = (".h5", ".hdf5")
ACCEPTED = (
    "expected a keras.applications ResNet (" + ", ".join(registry.KERAS_APPLICATIONS) + ") or 'imagenet', "
    "a weight set (torchvision:..., timm:..., keras-hub:..., resnet-keras:... or cifar10; "
    "`resnet-keras info --weights`), a .pth/.safetensors "
    "state dict, a keras.applications weights .h5 file, a keras-hub preset folder, a .keras file or a run directory"
)


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved source: its kind, what the user named, our config that holds its weights (with
    the head the source has), where the weights are, and the registry entry when it is named."""

    kind: str
    label: str
    config: ModelConfig
    path: str | None = None  # None: keras.applications' ImageNet file, fetched by `load`
    weight_set: registry.WeightSet | None = None
    app: str | None = None  # keras.applications sources: the model's name

    @property
    def description(self) -> str:
        return keras_apps.describe_app(self.app) if self.kind == KERAS_APP else self.label


def shipped_name(text: str) -> str:
    """`text` with a bare tag of our installed weights (`cifar10`) spelled in full (`resnet-keras:cifar10`),
    unless a file or a run directory of that name is there (a folder of images named cifar10 is not one)."""
    if registry.is_shipped_tag(text):
        path = Path(text).expanduser()
        if not (path.is_file() or (path / "config.json").is_file()):
            return f"{registry.OURS}:{text}"
    return text


def kind_of(text: str) -> str:
    """The kind of a source string, from its spelling and the file system (nothing is read);
    UsageError for what is no source."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"Received: source={text!r}; {ACCEPTED}")
    text = shipped_name(text)
    if registry.is_weight_name(text):
        if text.startswith(f"{registry.OURS}:"):
            return OURS
        return KERAS_HUB if text.startswith("keras-hub:") else STATE_DICT
    path = Path(text).expanduser()
    if registry.is_keras_app_name(text) and not path.exists():
        return KERAS_APP
    if path.suffix in STATE_DICT_SUFFIXES:
        return STATE_DICT  # a missing file is named by its reader
    if path.suffix in KERAS_WEIGHTS_SUFFIXES:
        return KERAS_APP
    if path.is_dir():
        return KERAS_HUB if keras_hub.is_preset_dir(str(path)) else OURS
    if path.suffix == ".keras" and path.exists():
        return OURS
    if not path.exists():
        raise UsageError(f"Received: {text!r}, which does not exist; {ACCEPTED}")
    raise UsageError(f"Received: {text!r}; {ACCEPTED}")


def normalize(text: str) -> str:
    """Names stay as they are; paths become absolute (so a resume from another folder matches)."""
    text = shipped_name(text)
    if registry.is_weight_name(text) or (registry.is_keras_app_name(text) and not os.path.exists(text)):
        return text
    return os.path.abspath(os.path.expanduser(text))


def resolve(
    text: str,
    *,
    depth: int | None = None,
    variant: str | None = None,
    app: str | None = None,
    log: Callable[[str], None] = print,
) -> Source:
    """`text` as a Source. `depth` completes a tag-only weight-set name and must match the source's;
    `variant` picks `imagenet`'s keras.applications model (with `depth`); `app` says which
    keras.applications architecture a weights file must hold. A named file is found in its
    publisher's cache or downloaded (`download`), so a missing one fails here, before any model."""
    kind, text = kind_of(text), shipped_name(text)
    if kind == KERAS_APP:
        return _keras_app(text, depth=depth, variant=variant, app=app)
    if kind == OURS and registry.is_weight_name(text):  # installed with the package
        weight_set = registry.lookup(text, depth=depth)
        config = shipped.model_config(weight_set)
        return Source(OURS, weight_set.name, config, shipped.checked_weights_file(weight_set), weight_set)
    if kind == OURS:
        config, path = ours.weights_path(Path(text).expanduser(), text)
        return Source(OURS, text, config, path)
    weight_set = None
    if registry.is_weight_name(text):
        weight_set = registry.lookup(text, depth=depth)
        path, label = download.weights_file(weight_set, log=log), weight_set.name
    else:
        path, label = os.path.abspath(os.path.expanduser(text)), text
    if kind == KERAS_HUB:
        config = keras_hub.read_preset_config(path, label, depth=depth)
    else:
        config = state_dicts.describe(path, label, depth=depth, weight_set=weight_set)
    if weight_set is not None:  # the publisher's evaluation view travels with its weights
        config = dataclasses.replace(config, eval_view=weight_set.eval_view)
    return Source(kind, label, config, str(path), weight_set)


def _keras_app(text: str, *, depth: int | None, variant: str | None, app: str | None) -> Source:
    """keras.applications: `imagenet`, a name (its ImageNet weights) or a weights file."""
    wanted = keras_apps.check_app(app) if app is not None else None
    if text == "imagenet":
        name = wanted or keras_apps.app_for(depth or 50, variant or "v1")
        return Source(KERAS_APP, text, keras_apps.model_config_for(name), None, app=name)
    key = text.lower().replace("_", "")
    if key in registry.KERAS_APPLICATIONS and not os.path.exists(text):
        if wanted is not None and wanted != key:
            raise UsageError(f"Received: {text}; expected weights for {keras_apps.describe_app(wanted)}")
        return Source(KERAS_APP, text, keras_apps.model_config_for(key), None, app=key)
    found, top = keras_apps.inspect_weights_file(text)
    if wanted is not None and wanted != found:
        raise UsageError(
            f"{text} holds {keras_apps.describe_app(found)} weights; expected {keras_apps.describe_app(wanted)}"
        )
    config = keras_apps.model_config_for(found, include_top=top)
    return Source(KERAS_APP, text, config, os.path.abspath(text), app=found)


def load(
    source: Source, *, include_top: bool | None = None, log: Callable[[str], None] = print
) -> dict[str, list[np.ndarray]]:
    """Our layer name -> weight arrays of `source`, read by its format's loader; without the head
    when `include_top` is False (a source without one never has it)."""
    top = source.config.include_top if include_top is None else include_top and source.config.include_top
    if source.kind == KERAS_APP:
        path, file_top = source.path, source.config.include_top
        if path is None:  # the official file, with or without its head as needed
            path, file_top = download.keras_app_file(source.app, include_top=top, log=log), top
        values = keras_apps.load_weights(source.app, path, file_top=file_top, include_top=top)
    elif source.kind == STATE_DICT:
        values = state_dicts.load_weights(source.path, source.config, source.label, include_top=top)
    elif source.kind == KERAS_HUB:
        values = keras_hub.load_weights(source.path, source.config, source.label, include_top=top)
    else:
        values = ours.load_weights(source.path, source.config)
        if not top:
            values = {name: v for name, v in values.items() if name not in HEAD_LAYERS}
    return {name: [np.asarray(v, np.float32) for v in arrays] for name, arrays in values.items()}


def check_fit(model, values: dict[str, list[np.ndarray]], label: str, *, skip: tuple[str, ...] = ()) -> None:
    """UsageError unless `values` hold exactly `model`'s weighted layers (but `skip`) with its shapes:
    the first layer that differs or is missing is named, then any layer the model does not have."""
    expected = {
        layer.name: [tuple(w.shape) for w in layer.weights]
        for layer in model.layers
        if layer.weights and layer.name not in skip
    }
    for name, shapes in expected.items():
        found = [tuple(np.shape(v)) for v in values.get(name, [])]
        if found != shapes:
            raise UsageError(
                f"{label} does not fit {model.name}: layer {name} has shapes {found or 'no weights'}, expected {shapes}"
            )
    extra = sorted(set(values) - set(expected) - set(skip))
    if extra:
        raise UsageError(f"{label} has layers {extra[:3]} that {model.name} does not have")


def assign(model, values: dict[str, list[np.ndarray]], *, skip: tuple[str, ...] = ()) -> int:
    """Sets each named layer's weights (after `check_fit`); returns the number of layers set."""
    count = 0
    for name, arrays in values.items():
        if name in skip:
            continue
        model.get_layer(name).set_weights([np.asarray(v, dtype=np.float32) for v in arrays])
        count += 1
    return count


def build(
    source: Source,
    *,
    image_size: int | None = None,
    include_top: bool | None = None,
    log: Callable[[str], None] = print,
):
    """(our model holding `source`'s weights exactly, its config): raw RGB 0-255 in, logits (or, from
    a source without a head or with include_top False, per-stage features) out."""
    values = load(source, include_top=include_top, log=log)  # before TensorFlow builds: offline fails fast
    from resnet_keras.zoo.models import build_model

    top = "predictions" in values
    config = dataclasses.replace(source.config, include_top=top, image_size=image_size or source.config.image_size)
    model = build_model(config)
    check_fit(model, values, source.label)
    assign(model, values)
    return model, config


def convert(
    text: str,
    output: str | os.PathLike,
    *,
    weights_file: str | None = None,
    image_size: int = 224,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> ModelConfig:
    """Writes `text`'s weights as our `.keras` model: raw RGB 0-255 in, logits out (hidden sibling,
    then rename: all or nothing). `weights_file`: a keras.applications weights file for the
    architecture `text` names (`convert resnet101 --weights FILE`)."""
    output = check_output_file(output, suffix=".keras", overwrite=overwrite)
    if weights_file:
        source = resolve(weights_file, app=keras_apps.check_app(text), log=log)
    else:
        source = resolve(text, log=log)
    model, config = build(source, image_size=image_size, log=log)
    save_model_atomic(model, output)
    if config.include_top:
        what = f"logits [batch, {config.num_classes}]"
    else:
        what = "per-stage features (the source has no classifier)"
    if (config.input_mean, config.input_std) == (IMAGENET_MEAN, IMAGENET_STD):
        normalisation = "ImageNet mean/std inside"
    else:
        normalisation = f"mean {config.input_mean} and std {config.input_std} inside"
    log(
        f"Wrote {output}: {source.description} as {config.name} ({config.layout} layout), raw RGB 0-255 "
        f"[batch, {image_size}, {image_size}, 3] in ({normalisation}), {what} out"
    )
    return config


def create_model(name: str, weights: str | None = None, **overrides: Any):
    """A model from a named preset (`create_model("resnet56", num_classes=100)`), randomly initialised
    or holding `weights` (any source `resolve` takes; `resnet-keras info --weights` lists the names).

    `resnet50` means "the depth-50 network the weights were trained as"; a variant in the preset
    name (`resnet50_v2`) must be the weights'. The head (`num_classes`, `include_top`, `dropout`),
    `image_size`, `weight_decay` and `zero_init_residual` may be overridden; a different
    `num_classes` gets a new, randomly initialised head. Other overrides must agree with the weights.
    """
    from resnet_keras.zoo.models import build_model

    if weights is None:
        return build_model(ModelConfig.preset(name, **overrides))
    if name not in specs.PRESETS:
        raise UsageError(f"Received: preset={name!r}; expected one of {', '.join(specs.PRESETS)}")
    preset = specs.PRESETS[name]
    explicit = {"variant": preset["variant"]} if name != f"resnet{preset['depth']}" else {}
    source = resolve(weights, depth=preset["depth"], variant=explicit.get("variant"))
    head_fields = {"num_classes", "include_top", "dropout", "image_size", "weight_decay", "zero_init_residual"}
    fixed = {"family": preset["family"], **explicit, **{k: v for k, v in overrides.items() if k not in head_fields}}
    unknown = sorted(set(fixed) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise UsageError(f"Received: unknown model config keys {unknown} with weights={weights!r}")
    held = source.config
    differing = [f"{k}={v!r} (weights: {getattr(held, k)!r})" for k, v in fixed.items() if getattr(held, k) != v]
    if differing:
        raise UsageError(f"Received: {name} with {'; '.join(differing)}; the architecture is the weights' ({weights})")
    config = dataclasses.replace(held, **{k: v for k, v in overrides.items() if k in head_fields})
    new_head = config.num_classes != held.num_classes or not config.include_top
    values = load(source, include_top=not new_head)
    model = build_model(config)
    skip = HEAD_LAYERS if new_head else ()
    check_fit(model, values, source.label, skip=skip)
    assign(model, values, skip=skip)
    return model
