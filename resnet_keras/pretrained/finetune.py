"""Fine-tuning: start from pretrained weights, choose what trains, and how BatchNorm behaves.

Sources (`TrainConfig.init_from`): one of our run directories (its `model.keras`, else
`best.weights.h5`), one of our `.keras` files (architecture read from its layers), a
keras.applications weights file, a keras.applications name (`resnet50v2`: its ImageNet
weights) or `imagenet` (the keras.applications model of the run's depth and variant). The
classifier head is always new (the run's number of classes); every other weight comes from
the source, or the run does not start.

Policies (Keras transfer-learning guide, https://keras.io/guides/transfer_learning/):
- freeze: "none", "stem" (conv1), "stages-2-3" (stem, conv2, conv3), "backbone" (all but the
  head). A frozen layer is `trainable=False`; a frozen BN runs in inference mode (Keras 3).
- bn_policy: "train" (BN outside the frozen part keeps learning its statistics) or "frozen"
  (every BN `trainable=False`: inference mode with the pretrained statistics, as the guide
  recommends when fine-tuning with small batches).
- backbone_lr_multiplier: the backbone's gradients are scaled by it before the optimizer; for
  SGD with (Nesterov) momentum that equals a learning rate of multiplier x lr, since the update
  is linear in the gradient history. L2 decay is part of the loss, so it scales too.
- head_epochs: epochs 1..N train the head only (backbone frozen, BN in inference mode); from
  epoch N+1 the freeze and BN policies apply. A resumed run picks the phase of its next epoch.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from resnet_keras.config import specs
from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import UsageError

HEAD_LAYERS = ("avg_pool", "dropout", "predictions")
# Fields that must agree between the source and the fine-tuned model (the rest may change).
ARCHITECTURE_FIELDS = (
    "depth",
    "family",
    "variant",
    "shortcut",
    "stem",
    "width",
    "channels",
    "input_mean",
    "input_std",
    "layout",
)


def is_finetuning(train_config) -> bool:
    return train_config.init_from is not None


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved init_from: kind is "keras" (keras.applications), "hub" (torchvision/timm/keras-hub) or "ours"."""

    kind: str
    config: ModelConfig
    path: str | None = None  # ours: the .keras or .weights.h5 file
    keras_source: object = None
    hub_source: object = None  # torchvision/timm/keras-hub weights: torch_weights.resolve's result


def normalize_source(init_from: str) -> str:
    """Paths become absolute (so a resume from another folder matches); names stay."""
    if init_from == "imagenet" or (
        init_from.lower().replace("_", "") in _keras_names() and not os.path.exists(init_from)
    ):
        return init_from
    from resnet_keras.pretrained.registry import is_weight_name

    if is_weight_name(init_from):  # torchvision:... / timm:... names, not paths
        return init_from
    return os.path.abspath(os.path.expanduser(init_from))


def _keras_names():
    from resnet_keras.pretrained.keras_apps import KERAS_APPS

    return KERAS_APPS


def resolve(init_from: str, *, depth: int | None = None, variant: str | None = None) -> Source:
    """The source's kind, its architecture (our ModelConfig) and where its weights are.

    `imagenet` takes the architecture from depth/variant (v1 -> ResNet50, v2 -> ResNet50V2, ...).
    Raises UsageError for a path that does not exist or holds no model.
    """
    from resnet_keras.pretrained import keras_apps as weights
    from resnet_keras.pretrained import state_dicts as torch_weights

    if torch_weights.is_torch_source(init_from):  # torchvision/timm/keras-hub names, .pth, .safetensors, presets
        resolved = torch_weights.resolve(init_from, depth=depth)
        return Source("hub", resolved.config, resolved.path, hub_source=resolved)
    key = init_from.lower().replace("_", "")
    if init_from == "imagenet" or (key in weights.KERAS_APPS and not os.path.exists(init_from)):
        app = weights.app_for(depth or 50, variant or "v1") if init_from == "imagenet" else None
        keras_source = weights.resolve_keras_source(init_from, app=app)
        # Fails at once when offline with nothing cached; downloads (once, into Keras' cache) otherwise.
        weights.imagenet_weights_file(keras_source.app, include_top=False)
        return Source("keras", weights.model_config_for(keras_source.app), keras_source=keras_source)
    path = Path(init_from)
    if not path.exists():
        raise UsageError(
            f"Received: init_from={init_from!r}, which does not exist; expected 'imagenet', a "
            "keras.applications name (" + ", ".join(weights.KERAS_APPS) + "), a weights .h5 file, "
            "a .keras file or a run directory"
        )
    if path.is_dir():
        from resnet_keras.runs.rundir import RunDir

        run = RunDir(path)
        if not run.is_run():
            raise UsageError(
                f"Received: init_from={init_from!r}, a folder that is not a run directory (no {RunDir.CONFIG})"
            )
        config = run.model_config()
        for name in (RunDir.FINAL_MODEL, RunDir.BEST_WEIGHTS):
            if run.file(name).is_file():
                return Source("ours", config, str(run.file(name)))
        raise UsageError(
            f"Received: init_from={init_from!r}, a run directory with no trained weights "
            f"({RunDir.FINAL_MODEL} or {RunDir.BEST_WEIGHTS}); train it first"
        )
    if path.suffix == ".keras":
        return Source("ours", infer_config(_load_keras_file(path)), str(path))
    if path.suffix in (".h5", ".hdf5"):
        keras_source = weights.resolve_keras_source(str(path))
        return Source("keras", weights.model_config_for(keras_source.app), keras_source=keras_source)
    raise UsageError(
        f"Received: init_from={init_from!r}; expected a .keras file, a weights .h5 file or a run directory"
    )


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


def read_init_weights(
    init_from: str, model_config: ModelConfig, *, log: Callable[[str], None] = print
) -> dict[str, list[np.ndarray]]:
    """Every non-head layer's weights for a model of `model_config`, from `init_from`.

    Raises UsageError when the architectures differ (naming the field or the layer) or the
    source cannot be read, before anything is assigned: never a half-loaded model.
    """
    from resnet_keras.pretrained import keras_apps as weights_lib
    from resnet_keras.zoo.models import build_model

    source = resolve(init_from, depth=model_config.depth, variant=model_config.variant)
    mismatched = [
        f"{field}={getattr(model_config, field)!r} (source: {getattr(source.config, field)!r})"
        for field in ARCHITECTURE_FIELDS
        if getattr(model_config, field) != getattr(source.config, field)
    ]
    if mismatched:
        raise UsageError(
            f"Received: a model config that differs from init_from={init_from!r}: "
            f"{'; '.join(mismatched)}; use the source's architecture (finetune.model_config_for)"
        )
    if source.kind == "keras":
        values, _ = weights_lib.load_keras_weights(source.keras_source, include_top=False, log=log)
    elif source.kind == "hub":
        from resnet_keras.pretrained.state_dicts import load_weights

        values = load_weights(source.hub_source, include_top=False)
    else:
        values = read_our_weights(source)
    values = {name: v for name, v in values.items() if name not in HEAD_LAYERS}
    target = build_model(dataclasses.replace(model_config, include_top=True))
    expected = {
        layer.name: [tuple(w.shape) for w in layer.weights]
        for layer in target.layers
        if layer.weights and layer.name not in HEAD_LAYERS
    }
    for name, shapes in expected.items():
        found = [tuple(np.shape(v)) for v in values.get(name, [])]
        if found != shapes:
            raise UsageError(
                f"init_from={init_from!r} does not fit {model_config.name}: layer {name} has "
                f"{found or 'no weights'} in the source, expected {shapes}"
            )
    extra = sorted(set(values) - set(expected))
    if extra:
        raise UsageError(f"init_from={init_from!r} has layers {extra[:3]} that {model_config.name} does not have")
    return values


def read_our_weights(source: Source) -> dict[str, list[np.ndarray]]:
    if source.path.endswith(".keras"):
        model = _load_keras_file(Path(source.path))
    else:
        from resnet_keras.zoo.models import build_model

        model = build_model(source.config)
        try:
            model.load_weights(source.path)
        except Exception as error:  # noqa: BLE001
            raise UsageError(f"cannot load {source.path}: {str(error).splitlines()[0]}") from None
    return {layer.name: [w.numpy() for w in layer.weights] for layer in model.layers if layer.weights}


def model_config_for(
    init_from: str,
    *,
    num_classes: int,
    image_size: int | None = None,
    depth: int | None = None,
    variant: str | None = None,
    **overrides,
) -> ModelConfig:
    """The fine-tuned model's config: the source's architecture, the dataset's classes.

    `image_size` defaults to the source's (224 for keras.applications weights).
    """
    source = resolve(init_from, depth=depth, variant=variant)
    changes = dict(num_classes=num_classes, include_top=True, **overrides)
    if image_size is not None:
        changes["image_size"] = image_size
    return dataclasses.replace(source.config, **changes)


# ----------------------------------------------------------------------------- policies


def layer_group(name: str, num_stages: int) -> str:
    """ "stem", "conv2".."convN" or "head" for one of our layer names."""
    if name in HEAD_LAYERS:
        return "head"
    match = re.match(r"conv(\d+)_block", name)
    if match:
        return f"conv{match.group(1)}"
    if name.startswith("post_"):  # v2's final BN-ReLU normalises the last stage's output
        return f"conv{num_stages + 1}"
    return "stem"


def frozen_groups(freeze: str, num_stages: int) -> set[str]:
    backbone = {"stem"} | {f"conv{k}" for k in range(2, num_stages + 2)}
    return {"none": set(), "stem": {"stem"}, "stages-2-3": {"stem", "conv2", "conv3"}, "backbone": backbone}[freeze]


class FineTunePlan:
    """Sets which layers train in each epoch and scales the backbone's gradients."""

    def __init__(self, model, train_config):
        from keras import layers

        self.model = model
        self.config = train_config
        self.num_stages = len({m.group(1) for m in (re.match(r"conv(\d+)_block", ly.name) for ly in model.layers) if m})
        self.bn = {layer.name for layer in model.layers if isinstance(layer, layers.BatchNormalization)}
        self.head_ids = {
            id(w)
            for name in HEAD_LAYERS
            if name in {ly.name for ly in model.layers}
            for w in model.get_layer(name).weights
        }
        self.phase = None
        self.set_phase("finetune")  # the widest trainable set first: the optimizer builds its slots for it
        self.phase = None  # so the first epoch (also after a resume) applies and reports its phase

    def phase_for(self, epoch: int) -> str:
        """ "head" for epochs 1..head_epochs, then "finetune" (epoch is 1-based)."""
        return "head" if epoch <= self.config.head_epochs else "finetune"

    def set_phase(self, phase: str) -> bool:
        """Applies the phase's trainable flags; True when they changed (the step must be retraced)."""
        if phase == self.phase:
            return False
        frozen = (
            frozen_groups("backbone", self.num_stages)
            if phase == "head"
            else frozen_groups(self.config.freeze, self.num_stages)
        )
        for layer in self.model.layers:
            group = layer_group(layer.name, self.num_stages)
            trainable = group not in frozen
            if layer.name in self.bn and self.config.bn_policy == "frozen":
                trainable = False  # Keras 3: a non-trainable BN runs in inference mode
            layer.trainable = trainable
        self.phase = phase
        return True

    def describe(self) -> str:
        trainable = sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)
        return (
            f"phase {self.phase}: {trainable:,} trainable parameters (freeze={self.config.freeze}, "
            f"bn_policy={self.config.bn_policy}, backbone lr x{self.config.backbone_lr_multiplier:g})"
        )

    def scale_gradients(self, grads, variables):
        """Backbone gradients x backbone_lr_multiplier (head gradients unchanged)."""
        m = float(self.config.backbone_lr_multiplier)
        if m == 1.0:
            return grads
        return [g if (g is None or id(v) in self.head_ids) else g * m for g, v in zip(grads, variables)]


def plan(model, train_config) -> FineTunePlan | None:
    """The plan for a fine-tuning run, or None when training from scratch."""
    return FineTunePlan(model, train_config) if is_finetuning(train_config) else None
