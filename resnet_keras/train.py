"""Training: `train()` checks a run, builds the model, optimizer and data under the strategy, and
hands them to the `Trainer` with the run's hooks.

The recipes (He et al. 2015's "paper" schedule per family, and a "short" budget recipe) are
data in `resnet_keras.recipes`; the loop and the training step are `resnet_keras.trainer`;
each concern of a run (checkpoints, history, TensorBoard, best weights, fine-tuning phases,
the paper's low-rate start for ResNet-110, NaN stop) is a hook in `resnet_keras.hooks`; the
run directory's files are `resnet_keras.rundir.RunDir`. Rerunning the same call resumes after
the last completed epoch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from resnet_keras.config import LOW_LR_FACTOR, PRECISIONS, DataConfig, ModelConfig, TrainConfig
from resnet_keras.errors import UsageError
from resnet_keras.evaluate import evaluate  # noqa: F401  part of this module's API since the first release
from resnet_keras.recipes import make_schedule  # noqa: F401  part of this module's API since the first release
from resnet_keras.rundir import RunDir
from resnet_keras.trainer import Hook, make_train_step  # noqa: F401  make_train_step: benchmark and scripts use it

__all__ = ["TrainConfig", "evaluate", "load_run_config", "make_schedule", "make_train_step", "train"]


def load_run_config(model_dir: str | os.PathLike) -> dict:
    """A run's config.json (model, data and train sections)."""
    return RunDir(model_dir).read_configs()


def train(
    model_config: ModelConfig,
    data_config: DataConfig,
    train_config: TrainConfig,
    model_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    hooks: Sequence[Hook] = (),
) -> dict[str, Any]:
    """Trains `model_config` on `data_config` into `model_dir`; returns the metrics dict.

    `model_config.num_classes` must match the dataset (the CLI takes it from `describe`);
    `train_config.weight_decay` replaces `model_config.weight_decay`. Reruns with the same
    configs resume after the last completed epoch (`epochs` may grow); `overwrite` starts
    fresh. `hooks` run after the built-in ones at every call. Raises UsageError for a run
    directory of another config or a batch the replicas cannot split, TrainingFailure when the
    loss becomes NaN (the last good checkpoint stays).
    """
    import keras
    import tensorflow as tf

    from resnet_keras import data as data_lib
    from resnet_keras import distribute, finetune
    from resnet_keras import hooks as hooks_lib
    from resnet_keras.models import build_model, dtype_policy
    from resnet_keras.trainer import Trainer, make_validation

    model_config = dataclasses.replace(model_config, weight_decay=float(train_config.weight_decay))
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
    if hint := distribute.onednn_hint():
        log(hint)
    strategy = distribute.make_strategy(train_config.strategy)
    replicas = strategy.num_replicas_in_sync
    run = RunDir(model_dir)  # multi-worker: what every worker resumes from; only the chief writes it
    out = run if distribute.is_chief(strategy) else run.worker_scratch(strategy.cluster_resolver.task_id)
    distribute.check_global_batch(train_config.batch_size, strategy)
    if train_config.xla and replicas > 1 and not tf.config.list_logical_devices("GPU"):
        raise UsageError(
            "Received: xla=True with MirroredStrategy over logical CPUs; XLA cannot compile a step "
            "whose variables live on other devices. Use --no-xla or one device."
        )
    configs = {"model": model_config.to_dict(), "data": data_config.to_dict(), "train": train_config.to_dict()}
    # Pretrained weights are read and checked before the run directory is touched.
    init_weights = None
    if train_config.init_from and (overwrite or not run.latest_checkpoint()):
        init_weights = finetune.read_init_weights(train_config.init_from, model_config, log=log)
    resuming = out.check_resumable(configs, overwrite)
    out.start(configs, info.class_names)

    steps_per_epoch = train_config.steps_per_epoch or max(1, info.num_train // train_config.batch_size)
    global_batch = train_config.batch_size
    keras.utils.set_random_seed(train_config.seed)
    low_lr_start = train_config.uses_low_lr_start(model_config)
    with dtype_policy(PRECISIONS[train_config.mixed_precision]), strategy.scope():
        model = build_model(model_config)
        plan = finetune.plan(model, train_config)  # trainable flags are set before the optimizer builds
        lr_factor = tf.Variable(
            LOW_LR_FACTOR if low_lr_start else 1.0, dtype=tf.float32, trainable=False, name="lr_factor"
        )
        optimizer = keras.optimizers.SGD(
            learning_rate=make_schedule(train_config, steps_per_epoch, lr_factor if low_lr_start else None),
            momentum=train_config.momentum,
            nesterov=train_config.nesterov,
        )
        if train_config.mixed_precision == "float16":  # bfloat16 needs no loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)  # slots exist before restore: immediate restoration
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, lr_factor=lr_factor)
    manager = tf.train.CheckpointManager(checkpoint, str(out.checkpoint_dir), max_to_keep=2)
    history: list[dict] = []
    latest = distribute.peer_guard(distribute.agreed_checkpoint, strategy)(strategy, manager, run, resuming)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        # The history may hold an epoch written just before a crash that the checkpoint missed.
        history = [row for row in run.read_history() if row["epoch"] <= int(epoch_var.numpy())]
        log(f"Resuming {run.path} after epoch {int(epoch_var.numpy())}.")
    elif init_weights is not None:  # a fresh fine-tuning run starts from the source
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

    train_ds = strategy.distribute_datasets_from_function(train_input, options=distribute.input_options(strategy))
    val_ds = data_lib.make_dataset(
        data_config,
        "val",
        image_size=model_config.image_size,
        batch_size=global_batch,
        training=False,
        drop_remainder=False,
    )

    def make_step():  # traced again when a fine-tuning phase changes the trainable variables
        step = make_train_step(
            model,
            optimizer,
            strategy,
            num_classes=model_config.num_classes,
            global_batch=global_batch,
            label_smoothing=train_config.label_smoothing,
            loss_scaling=train_config.mixed_precision == "float16",
            xla=train_config.xla,
            transform_gradients=plan.scale_gradients if plan else None,
        )
        return distribute.peer_guard(step, strategy)

    run_hooks = [hooks_lib.StopOnNaN(lambda: manager.latest_checkpoint)]
    if low_lr_start:
        run_hooks.append(hooks_lib.LowLrStart(lr_factor, log))
    if plan:
        run_hooks.append(hooks_lib.FineTunePhases(plan, log))
    if hooks_lib.ProgressBar.wanted():
        run_hooks.append(hooks_lib.ProgressBar())
    summary = hooks_lib.RunSummary(
        out,
        history,
        dict(
            model=model_config.name,
            dataset=data_config.dataset,
            replicas=replicas,
            steps_per_epoch=steps_per_epoch,
            global_batch_size=global_batch,
        ),
        log,
    )
    run_hooks += [
        hooks_lib.History(out, history),
        hooks_lib.TensorBoard(out),
        hooks_lib.BestWeights(out, max((row["val_accuracy"] for row in history), default=-1.0)),
        hooks_lib.Checkpoint(manager, epoch_var),
        hooks_lib.EpochLog(log),
        summary,
        *hooks,
    ]
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        make_step=make_step,
        iterator=iter(train_ds),
        steps_per_epoch=steps_per_epoch,
        epochs=train_config.epochs,
        validate=make_validation(model, val_ds, model_config.num_classes),
        before_validation=distribute.replica_statistics_sync(strategy, model),
        hooks=run_hooks,
        log=log,
    )
    trainer.fit(start_epoch)
    return summary.metrics
