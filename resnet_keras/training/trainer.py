"""The training loop: epochs of distributed steps, validation, and hooks for everything else.

`Trainer.fit` is the whole loop. What a run does besides stepping (checkpoints, history,
TensorBoard, best weights, fine-tuning phases, the paper's low-rate start, stopping on NaN,
the progress bar) is a `Hook` (`resnet_keras.training.hooks`), called at the same points as Keras
callbacks: `on_train_begin`, `on_epoch_begin`, `on_train_batch_end`, `on_epoch_end`,
`on_train_end`. Adding a concern to a run is adding a hook, not editing this loop.

Why a custom loop instead of `model.fit`: Keras 3 `fit` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585), and one loop keeps one-device, mirrored
and multi-worker runs on the same code. Losses follow the `tf.distribute` rules:
`compute_average_loss` over the *global* batch plus `scale_regularization_loss` of the model's
L2 terms, so the all-reduced (summed) gradients equal the single-device ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np


class Hook:
    """One concern of a training run. Override the calls you need; `self.trainer` is set by `fit`.

    `on_train_batch_end` gets `values`: float64 [loss sum, correct, count] of the steps since the
    last call, summed over replicas, and `step`, the epoch's steps done. It runs once per
    `Trainer.steps_per_loop` steps (one by default on CPUs). `on_epoch_end` gets the epoch's
    `logs` (HISTORY_FIELDS of `resnet_keras.runs.rundir`), which hooks may read and extend. A hook that
    raises stops the run there.
    """

    trainer: Trainer

    def on_train_begin(self) -> None: ...

    def on_epoch_begin(self, epoch: int) -> None: ...

    def on_train_batch_end(self, epoch: int, step: int, values: np.ndarray) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_train_end(self) -> None: ...


@dataclasses.dataclass
class EpochProgress:
    """Where the loop is inside an epoch: steps done, their summed [loss, correct, count], the rate
    of the epoch's first step and the training seconds so far. A mid-epoch checkpoint saves it
    (`to_array`, float64 [6]: exact for step counts below 2**53) and a resume continues from it."""

    steps: int = 0
    totals: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    lr: float = 0.0
    seconds: float = 0.0

    def add(self, values: np.ndarray, seconds: float, steps: int = 1) -> None:
        self.steps += steps
        self.totals = self.totals + values
        self.seconds = seconds

    def to_array(self) -> np.ndarray:
        return np.array([self.steps, *self.totals, self.lr, self.seconds], np.float64)

    @classmethod
    def from_array(cls, values) -> EpochProgress:
        values = np.asarray(values, np.float64)
        return cls(int(values[0]), values[1:4].copy(), float(values[4]), float(values[5]))


class Trainer:
    """Runs epochs `start_epoch + 1 .. epochs` of `steps_per_epoch` steps.

    make_step() -> step(iterator, steps, stop) -> float64 [loss sum, correct, count, stop votes]
    (see `make_train_step`); it is called again by `rebuild_step()` when the trainable variables
    change. One call runs `steps_per_loop` steps (fewer at an epoch's end) and the hooks run after
    it: the host waits for the devices once per call. validate() -> (val_loss, val_accuracy) over
    the whole validation split. before_validation() runs after each epoch's steps (the replicas'
    BatchNorm statistics are averaged there). eval_model (default: model) is what `BestWeights`
    and `RunSummary` save: the EMA model when one is kept.

    `stop_requested` (set by a hook, e.g. on SIGTERM) is passed to the next step call;
    `stop_votes` is what the last call returned: how many replica-steps came from a worker whose
    `stop_requested` was set, the same number on every worker.
    """

    def __init__(
        self,
        *,
        model,
        optimizer,
        make_step: Callable[[], Callable],
        iterator,
        steps_per_epoch: int,
        epochs: int,
        validate: Callable[[], tuple[float, float]],
        before_validation: Callable[[], None] = lambda: None,
        hooks: Sequence[Hook] = (),
        log: Callable[[str], None] = print,
        eval_model=None,
        steps_per_loop: int = 1,
    ):
        self.model, self.optimizer, self.log = model, optimizer, log
        # The model that is validated and saved (best, final): the trained one, or its weight average.
        self.eval_model = model if eval_model is None else eval_model
        self.iterator, self.steps_per_epoch, self.epochs = iterator, steps_per_epoch, epochs
        self.steps_per_loop = max(1, int(steps_per_loop))
        self._make_step, self._validate, self._before_validation = make_step, validate, before_validation
        self.hooks = list(hooks)
        self.train_step = make_step()
        self.start_epoch = 0
        self.epochs_run = 0
        self.images_seen = 0
        self.train_seconds = 0.0
        self.progress = EpochProgress()  # of the epoch running, for hooks that checkpoint mid-epoch
        self.stop_requested = False
        self.stop_votes = 0.0

    def rebuild_step(self) -> None:
        """Traces the step again (after a hook changed which variables train)."""
        self.train_step = self._make_step()

    def _call(self, name: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, name)(*args)

    def fit(self, start_epoch: int = 0, within: EpochProgress | None = None) -> None:
        """Epochs `start_epoch + 1 ..`; `within` (from a mid-epoch checkpoint) continues the first
        of them after its steps done, with their totals, so its history row is the uninterrupted one's."""
        self.start_epoch = start_epoch
        self.progress = within or EpochProgress()
        for hook in self.hooks:
            hook.trainer = self
        self._call("on_train_begin")
        for epoch in range(start_epoch + 1, self.epochs + 1):
            self._call("on_epoch_begin", epoch)
            if within is None or epoch != start_epoch + 1:  # the rate of the epoch's first step
                within = EpochProgress(lr=float(self.optimizer.learning_rate))
            self.progress = progress = within
            started, before = time.perf_counter(), progress.seconds
            while progress.steps < self.steps_per_epoch:
                steps = min(self.steps_per_loop, self.steps_per_epoch - progress.steps)
                values = self.train_step(self.iterator, steps, self.stop_requested)
                self.stop_votes = float(values[3])
                progress.add(values[:3], before + time.perf_counter() - started, steps)
                self.images_seen += int(values[2])
                self._call("on_train_batch_end", epoch, progress.steps, values[:3])
            totals, lr = progress.totals, progress.lr
            seconds = progress.seconds
            self.train_seconds += seconds - before
            self.epochs_run += 1
            self._before_validation()
            val_loss, val_accuracy = self._validate()
            logs = dict(
                epoch=epoch,
                loss=float(totals[0] / totals[2]),
                accuracy=float(totals[1] / totals[2]),
                val_loss=float(val_loss),
                val_accuracy=float(val_accuracy),
                lr=lr,
                seconds=round(seconds, 3),
                finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            )
            self._call("on_epoch_end", epoch, logs)
        self._call("on_train_end")


# ----------------------------------------------------------------------------- the step


def per_example_loss(tf, labels, logits, num_classes: int, label_smoothing: float, loss: str = "softmax"):
    """Cross-entropy per example from float32 logits, with optional label smoothing.

    `labels` are int class indices [b] or, after mixup/cutmix, float32 class weights [b, C]
    that sum to 1. loss="softmax": softmax cross-entropy. loss="bce": an independent sigmoid per
    class and binary cross-entropy averaged over the classes, as timm's BinaryCrossEntropy that
    "ResNet strikes back" trains with.
    """
    if labels.shape.rank == 2:
        targets = tf.cast(labels, tf.float32)
    else:
        targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    if loss == "bce":
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=-1)
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def hard_labels(tf, labels):
    """Class indices int32 [b] from int labels or mixed class weights [b, C] (the larger share)."""
    return tf.argmax(labels, -1, output_type=tf.int32) if labels.shape.rank == 2 else labels


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
    loss: str = "softmax",
    clip_norm: float = 0.0,
    after_update: Callable[[], None] | None = None,
):
    """The training step: `train_step(iterator, steps=1, stop=False)` -> float64 [4].

    One call runs `steps` steps in a `tf.while_loop` (Orbit's `steps_per_loop`, Keras'
    `steps_per_execution`): each reads the next (distributed) batch, runs the replica step under
    `strategy.run` and all-reduces one float32 vector per step, [loss sum, correct, count, stop],
    summed over the loop's steps and replicas. The host reads that one vector once per call:
    no sync per step, and no collective besides the gradients' and this one. `stop` is whether this
    worker was asked to stop (SIGTERM); [3] > 0 tells every worker that some worker was, at
    the same step, without a collective of its own. Shared with `resnet_keras.bench.benchmark`, so
    the benchmark times exactly the step that training runs.

    `transform_gradients(grads, variables)` (fine-tuning: a lower rate for the backbone) runs
    before the update. `loss` is "softmax" or "bce" (`per_example_loss`); labels may be mixed
    class weights [b, C]. `clip_norm` > 0 clips the gradient to that global norm (Pascanu et al.
    2013) before the update. `after_update()` runs in the replica context after the optimizer's
    update (the weight average: each replica averages its own copies, with no copy between
    devices). With `loss_scaling`, `optimizer` is a `loss_scale.AgreedLossScaleOptimizer`.
    """
    import tensorflow as tf

    loss_kind = loss

    def step_fn(images, labels, stop):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            per_example = per_example_loss(tf, labels, logits, num_classes, label_smoothing, loss_kind)
            total = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                total += tf.nn.scale_regularization_loss(tf.add_n([tf.cast(ly, tf.float32) for ly in model.losses]))
            scaled = optimizer.scale_loss(total) if loss_scaling else total
        grads = tape.gradient(scaled, model.trainable_variables)
        if transform_gradients is not None:
            grads = transform_gradients(grads, model.trainable_variables)
        if clip_norm:
            grads = clip_global_norm(tf, grads, clip_norm * (optimizer.dynamic_scale if loss_scaling else 1.0))
        optimizer.apply(grads, model.trainable_variables)  # sums gradients over replicas; unscales
        if after_update is not None:
            after_update()
        predicted = tf.argmax(logits, -1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, hard_labels(tf, labels)), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.stack([tf.reduce_sum(per_example), correct, count, stop])

    # No tensor-dependent Python control flow in the steps: AutoGraph is not needed (and it
    # trips over the closure of these nested functions). XLA compiles the replica step only:
    # reading the input iterator (IteratorGetNext) has no XLA kernel.
    replica_step = tf.function(step_fn, jit_compile=True, autograph=False) if xla else step_fn

    @tf.function(autograph=False)  # its name is what the benchmark's profile looks for
    def train_step(iterator, steps, stop):
        def body(i, totals):
            images, labels = next(iterator)
            values = strategy.run(replica_step, args=(images, labels, stop))
            return i + 1, totals + strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)

        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tf.zeros([4])))[1]

    def run_steps(iterator, steps: int = 1, stop: bool = False):
        flag = tf.constant(1.0 if stop else 0.0)
        return train_step(iterator, tf.constant(steps, tf.int32), flag).numpy().astype(np.float64)

    return run_steps


def clip_global_norm(tf, grads, clip_norm):
    """Gradients scaled down to global norm `clip_norm` when larger, over every replica's share.

    Each replica holds a part of the gradient (the optimizer sums them), so the norm is taken of
    their sum; each replica then passes on its clipped share (sum / replicas). One replica: plain
    `tf.clip_by_global_norm`. A non-finite gradient stays non-finite (loss scaling skips the step).
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    if replicas > 1:
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    clipped, _ = tf.clip_by_global_norm(grads, clip_norm)
    return [g / replicas for g in clipped] if replicas > 1 else clipped


def make_validation(model, strategy, dataset, num_classes: int) -> Callable[[], tuple[float, float]]:
    """validate() -> (mean loss, top-1 accuracy) over every example of `dataset` (a whole pass).

    `dataset` is distributed (`strategy.distribute_datasets_from_function`, per-replica batches,
    sharded over workers): every replica validates its share and one [loss, correct, count]
    all-reduce per batch sums them, so no device holds the global batch and no worker reads the
    whole split. The last partial batch is kept and the counts are exact on any number of
    replicas and workers (tf.distribute hands empty batches to the replicas it cannot fill).
    """
    import tensorflow as tf

    def sums(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        per_example = per_example_loss(tf, labels, logits, num_classes, 0.0)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        return tf.stack([tf.reduce_sum(per_example), correct, tf.cast(tf.shape(labels)[0], tf.float32)])

    def replica_fn(images, labels):
        # A replica left an empty batch at the split's end skips the network: the CPU kernels
        # mishandle a batch of zero images (measured: a shape error in the first BatchNorm).
        return tf.cond(tf.shape(labels)[0] > 0, lambda: sums(images, labels), lambda: tf.zeros([3]))

    @tf.function(autograph=False)
    def val_step(images, labels):
        values = strategy.run(replica_fn, args=(images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)

    def validate():
        totals = tf.zeros([3])
        for images, labels in dataset:
            totals += val_step(images, labels)  # stays on the device: one read at the end
        loss, correct, count = totals.numpy().astype(np.float64)
        return float(loss / max(count, 1)), float(correct / max(count, 1))

    return validate
