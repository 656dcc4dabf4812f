"""The concerns of a training run, one `Hook` each (`resnet_keras.training.trainer`).

`train.train` assembles them in this order, which is the order they run at each call:
StopOnNaN, LowLrStart, FineTunePhases, ProgressBar, DiskSpace, History, TensorBoard, BestWeights,
Checkpoint, EpochLog, Preemption, RunSummary. History is written before the checkpoint: a crash between
the two leaves a history row the checkpoint lacks, and a resume drops it. DiskSpace checks first
that the epoch's files fit, so a full disk stops the run before any of them is written.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from collections.abc import Callable

import numpy as np

from resnet_keras.config.schema import LOW_LR_UNTIL_ERROR
from resnet_keras.core.errors import Preempted, TrainingFailure, UsageError
from resnet_keras.core.files import ensure_space, saved_size, space_for, variables_size
from resnet_keras.runs.rundir import RunDir
from resnet_keras.training.trainer import Hook


class StopOnNaN(Hook):
    """Stops with TrainingFailure at the first step whose loss is not finite; the last good
    checkpoint (named in the message) stays, so the run can be resumed with another setting."""

    def __init__(self, latest_checkpoint: Callable[[], str | None]):
        self.latest_checkpoint = latest_checkpoint

    def on_train_batch_end(self, epoch, step, values):
        if not np.isfinite(values[0]):
            last = self.latest_checkpoint() or "none (no epoch completed)"
            first = step - self.trainer.steps_per_loop + 1
            where = f"step {step}" if first >= step or first < 1 else f"steps {first}-{step}"
            raise TrainingFailure(f"loss became NaN at epoch {epoch} {where}; last good checkpoint: {last}")


class LowLrStart(Hook):
    """He et al. 2015, sec. 4.2: ResNet-110 first trains at a tenth of the rate until the training
    error (over the last 10 steps, all replicas) is below 80 %, then at the full schedule.

    `factor` is the schedule's multiplier variable; it is checkpointed, so the switch survives a resume.
    """

    def __init__(self, factor, log: Callable[[str], None], window: int = 10):
        self.factor, self.log = factor, log
        self.recent = collections.deque(maxlen=window)

    def on_train_begin(self):
        self.warming_up = float(self.factor.numpy()) < 1.0

    def on_train_batch_end(self, epoch, step, values):
        if not self.warming_up:
            return
        self.recent.append(values[1:])
        correct, count = np.sum(self.recent, axis=0)
        if len(self.recent) == self.recent.maxlen and 1 - correct / count < LOW_LR_UNTIL_ERROR:
            self.factor.assign(1.0)
            self.warming_up = False
            self.log(
                f"low-rate start done at epoch {epoch} step {step}: training error {1 - correct / count:.3f} "
                f"< {LOW_LR_UNTIL_ERROR}; learning rate back to the full schedule"
            )


class FineTunePhases(Hook):
    """Head-only epochs, then the freeze and BatchNorm policies (`finetune.FineTunePlan`); a change
    of trainable variables retraces the step. A resumed run enters the phase of its next epoch."""

    def __init__(self, plan, log: Callable[[str], None]):
        self.plan, self.log = plan, log

    def on_epoch_begin(self, epoch):
        if self.plan.set_phase(self.plan.phase_for(epoch)):
            self.log(self.plan.describe())
            self.trainer.rebuild_step()


class ProgressBar(Hook):
    """Keras' progress bar with the running loss and accuracy, on an interactive terminal only."""

    def on_epoch_begin(self, epoch):
        import keras

        self.bar = keras.utils.Progbar(self.trainer.steps_per_epoch, stateful_metrics=["loss", "accuracy"])
        self.totals = np.zeros(3)
        print(f"Epoch {epoch}/{self.trainer.epochs}")

    def on_train_batch_end(self, epoch, step, values):
        self.totals += values
        loss, correct, count = self.totals
        self.bar.update(step, [("loss", loss / count), ("accuracy", correct / count)])

    @staticmethod
    def wanted() -> bool:
        return sys.stdout.isatty()


class DiskSpace(Hook):
    """Before an epoch's files are written, DiskFull unless the run's file system has room for all
    of them (each of `writers` says what it will write, `bytes_needed(logs)`): a full disk then
    stops the run with none of the epoch written, so history, best weights and checkpoint stay
    those of the epoch before and agree with each other, and the same command resumes there."""

    def __init__(self, run: RunDir, writers: list[Hook]):
        self.run, self.writers = run, writers

    def on_epoch_end(self, epoch, logs):
        ensure_space(self.run.path, sum(writer.bytes_needed(logs) for writer in self.writers))


class History(Hook):
    """history.csv: one row per epoch, rewritten whole (atomically) after each epoch."""

    def __init__(self, run: RunDir, rows: list[dict]):
        self.run, self.rows = run, rows

    def bytes_needed(self, logs) -> int:
        return 256 * (len(self.rows) + 2)  # the new file beside the old one: rows are ~120 bytes

    def on_epoch_end(self, epoch, logs):
        self.run.write_history([*self.rows, dict(logs)])
        self.rows.append(dict(logs))  # only once written: a full disk leaves the rows as the file has them


class TensorBoard(Hook):
    """Scalars per epoch (loss, accuracy, val_loss, val_accuracy, lr) under the run's logs/."""

    KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")

    def __init__(self, run: RunDir):
        import tensorflow as tf

        self.tf, self.logs = tf, run.file(RunDir.LOGS)
        self.writer = tf.summary.create_file_writer(str(self.logs))

    def bytes_needed(self, logs) -> int:
        return 4096

    def on_epoch_end(self, epoch, logs):
        with space_for(self.logs), self.writer.as_default(step=epoch):  # the event file is appended to
            for key in self.KEYS:
                self.tf.summary.scalar(key, logs[key])
            self.writer.flush()


class BestWeights(Hook):
    """best.weights.h5: the weights of the epoch with the highest validation accuracy so far."""

    def __init__(self, run: RunDir, best: float):
        self.run, self.best = run, best

    def bytes_needed(self, logs) -> int:
        return saved_size(self.trainer.eval_model) if logs["val_accuracy"] > self.best else 0

    def on_epoch_end(self, epoch, logs):
        if logs["val_accuracy"] > self.best:
            self.best = logs["val_accuracy"]
            self.run.save_best_weights(self.trainer.eval_model)


class Checkpoint(Hook):
    """Checkpoints (model, optimizer, completed epochs, progress in the epoch) named by global
    step, `ckpt-<epochs done x steps per epoch + steps done>`: at each epoch end and, with
    `every`, within epochs; the manager keeps the last two.

    `progress_variable` holds `trainer.progress.to_array()` (zeros at an epoch end), so a resume
    from a mid-epoch checkpoint continues the epoch where it stopped (`Trainer.fit(within=...)`).
    """

    def __init__(self, manager, epoch_variable, progress_variable=None, every: CheckpointInterval | None = None):
        self.manager, self.epoch_variable, self.progress_variable = manager, epoch_variable, progress_variable
        self.every = every

    def on_train_begin(self):
        self.saved_at = (self.trainer.start_epoch, self.trainer.progress.steps)
        self.last_time = time.monotonic()

    def on_train_batch_end(self, epoch, step, values):
        # The last step's position is saved by the epoch end, a validation later.
        if self.every is None or step == self.trainer.steps_per_epoch:
            return
        since = self.global_step(epoch - 1, step) - self.global_step(*self.saved_at)
        if self.every.due(since, time.monotonic() - self.last_time):
            self.save(epoch - 1, step)

    def on_epoch_end(self, epoch, logs):
        self.save(epoch, 0)

    def global_step(self, epochs_done: int, step: int) -> int:
        return epochs_done * self.trainer.steps_per_epoch + step

    def save(self, epochs_done: int, step: int) -> str:
        """Saves the position "`step` steps into the epoch after `epochs_done`" (once per position).

        Step `steps_per_epoch` (a preemption at the epoch's last step) shares its number with the
        epoch end, which overwrites it once validation has run.
        """
        if self.saved_at == (epochs_done, step) and self.manager.latest_checkpoint:
            return self.manager.latest_checkpoint
        self.epoch_variable.assign(epochs_done)
        if self.progress_variable is not None:
            self.progress_variable.assign(self.trainer.progress.to_array() if step else np.zeros(6))
        number = self.global_step(epochs_done, step)
        # The manager deletes the oldest checkpoint only after the new one is whole: on a full disk
        # the previous checkpoints stay, and what the failed save wrote is removed.
        with space_for(self.manager.directory, self.bytes_needed()):
            try:
                path = self.manager.save(checkpoint_number=number)
            except BaseException:
                self._remove_unfinished(number)
                raise
        self.saved_at, self.last_time = (epochs_done, step), time.monotonic()
        return path

    def bytes_needed(self, logs=None) -> int:
        """About the bytes of the next checkpoint: the last one's files, else its variables' bytes."""
        import tensorflow as tf

        if self.manager.latest_checkpoint:
            names = tf.io.gfile.glob(self.manager.latest_checkpoint + ".*")
            if names:
                return sum(tf.io.gfile.stat(name).length for name in names) + 16384
        trainer = self.trainer
        variables = {id(v): v for v in [*trainer.model.weights, *trainer.optimizer.variables]}
        variables.update({id(v): v for v in trainer.eval_model.weights})  # the weight average, when kept
        return variables_size(variables.values())

    def _remove_unfinished(self, number: int) -> None:
        """Deletes the files of a failed save of `ckpt-<number>` (unless the manager lists it)."""
        import tensorflow as tf

        prefix = f"{self.manager.directory}/ckpt-{number}"
        leftovers = tf.io.gfile.glob(prefix + "_temp") + tf.io.gfile.glob(f"{self.manager.directory}/checkpoint.tmp*")
        if prefix not in {str(p) for p in self.manager.checkpoints}:
            leftovers += tf.io.gfile.glob(prefix + ".*")
        for name in leftovers:
            try:
                tf.io.gfile.rmtree(name) if tf.io.gfile.isdir(name) else tf.io.gfile.remove(name)
            except Exception:  # noqa: BLE001 - cleanup is best effort; the save's own error is the answer
                pass


@dataclasses.dataclass(frozen=True)
class CheckpointInterval:
    """`--checkpoint-every`: a number of steps ("500") or of seconds, minutes or hours ("90s",
    "10m", "1h"); a time interval is checked at step ends."""

    steps: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text) -> CheckpointInterval | None:
        if text is None or isinstance(text, CheckpointInterval):
            return text
        value = str(text).strip().lower()
        units = {"s": 1, "m": 60, "h": 3600}
        try:
            if value[-1:] in units:
                seconds = float(value[:-1]) * units[value[-1]]
                if 0 < seconds < float("inf"):
                    return cls(seconds=seconds)
            elif int(value) >= 1:
                return cls(steps=int(value))
        except ValueError:
            pass
        raise UsageError(
            f"Received: checkpoint_every={text!r}; expected a number of steps >= 1 (e.g. 500) "
            "or a time such as 90s, 10m or 1h"
        )

    def due(self, steps_since: int, seconds_since: float) -> bool:
        return steps_since >= self.steps if self.steps is not None else seconds_since >= self.seconds


class Preemption(Hook):
    """On SIGTERM (what Kubernetes, Vertex AI and spot VMs send before killing a machine), saves a
    checkpoint at the next step boundary and stops with `Preempted` (exit code 143, what a
    process killed by SIGTERM reports); rerunning the same command resumes at that step.

    A SIGTERM during validation stops after that epoch's checkpoint; one during the last epoch's
    validation lets the run finish. The handler is installed from the main thread only (Python
    delivers signals there) and the previous one is put back by `restore`.

    Multi-worker (`agree` given: `distribute.any_worker`): a save is a collective that every
    worker must join, so every worker must stop at the same step even when the signal reached
    only some. Within an epoch they learn it from the training step itself: the signal sets
    `trainer.stop_requested`, which the next step all-reduces with its loss (`stop_votes`), so
    every worker stops after that step with no collective of its own. At an epoch's end `agree`
    (one small all-reduce per epoch) covers a signal that arrived during validation.
    """

    def __init__(self, checkpoint: Checkpoint, log: Callable[[str], None], agree: Callable[[bool], bool] | None = None):
        self.checkpoint, self.log, self.agree = checkpoint, log, agree
        self.received: int | None = None
        self.previous = None

    def on_train_begin(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = signum
        self.trainer.stop_requested = True

    def on_train_batch_end(self, epoch, step, values):
        # One process stops at once; workers stop on the step's votes, which all of them share.
        alone = self.received is not None and self.agree is None
        if alone or self.trainer.stop_votes > 0:
            self._stop(epoch - 1, step, f"epoch {epoch} step {step}")

    def on_epoch_end(self, epoch, logs):
        here = self.received is not None
        stopping = self.agree(here) if self.agree is not None else here
        if stopping and epoch < self.trainer.epochs:
            self._stop(epoch, 0, f"the end of epoch {epoch}")

    def on_train_end(self):
        self.restore()

    def restore(self) -> None:
        if self.previous is not None:
            import signal

            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None

    def _stop(self, epochs_done: int, step: int, where: str):
        path = self.checkpoint.save(epochs_done, step)
        self.restore()
        whose = "" if self.received is not None else " (sent to another worker)"
        raise Preempted(
            f"stopped by SIGTERM{whose} at {where}; saved {path}; run the same command again to resume there"
        )


class EpochLog(Hook):
    """One line per epoch through `log`."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def on_epoch_end(self, epoch, logs):
        self.log(
            f"epoch {epoch}/{self.trainer.epochs}: loss {logs['loss']:.4f} accuracy {logs['accuracy']:.4f} "
            f"val_loss {logs['val_loss']:.4f} val_accuracy {logs['val_accuracy']:.4f} lr {logs['lr']:.4g} "
            f"({logs['seconds']:.1f} s)"
        )


class RunSummary(Hook):
    """At the end: model.keras, curves.png and metrics.json (the returned summary).

    A rerun of a finished run trains nothing; it keeps the metrics.json of the runs that trained
    (their timings) instead of overwriting it with empty ones.
    """

    def __init__(self, run: RunDir, history: list[dict], describe: dict, log: Callable[[str], None]):
        self.run, self.history, self.describe, self.log = run, history, describe, log
        self.metrics: dict = {}

    def on_train_begin(self):
        self.wall_start = time.perf_counter()

    def on_train_end(self):
        trainer = self.trainer
        if trainer.epochs_run == 0 and self.run.file(RunDir.METRICS).exists():
            self.log(f"{self.run.path} already trained for {trainer.start_epoch} epochs.")
            self.metrics = self.run.read_json(RunDir.METRICS)
            return
        self.run.save_final_model(trainer.eval_model)
        history = self.history
        if history:
            from resnet_keras.core import plots

            self.run.write_png(RunDir.CURVES, plots.training_curves(history))
        final = history[-1] if history else {}
        best = max(history, key=lambda row: row["val_accuracy"]) if history else {}
        seconds = trainer.train_seconds
        self.metrics = dict(
            **self.describe,
            epochs=len(history),
            final_loss=final.get("loss"),
            final_accuracy=final.get("accuracy"),
            final_val_loss=final.get("val_loss"),
            final_val_accuracy=final.get("val_accuracy"),
            best_val_accuracy=best.get("val_accuracy"),
            best_epoch=best.get("epoch"),
            wall_seconds=round(time.perf_counter() - self.wall_start, 3),
            trained_epochs_this_run=trainer.epochs_run,
            images_per_second=round(trainer.images_seen / seconds, 2) if seconds else None,
            total_train_seconds=round(sum(row["seconds"] for row in history), 3),
        )
        self.run.write_json(RunDir.METRICS, self.metrics)
        if trainer.epochs_run == 0:
            self.log(f"{self.run.path} already trained for {trainer.start_epoch} epochs.")
        self.log(
            f"Done: {self.metrics['epochs']} epochs, val accuracy {self.metrics['final_val_accuracy']:.4f} "
            f"(best {self.metrics['best_val_accuracy']:.4f} at epoch {self.metrics['best_epoch']}), "
            f"{self.metrics['wall_seconds']:.1f} s, {self.metrics['images_per_second']} images/s; "
            f"saved {self.run.file(RunDir.FINAL_MODEL)}"
        )


class WeightAverage(Hook):
    """An exponential moving average of the weights (Polyak & Juditsky 1992), updated after every step:
    average = d * average + (1 - d) * weights, over every float weight (BN statistics too), with
    d = min(decay, (1 + t) / (10 + t)) after optimizer step t (`step_counter`): the warm-up of
    TensorFlow's `ExponentialMovingAverage(num_updates=...)` and timm's ModelEmaV3, so the
    average of a short run is not dominated by the random initial weights.

    `average_model` is a second build of the same network that holds the average; the trainer
    validates and saves it (`Trainer.eval_model`), so `best.weights.h5`, `model.keras` and exports
    are the averaged network. It is part of the checkpoint, so a resumed run continues the same
    average. A run that starts fresh (epoch 0) starts the average at the initial weights.

    `replica_update` is the step's `after_update` (`trainer.make_train_step`): it runs in the
    replica context, where each replica averages its own copy of each weight (the variables'
    aggregation is NONE), so nothing is copied between devices and each replica's BatchNorm
    statistics are averaged from its own; `distribute.replica_statistics_sync` then averages
    those over replicas with the trained model's.
    """

    def __init__(self, model, average_model, decay: float, step_counter=None):
        import tensorflow as tf

        if len(average_model.weights) != len(model.weights):
            raise ValueError("average_model must be another build of the model's network")
        # Float weights only: a DropPath's random-stream state is an integer and is not averaged.
        pairs = [(a, w) for a, w in zip(average_model.weights, model.weights) if "float" in str(a.dtype)]
        self.decay = float(decay)

        def replica_update():
            decay = tf.constant(self.decay, tf.float32)
            if step_counter is not None:
                t = tf.cast(step_counter, tf.float32)
                decay = tf.minimum(decay, (1.0 + t) / (10.0 + t))
            for average, weight in pairs:
                d = tf.cast(decay, average.dtype)
                average.assign(d * average + (1.0 - d) * tf.cast(weight, average.dtype))

        @tf.function(autograph=False)
        def copy():
            for average, weight in pairs:
                average.assign(tf.cast(weight, average.dtype))

        self.replica_update, self.copy = replica_update, copy

    def on_train_begin(self):
        if self.trainer.start_epoch == 0:
            self.copy()
