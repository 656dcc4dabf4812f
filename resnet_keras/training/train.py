"""Training: `train()` checks a run, builds the model, optimizer and data under the strategy, and
hands them to the `Trainer` with the run's hooks.

The recipes (He et al. 2015's "paper" schedule per family, and a "short" budget recipe) are
data in `resnet_keras.config.recipes`; the loop and the training step are `resnet_keras.training.trainer`;
each concern of a run (checkpoints, history, TensorBoard, best weights, fine-tuning phases,
the paper's low-rate start for ResNet-110, NaN stop) is a hook in `resnet_keras.training.hooks`; the
run directory's files are `resnet_keras.runs.rundir.RunDir`. Rerunning the same call resumes after
the last completed epoch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from resnet_keras.config.recipes import make_schedule  # noqa: F401  part of this module's API since the first release
from resnet_keras.config.schema import LOW_LR_FACTOR, PRECISIONS, DataConfig, ModelConfig, TrainConfig
from resnet_keras.core.errors import UsageError
from resnet_keras.core.precision import resolve as resolve_precision
from resnet_keras.runs.rundir import RunDir
from resnet_keras.runs.runlock import holds_lock
from resnet_keras.runs.runstate import ReadableCheckpoints, check_resume
from resnet_keras.training.evaluate import evaluate  # noqa: F401  part of this module's API since the first release
from resnet_keras.training.trainer import Hook, make_train_step  # noqa: F401  make_train_step: benchmark and scripts use it

__all__ = ["TrainConfig", "evaluate", "load_run_config", "make_schedule", "make_train_step", "train"]


def load_run_config(model_dir: str | os.PathLike) -> dict:
    """A run's config.json (model, data and train sections)."""
    return RunDir(model_dir).read_configs()


def chief_trainer(arguments: dict) -> bool:
    """Whether this `train` process writes the run: every process but a multi-worker non-chief,
    which writes to scratch (`RunDir.worker_scratch`)."""
    if arguments["train_config"].strategy != "multi-worker":
        return True
    from resnet_keras.training.distribute import worker_info

    return worker_info().is_chief


@holds_lock("model_dir", "train", writer=chief_trainer)  # one writer per run directory
def train(
    model_config: ModelConfig,
    data_config: DataConfig,
    train_config: TrainConfig,
    model_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    hooks: Sequence[Hook] = (),
    checkpoint_every: str | int | None = None,
    steps_per_loop: int | None = None,
) -> dict[str, Any]:
    """Trains `model_config` on `data_config` into `model_dir`; returns the metrics dict.

    `model_config.num_classes` must match the dataset (the CLI takes it from `describe`);
    `train_config.weight_decay` replaces `model_config.weight_decay`; `train_config.train_image_size`
    (None: the recipe's share of the image size, `TrainConfig.for_model`) sizes the training crops
    only, validation and the saved model keep `model_config.image_size`. Reruns with the same
    configs resume after the last completed epoch (`epochs` may grow); `overwrite` starts
    fresh. `hooks` run after the built-in ones at every call. Everything is checked before
    the first write: a call that fails with UsageError (a run directory of another config, a
    batch the replicas cannot split or larger than the training split, an image size the
    pipeline refuses) leaves `model_dir` as it was. TrainingFailure when the loss becomes NaN
    (the last good checkpoint stays).

    `steps_per_loop` steps run in one call of the compiled step before the host reads their loss
    and the hooks run (`Trainer`); None: 1 on a CPU, `GPU_STEPS_PER_LOOP` when there are GPUs,
    where a host sync per step leaves the devices idle. It changes when hooks see the steps
    (checkpoints every N steps and SIGTERM stops land on loop ends), not what is computed, so a
    run may resume with another value.
    """
    from resnet_keras.pretrained import finetune
    from resnet_keras.training import distribute
    from resnet_keras.training.hooks import CheckpointInterval
    from resnet_keras.training.trainer import Trainer, make_validation

    checkpoint_interval = CheckpointInterval.parse(checkpoint_every)
    if checkpoint_interval and checkpoint_interval.seconds and train_config.strategy == "multi-worker":
        # Every worker must save at the same step (the save is a collective); clocks may disagree.
        raise UsageError(
            f"Received: checkpoint_every={checkpoint_every!r} with --strategy multi-worker; "
            "give a number of steps, which every worker counts alike"
        )
    model_config = dataclasses.replace(model_config, weight_decay=float(model_weight_decay(train_config)))
    train_config = train_config.for_model(model_config)  # the recipe's training crop size, checked
    precision_warning = resolve_precision(train_config.mixed_precision).warning
    if precision_warning:  # bfloat16 asked for on a CPU that emulates it
        log(f"Warning: {precision_warning}")
    setup = _prepare(model_config, data_config, train_config, RunDir(model_dir), log)
    run, out, strategy = setup.run, setup.out, setup.strategy
    steps_per_loop = _steps_per_loop(steps_per_loop, setup, checkpoint_interval)
    init_weights = None  # read and checked before anything is written
    if train_config.init_from and (overwrite or not run.latest_checkpoint()):
        init_weights = finetune.read_init_weights(train_config.init_from, model_config, log=log)
    if setup.info.num_train < train_config.batch_size:  # every epoch would be empty: the stream never yields
        raise UsageError(
            f"Received: batch_size={train_config.batch_size}; the training split of {data_config.dataset!r} has "
            f"{setup.info.num_train} images, fewer than one batch: use --batch-size {setup.info.num_train} or less"
        )
    resuming = out.check_resumable(setup.configs, overwrite)
    parts = _build(setup)
    history: list[dict] = []
    readable = ReadableCheckpoints(parts.manager, log)  # the newest checkpoint that reads whole
    latest = distribute.peer_guard(distribute.agreed_checkpoint, strategy)(strategy, readable, run, resuming)
    within = None
    if latest:
        within = _restore(parts, latest)
        # The history may hold an epoch written just before a crash that the checkpoint missed.
        history = [row for row in run.read_history() if row["epoch"] <= int(parts.epoch.numpy())]
        if within:
            log(f"Resuming {run.path} at epoch {int(parts.epoch.numpy()) + 1} step {within.steps}.")
        else:
            log(f"Resuming {run.path} after epoch {int(parts.epoch.numpy())}.")
    elif init_weights is not None:  # a fresh fine-tuning run starts from the source
        from resnet_keras.pretrained.resolve import assign

        log(f"Initialised {assign(parts.model, init_weights)} layers from {train_config.init_from} (new head).")
    if resuming and out is run:  # a run whose files disagree with its checkpoint is not trained over
        check_resume(run, int(parts.epoch.numpy()) if latest else None)
    start_epoch = int(parts.epoch.numpy())
    out.start(setup.configs, setup.info.class_names)  # from here on, the folder is a run
    summary, run_hooks = _hooks(setup, parts, history, log, checkpoint_interval)
    trainer = Trainer(
        model=parts.model,
        optimizer=parts.optimizer,
        make_step=lambda: distribute.peer_guard(_train_step(setup, parts), strategy),
        iterator=iter(_train_input(setup, start_epoch, within.steps if within else 0)),
        steps_per_epoch=setup.steps_per_epoch,
        epochs=train_config.epochs,
        validate=make_validation(parts.eval_model, strategy, setup.val_dataset, model_config.num_classes),
        before_validation=distribute.replica_statistics_sync(strategy, parts.model, parts.average_model),
        hooks=[*run_hooks, *hooks],
        log=log,
        eval_model=parts.eval_model,
        steps_per_loop=steps_per_loop,
    )
    import tensorflow as tf

    try:
        trainer.fit(start_epoch, within)
    except tf.errors.DataLossError as error:  # a record whose checksum fails, met mid-training
        raise _damaged_data(data_config, error) from None
    finally:
        for hook in run_hooks:  # a run stopped by an exception gives SIGTERM back to its previous handler
            if hasattr(hook, "restore"):
                hook.restore()
    return summary.metrics


def _damaged_data(data_config: DataConfig, error) -> Exception:
    """A DataError naming the damaged TFRecord file (found by reading them all), else the error."""
    from resnet_keras.core.errors import DataError, first_line
    from resnet_keras.data.sources import find_damaged_record_file

    if data_config.dataset != "tfrecord":
        return error
    found = find_damaged_record_file(data_config)
    where, reason = found if found else (data_config.data_dir, first_line(error))
    return DataError(
        f"{where}: {reason}; the file is damaged: replace it with a good copy or write the dataset "
        "again with `resnet-keras prepare`"
    )


@dataclasses.dataclass
class _Setup:
    """A checked run: configs, dataset facts, strategy, where it writes (the chief's run directory,
    or a worker's scratch copy), and the validation data (built now: it checks the image size)."""

    model_config: ModelConfig
    data_config: DataConfig
    train_config: TrainConfig
    info: Any
    strategy: Any
    run: RunDir
    out: RunDir
    steps_per_epoch: int
    val_dataset: Any

    @property
    def configs(self) -> dict:
        return {
            "model": self.model_config.to_dict(),
            "data": self.data_config.to_dict(),
            "train": self.train_config.to_dict(),
        }


def _prepare(model_config, data_config, train_config, run: RunDir, log) -> _Setup:
    """Every check that needs no write: dataset, family, strategy, batch, XLA, validation data."""
    from resnet_keras.data import pipeline as data_lib
    from resnet_keras.data.preprocessing import view_family
    from resnet_keras.training import distribute

    info = data_lib.describe(data_config)
    if model_config.num_classes != info.num_classes:
        raise UsageError(
            f"Received: num_classes={model_config.num_classes}; dataset {data_config.dataset!r} "
            f"has {info.num_classes} classes."
        )
    if info.num_classes < 2:  # one class: every prediction is right and nothing is learned
        raise UsageError(
            f"dataset {data_config.dataset!r} has {info.num_classes} class ({', '.join(info.class_names)}); "
            "a classifier needs at least 2"
        )
    if train_config.family != model_config.family:
        raise UsageError(
            f"Received: train family={train_config.family!r} for a {model_config.family}-family model; "
            f"the paper's recipes differ by family: use TrainConfig(family={model_config.family!r})"
        )
    view = view_family(data_config, model_config.image_size)
    if train_config.flip == "alternating" and view != "cifar":
        raise UsageError(
            f"Received: flip='alternating' with the {view!r} view of {data_config.dataset!r} at "
            f"{model_config.image_size} pixels; alternating flips are for the 'cifar' view (pad-crop-flip): "
            "use --flip random"
        )
    if hint := distribute.onednn_hint():
        log(hint)
    strategy = distribute.make_strategy(train_config.strategy)
    out = run if distribute.is_chief(strategy) else run.worker_scratch(strategy.cluster_resolver.task_id)
    distribute.check_global_batch(train_config.batch_size, strategy)
    distribute.check_xla(train_config.xla, strategy)
    distribute.deterministic_kernels(data_config.deterministic)
    # Validation as training reads: per-replica batches, each worker its shard (`make_validation`).
    val_dataset = strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.make_dataset(
            data_config,
            "val",
            image_size=model_config.image_size,
            batch_size=train_config.batch_size,
            training=False,
            input_context=ctx,
            drop_remainder=False,
            eval_view=model_config.eval_view,
        ),
        options=distribute.input_options(strategy),
    )
    steps = train_config.steps_per_epoch or max(1, info.num_train // train_config.batch_size)
    return _Setup(model_config, data_config, train_config, info, strategy, run, out, steps, val_dataset)


@dataclasses.dataclass
class _Parts:
    model: Any
    optimizer: Any
    plan: Any  # finetune.FineTunePlan or None
    lr_factor: Any  # the schedule's multiplier (the paper's low-rate start)
    epoch: Any  # completed epochs, checkpointed
    checkpoint: Any
    manager: Any
    progress: Any = None  # float64 [6]: trainer.EpochProgress of a mid-epoch checkpoint, zeros at epoch ends
    average_model: Any = None  # the EMA of the weights (TrainConfig.ema_decay > 0)
    train_model: Any = None  # `model` at the training crop size (models.at_input_size), or `model`
    weight_average: Any = None  # hooks.WeightAverage of average_model, updated inside the step

    @property
    def eval_model(self):
        """What is validated and saved: the weight average when one is kept."""
        return self.model if self.average_model is None else self.average_model


def _build(setup: _Setup) -> _Parts:
    """The model, optimizer and checkpoint, built under the run's dtype policy and strategy."""
    import keras
    import tensorflow as tf

    from resnet_keras.pretrained import finetune
    from resnet_keras.training.hooks import WeightAverage
    from resnet_keras.training.loss_scale import with_loss_scaling
    from resnet_keras.zoo.models import at_input_size, build_model, dtype_policy

    train_config = setup.train_config
    keras.utils.set_random_seed(train_config.seed)
    low_lr_start = train_config.uses_low_lr_start(setup.model_config)
    with dtype_policy(PRECISIONS[train_config.mixed_precision]), setup.strategy.scope():
        model = build_model(setup.model_config)
        train_model = at_input_size(model, train_config.train_size(setup.model_config))
        plan = finetune.plan(model, train_config)  # trainable flags are set before the optimizer builds
        lr_factor = tf.Variable(
            LOW_LR_FACTOR if low_lr_start else 1.0, dtype=tf.float32, trainable=False, name="lr_factor"
        )
        optimizer = make_optimizer(
            train_config,
            make_schedule(train_config, setup.steps_per_epoch, lr_factor if low_lr_start else None),
            model.trainable_variables,
        )
        optimizer = with_loss_scaling(optimizer, train_config.mixed_precision)
        average_model = build_model(setup.model_config) if train_config.ema_decay else None
        optimizer.build(model.trainable_variables)  # slots exist before restore: immediate restoration
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
        progress = tf.Variable(tf.zeros([6], tf.float64), trainable=False, name="epoch_progress")
    extra = {"average_model": average_model} if average_model is not None else {}
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, epoch=epoch, lr_factor=lr_factor, epoch_progress=progress, **extra
    )
    manager = tf.train.CheckpointManager(checkpoint, str(setup.out.checkpoint_dir), max_to_keep=2)
    weight_average = None
    if average_model is not None:
        weight_average = WeightAverage(model, average_model, train_config.ema_decay, optimizer.iterations)
    return _Parts(
        model,
        optimizer,
        plan,
        lr_factor,
        epoch,
        checkpoint,
        manager,
        progress,
        average_model,
        train_model,
        weight_average,
    )


def _restore(parts: _Parts, path: str):
    """Restores the checkpoint at `path`; returns the trainer.EpochProgress of a mid-epoch one, else None.

    Checkpoints written before mid-epoch checkpoints existed have no progress: they are epoch ends.
    """
    import tensorflow as tf

    from resnet_keras.core import tf_compat
    from resnet_keras.training.trainer import EpochProgress

    # The reader of the prefix itself: load_checkpoint first asks isdir(path), which a store that
    # matches names by prefix (TensorFlow's ram://) answers True for ckpt-20 next to ckpt-20.index.
    if tf_compat.checkpoint_reader(path).has_tensor("epoch_progress/.ATTRIBUTES/VARIABLE_VALUE"):
        parts.checkpoint.restore(path).assert_existing_objects_matched()
    else:
        parts.progress.assign(tf.zeros([6], tf.float64))
        extra = {"average_model": parts.average_model} if parts.average_model is not None else {}
        checkpoint = tf.train.Checkpoint(
            model=parts.model, optimizer=parts.optimizer, epoch=parts.epoch, lr_factor=parts.lr_factor, **extra
        )
        checkpoint.restore(path).assert_existing_objects_matched()
    within = EpochProgress.from_array(parts.progress.numpy())
    return within if within.steps else None


def _train_input(setup: _Setup, start_epoch: int, start_step: int = 0):
    """The distributed training stream: one input pipeline per worker (`data.training_stream`);
    a resumed run starts where the steps done stopped reading."""
    from resnet_keras.data import pipeline as data_lib
    from resnet_keras.training import distribute

    threads, options = distribute.input_threads(), distribute.input_options(setup.strategy)

    def worker_stream(ctx):
        return data_lib.training_stream(
            setup.model_config,
            setup.data_config,
            setup.train_config,
            input_context=ctx,
            first_step=start_epoch * setup.steps_per_epoch + start_step,
            private_threads=threads,
        )

    return setup.strategy.distribute_datasets_from_function(worker_stream, options=options)


def _train_step(setup: _Setup, parts: _Parts):
    """The step, traced again when a fine-tuning phase changes the trainable variables."""
    train_config = setup.train_config
    return make_train_step(
        parts.train_model,
        parts.optimizer,
        setup.strategy,
        num_classes=setup.model_config.num_classes,
        global_batch=train_config.batch_size,
        label_smoothing=train_config.label_smoothing,
        loss_scaling=train_config.mixed_precision == "float16",
        xla=train_config.xla,
        transform_gradients=parts.plan.scale_gradients if parts.plan else None,
        loss=train_config.loss,
        clip_norm=train_config.clip_norm,
        after_update=parts.weight_average.replica_update if parts.weight_average else None,
    )


def _hooks(setup: _Setup, parts: _Parts, history: list[dict], log, checkpoint_every=None):
    """The run's hooks, in the order they run (see `resnet_keras.training.hooks`), and the summary hook."""
    from resnet_keras.training import distribute, hooks

    out = setup.out
    run_hooks = [hooks.StopOnNaN(lambda: parts.manager.latest_checkpoint)]
    if setup.train_config.uses_low_lr_start(setup.model_config):
        run_hooks.append(hooks.LowLrStart(parts.lr_factor, log))
    if parts.plan:
        run_hooks.append(hooks.FineTunePhases(parts.plan, log))
    if hooks.ProgressBar.wanted():
        run_hooks.append(hooks.ProgressBar())
    if parts.weight_average is not None:  # starts the average at the initial weights of a fresh run
        run_hooks.insert(0, parts.weight_average)
    facts = dict(
        model=setup.model_config.name,
        dataset=setup.data_config.dataset,
        replicas=setup.strategy.num_replicas_in_sync,
        steps_per_epoch=setup.steps_per_epoch,
        global_batch_size=setup.train_config.batch_size,
    )
    summary = hooks.RunSummary(out, history, facts, log)
    checkpoint = hooks.Checkpoint(parts.manager, parts.epoch, parts.progress, checkpoint_every)
    writers = [
        hooks.History(out, history),
        hooks.TensorBoard(out),
        hooks.BestWeights(out, max((row["val_accuracy"] for row in history), default=-1.0)),
        checkpoint,
    ]
    run_hooks += [hooks.DiskSpace(out, writers), *writers, hooks.EpochLog(log)]
    # A multi-worker save is a collective: the workers agree at each step whether any got SIGTERM.
    multi_worker = setup.train_config.strategy == "multi-worker"
    agree = distribute.any_worker(setup.strategy) if multi_worker else None
    run_hooks += [hooks.Preemption(checkpoint, log, agree), summary]
    return summary, run_hooks


# Steps per host sync on GPUs: Orbit's and Keras' (steps_per_execution) usual order of magnitude.
GPU_STEPS_PER_LOOP = 50


def _steps_per_loop(requested: int | None, setup: _Setup, checkpoint_interval) -> int:
    """The steps one call of the compiled step runs (see `train`), at most an epoch and at most
    the step interval of `--checkpoint-every`, so step checkpoints keep their positions."""
    import tensorflow as tf

    from resnet_keras.core.errors import expect, is_int

    if requested is not None:
        expect(is_int(requested) and requested >= 1, "steps_per_loop", requested, "an integer >= 1")
        steps = requested
    else:
        steps = GPU_STEPS_PER_LOOP if tf.config.list_logical_devices("GPU") else 1
    if checkpoint_interval is not None and checkpoint_interval.steps:
        steps = min(steps, checkpoint_interval.steps)
    return min(steps, setup.steps_per_epoch)


def model_weight_decay(train_config: TrainConfig) -> float:
    """The L2 built into the model: SGD's weight decay; 0 for AdamW and LAMB, whose decay is decoupled
    (applied by the optimizer to the weights, not through the gradient, Loshchilov & Hutter 2019)."""
    return train_config.weight_decay if train_config.optimizer == "sgd" else 0.0


def make_optimizer(train_config: TrainConfig, learning_rate, variables):
    """The run's Keras optimizer (not built): SGD with momentum, AdamW or LAMB.

    SGD's weight decay is the model's L2 (`model_weight_decay`), which covers conv and dense kernels
    only. AdamW and LAMB decay every variable of more than one dimension (kernels) by lr x
    weight_decay per step and exempt BN's gamma and beta and the biases, as timm and torchvision
    do. Keras' LAMB applies that decay outside its trust ratio. Adam-family settings are Keras'
    defaults (beta_1 0.9, beta_2 0.999, epsilon 1e-7).
    """
    import keras

    if train_config.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate=learning_rate, momentum=train_config.momentum, nesterov=train_config.nesterov
        )
    kind = {"adamw": keras.optimizers.AdamW, "lamb": keras.optimizers.Lamb}[train_config.optimizer]
    optimizer = kind(learning_rate=learning_rate, weight_decay=train_config.weight_decay)
    optimizer.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) <= 1])
    return optimizer
