"""Training and evaluation: one custom loop for every `tf.distribute` strategy.

Recipes. "paper" follows He et al. (2015) for the model's family:
- CIFAR (sec. 4.2): SGD, momentum 0.9, weight decay 1e-4, batch 128, learning rate 0.1
  divided by 10 at 32k and 48k iterations, stopping at 64k (~182 epochs on 45k images). With
  another number of epochs the boundaries stay at 50 % and 75 % of the steps. ResNet-110 (and
  deeper) first trains at a tenth of the rate until the training error is below 80 % ("about
  400 iterations"), then goes back to the full rate.
- ImageNet (sec. 3.4): batch 256, learning rate 0.1, weight decay 1e-4, momentum 0.9; the
  paper divides the rate by 10 "when the error plateaus"; we use the fixed form of the
  reference reproductions (fb.resnet.torch, torchvision): /10 every 30 of 90 epochs, i.e. at
  1/3 and 2/3 of the steps.
The rate scales linearly with the batch from the paper's batch (Goyal et al. 2017). The
"short" recipe is a modern budget recipe: linear warm-up then cosine decay, Nesterov
momentum, label smoothing 0.1.

Why a custom loop instead of `model.fit`: Keras 3 `fit` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585), and one loop keeps one-device,
mirrored and multi-worker runs on the same code. Losses follow the `tf.distribute` rules:
`compute_average_loss` over the *global* batch plus `scale_regularization_loss` of the
model's L2 terms, so the all-reduced (summed) gradients equal the single-device ones.

Validation runs outside the strategy, on the same (mirrored) variables, over the whole
val split with ``drop_remainder=False``: exact counts on any number of replicas at the
cost of not parallelising validation.

A run directory holds ``config.json``, ``labels.txt`` (class names, one per line),
``checkpoints/`` (last two epochs), ``best.weights.h5`` (best val accuracy), ``logs/``
(TensorBoard), ``history.csv``, ``metrics.json``, ``curves.png`` and the final ``model.keras``.
Rerunning the same call resumes.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet_keras.config import ModelConfig
from resnet_keras.data import DataConfig
from resnet_keras.errors import ConfigError, TrainingFailure, UsageError, expect, is_int

RECIPES = ("paper", "short")
PRECISIONS = ("none", "float16", "bfloat16")
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "finished_at")
# The paper's CIFAR schedule: 64k iterations of batch 128 on 45k images is ~182 epochs.
PAPER_EPOCHS = {"cifar": 182, "imagenet": 90}
PAPER_BATCH = {"cifar": 128, "imagenet": 256}  # the batch at which the paper's rate is 0.1
SHORT_EPOCHS = 30
WARMUP_DEPTH = 110  # paper sec. 4.2: ResNet-110 needs a low-rate start to begin converging
WARMUP_ERROR = 0.8
WARMUP_FACTOR = 0.1


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train; `None` fields resolve to the recipe's value in `__post_init__`.

    family ("cifar" or "imagenet", the model's) picks the paper's schedule and reference batch;
    `train` refuses a model of the other family. batch_size is global (split over the
    replicas). learning_rate defaults to 0.1 * batch_size / 128 (CIFAR) or / 256 (ImageNet).
    weight_decay is L2 applied inside the model (`ModelConfig.weight_decay`): the paper's 1e-4.
    The short recipe on CIFAR nets doubles the rate and uses 5e-4, with a half-epoch warm-up
    under 10 epochs: ResNet-20 reached 80.7 % in 6 epochs with these against 77.9 % with the
    paper's values (scripts/cifar10_benchmark.py).
    steps_per_epoch defaults to num_train // batch_size. xla compiles the step (`jit_compile`);
    off by default because it fails under MirroredStrategy across logical CPUs. low_lr_start
    (None: on for the paper recipe on CIFAR nets of 110+ layers) trains at a tenth of the rate
    until the training error is below 80 %, as the paper does for ResNet-110.
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
    # Fine-tuning (resnet_keras.finetune, issue 8): pretrained source, what trains, BN mode.
    init_from: str | None = None
    freeze: str = "none"
    bn_policy: str = "train"
    backbone_lr_multiplier: float = 1.0
    head_epochs: int = 0

    def __post_init__(self) -> None:
        expect(self.recipe in RECIPES, "recipe", self.recipe, " or ".join(map(repr, RECIPES)))
        expect(self.family in PAPER_EPOCHS, "family", self.family, " or ".join(map(repr, PAPER_EPOCHS)))
        short = self.recipe == "short"
        expect(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        epochs = self.epochs if self.epochs is not None else (SHORT_EPOCHS if short else PAPER_EPOCHS[self.family])
        expect(is_int(epochs) and epochs >= 1, "epochs", epochs, "an integer >= 1")
        budget = short and self.family == "cifar"  # measured on CIFAR-10 only; ImageNet keeps the paper's values
        warmup = (0.5 if epochs < 10 else min(5, epochs // 10)) if short else 0
        defaults = dict(
            epochs=epochs,
            learning_rate=(
                self.learning_rate
                if self.learning_rate is not None
                else (0.2 if budget else 0.1) * self.batch_size / PAPER_BATCH[self.family]
            ),
            weight_decay=self.weight_decay if self.weight_decay is not None else (5e-4 if budget else 1e-4),
            nesterov=self.nesterov if self.nesterov is not None else short,
            warmup_epochs=self.warmup_epochs if self.warmup_epochs is not None else warmup,
            label_smoothing=self.label_smoothing if self.label_smoothing is not None else (0.1 if short else 0.0),
        )
        for key, value in defaults.items():
            object.__setattr__(self, key, value)
        expect(
            _is_number(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            self.learning_rate,
            "a number > 0",
        )
        expect(_is_number(self.momentum) and 0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        expect(isinstance(self.nesterov, bool), "nesterov", self.nesterov, "True or False")
        expect(
            _is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0"
        )
        expect(
            _is_number(self.warmup_epochs) and 0 <= self.warmup_epochs < self.epochs,
            "warmup_epochs",
            self.warmup_epochs,
            f"a number in [0, epochs={self.epochs})",
        )
        expect(
            _is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            "label_smoothing",
            self.label_smoothing,
            "a number in [0, 1)",
        )
        from resnet_keras.distribute import STRATEGIES

        expect(self.strategy in STRATEGIES, "strategy", self.strategy, "one of " + ", ".join(STRATEGIES))
        expect(
            self.mixed_precision in PRECISIONS,
            "mixed_precision",
            self.mixed_precision,
            "one of " + ", ".join(PRECISIONS),
        )
        expect(isinstance(self.xla, bool), "xla", self.xla, "True or False")
        expect(is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        expect(
            self.steps_per_epoch is None or (is_int(self.steps_per_epoch) and self.steps_per_epoch >= 1),
            "steps_per_epoch",
            self.steps_per_epoch,
            "None or an integer >= 1",
        )
        expect(self.low_lr_start in (None, True, False), "low_lr_start", self.low_lr_start, "None, True or False")
        from resnet_keras import finetune

        finetune.validate(self)

    def uses_low_lr_start(self, model_config: ModelConfig) -> bool:
        """Whether training starts at a tenth of the rate (paper, CIFAR ResNet-110 and deeper)."""
        if self.low_lr_start is not None:
            return self.low_lr_start
        return self.recipe == "paper" and model_config.family == "cifar" and model_config.depth >= WARMUP_DEPTH

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known)) if isinstance(data, dict) else data
        if not isinstance(data, dict) or unknown:
            raise ConfigError(f"Received: unknown train config keys {unknown!r}; expected keys among {known}.")
        return cls(**data)


# ----------------------------------------------------------------------------- schedule


def _schedule_class():
    import keras

    class ResNetSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up from 0, then "paper" steps (/10 at two fractions of the steps: 1/2 and
        3/4 for CIFAR, 1/3 and 2/3 for ImageNet) or "short" cosine decay to 0; a function of the
        optimizer's iteration count, times `factor` (a variable the loop may change, for the
        paper's low-rate start of ResNet-110)."""

        def __init__(self, base, total_steps, warmup_steps, kind, boundaries=(0.5, 0.75), factor=None):
            self.base, self.total_steps, self.warmup_steps, self.kind = (
                float(base),
                int(total_steps),
                int(warmup_steps),
                kind,
            )
            self.boundaries, self.factor = tuple(boundaries), factor

        def __call__(self, step):
            rate = self._rate(step)
            return rate if self.factor is None else rate * self.factor

        def _rate(self, step):
            import tensorflow as tf

            step = tf.cast(step, tf.float32)
            warm = float(max(self.warmup_steps, 1))
            if self.kind == "paper":
                first, second = (fraction * self.total_steps for fraction in self.boundaries)
                after = tf.where(step < first, self.base, tf.where(step < second, self.base / 10, self.base / 100))
            else:
                span = float(max(self.total_steps - self.warmup_steps, 1))
                progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
                after = 0.5 * self.base * (1.0 + tf.cos(math.pi * progress))
            if self.warmup_steps <= 0:
                return after
            return tf.where(step < self.warmup_steps, self.base * (step + 1) / warm, after)

        def get_config(self):
            return dict(
                base=self.base,
                total_steps=self.total_steps,
                warmup_steps=self.warmup_steps,
                kind=self.kind,
                boundaries=self.boundaries,
            )

    return ResNetSchedule


def make_schedule(train_config: TrainConfig, steps_per_epoch: int, factor=None):
    """The recipe's learning-rate schedule (a Keras `LearningRateSchedule`), times `factor` if given."""
    total = train_config.epochs * steps_per_epoch
    warmup = int(round(train_config.warmup_epochs * steps_per_epoch))
    boundaries = (1 / 3, 2 / 3) if train_config.family == "imagenet" else (0.5, 0.75)
    return _schedule_class()(train_config.learning_rate, total, warmup, train_config.recipe, boundaries, factor)


# ----------------------------------------------------------------------------- run directory


def _write_atomic(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _flatten(configs: dict) -> dict:
    return {f"{section}.{key}": value for section, values in configs.items() for key, value in values.items()}


def _check_run_dir(model_dir: Path, configs: dict, overwrite: bool) -> bool:
    """True when model_dir holds a compatible run to resume; raises UsageError for a different one."""
    config_file = model_dir / "config.json"
    if not config_file.exists():
        if model_dir.exists() and any(model_dir.iterdir()):
            # Never delete a folder that is not ours, even with overwrite.
            raise UsageError(
                f"{model_dir} exists, is not empty and is not a run directory (no config.json); use another --model-dir"
            )
        return False
    if overwrite:
        import shutil

        shutil.rmtree(model_dir)
        return False
    try:
        old = _flatten(json.loads(config_file.read_text()))
    except (ValueError, AttributeError) as error:
        raise UsageError(
            f"{config_file} is not a valid run config ({error}); use --overwrite or another --model-dir"
        ) from None
    new = _flatten(json.loads(json.dumps(configs)))
    # A run written before a config field existed resumes when the new field keeps its default.
    defaults = {
        f"{section}.{field.name}": field.default
        for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig))
        for field in dataclasses.fields(cls)
        if field.default is not dataclasses.MISSING
    }
    old.update({key: new[key] for key in set(new) - set(old) if key in defaults and new[key] == defaults[key]})
    differing = sorted(
        key
        for key in set(old) | set(new)
        if key != "train.epochs" and old.get(key, "<missing>") != new.get(key, "<missing>")
    )
    if differing:
        details = ", ".join(
            f"{key} ({old.get(key, '<missing>')!r} -> {new.get(key, '<missing>')!r})" for key in differing
        )
        raise UsageError(
            f"{model_dir} holds a run with a different config: {details}; use --overwrite or another --model-dir"
        )
    return True


def _read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [
            {
                key: (value if key == "finished_at" else float(value) if key != "epoch" else int(value))
                for key, value in row.items()
            }
            for row in csv.DictReader(handle)
        ]


def _write_history(path: Path, rows: list[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(path, out.getvalue())


def _plot_curves(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("loss", "train"), ("val_loss", "val")):
        ax_loss.plot(epochs, [row[key] for row in history], marker="o", label=label)
    for key, label in (("accuracy", "train"), ("val_accuracy", "val")):
        ax_acc.plot(epochs, [row[key] for row in history], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    _write_atomic(path, buffer.getvalue())


# ----------------------------------------------------------------------------- training


def _precision_policy(name: str) -> str:
    return {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}[name]


def _per_example_loss(tf, labels, logits, num_classes: int, label_smoothing: float):
    """Softmax cross-entropy from float32 logits and int labels, with optional label smoothing."""
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def make_train_step(
    model,
    optimizer,
    strategy,
    *,
    num_classes: int,
    global_batch: int,
    label_smoothing: float,
    loss_scaling: bool,
    xla: bool,
    transform_gradients: Callable | None = None,
):
    """The training step of `train()`: `train_step(iterator)` -> summed [loss, correct, count] over the batch.

    One step reads the next (distributed) batch, runs the replica step under `strategy.run` and
    sums the three float32 scalars over replicas. Shared with `resnet_keras.benchmark`, so the
    benchmark times exactly the step that training runs. `transform_gradients(grads, variables)`
    (fine-tuning: a lower rate for the backbone) runs before the update.
    """
    import tensorflow as tf

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            per_example = _per_example_loss(tf, labels, logits, num_classes, label_smoothing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n([tf.cast(ly, tf.float32) for ly in model.losses]))
            scaled = optimizer.scale_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        if transform_gradients is not None:
            grads = transform_gradients(grads, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)  # sums gradients over replicas; unscales
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.reduce_sum(per_example), correct, count

    # No tensor-dependent Python control flow in the steps: AutoGraph is not needed (and it
    # trips over the closure of these nested functions). XLA compiles the replica step only:
    # reading the input iterator (IteratorGetNext) has no XLA kernel.
    replica_step = tf.function(step_fn, jit_compile=True, autograph=False) if xla else step_fn

    @tf.function(autograph=False)
    def train_step(iterator):
        results = strategy.run(replica_step, args=next(iterator))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in results]

    return train_step


# ----------------------------------------------------------------------------- multi-worker (issue 6)
# Every worker runs the same loop and so calls the same collectives in the same order; only the
# chief writes the run directory, the others write the same files to scratch that is deleted.

# What a lost, killed or unreachable peer raises out of a collective or the coordination service.
_PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "AbortedError", "CancelledError", "InternalError")


# Set to a folder to keep each non-chief worker's copies there (worker-<task id>/) for inspection.
KEEP_SCRATCH_ENV = "RESNET_KERAS_WORKER_SCRATCH"


def _worker_scratch(model_dir: Path, task_id: int) -> Path:
    """A fresh local folder for a non-chief worker's copies of the run files; removed at exit
    unless `KEEP_SCRATCH_ENV` names a folder to keep them in."""
    import atexit
    import shutil
    import tempfile

    keep = os.environ.get(KEEP_SCRATCH_ENV)
    if keep:
        scratch = Path(keep) / f"worker-{task_id}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        return scratch
    scratch = Path(tempfile.mkdtemp(prefix=f"resnet-keras-worker-{model_dir.name}-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch


def _agreed_checkpoint(tf, strategy, manager, run_dir: Path, resuming: bool) -> str | None:
    """The checkpoint every worker restores: the chief's latest, its epoch all-reduced from replica 0
    (the chief), so workers never read a run directory the chief is still preparing."""
    from resnet_keras.distribute import is_chief

    latest = manager.latest_checkpoint if resuming else None
    if strategy.num_replicas_in_sync == 1 or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return latest
    epoch = int(latest.rsplit("-", 1)[1]) if latest and is_chief(strategy) else 0

    def chief_value():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.where(tf.equal(replica, 0), tf.constant(epoch, tf.int64), tf.constant(0, tf.int64))

    broadcast = tf.function(
        lambda: strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(chief_value), axis=None), autograph=False
    )
    epoch = int(broadcast())
    return str(run_dir / "checkpoints" / f"ckpt-{epoch}") if epoch else None


def _replica_statistics_sync(tf, strategy, model) -> Callable[[], None]:
    """A function that sets every replica's copy of the BatchNorm moving statistics to their mean.

    Keras 3 BN moving statistics are MirroredVariables with aggregation NONE: each replica updates
    its own copy from its own batches and a save keeps one copy, so workers would end an epoch
    with different weights. Averaging before validation and checkpoints keeps all workers (and a
    single process with the same replicas) identical, as Keras 2's ON_READ/MEAN variables did.
    """
    variables = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]
    if strategy.num_replicas_in_sync == 1 or not variables:
        return lambda: None

    def replica_fn():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables])
        for variable, mean in zip(variables, means):
            variable.assign(mean)

    sync = tf.function(lambda: strategy.run(replica_fn), autograph=False)
    return _peer_guard(sync, strategy)


def _peer_guard(function: Callable, strategy) -> Callable:
    """`function` with the errors of a lost peer turned into one TrainingFailure line (exit 1)."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return function

    def guarded(*args):
        try:
            return function(*args)
        except tf.errors.OpError as error:
            if type(error).__name__ not in _PEER_ERRORS:
                raise
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise TrainingFailure(
                f"lost contact with another worker ({type(error).__name__}: {reason}); restart every worker "
                "with the same command to resume from the last saved epoch"
            ) from None

    return guarded


def train(
    model_config: ModelConfig,
    data_config: DataConfig,
    train_config: TrainConfig,
    model_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains `model_config` on `data_config` into `model_dir`; returns the metrics dict.

    `model_config.num_classes` must match the dataset (the CLI takes it from `describe`);
    `train_config.weight_decay` replaces `model_config.weight_decay`. Reruns with the same
    configs resume after the last completed epoch (`epochs` may grow); `overwrite` starts
    fresh. Raises UsageError for a run directory of another config or a batch the replicas
    cannot split, TrainingFailure when the loss becomes NaN (the last good checkpoint stays).
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from resnet_keras import data as data_lib
    from resnet_keras.distribute import check_global_batch, input_options, is_chief, make_strategy, onednn_hint
    from resnet_keras.models import build_model

    model_config = dataclasses.replace(model_config, weight_decay=float(train_config.weight_decay))
    model_dir = Path(model_dir)
    info = data_lib.describe(data_config)
    if model_config.num_classes != info.num_classes:
        raise UsageError(
            f"Received: num_classes={model_config.num_classes}; dataset {data_config.dataset!r} "
            f"has {info.num_classes} classes."
        )
    if train_config.family != model_config.family:
        raise UsageError(
            f"Received: train family={train_config.family!r} for a {model_config.family}-family model; "
            f"the paper's recipes differ by family: use TrainConfig(family={model_config.family!r})"
        )
    low_lr_start = train_config.uses_low_lr_start(model_config)
    if hint := onednn_hint():
        log(hint)
    strategy = make_strategy(train_config.strategy)
    replicas = strategy.num_replicas_in_sync
    run_dir = model_dir  # multi-worker: what every worker resumes from; only the chief writes it
    if not is_chief(strategy):
        model_dir = _worker_scratch(run_dir, strategy.cluster_resolver.task_id)
    check_global_batch(train_config.batch_size, strategy)
    if train_config.xla and replicas > 1 and not tf.config.list_logical_devices("GPU"):
        raise UsageError(
            "Received: xla=True with MirroredStrategy over logical CPUs; XLA cannot compile a step "
            "whose variables live on other devices. Use --no-xla or one device."
        )
    configs = {"model": model_config.to_dict(), "data": data_config.to_dict(), "train": train_config.to_dict()}
    # -- fine-tuning (issue 8): read and check the pretrained weights before the run directory is touched
    from resnet_keras import finetune

    init_weights = None
    if train_config.init_from and (overwrite or not tf.train.latest_checkpoint(str(run_dir / "checkpoints"))):
        init_weights = finetune.read_init_weights(train_config.init_from, model_config, log=log)
    # --
    resuming = _check_run_dir(model_dir, configs, overwrite)
    model_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(model_dir / "config.json", json.dumps(configs, indent=2, sort_keys=True) + "\n")
    # Class names in index order, so exports need no access to the data (export.py reads it).
    _write_atomic(model_dir / "labels.txt", "".join(f"{name}\n" for name in info.class_names))

    steps_per_epoch = train_config.steps_per_epoch or max(1, info.num_train // train_config.batch_size)
    global_batch = train_config.batch_size
    num_classes = model_config.num_classes
    keras.utils.set_random_seed(train_config.seed)

    previous_policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(_precision_policy(train_config.mixed_precision))
    try:
        with strategy.scope():
            model = build_model(model_config)
            finetune_plan = finetune.plan(model, train_config)  # issue 8: trainable flags before the optimizer
            lr_factor = tf.Variable(
                WARMUP_FACTOR if low_lr_start else 1.0, dtype=tf.float32, trainable=False, name="lr_factor"
            )
            schedule = make_schedule(train_config, steps_per_epoch, lr_factor if low_lr_start else None)
            optimizer = keras.optimizers.SGD(
                learning_rate=schedule, momentum=train_config.momentum, nesterov=train_config.nesterov
            )
            if train_config.mixed_precision == "float16":
                # bfloat16 has float32's exponent range and needs no loss scaling.
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)  # slots exist before restore: immediate restoration
            epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, lr_factor=lr_factor)
    manager = tf.train.CheckpointManager(checkpoint, str(model_dir / "checkpoints"), max_to_keep=2)
    history_path = model_dir / "history.csv"
    history: list[dict] = []
    latest = _peer_guard(_agreed_checkpoint, strategy)(tf, strategy, manager, run_dir, resuming)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        # The history may hold an epoch written just before a crash that the checkpoint missed.
        history = [row for row in _read_history(run_dir / "history.csv") if row["epoch"] <= int(epoch_var.numpy())]
        log(f"Resuming {run_dir} after epoch {int(epoch_var.numpy())}.")
    elif init_weights is not None:  # issue 8: a fresh fine-tuning run starts from the source
        from resnet_keras.weights import assign

        log(f"Initialised {assign(model, init_weights)} layers from {train_config.init_from} (new head).")
    start_epoch = int(epoch_var.numpy())

    def train_input(ctx):
        # Each step reads one batch per local replica; a resumed run skips what the epochs done read.
        per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        return data_lib.make_dataset(
            data_config,
            "train",
            image_size=model_config.image_size,
            batch_size=global_batch,
            training=True,
            input_context=ctx,
            repeat=True,
            skip_batches=start_epoch * steps_per_epoch * per_step,
        )

    train_ds = strategy.distribute_datasets_from_function(train_input, options=input_options(strategy))
    val_ds = data_lib.make_dataset(
        data_config,
        "val",
        image_size=model_config.image_size,
        batch_size=global_batch,
        training=False,
        drop_remainder=False,
    )

    def build_train_step():  # rebuilt when a fine-tuning phase changes the trainable variables
        step = make_train_step(
            model,
            optimizer,
            strategy,
            num_classes=num_classes,
            global_batch=global_batch,
            label_smoothing=train_config.label_smoothing,
            loss_scaling=train_config.mixed_precision == "float16",
            xla=train_config.xla,
            transform_gradients=finetune_plan.scale_gradients if finetune_plan else None,
        )
        return _peer_guard(step, strategy)

    train_step = build_train_step()
    sync_statistics = _replica_statistics_sync(tf, strategy, model)

    @tf.function(autograph=False)
    def val_step(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        per_example = _per_example_loss(tf, labels, logits, num_classes, 0.0)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        return tf.reduce_sum(per_example), correct, tf.cast(tf.shape(labels)[0], tf.float32)

    def validate():
        totals = np.zeros(3)
        for images, labels in val_ds:
            totals += [float(v) for v in val_step(images, labels)]
        return float(totals[0] / max(totals[2], 1)), float(totals[1] / max(totals[2], 1))

    writer = tf.summary.create_file_writer(str(model_dir / "logs"))
    iterator = iter(train_ds)
    interactive = sys.stdout.isatty()
    best_path = model_dir / "best.weights.h5"
    best = max((row["val_accuracy"] for row in history), default=-1.0)
    # The paper's ResNet-110 start: a tenth of the rate until the training error (over the
    # last few steps, all replicas) is below 80 %; the factor is checkpointed, so it survives resume.
    warming_up = low_lr_start and float(lr_factor.numpy()) < 1.0
    recent = collections.deque(maxlen=10)
    wall_start = time.perf_counter()
    images_seen = 0
    train_seconds = 0.0
    if start_epoch >= train_config.epochs:
        log(f"{model_dir} already trained for {start_epoch} epochs.")
    for epoch in range(start_epoch + 1, train_config.epochs + 1):
        if finetune_plan and finetune_plan.set_phase(finetune_plan.phase_for(epoch)):  # issue 8: head, then all
            log(finetune_plan.describe())
            train_step = build_train_step()  # retrace: another set of trainable variables
        epoch_start = time.perf_counter()
        lr = float(optimizer.learning_rate)  # the rate of the epoch's first step
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss", "accuracy"]) if interactive else None
        if bar:
            print(f"Epoch {epoch}/{train_config.epochs}")
        totals = np.zeros(3)
        for step in range(1, steps_per_epoch + 1):
            values = np.array([float(v) for v in train_step(iterator)])
            if not np.isfinite(values[0]):
                last = manager.latest_checkpoint or "none (no epoch completed)"
                raise TrainingFailure(f"loss became NaN at epoch {epoch} step {step}; last good checkpoint: {last}")
            totals += values
            if warming_up:
                recent.append(values[1:])
                correct, count = np.sum(recent, axis=0)
                if len(recent) == recent.maxlen and 1 - correct / count < WARMUP_ERROR:
                    lr_factor.assign(1.0)
                    warming_up = False
                    log(
                        f"low-rate start done at epoch {epoch} step {step}: training error {1 - correct / count:.3f} "
                        f"< {WARMUP_ERROR}; learning rate back to the full schedule"
                    )
            if bar:
                bar.update(step, [("loss", totals[0] / totals[2]), ("accuracy", totals[1] / totals[2])])
        seconds = time.perf_counter() - epoch_start
        train_seconds += seconds
        images_seen += int(totals[2])
        sync_statistics()
        val_loss, val_accuracy = validate()
        row = dict(
            epoch=epoch,
            loss=float(totals[0] / totals[2]),
            accuracy=float(totals[1] / totals[2]),
            val_loss=float(val_loss),
            val_accuracy=float(val_accuracy),
            lr=lr,
            seconds=round(seconds, 3),
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        history.append(row)
        with writer.as_default(step=epoch):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                tf.summary.scalar(key, row[key])
        writer.flush()
        if val_accuracy > best:
            best = val_accuracy
            tmp = model_dir / ".best.tmp.weights.h5"
            model.save_weights(str(tmp))
            os.replace(tmp, best_path)
        _write_history(history_path, history)
        epoch_var.assign(epoch)
        manager.save(checkpoint_number=epoch)
        log(
            f"epoch {epoch}/{train_config.epochs}: loss {row['loss']:.4f} accuracy {row['accuracy']:.4f} "
            f"val_loss {val_loss:.4f} val_accuracy {val_accuracy:.4f} lr {lr:.4g} ({seconds:.1f} s)"
        )

    wall = time.perf_counter() - wall_start
    tmp = model_dir / ".model.tmp.keras"
    from resnet_keras.portable import save_model  # fused BN saved as stock BatchNormalization

    save_model(model, tmp)
    os.replace(tmp, model_dir / "model.keras")
    if history:
        _plot_curves(model_dir / "curves.png", history)
    final = history[-1] if history else {}
    best_row = max(history, key=lambda row: row["val_accuracy"]) if history else {}
    metrics = dict(
        model=model_config.name,
        dataset=data_config.dataset,
        epochs=len(history),
        replicas=replicas,
        steps_per_epoch=steps_per_epoch,
        global_batch_size=global_batch,
        final_loss=final.get("loss"),
        final_accuracy=final.get("accuracy"),
        final_val_loss=final.get("val_loss"),
        final_val_accuracy=final.get("val_accuracy"),
        best_val_accuracy=best_row.get("val_accuracy"),
        best_epoch=best_row.get("epoch"),
        wall_seconds=round(wall, 3),
        trained_epochs_this_run=max(0, train_config.epochs - start_epoch),
        images_per_second=round(images_seen / train_seconds, 2) if train_seconds else None,
        total_train_seconds=round(sum(row["seconds"] for row in history), 3),
    )
    _write_atomic(model_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    log(
        f"Done: {metrics['epochs']} epochs, val accuracy {metrics['final_val_accuracy']:.4f} "
        f"(best {metrics['best_val_accuracy']:.4f} at epoch {metrics['best_epoch']}), "
        f"{metrics['wall_seconds']:.1f} s, {metrics['images_per_second']} images/s; saved {run_dir / 'model.keras'}"
    )
    return metrics


# ----------------------------------------------------------------------------- evaluation


def load_run_config(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise UsageError(f"{model_dir} is not a run directory: no config.json")
    return json.loads(path.read_text())


def _load_trained_model(model_dir: Path, model_config: ModelConfig, weights: str):
    import keras

    import resnet_keras.blocks  # noqa: F401  registers the custom layers (ZeroPadShortcut) for loading

    model_file, best_file = model_dir / "model.keras", model_dir / "best.weights.h5"
    if weights == "final" and model_file.exists():
        return keras.saving.load_model(str(model_file), safe_mode=True, compile=False)
    if best_file.exists():
        from resnet_keras.models import build_model

        model = build_model(model_config)
        model.load_weights(str(best_file))
        return model
    raise UsageError(f"{model_dir} has no trained model (model.keras or best.weights.h5); train it first")


def evaluate(
    model_dir: str | os.PathLike,
    data_config: DataConfig | None = None,
    split: str = "test",
    *,
    batch_size: int = 128,
    weights: str = "final",
    write: bool = True,
) -> dict[str, Any]:
    """Evaluates a run's model on `split`; returns loss, top-1, top-5, per-class accuracy and confusion.

    `data_config` defaults to the run's own; `weights` is "final" (model.keras) or "best"
    (best.weights.h5 by val accuracy). The confusion matrix is rows = true class, columns =
    predicted class. With `write`, saves `confusion.png` and `eval-<split>.json` in model_dir.
    """
    expect(weights in ("final", "best"), "weights", weights, "'final' or 'best'")
    model_dir = Path(model_dir)
    configs = load_run_config(model_dir)
    model_config = ModelConfig.from_dict(configs["model"])
    data_config = data_config or DataConfig.from_dict(configs["data"])

    import numpy as np
    import tensorflow as tf

    from resnet_keras import data as data_lib

    info = data_lib.describe(data_config)
    if info.num_classes != model_config.num_classes:
        raise UsageError(
            f"dataset {data_config.dataset!r} has {info.num_classes} classes; "
            f"the model in {model_dir} predicts {model_config.num_classes}"
        )
    model = _load_trained_model(model_dir, model_config, weights)
    ds = data_lib.make_dataset(
        data_config,
        split,
        image_size=model_config.image_size,
        batch_size=batch_size,
        training=False,
        drop_remainder=False,
    )

    @tf.function(autograph=False)
    def predict(images):
        return tf.cast(model(images, training=False), tf.float32)

    n = model_config.num_classes
    confusion = np.zeros((n, n), np.int64)
    loss_sum, top5_hits, count = 0.0, 0, 0
    for images, labels in ds:
        logits = predict(images)
        loss_sum += float(tf.reduce_sum(_per_example_loss(tf, labels, logits, n, 0.0)))
        labels = labels.numpy()
        logits = logits.numpy()
        np.add.at(confusion, (labels, logits.argmax(-1)), 1)
        if n >= 5:
            top5_hits += int((np.argsort(-logits, axis=-1)[:, :5] == labels[:, None]).any(-1).sum())
        count += len(labels)
    if count == 0:
        raise UsageError(f"split {split!r} of {data_config.dataset!r} is empty")
    names = list(info.class_names)
    support = confusion.sum(1)
    result = dict(
        split=split,
        examples=count,
        loss=loss_sum / count,
        accuracy=float(np.trace(confusion) / count),
        top5_accuracy=top5_hits / count if n >= 5 else None,
        per_class_accuracy={
            name: (float(confusion[i, i] / support[i]) if support[i] else None) for i, name in enumerate(names)
        },
        confusion_matrix=confusion.tolist(),
        class_names=names,
        weights=weights,
    )
    if write:
        _plot_confusion(model_dir / "confusion.png", confusion, names, split)
        _write_atomic(model_dir / f"eval-{split.replace('/', '_')}.json", json.dumps(result, indent=2) + "\n")
    return result


def _plot_confusion(path: Path, confusion, names: list[str], split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = min(4 + 0.4 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({split})")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    _write_atomic(path, buffer.getvalue())
