"""Fine-tuning: start from pretrained weights, choose what trains, and how BatchNorm behaves.

Sources (`TrainConfig.init_from`): anything `resolve.resolve` takes (weight sets of torchvision,
timm and keras-hub, keras.applications names and files, `imagenet` for the keras.applications model
of the run's depth and variant, state-dict files, our run directories and `.keras` files). The
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
import re
from collections.abc import Callable

import numpy as np

from resnet_keras.config.schema import ModelConfig
from resnet_keras.core.errors import UsageError
from resnet_keras.pretrained import download, resolve
from resnet_keras.pretrained.resolve import HEAD_LAYERS

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


def read_init_weights(
    init_from: str, model_config: ModelConfig, *, log: Callable[[str], None] = print
) -> dict[str, list[np.ndarray]]:
    """Every non-head layer's weights for a model of `model_config`, from `init_from`.

    Raises UsageError when the architectures differ (naming the field or the layer) or the
    source cannot be read, before anything is assigned: never a half-loaded model.
    """
    from resnet_keras.zoo.models import build_model

    source = resolve.resolve(init_from, depth=model_config.depth, variant=model_config.variant, log=log)
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
    values = resolve.load(source, include_top=False, log=log)  # no head, whatever the source
    target = build_model(dataclasses.replace(model_config, include_top=True))
    resolve.check_fit(target, values, f"init_from={init_from!r}", skip=HEAD_LAYERS)
    return values


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
    source = resolve.resolve(init_from, depth=depth, variant=variant)
    if source.kind == resolve.KERAS_APP and source.path is None:
        # keras.applications' ImageNet file without its head: fetched now, so offline fails at once.
        download.keras_app_file(source.app, include_top=False)
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
