"""The options that set a ModelConfig, DataConfig or TrainConfig field: one table.

Each `Option` is a flag (``batch_size`` is ``--batch-size``), the config fields it sets, its type,
choices, default and help. Its users:

* `resnet_keras.cli.options` makes click options of them for `train`, `tune`, `benchmark`, `info`
  and `prepare` (a command whose option means something narrower passes its own help);
* the commands build their configs with `fields` and `model_config`;
* `tune` writes best.yaml with `option_values`, under the names `train --config` reads;
* scripts/cifar10_benchmark.py declares its argparse flags with `add_argument`.

Plain data: no click, no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from resnet_keras.config import recipes, specs
from resnet_keras.config.schema import (
    AUTO_AUGMENTS,
    BN_POLICIES,
    COMPONENT_FIELDS,
    FLIPS,
    FREEZE_POLICIES,
    LOSSES,
    OPTIMIZERS,
    PRECISIONS,
    SHORTCUTS,
    STEMS,
    STRATEGIES,
)

SECTIONS = ("model", "data", "train")  # ModelConfig, DataConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class Option:
    """One option. `targets`: the (section, field) pairs it sets, () for --preset (a ModelConfig
    preset, not a field). `kind`: "value" (--x V), "flag" (--x) or "switch" (--x/--no-x)."""

    name: str
    targets: tuple[tuple[str, str], ...]
    type: type = str
    choices: tuple[str, ...] | None = None
    default: Any = None
    help: str = ""
    kind: str = "value"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def field(self, section: str) -> str | None:
        return next((field for where, field in self.targets if where == section), None)


def _option(name: str, section: str, field: str | None = None, **kwargs) -> Option:
    return Option(name, ((section, field or name),), **kwargs)


_MODEL = (
    _option("depth", "model", type=int, help="Network depth: 18/34/50/101/152 (ImageNet) or 6n+2 (CIFAR)."),
    Option("preset", (), help="A named preset (e.g. resnet20, resnet50_v2) instead of --depth."),
    _option("family", "model", choices=specs.FAMILIES, help="Network family (default from the depth)."),
    _option("variant", "model", choices=specs.VARIANTS, help="v1 (paper), v1.5 or v2 (pre-activation)."),
    _option("width", "model", type=float, help="Width multiplier on every stage's channels."),
    _option("shortcut", "model", choices=SHORTCUTS, help="A: zero-padded identity; B: projection."),
    _option(
        "image_size", "model", type=int, help="Input size (default: the family's, 32 for CIFAR, 224 for ImageNet)."
    ),
    _option("num_classes", "model", type=int, help="Classifier outputs (default 10 for CIFAR, 1000 for ImageNet)."),
    # Architecture options beyond the paper's (ResNet-C/D, squeeze-and-excitation, stochastic depth).
    _option(
        "stem",
        "model",
        choices=STEMS,
        help="imagenet: 7x7/2 + max pool; small: 3x3/1 (CIFAR); deep: three 3x3 convs + max pool (ResNet-C/D).",
    ),
    _option(
        "avg_down",
        "model",
        type=bool,
        kind="switch",
        help="Average-pool before strided projection shortcuts (ResNet-D; needs --shortcut B).",
    ),
    _option(
        "se_ratio",
        "model",
        type=float,
        help="Squeeze-and-excitation on every block at this ratio (1/16 = 0.0625).",
    ),
    _option(
        "drop_path",
        "model",
        type=float,
        help="Stochastic depth rate of the last block, linear from 0 (e.g. 0.05).",
    ),
)

_DATA = (
    _option(
        "dataset",
        "data",
        default="cifar10",
        help="A TFDS name, 'digits', 'synthetic', 'folder' or 'tfrecord' (shards from `prepare`).",
    ),
    _option("data_dir", "data", help="Dataset root: the image folder, or the TFDS data directory."),
    _option("val_split", "data", help="Validation split (default: the dataset's, else held out of train)."),
    _option(
        "validation_fraction",
        "data",
        type=float,
        default=0.1,
        help="Fraction of train held out when the dataset has no validation split.",
    ),
    _option("deterministic", "data", type=bool, default=False, kind="flag", help="Deterministic data order."),
    _option(
        "skip_corrupt", "data", type=bool, default=False, kind="flag", help="Skip image files that cannot be decoded."
    ),
    _option(
        "label_offset",
        "data",
        type=int,
        default=0,
        help="--dataset tfrecord: subtracted from the stored labels (1 for the ImageNet scripts' 1-based labels).",
    ),
    Option(
        "seed",
        (("train", "seed"), ("data", "seed")),
        type=int,
        default=0,
        help="Random seed (weights and data order).",
    ),
)

_TRAIN = (
    _option(
        "recipe",
        "train",
        choices=recipes.names(),
        default="paper",
        help="; ".join(f"{r.name}: {r.summary}" for r in recipes.RECIPES.values()) + ".",
    ),
    _option("epochs", "train", type=int, help="Epochs (" + recipes.default_help("epochs") + ")."),
    _option("batch_size", "train", type=int, default=128, help="Global batch size."),
    _option(
        "lr",
        "train",
        "learning_rate",
        type=float,
        help="Peak learning rate (default: the recipe's rate at its reference batch, scaled linearly with "
        "--batch-size; "
        + recipes.default_help("learning_rate")
        + "; paper and short per 128 images CIFAR, 256 ImageNet).",
    ),
    _option(
        "low_lr_start",
        "train",
        type=bool,
        kind="switch",
        help="Start at lr/10 until train error < 80% (default: paper recipe, CIFAR depth >= 110).",
    ),
    _option(
        "weight_decay", "train", type=float, help="L2 weight decay (" + recipes.default_help("weight_decay") + ")."
    ),
    _option(
        "label_smoothing",
        "train",
        type=float,
        help="Label smoothing (default: the recipe's; "
        + recipes.default_help("label_smoothing", per_family=False)
        + ").",
    ),
    _option(
        "warmup_epochs",
        "train",
        type=float,
        help="Linear warm-up epochs (default: the recipe's; short: 0.5 under 10 epochs, else epochs/10 up to 5).",
    ),
    # Training components beyond the paper's; None keeps the recipe's value.
    _option("optimizer", "train", choices=OPTIMIZERS, help="Optimizer (default: the recipe's; sgd)."),
    _option("loss", "train", choices=LOSSES, help="softmax cross-entropy or per-class binary (bce)."),
    _option("clip_norm", "train", type=float, help="Clip the gradient to this global norm (0: off)."),
    _option("ema_decay", "train", type=float, help="Validate and save an EMA of the weights, e.g. 0.999 (0: off)."),
    _option("mixup", "train", type=float, help="Mixup Beta(alpha, alpha), e.g. 0.2 (0: off)."),
    _option("cutmix", "train", type=float, help="CutMix Beta(alpha, alpha), e.g. 1.0 (0: off)."),
    _option("random_erasing", "train", type=float, help="Random erasing probability per image, e.g. 0.1."),
    _option(
        "auto_augment",
        "train",
        choices=AUTO_AUGMENTS,
        help="ta_wide: TrivialAugment Wide per image; rand_mM_mstdS: RandAugment (timm's rand-mM-mstdS-inc1).",
    ),
    _option(
        "flip",
        "train",
        choices=FLIPS,
        help="Training flips: random (a coin per image and epoch) or alternating (each image mirrored every "
        "other epoch; CIFAR view).",
    ),
    _option(
        "train_image_size",
        "train",
        type=int,
        help="Train on crops of this size, validate and export at --image-size (FixRes; default: the recipe's "
        "share of it, torchvision 176/224, rsb_a3 160/224, else the image size).",
    ),
    _option(
        "strategy",
        "train",
        choices=STRATEGIES,
        default="auto",
        help="tf.distribute strategy; multi-worker reads the cluster from TF_CONFIG.",
    ),
    _option(
        "mixed_precision",
        "train",
        choices=("auto", *PRECISIONS),
        default="none",
        help="Mixed-precision compute dtype (float16 with loss scaling); auto: bfloat16 where the CPU computes "
        "it natively (AVX512_BF16, AMX).",
    ),
    _option("xla", "train", type=bool, default=False, kind="switch", help="Compile the train step with XLA."),
    _option("steps_per_epoch", "train", type=int, help="Train steps per epoch (default: the whole train split)."),
    # Fine-tuning from pretrained weights.
    _option(
        "init_from",
        "train",
        help="Pretrained start: 'imagenet' (for --depth/--variant), a keras.applications "
        "name (resnet50, resnet50v2, ...), a weights .h5 file, one of our .keras files or run directories, "
        "or torchvision/timm/keras-hub weights (`info --weights`; .pth, .safetensors, preset folders).",
    ),
    _option(
        "freeze",
        "train",
        choices=FREEZE_POLICIES,
        default="none",
        help="Layers that stay fixed while fine-tuning (--init-from).",
    ),
    _option(
        "bn_policy",
        "train",
        choices=BN_POLICIES,
        default="train",
        help="frozen: every BatchNorm in inference mode with the pretrained statistics.",
    ),
    _option(
        "backbone_lr_multiplier",
        "train",
        type=float,
        default=1.0,
        help="The backbone learns at this fraction of --lr; the new head at --lr.",
    ),
    _option(
        "head_epochs",
        "train",
        type=int,
        default=0,
        help="Train only the new head for this many epochs, then unfreeze per --freeze.",
    ),
)

OPTIONS: dict[str, Option] = {option.name: option for option in _MODEL + _DATA + _TRAIN}

# Options that go together on every command that has them, in --help order.
GROUPS = {
    "model": ("depth", "preset", "family", "variant", "width", "shortcut", "image_size"),
    "arch": ("stem", "avg_down", "se_ratio", "drop_path"),
    "source": ("dataset", "data_dir", "val_split", "validation_fraction"),
    "data": ("deterministic", "skip_corrupt"),
    "schedule": ("label_smoothing", "warmup_epochs"),
    "components": COMPONENT_FIELDS,
    "runtime": ("mixed_precision", "xla"),
    "finetune": ("init_from", "freeze", "bn_policy", "backbone_lr_multiplier", "head_epochs"),
}


def fields(section: str, values: Mapping[str, Any], *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments of the `section` config from option values (a command's parameters, an
    argparse namespace's vars), for the table's options among them.

    A model option that is None is left out (the preset's or the family's value stays); data and
    train options are passed as they are (their configs' defaults are the options'), an on/off flag
    as a bool.
    """
    out = {}
    for option in OPTIONS.values():
        field = option.field(section)
        if field is None or option.name not in values or option.name in exclude:
            continue
        value = values[option.name]
        if section == "model" and value is None:
            continue
        out[field] = bool(value) if option.type is bool and option.default is False else value
    return out


def model_config(values: Mapping[str, Any], *, depth: int = 20, **extra):
    """The ModelConfig of option values: --preset's, else --depth's (default `depth`), with the
    model options given and `extra` (e.g. num_classes) on top."""
    from resnet_keras.config.schema import ModelConfig

    overrides = {**fields("model", values), **extra}
    if values.get("preset"):
        return ModelConfig.preset(values["preset"], **overrides)
    return ModelConfig(**{"depth": depth, **overrides})


def option_values(names: tuple[str, ...], **configs) -> dict[str, Any]:
    """{option name: value} read back from configs given by section (model=, data=, train=): what
    `train --config` takes to rebuild them."""
    out = {}
    for name in names:
        section, field = next((s, f) for s, f in OPTIONS[name].targets if s in configs)
        out[name] = getattr(configs[section], field)
    return out


def add_argument(parser, name: str, **overrides) -> None:
    """Declares option `name` on an argparse parser (the scripts): the table's flag, type, choices,
    default and help; `overrides` replace any of them."""
    import argparse

    option = OPTIONS[name]
    kwargs: dict[str, Any] = dict(default=option.default, help=option.help.replace("%", "%%"))
    if option.kind == "flag":
        kwargs["action"] = "store_true"
    elif option.kind == "switch":
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = option.type
        if option.choices:
            kwargs["choices"] = option.choices
    kwargs.update(overrides)
    parser.add_argument(option.flag, **kwargs)
