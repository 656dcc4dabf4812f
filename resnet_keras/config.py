"""Model configuration: a frozen dataclass that validates itself and round-trips to JSON.

Family-dependent defaults (shortcut option, stem, input size, classes) are left as
`None` and resolved in `__post_init__`, so `to_dict()` always holds concrete values
and `ModelConfig.from_dict(config.to_dict()) == config`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from resnet_keras import specs
from resnet_keras.errors import ConfigError, expect, is_int

SHORTCUTS = ("A", "B")
STEMS = ("imagenet", "small")
# "paper": stride on each stage's first block, bias-free convs. "keras": keras.applications'
# ResNetV2 (pre-activation only): stride on the last block of the stage before, biases on
# conv1 and on the convs that add into the residual stream. For exact weight import (issue 8).
LAYOUTS = ("paper", "keras")

# ImageNet channel statistics in 0-255 pixel units (the inputs of every model are raw pixels).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# The ImageNet stem (7x7/2 conv + 3x3/2 max pool) throws away too much of a small image:
# below this size the family uses the 3x3/1 stem without max pool instead.
SMALL_STEM_BELOW = 128


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build one ResNet.

    depth: weighted layers (18/34/50/101/152 for ImageNet, 6n+2 for CIFAR).
    family: "imagenet" or "cifar"; default from depth (Table 1 depths are ImageNet).
    variant: "v1" (paper), "v1.5" (stride on the bottleneck's 3x3), "v2" (pre-activation).
    shortcut: "A" (identity, zero-padded channels, no parameters; CIFAR default) or
        "B" (1x1 projection where dimensions change; ImageNet default).
    stem: "imagenet" (7x7/2 conv, 3x3/2 max pool) or "small" (3x3/1 conv);
        default "small" for CIFAR and for images under 128 pixels.
    width: multiplier on every stage's and the stem's channels.
    include_top: classifier head (logits) or a backbone with one output per stage.
    weight_decay: L2 on conv and dense kernels only (added as `weight_decay / 2 * |w|^2`,
        whose gradient is the SGD weight decay of the paper); BN and biases are exempt.
    zero_init_residual: start each residual branch at zero (Goyal et al. 2017), so each
        block begins as the identity.
    input_mean, input_std: per-channel statistics in raw pixel units, applied inside the model.
    layout: "paper" (default) or "keras", the block layout of keras.applications' ResNetV2
        (v2 only), used for weights imported from it (`resnet_keras.weights`).
    """

    depth: int = 50
    family: str | None = None
    variant: str = "v1"
    shortcut: str | None = None
    stem: str | None = None
    width: float = 1.0
    num_classes: int | None = None
    image_size: int | None = None
    channels: int = 3
    include_top: bool = True
    dropout: float = 0.0
    weight_decay: float = 0.0
    zero_init_residual: bool = False
    input_mean: tuple[float, ...] = IMAGENET_MEAN
    input_std: tuple[float, ...] = IMAGENET_STD
    layout: str = "paper"

    def __post_init__(self) -> None:
        expect(is_int(self.depth), "depth", self.depth, "an integer")
        family = self.family or specs.default_family(self.depth)
        expect(family in specs.FAMILIES, "family", family, " or ".join(specs.FAMILIES))
        specs.stage_specs(family, self.depth)  # raises for a depth the family does not have
        expect(self.variant in specs.VARIANTS, "variant", self.variant, "one of " + ", ".join(specs.VARIANTS))
        cifar = family == "cifar"
        image_size = self.image_size if self.image_size is not None else (32 if cifar else 224)
        defaults = dict(
            family=family,
            shortcut=self.shortcut or ("A" if cifar else "B"),
            image_size=image_size,
            stem=self.stem or ("small" if cifar or image_size < SMALL_STEM_BELOW else "imagenet"),
            num_classes=self.num_classes if self.num_classes is not None else (10 if cifar else 1000),
            width=float(self.width),
            input_mean=tuple(float(v) for v in self.input_mean),
            input_std=tuple(float(v) for v in self.input_std),
        )
        for key, value in defaults.items():
            object.__setattr__(self, key, value)
        expect(self.shortcut in SHORTCUTS, "shortcut", self.shortcut, "'A' (zero-pad) or 'B' (projection)")
        expect(self.stem in STEMS, "stem", self.stem, " or ".join(map(repr, STEMS)))
        expect(0 < self.width <= 16, "width", self.width, "a multiplier in (0, 16]")
        expect(
            isinstance(self.num_classes, int) and self.num_classes >= 1,
            "num_classes",
            self.num_classes,
            "an integer >= 1",
        )
        expect(isinstance(self.channels, int) and self.channels >= 1, "channels", self.channels, "an integer >= 1")
        expect(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a rate in [0, 1)")
        expect(self.weight_decay >= 0.0, "weight_decay", self.weight_decay, "a value >= 0")
        for field in ("input_mean", "input_std"):
            value = getattr(self, field)
            expect(len(value) == self.channels, field, value, f"{self.channels} values (one per channel)")
        expect(all(s > 0 for s in self.input_std), "input_std", self.input_std, "positive values")
        expect(self.layout in LAYOUTS, "layout", self.layout, " or ".join(map(repr, LAYOUTS)))
        expect(
            self.layout == "paper" or (self.variant == "v2" and self.shortcut == "B"),
            "layout",
            self.layout,
            "'paper' unless variant='v2' with shortcut 'B' (the keras layout is keras.applications' ResNetV2)",
        )
        minimum = self.output_stride
        expect(
            isinstance(self.image_size, int) and self.image_size >= minimum,
            "image_size",
            self.image_size,
            f"an integer >= {minimum} for this network (its {self.stem} stem and stages downsample by {minimum})",
        )

    # Derived facts -----------------------------------------------------------------------

    @property
    def stages(self) -> tuple[specs.StageSpec, ...]:
        """The depth table's stages with the width multiplier applied."""
        return tuple(
            dataclasses.replace(stage, filters=specs.scaled(stage.filters, self.width))
            for stage in specs.stage_specs(self.family, self.depth)
        )

    @property
    def output_stride(self) -> int:
        stride = 4 if self.stem == "imagenet" else 1
        for stage in specs.stage_specs(self.family, self.depth):
            stride *= stage.stride
        return stride

    @property
    def preact(self) -> bool:
        return self.variant == "v2"

    @property
    def stride_in_3x3(self) -> bool:
        """v1 strides the bottleneck's first 1x1 (paper); v1.5 and v2 stride its 3x3."""
        return self.variant != "v1"

    @property
    def name(self) -> str:
        """A short model name, e.g. `resnet50_v1.5` or `resnet20_w2`, used for export folders."""
        name = f"resnet{self.depth}"
        if self.variant != "v1":
            name += f"_{self.variant}"
        if self.width != 1.0:
            name += f"_w{self.width:g}"
        return name

    # Construction and serialization ------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (`resnet50`, `resnet50_v2`, `resnet110`, ...) with fields overridden."""
        if name not in specs.PRESETS:
            raise ConfigError(f"Received: preset={name!r}; expected one of {', '.join(specs.PRESETS)}.")
        return cls(**{**specs.PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_mean"] = list(self.input_mean)
        data["input_std"] = list(self.input_std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Received: unknown model config keys {unknown}; expected keys among {sorted(known)}.")
        values = dict(data)
        for key in ("input_mean", "input_std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))
