"""The three configurations of a run: frozen dataclasses that validate themselves and round-trip to JSON.

- `ModelConfig`: which network (depth, family, variant, width, ...).
- `DataConfig`: where the images come from and how they are read.
- `TrainConfig`: how to train (recipe, epochs, batch, optimizer settings, strategy, fine-tuning).

Defaults that depend on something else (the family, the recipe) are left as `None` and resolved
in `__post_init__`, so `to_dict()` always holds concrete values and
`Config.from_dict(config.to_dict()) == config`. A run directory keeps all three in `config.json`.
Nothing here imports TensorFlow, so the CLI validates options before paying for it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from resnet_keras.config import recipes, specs
from resnet_keras.core import precision
from resnet_keras.core.errors import ConfigError, UsageError, expect, is_int, is_number

SHORTCUTS = ("A", "B")
STEMS = ("imagenet", "small", "deep")
# "paper": stride on each stage's first block, bias-free convs. "keras": keras.applications'
# ResNetV2 (pre-activation only): stride on the last block of the stage before, biases on
# conv1 and on the convs that add into the residual stream, for exact import of its weights.
LAYOUTS = ("paper", "keras")

# ImageNet channel statistics in 0-255 pixel units (the inputs of every model are raw pixels).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

MAX_IMAGE_SIZE = 4096
MAX_CLASSES = 1_000_000
# The ImageNet stem (7x7/2 conv + 3x3/2 max pool) throws away too much of a small image:
# below this size the family uses the 3x3/1 stem without max pool instead.
SMALL_STEM_BELOW = 128

INTERPOLATIONS = ("bilinear", "bicubic")
# "resnet_keras": shorter side round(size / crop_fraction), longer side rounded, crop offset floored, float
# pixels. "torchvision": torchvision's Resize(int) + CenterCrop on PIL images, which timm's eval transform
# uses too: shorter side floor(size / crop_fraction), longer side truncated, crop offset rounded half to
# even, pixels rounded to uint8 after the resize (PIL works in uint8).
CONVENTIONS = ("resnet_keras", "torchvision")


@dataclasses.dataclass(frozen=True)
class EvalView:
    """How the ImageNet evaluation view resizes and crops for this model (`preprocessing.eval_view`).

    The shorter side goes to `resize(image_size)` pixels with `interpolation` (antialiased), then the
    centre image_size x image_size crop is taken. `crop_fraction` is timm's `crop_pct` and
    torchvision's crop / resize (224 / 232 for the IMAGENET1K_V2 weights); a model built from a weight
    set takes the publisher's, so a converted model is evaluated, exported and served as it was
    published. The CIFAR and "none" views (images of 64 pixels or less) only resize.
    """

    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    convention: str = "resnet_keras"

    def __post_init__(self) -> None:
        expect(
            is_number(self.crop_fraction) and 0.05 <= self.crop_fraction <= 1.0,
            "eval_view.crop_fraction",
            self.crop_fraction,
            "a fraction in [0.05, 1]",
        )
        object.__setattr__(self, "crop_fraction", float(self.crop_fraction))
        expect(
            self.interpolation in INTERPOLATIONS,
            "eval_view.interpolation",
            self.interpolation,
            " or ".join(INTERPOLATIONS),
        )
        expect(self.convention in CONVENTIONS, "eval_view.convention", self.convention, " or ".join(CONVENTIONS))

    def resize(self, image_size: int) -> int:
        """The shorter side before the centre crop of `image_size` (torchvision V2 at 224: 232)."""
        if self.convention == "torchvision":
            # floor, as timm's int(math.floor(size / crop_pct)); the epsilon keeps 224 / (224 / 232) at 232.
            return max(int(image_size / self.crop_fraction + 1e-6), image_size)
        return max(round(image_size / self.crop_fraction), image_size)

    def describe(self, image_size: int) -> dict[str, Any]:
        """What a runtime outside this package needs to reproduce the view (export sidecars)."""
        return dict(
            resize=self.resize(image_size),
            crop=image_size,
            crop_fraction=self.crop_fraction,
            interpolation=self.interpolation,
            convention=self.convention,
        )


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
        (v2 only), used for weights imported from it (`resnet_keras.pretrained.keras_apps`).
    avg_down: a strided projection shortcut average-pools 2x2 first and projects at stride 1
        (ResNet-D of He et al. 2019; with `stem="deep"`, timm's `resnet50d`). Needs shortcut "B".
    se_ratio: squeeze-and-excitation on every residual branch, squeezed to this fraction of its
        channels (Hu et al. 2018 and timm's `seresnet*`: 1/16); 0 turns it off.
    drop_path: stochastic depth (Huang et al. 2016) of the last block; block i of N drops its
        branch with probability drop_path * i / (N - 1), the first block never (timm's rule).
    eval_view: the evaluation resize and crop (`EvalView`); a model built from a published weight set
        records the publisher's, beside its input_mean and input_std.
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
    avg_down: bool = False
    se_ratio: float = 0.0
    drop_path: float = 0.0
    eval_view: EvalView = EvalView()

    def __post_init__(self) -> None:
        if isinstance(self.eval_view, dict):
            object.__setattr__(self, "eval_view", _from_dict(EvalView, self.eval_view, "eval_view"))
        expect(isinstance(self.eval_view, EvalView), "eval_view", self.eval_view, "an EvalView")
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
            width=float(self.width) if is_number(self.width) else self.width,
            input_mean=_floats(self.input_mean, "input_mean"),
            input_std=_floats(self.input_std, "input_std"),
        )
        for key, value in defaults.items():
            object.__setattr__(self, key, value)
        expect(self.shortcut in SHORTCUTS, "shortcut", self.shortcut, "'A' (zero-pad) or 'B' (projection)")
        expect(self.stem in STEMS, "stem", self.stem, " or ".join(map(repr, STEMS)))
        expect(is_number(self.width) and 0 < self.width <= 16, "width", self.width, "a multiplier in (0, 16]")
        expect(
            is_int(self.num_classes) and 1 <= self.num_classes <= MAX_CLASSES,
            "num_classes",
            self.num_classes,
            f"an integer from 1 to {MAX_CLASSES}",
        )
        expect(is_int(self.channels) and 1 <= self.channels <= 64, "channels", self.channels, "an integer from 1 to 64")
        expect(is_number(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a rate in [0, 1)")
        expect(
            is_number(self.weight_decay) and self.weight_decay >= 0.0, "weight_decay", self.weight_decay, "a value >= 0"
        )
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
        expect(isinstance(self.avg_down, bool), "avg_down", self.avg_down, "True or False")
        expect(
            not self.avg_down or self.shortcut == "B",
            "avg_down",
            self.avg_down,
            "False with shortcut 'A' (average pooling belongs to the projection shortcut 'B')",
        )
        expect(is_number(self.se_ratio) and 0.0 <= self.se_ratio <= 1.0, "se_ratio", self.se_ratio, "a ratio in [0, 1]")
        expect(
            is_number(self.drop_path) and 0.0 <= self.drop_path < 1.0, "drop_path", self.drop_path, "a rate in [0, 1)"
        )
        expect(
            self.layout == "paper" or not (self.avg_down or self.se_ratio or self.stem == "deep"),
            "layout",
            self.layout,
            "'paper' with avg_down, se_ratio or the deep stem (keras.applications' ResNetV2 has none of them)",
        )
        minimum = self.output_stride
        expect(
            is_int(self.image_size) and minimum <= self.image_size <= MAX_IMAGE_SIZE,
            "image_size",
            self.image_size,
            f"an integer from {minimum} (this network's {self.stem} stem and stages downsample by {minimum}) "
            f"to {MAX_IMAGE_SIZE} (larger inputs need more memory for one image than a machine has)",
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
        stride = 4 if self.stem in ("imagenet", "deep") else 1
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
        """A short model name, e.g. `resnet50_v1.5`, `resnet20_w2` or `seresnet50d`, used for export folders."""
        name = f"{'se' if self.se_ratio else ''}resnet{self.depth}"
        # He et al. 2019 name the deep stem ResNet-C and deep stem plus average-pooled shortcut ResNet-D.
        if self.stem == "deep":
            name += "d" if self.avg_down else "c"
        elif self.avg_down:
            name += "_avgdown"
        # timm's ResNet-D and SE-ResNets stride the bottleneck's 3x3: for them, v1.5 is the plain name.
        modern_bottleneck = (self.se_ratio or self.stem == "deep" or self.avg_down) and self.stages[0].block == (
            "bottleneck"
        )
        if modern_bottleneck and self.variant != "v1.5":
            name += f"_{self.variant}"
        elif not modern_bottleneck and self.variant != "v1":
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


def _floats(values: Any, field: str) -> tuple:
    """A tuple of finite floats, or ConfigError."""
    ok = isinstance(values, (list, tuple)) and all(is_number(v) for v in values)
    expect(ok, field, values, "a list of numbers, one per channel")
    return tuple(float(v) for v in values)


def _from_dict(cls, data: Any, what: str):
    """cls(**data), refusing keys the dataclass does not have (ConfigError naming them)."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known)) if isinstance(data, dict) else data
    if not isinstance(data, dict) or unknown:
        raise ConfigError(f"Received: unknown {what} config keys {unknown!r}; expected keys among {known}.")
    return cls(**data)


# -- data ----------------------------------------------------------------------------------

# "auto" resolves per dataset and image size (`preprocessing.view_family`).
AUGMENTATIONS = ("auto", "cifar", "imagenet", "none")
# Horizontal flips of the training images: a coin per image and epoch, or each image mirrored in every
# other epoch (airbench's derandomized flip, Jordan 2024; the "cifar" view only).
FLIPS = ("random", "alternating")
SEED_LIMIT = 2**32  # what TensorFlow's and NumPy's seeds accept


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are read; plain data, JSON round-trippable.

    ``dataset`` is a TFDS name, "folder" (``data_dir`` holds ``<split>/<class>/<image>`` or
    ``<class>/<image>``), "digits" (scikit-learn's) or "synthetic". ``val_split=None`` uses the
    dataset's "validation"/"val" split if it has one, else holds out ``validation_fraction`` of
    ``train_split`` (the paper's 45k/5k on CIFAR-10). ``augment="auto"`` means "cifar" for
    ``image_size <= 64`` and "imagenet" above, except "none" for digits.
    """

    dataset: str = "cifar10"
    data_dir: str | None = None
    train_split: str = "train"
    val_split: str | None = None
    validation_fraction: float = 0.1
    augment: str = "auto"
    cache: bool = True
    shuffle_buffer: int = 10_000
    seed: int = 0
    deterministic: bool = False
    skip_corrupt: bool = False
    synthetic_examples: int = 1024
    synthetic_classes: int = 10
    # "tfrecord": subtracted from image/class/label (1 for the ImageNet conversion scripts' labels).
    label_offset: int = 0

    def __post_init__(self):
        def check(names, ok, expected):
            for name in names:
                expect(ok(getattr(self, name)), name, getattr(self, name), expected)

        check(("dataset", "train_split"), lambda v: isinstance(v, str) and v, "a non-empty string")
        check(
            ("data_dir", "val_split"), lambda v: v is None or (isinstance(v, str) and v), "None or a non-empty string"
        )
        check(("validation_fraction",), lambda v: is_number(v) and 0 < v < 1, "a number strictly between 0 and 1")
        check(("augment",), lambda v: v in AUGMENTATIONS, f"one of {AUGMENTATIONS}")
        check(("cache", "deterministic", "skip_corrupt"), lambda v: isinstance(v, bool), "True or False")
        check(("seed",), lambda v: is_int(v) and 0 <= v < SEED_LIMIT, "an integer in [0, 2**32)")
        check(("shuffle_buffer",), lambda v: is_int(v) and v >= 1, "an integer >= 1")
        check(("synthetic_examples", "synthetic_classes"), lambda v: is_int(v) and v >= 2, "an integer >= 2")
        check(("label_offset",), lambda v: is_int(v) and 0 <= v < 2**31, "an integer >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DataConfig:
        return _from_dict(cls, data, "data")


# -- training ------------------------------------------------------------------------------

# Upper bounds that keep every count inside the integer types TensorFlow computes steps with.
MAX_BATCH_SIZE = 2**20
MAX_EPOCHS = 100_000
FLOAT32_MAX = 3.4028234663852886e38
# "auto": every GPU of this machine (MirroredStrategy) or the one device; "multi-worker" reads TF_CONFIG.
STRATEGIES = ("auto", "one-device", "mirrored", "multi-worker")
# --mixed-precision name -> Keras dtype policy. bfloat16 keeps float32's exponent range: no loss scaling.
# "auto" (`precision.resolve`) is bfloat16 where the CPU computes it natively, else "none".
PRECISIONS = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
# The paper's ResNet-110 start: a tenth of the rate until the training error is below 80 %.
LOW_LR_FACTOR = 0.1
LOW_LR_UNTIL_ERROR = 0.8
# "sgd": momentum SGD with weight decay as L2 in the model (the paper's). "adamw" (Loshchilov & Hutter
# 2019) and "lamb" (You et al. 2020): Keras' optimizers with decoupled weight decay, none on BN and biases.
OPTIMIZERS = ("sgd", "adamw", "lamb")
# "softmax": softmax cross-entropy. "bce": one sigmoid per class, binary cross-entropy averaged over the
# classes ("ResNet strikes back", Wightman et al. 2021, as timm's BinaryCrossEntropy).
LOSSES = ("softmax", "bce")
# Fine-tuning (`resnet_keras.pretrained.finetune`): which layers are frozen, and whether BN keeps learning.
FREEZE_POLICIES = ("none", "stem", "stages-2-3", "backbone")
BN_POLICIES = ("train", "frozen")
# TrainConfig fields beyond the paper (filled from the recipe when None; train_image_size when the
# model is known, by `TrainConfig.for_model`); the CLI's and tune's options.
COMPONENT_FIELDS = (
    "optimizer",
    "loss",
    "clip_norm",
    "ema_decay",
    "mixup",
    "cutmix",
    "random_erasing",
    "auto_augment",
    "flip",
    "train_image_size",
)
# "rand_m<M>_mstd<S>": RandAugment as timm's `rand-m<M>-mstd<S>-inc1`, -> (magnitude of 10, its noise std):
# m6 is "ResNet strikes back" A3's, m7 its A1 and A2's, m9 timm's usual (DeiT).
RAND_AUGMENTS = {"rand_m6_mstd0.5": (6.0, 0.5), "rand_m7_mstd0.5": (7.0, 0.5), "rand_m9_mstd0.5": (9.0, 0.5)}
# "ta_wide": TrivialAugment Wide (Mueller & Hutter 2021), torchvision's `--auto-augment ta_wide`.
AUTO_AUGMENTS = ("none", "ta_wide", *RAND_AUGMENTS)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train; `None` fields resolve to the recipe's value (`recipes.RECIPES`) for `family`.

    family ("cifar" or "imagenet", the model's) picks the recipe's per-family values; `train`
    refuses a model of the other family. batch_size is global (split over the replicas).
    learning_rate defaults to the recipe's rate scaled from its reference batch (paper: 0.1 x
    batch / 128 on CIFAR, / 256 on ImageNet). weight_decay is L2 applied inside the model
    (`ModelConfig.weight_decay`). steps_per_epoch defaults to num_train // batch_size. xla
    compiles the step (`jit_compile`); off by default because XLA's CPU convolutions do not use
    oneDNN (half the speed here) and it fails under MirroredStrategy across logical CPUs.
    low_lr_start (None: the recipe decides; paper: CIFAR nets of 110+ layers) trains at a
    tenth of the rate until the training error is below 80 %. The fine-tuning fields
    (init_from, freeze, bn_policy, backbone_lr_multiplier, head_epochs) are described and
    validated in `resnet_keras.pretrained.finetune`. train_image_size: the side of the training crops (FixRes,
    Touvron et al. 2019), at most the model's image_size, which validation, evaluation, prediction
    and exports keep; None means the model's image_size (`for_model` fills in the recipe's ratio).
    """

    recipe: str = "paper"
    family: str = "cifar"
    epochs: int | None = None
    batch_size: int = 128
    learning_rate: float | None = None
    momentum: float = 0.9
    nesterov: bool | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    strategy: str = "auto"
    mixed_precision: str = "none"
    xla: bool = False
    seed: int = 0
    steps_per_epoch: int | None = None
    low_lr_start: bool | None = None
    init_from: str | None = None
    freeze: str = "none"
    bn_policy: str = "train"
    backbone_lr_multiplier: float = 1.0
    head_epochs: int = 0
    optimizer: str | None = None
    loss: str | None = None
    clip_norm: float | None = None
    ema_decay: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    random_erasing: float | None = None
    auto_augment: str | None = None
    flip: str | None = None
    train_image_size: int | None = None

    def __post_init__(self) -> None:
        expect(self.recipe in recipes.RECIPES, "recipe", self.recipe, " or ".join(map(repr, recipes.RECIPES)))
        expect(self.family in recipes.FAMILIES, "family", self.family, " or ".join(map(repr, recipes.FAMILIES)))
        recipe = recipes.RECIPES[self.recipe]
        expect(
            is_int(self.batch_size) and 1 <= self.batch_size <= MAX_BATCH_SIZE,
            "batch_size",
            self.batch_size,
            f"an integer from 1 to {MAX_BATCH_SIZE}",
        )
        epochs = self.epochs if self.epochs is not None else recipe.epochs[self.family]
        expect(is_int(epochs) and 1 <= epochs <= MAX_EPOCHS, "epochs", epochs, f"an integer from 1 to {MAX_EPOCHS}")
        object.__setattr__(self, "epochs", epochs)
        defaults = dict(
            learning_rate=lambda: recipe.learning_rate_for(self.family, self.batch_size),
            weight_decay=lambda: recipe.weight_decay[self.family],
            nesterov=lambda: recipe.nesterov,
            warmup_epochs=lambda: recipe.warmup_epochs(epochs),
            label_smoothing=lambda: recipe.label_smoothing,
            optimizer=lambda: recipe.optimizer,
            loss=lambda: recipe.loss,
            clip_norm=lambda: recipe.clip_norm,
            ema_decay=lambda: recipe.ema_decay,
            mixup=lambda: recipe.mixup,
            cutmix=lambda: recipe.cutmix,
            random_erasing=lambda: recipe.random_erasing,
            auto_augment=lambda: recipe.auto_augment,
            flip=lambda: recipe.flip,
        )
        for key, default in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, default())
        expect(
            is_number(self.learning_rate) and 0 < self.learning_rate <= FLOAT32_MAX,
            "learning_rate",
            self.learning_rate,
            "a number > 0 that float32 can hold",
        )
        expect(is_number(self.momentum) and 0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        expect(isinstance(self.nesterov, bool), "nesterov", self.nesterov, "True or False")
        expect(
            is_number(self.weight_decay) and 0 <= self.weight_decay <= FLOAT32_MAX,
            "weight_decay",
            self.weight_decay,
            "a number >= 0 that float32 can hold",
        )
        expect(
            is_number(self.warmup_epochs) and 0 <= self.warmup_epochs < self.epochs,
            "warmup_epochs",
            self.warmup_epochs,
            f"a number in [0, epochs={self.epochs})",
        )
        expect(
            is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            "label_smoothing",
            self.label_smoothing,
            "a number in [0, 1)",
        )
        expect(self.strategy in STRATEGIES, "strategy", self.strategy, "one of " + ", ".join(STRATEGIES))
        if self.mixed_precision == precision.AUTO:  # the saved config records what was chosen
            object.__setattr__(self, "mixed_precision", precision.resolve(precision.AUTO).name)
        expect(
            self.mixed_precision in PRECISIONS,
            "mixed_precision",
            self.mixed_precision,
            "one of " + ", ".join((precision.AUTO, *PRECISIONS)),
        )
        expect(isinstance(self.xla, bool), "xla", self.xla, "True or False")
        expect(is_int(self.seed) and 0 <= self.seed < SEED_LIMIT, "seed", self.seed, "an integer in [0, 2**32)")
        expect(
            self.steps_per_epoch is None or (is_int(self.steps_per_epoch) and 1 <= self.steps_per_epoch < 2**31),
            "steps_per_epoch",
            self.steps_per_epoch,
            "None or an integer from 1 to 2**31 - 1",
        )
        expect(self.low_lr_start in (None, True, False), "low_lr_start", self.low_lr_start, "None, True or False")
        self._check_modern_fields()
        _check_fine_tuning_fields(self)

    def _check_modern_fields(self) -> None:
        """optimizer, loss, clip_norm, ema_decay and the batch augmentations (see `resnet_keras.data.augment`)."""
        expect(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, "one of " + ", ".join(OPTIMIZERS))
        expect(self.loss in LOSSES, "loss", self.loss, "one of " + ", ".join(LOSSES))
        expect(
            is_number(self.clip_norm) and 0 <= self.clip_norm <= FLOAT32_MAX,
            "clip_norm",
            self.clip_norm,
            "a global gradient norm >= 0 (0: no clipping)",
        )
        expect(
            is_number(self.ema_decay) and 0 <= self.ema_decay < 1,
            "ema_decay",
            self.ema_decay,
            "a decay per step in [0, 1) (0: no weight averaging)",
        )
        for field in ("mixup", "cutmix"):
            value = getattr(self, field)
            expect(
                is_number(value) and 0 <= value <= 100, field, value, "a Beta(alpha, alpha) alpha in [0, 100] (0: off)"
            )
        expect(
            is_number(self.random_erasing) and 0 <= self.random_erasing <= 1,
            "random_erasing",
            self.random_erasing,
            "a probability per image in [0, 1]",
        )
        expect(
            self.auto_augment in AUTO_AUGMENTS, "auto_augment", self.auto_augment, "one of " + ", ".join(AUTO_AUGMENTS)
        )
        expect(self.flip in FLIPS, "flip", self.flip, "one of " + ", ".join(FLIPS))
        expect(
            self.train_image_size is None or (is_int(self.train_image_size) and 1 <= self.train_image_size),
            "train_image_size",
            self.train_image_size,
            "None (the model's image_size) or an integer no larger than the model's image_size",
        )

    def for_model(self, model_config: ModelConfig) -> TrainConfig:
        """This config with `train_image_size` checked against `model_config` and, when None, set to
        the recipe's share of its image_size (torchvision 176/224, rsb_a3 160/224; not below the
        network's smallest input). A size equal to image_size is recorded as None, its meaning, so
        runs written before the field existed resume. ConfigError for a size the model cannot train at.
        """
        size, minimum = model_config.image_size, model_config.output_stride
        if self.train_image_size is None:
            ratio = recipes.RECIPES[self.recipe].train_size_ratio[model_config.family]
            train_size = max(minimum, min(size, round(size * ratio)))
        else:
            train_size = self.train_image_size
            expect(
                minimum <= train_size <= size,
                "train_image_size",
                train_size,
                f"an integer from {minimum} (the network downsamples by {minimum}) to the model's "
                f"image_size={size} (training crops are at most the size it is validated and exported at)",
            )
        return dataclasses.replace(self, train_image_size=None if train_size == size else train_size)

    def train_size(self, model_config: ModelConfig) -> int:
        """The side of the training crops for `model_config` (after `for_model`)."""
        return self.train_image_size or model_config.image_size

    def uses_low_lr_start(self, model_config: ModelConfig) -> bool:
        """Whether training starts at a tenth of the rate (paper recipe: CIFAR ResNet-110 and deeper)."""
        if self.low_lr_start is not None:
            return self.low_lr_start
        depth = recipes.RECIPES[self.recipe].low_lr_start_depth
        return depth is not None and model_config.family == "cifar" and model_config.depth >= depth

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data, "train")


def _check_fine_tuning_fields(t) -> None:
    """TrainConfig's fine-tuning fields (`resnet_keras.pretrained.finetune` uses them)."""
    expect(
        t.init_from is None or (isinstance(t.init_from, str) and t.init_from != ""),
        "init_from",
        t.init_from,
        "None, 'imagenet', a keras.applications name, a weights file, a .keras file or a run directory",
    )
    expect(t.freeze in FREEZE_POLICIES, "freeze", t.freeze, "one of " + ", ".join(FREEZE_POLICIES))
    expect(t.bn_policy in BN_POLICIES, "bn_policy", t.bn_policy, " or ".join(map(repr, BN_POLICIES)))
    expect(
        isinstance(t.backbone_lr_multiplier, (int, float))
        and not isinstance(t.backbone_lr_multiplier, bool)
        and 0 <= t.backbone_lr_multiplier <= 1,
        "backbone_lr_multiplier",
        t.backbone_lr_multiplier,
        "a number in [0, 1]",
    )
    expect(
        is_int(t.head_epochs) and 0 <= t.head_epochs < t.epochs,
        "head_epochs",
        t.head_epochs,
        f"an integer in [0, epochs={t.epochs})",
    )
    if t.init_from is None:
        changed = [
            f"{key}={getattr(t, key)!r}"
            for key, default in (
                ("freeze", "none"),
                ("bn_policy", "train"),
                ("backbone_lr_multiplier", 1.0),
                ("head_epochs", 0),
            )
            if getattr(t, key) != default
        ]
        if changed:
            raise UsageError(
                f"Received: {', '.join(changed)} without init_from; fine-tuning options need "
                "pretrained weights (--init-from)"
            )
