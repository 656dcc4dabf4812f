"""Training recipes as data: one `Recipe` per name, registered in `RECIPES`.

A recipe is what a paper or a reference codebase prescribes besides the network: optimizer,
learning-rate schedule and warm-up, weight decay, label smoothing, epochs, and the batch at
which its learning rate is quoted. `TrainConfig` fills every field left `None` from its
recipe, for the model's family ("cifar" or "imagenet"); the CLI's `--recipe` choices, its
help texts and `tune`'s `best.yaml` all read this registry, so a new recipe is one entry here.

Importing this module does not import TensorFlow; `make_schedule` builds the Keras schedule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

FAMILIES = ("cifar", "imagenet")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One named recipe. Per-family values are mappings keyed by "cifar" and "imagenet".

    learning_rate is quoted at `reference_batch` and scales linearly with the global batch
    (Goyal et al. 2017), or with its square root when `lr_scaling` is "sqrt". schedule: "step"
    divides the rate by 10 at each fraction of the steps in `boundaries`; "cosine" decays it to 0;
    "linear" decays it to 0 in a straight line. Warm-up (linear from `warmup_start` of the peak rate):
    `warmup_fraction` of the epochs, at most `warmup_max` epochs, and `warmup_short` epochs for runs
    under 10 epochs; no warm-up when `warmup_fraction` is 0. `low_lr_start_depth`: CIFAR nets this deep or
    deeper first train at a tenth of the rate until the training error is below 80 %.
    optimizer ("sgd", "adamw", "lamb"), loss ("softmax", "bce"), clip_norm (global gradient norm,
    0: off), ema_decay (per step, 0: off), mixup and cutmix (Beta alpha, 0: off), random_erasing
    (probability per image), auto_augment ("none", "ta_wide", "rand_m6_mstd0.5", ...) and flip
    ("random", "alternating") are `TrainConfig` fields of the same names.
    `train_size_ratio`: training crops of this fraction of the model's image size, the test size
    (Touvron et al. 2019, "FixRes": a smaller train size makes up for the apparent object size that
    random-resized crops enlarge); `TrainConfig.train_image_size` left None takes it.
    """

    name: str
    summary: str
    source: str
    epochs: Mapping[str, int]
    learning_rate: Mapping[str, float]
    weight_decay: Mapping[str, float]
    reference_batch: Mapping[str, int]
    schedule: str = "step"
    boundaries: Mapping[str, tuple[float, ...]] = dataclasses.field(
        default_factory=lambda: {"cifar": (0.5, 0.75), "imagenet": (1 / 3, 2 / 3)}
    )
    nesterov: bool = False
    label_smoothing: float = 0.0
    warmup_fraction: float = 0.0
    warmup_max: float = 0.0
    warmup_short: float = 0.0
    low_lr_start_depth: int | None = None
    optimizer: str = "sgd"
    loss: str = "softmax"
    clip_norm: float = 0.0
    ema_decay: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    random_erasing: float = 0.0
    auto_augment: str = "none"
    flip: str = "random"
    lr_scaling: str = "linear"
    warmup_start: float = 0.0
    train_size_ratio: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"cifar": 1.0, "imagenet": 1.0})

    def warmup_epochs(self, epochs: int) -> float:
        if not self.warmup_fraction:
            return 0
        return self.warmup_short if epochs < 10 else min(self.warmup_max, int(epochs * self.warmup_fraction))

    def learning_rate_for(self, family: str, batch_size: int) -> float:
        ratio = batch_size / self.reference_batch[family]
        # timm scales adaptive optimizers' (LAMB, Adam) rates with the square root of the batch ratio.
        return self.learning_rate[family] * (math.sqrt(ratio) if self.lr_scaling == "sqrt" else ratio)


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="paper",
            summary="step schedule of He et al. (2015): SGD momentum 0.9, lr 0.1, /10 twice",
            source=(
                "He et al. 2015, sec. 4.2 (CIFAR: batch 128, lr 0.1 /10 at 32k and 48k of 64k iterations, about "
                "182 epochs on 45k images, weight decay 1e-4) and sec. 3.4 (ImageNet: batch 256, lr 0.1, weight "
                "decay 1e-4; /10 at epochs 30 and 60 of 90, the fixed form of fb.resnet.torch and torchvision)"
            ),
            epochs={"cifar": 182, "imagenet": 90},
            learning_rate={"cifar": 0.1, "imagenet": 0.1},
            weight_decay={"cifar": 1e-4, "imagenet": 1e-4},
            reference_batch={"cifar": 128, "imagenet": 256},
            schedule="step",
            # Sec. 4.2: ResNet-110 "is too large to start converging" at 0.1; it warms up at 0.01.
            low_lr_start_depth=110,
        ),
        Recipe(
            name="short",
            summary="budget recipe: linear warm-up then cosine, Nesterov, label smoothing 0.1",
            source=(
                "Goyal et al. 2017 (warm-up, linear scaling), Loshchilov & Hutter 2017 (cosine), Szegedy et al. 2016 "
                "(label smoothing); the CIFAR lr 0.2 and weight decay 5e-4 were measured with "
                "scripts/cifar10_benchmark.py: ResNet-20 reached 80.7 % in 6 epochs against 77.9 % with the paper's"
            ),
            epochs={"cifar": 30, "imagenet": 30},
            learning_rate={"cifar": 0.2, "imagenet": 0.1},
            weight_decay={"cifar": 5e-4, "imagenet": 1e-4},
            reference_batch={"cifar": 128, "imagenet": 256},
            schedule="cosine",
            nesterov=True,
            label_smoothing=0.1,
            warmup_fraction=0.1,
            warmup_max=5,
            warmup_short=0.5,
        ),
        Recipe(
            name="short_linear",
            summary="short, with the rate decayed linearly to 0 instead of cosine: warm-up, Nesterov, smoothing 0.1",
            source=(
                "Li, Yumer & Ramanan 2020, 'Budgeted Training: Rethinking Deep Neural Network Training Under "
                "Resource Constraints' (a linear decay to 0 for runs cut short to fit a budget); otherwise the "
                "short recipe. Measured on the CIFAR-10 budget record (scripts/cifar10_benchmark.py, ResNet-20, "
                "batch 64, EMA): 86.0 % in 19 epochs against cosine's 86.7 % in 18, so short stays the default"
            ),
            epochs={"cifar": 30, "imagenet": 30},
            learning_rate={"cifar": 0.2, "imagenet": 0.1},
            weight_decay={"cifar": 5e-4, "imagenet": 1e-4},
            reference_batch={"cifar": 128, "imagenet": 256},
            schedule="linear",
            nesterov=True,
            label_smoothing=0.1,
            warmup_fraction=0.1,
            warmup_max=5,
            warmup_short=0.5,
        ),
        Recipe(
            name="torchvision",
            summary=(
                "torchvision's ResNet-50 recipe (80.9 %): SGD lr 0.5 per 1024 images, cosine, 5 warm-up epochs, "
                "600 epochs, label smoothing 0.1, mixup 0.2, CutMix 1.0, random erasing 0.1, TrivialAugment, EMA, "
                "weight decay 2e-5, train 176 / test 224"
            ),
            source=(
                "Vryniotis 2021, 'How to Train State-Of-The-Art Models Using TorchVision's Latest Primitives' and "
                "torchvision references/classification README (IMAGENET1K_V2 weights, 80.858 %): 8 GPUs x batch 128, "
                "--lr 0.5 --lr-scheduler cosineannealinglr --lr-warmup-epochs 5 --lr-warmup-method linear (train.py's "
                "--lr-warmup-decay 0.01: from 1 % of the rate) --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha "
                "1.0 --random-erase 0.1 --weight-decay 2e-5 --norm-weight-decay 0.0 --model-ema --model-ema-steps 32 "
                "--model-ema-decay 0.99998 --auto-augment ta_wide --train-crop-size 176 --val-resize-size 232 (train "
                "at 176/224 of the test size). Differs here: the evaluation view resizes to 256 before its 224 crop, "
                "not 232, and the warm-up reaches the peak one step earlier"
            ),
            epochs={"cifar": 600, "imagenet": 600},
            learning_rate={"cifar": 0.5, "imagenet": 0.5},
            weight_decay={"cifar": 2e-5, "imagenet": 2e-5},
            reference_batch={"cifar": 1024, "imagenet": 1024},
            schedule="cosine",
            label_smoothing=0.1,
            warmup_fraction=0.01,
            warmup_max=5,
            warmup_short=0.5,
            warmup_start=0.01,  # --lr-warmup-method linear --lr-warmup-decay 0.01
            # torchvision averages every 32 steps with decay 1 - 2e-5 x (1024 x 32 / 600); per step, 0.999966.
            ema_decay=0.99997,
            mixup=0.2,
            cutmix=1.0,
            random_erasing=0.1,
            auto_augment="ta_wide",
            # --train-crop-size 176 against --val-crop-size 224; CIFAR nets keep their 32-pixel images.
            train_size_ratio={"cifar": 1.0, "imagenet": 176 / 224},
        ),
        Recipe(
            name="rsb_a3",
            summary=(
                "'ResNet strikes back' A3 (ResNet-50 78.1 % in 100 epochs): LAMB lr 8e-3 per 2048 images, weight "
                "decay 0.02, cosine, 5 warm-up epochs, binary cross-entropy, mixup 0.1, CutMix 1.0, RandAugment m6, "
                "train 160 / test 224"
            ),
            source=(
                "Wightman, Touvron & Jegou 2021, 'ResNet strikes back', Table 1, procedure A3: 100 epochs, batch 2048, "
                "LAMB, lr 8e-3, weight decay 0.02 (none on BN and biases), cosine with 5 warm-up epochs, BCE loss, "
                "no label smoothing, mixup 0.1, CutMix 1.0, no EMA, no stochastic depth, train 160 / test 224, "
                "RandAugment rand-m6-mstd0.5-inc1; timm's --warmup-lr 1e-6. Differs here: RandAugment's geometric "
                "ops sample nearest-neighbour (timm: bilinear or bicubic)"
            ),
            epochs={"cifar": 100, "imagenet": 100},
            learning_rate={"cifar": 8e-3, "imagenet": 8e-3},
            weight_decay={"cifar": 0.02, "imagenet": 0.02},
            reference_batch={"cifar": 2048, "imagenet": 2048},
            schedule="cosine",
            warmup_fraction=0.05,
            warmup_max=5,
            warmup_short=0.5,
            # timm's --warmup-lr 1e-6 under the peak --lr 8e-3, as a share of the peak.
            warmup_start=1e-6 / 8e-3,
            optimizer="lamb",
            loss="bce",
            lr_scaling="sqrt",
            mixup=0.1,
            cutmix=1.0,
            auto_augment="rand_m6_mstd0.5",  # timm's --aa rand-m6-mstd0.5-inc1
            # Table 1: train at 160, test at 224; CIFAR nets keep their 32-pixel images.
            train_size_ratio={"cifar": 1.0, "imagenet": 160 / 224},
        ),
    )
}


def names() -> tuple[str, ...]:
    return tuple(RECIPES)


def default_help(field: str, *, per_family: bool = True) -> str:
    """A field's default in each recipe, for --help ("paper: 182 cifar, 90 imagenet; short: ...")."""
    parts = []
    for recipe in RECIPES.values():
        values = getattr(recipe, field)
        shown = ", ".join(f"{values[f]:g} {f}" for f in FAMILIES) if per_family else f"{values:g}"
        parts.append(f"{recipe.name}: {shown}")
    return "; ".join(parts)


def make_schedule(train_config, steps_per_epoch: int, factor=None):
    """The run's learning-rate schedule (a Keras `LearningRateSchedule`), times `factor` if given.

    `factor` is a variable the training loop may change (the paper's low-rate start).
    """
    recipe = RECIPES[train_config.recipe]
    total = train_config.epochs * steps_per_epoch
    warmup = int(round(train_config.warmup_epochs * steps_per_epoch))
    boundaries = recipe.boundaries[train_config.family] if recipe.schedule == "step" else ()
    return _schedule_class()(
        train_config.learning_rate, total, warmup, recipe.schedule, boundaries, factor, recipe.warmup_start
    )


def _schedule_class():
    import keras

    class ResNetSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up, then "step" (/10 at each boundary fraction of the steps), "cosine" or
        "linear" decay to 0; a function of the optimizer's iteration count, times `factor` if given.

        The warm-up line runs from `warmup_start` x base before the first step to base at the last
        warm-up step: step s < W has base x (start + (1 - start) x (s + 1) / W). From 0, the first
        step already moves (base / W); torchvision's LinearLR and timm start exactly at `start` x base
        and reach base one step later, a difference of one step of the warm-up.
        """

        def __init__(
            self, base, total_steps, warmup_steps, kind, boundaries=(0.5, 0.75), factor=None, warmup_start=0.0
        ):
            self.base, self.total_steps, self.warmup_steps = float(base), int(total_steps), int(warmup_steps)
            self.kind, self.boundaries, self.factor = kind, tuple(boundaries), factor
            self.warmup_start = float(warmup_start)

        def __call__(self, step):
            rate = self._rate(step)
            return rate if self.factor is None else rate * self.factor

        def _rate(self, step):
            import tensorflow as tf

            step = tf.cast(step, tf.float32)
            if self.kind == "step":
                rates = [self.base / 10**k for k in range(len(self.boundaries) + 1)]
                after = tf.constant(rates[-1], tf.float32)
                for fraction, rate in reversed(list(zip(self.boundaries, rates))):
                    after = tf.where(step < fraction * self.total_steps, rate, after)
            else:
                span = float(max(self.total_steps - self.warmup_steps, 1))
                progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
                if self.kind == "linear":
                    after = self.base * (1.0 - progress)
                else:
                    after = 0.5 * self.base * (1.0 + tf.cos(math.pi * progress))
            if self.warmup_steps <= 0:
                return after
            start = self.warmup_start
            ramp = self.base * (start + (1.0 - start) * (step + 1) / float(self.warmup_steps))
            return tf.where(step < self.warmup_steps, ramp, after)

        def get_config(self):
            return dict(
                base=self.base,
                total_steps=self.total_steps,
                warmup_steps=self.warmup_steps,
                kind=self.kind,
                boundaries=self.boundaries,
                warmup_start=self.warmup_start,
            )

    return ResNetSchedule
