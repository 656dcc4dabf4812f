"""Choosing and configuring the `tf.distribute` strategy that training runs under.

The caller owns the strategy: model code never touches `tf.distribute`, so one model builder serves every strategy.
One custom training loop serves every strategy here, because Keras 3 `model.fit` fails
under MultiWorkerMirroredStrategy upstream (keras-team/keras#20585); see `train.py`.

* ``"auto"``: MirroredStrategy over the local GPUs when there are two or more, else
  OneDeviceStrategy on ``GPU:0`` or ``CPU:0``.
* ``"one-device"``: OneDeviceStrategy on ``GPU:0`` when present, else ``CPU:0``.
* ``"mirrored"``: MirroredStrategy over the local GPUs, or over every logical CPU on a
  CPU-only machine (see `split_cpu`).
* ``"multi-worker"``: MultiWorkerMirroredStrategy (collective all-reduce) over the cluster that
  ``TF_CONFIG`` describes, as Kubeflow's TFJob and Vertex AI set it (see `worker_info`).

Input: one tf.data pipeline per worker (`input_options`, `input_threads`); inside it replica ``r``
of ``R`` reads shard ``r`` of the examples (`data.training_stream`), so R replicas in one process
compute what R one-replica workers do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from collections.abc import Callable

import tensorflow as tf

from resnet_keras.config.schema import STRATEGIES
from resnet_keras.core import tf_compat
from resnet_keras.core.errors import ConfigError, TrainingFailure, UsageError

# Seconds a worker waits for its peers (cluster start-up, each collective, heartbeats) before it
# fails instead of hanging; `RESNET_KERAS_WORKER_TIMEOUT` overrides it. Generous by default,
# because the first collective also waits for the slowest worker to build its input pipeline.
WORKER_TIMEOUT_ENV = "RESNET_KERAS_WORKER_TIMEOUT"
DEFAULT_WORKER_TIMEOUT = 600.0
# MultiWorkerMirroredStrategy configures collectives once per process: one instance per process.
_MULTI_WORKER: list = []


def onednn_hint() -> str | None:
    """One line for the log when oneDNN is off by accident (TensorFlow imported before us), else None."""
    # `import resnet_keras` set "1"; anything else is the user's own choice and needs no note.
    if tf_compat.onednn_enabled() is not False or os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "1":
        return None
    if tf.config.list_physical_devices("GPU"):
        return None
    return (
        "note: TensorFlow's oneDNN CPU kernels are off (TensorFlow was imported before resnet_keras); "
        "CPU training is 2-3x faster with TF_ENABLE_ONEDNN_OPTS=1 set before TensorFlow loads"
    )


def split_cpu(n: int) -> list[str]:
    """Splits the physical CPU into `n` logical CPU devices; returns their names.

    Must run before TensorFlow initialises its devices (before any op or strategy), so
    tests do it in a fresh subprocess. Raises UsageError when TensorFlow is already
    initialised with a different split.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"Received: n={n!r}; expected an integer >= 1.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as error:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise UsageError(
                f"cannot split the CPU into {n} logical devices: TensorFlow is already "
                f"initialised with {have} ({error}); call split_cpu first"
            ) from error
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def make_strategy(name: str = "auto", *, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """Builds the named strategy (see the module docstring); `devices` overrides the device list
    for "mirrored" (e.g. ``["/cpu:0", "/cpu:1"]``) or picks the device for "one-device"."""
    if name not in STRATEGIES:
        raise ConfigError(f"Received: strategy={name!r}; expected one of {', '.join(STRATEGIES)}.")
    if name == "multi-worker":
        return _multi_worker_strategy()
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    if name == "one-device" or (name == "auto" and len(gpus) < 2):
        device = (devices or [gpus[0] if gpus else cpus[0]])[0]
        return tf.distribute.OneDeviceStrategy(device)
    if devices is None:
        devices = gpus or cpus
    if len(devices) > 1 and not gpus:
        # The default NCCL all-reduce needs GPUs; logical CPUs reduce on the host.
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.MirroredStrategy(devices)


def check_global_batch(batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Returns the per-replica batch; UsageError unless the global batch splits evenly."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UsageError(
            f"Received: batch_size={batch_size}; the global batch must be divisible by the "
            f"{replicas} replicas of the strategy (e.g. {replicas * max(1, batch_size // replicas)})."
        )
    return batch_size // replicas


def check_xla(xla: bool, strategy: tf.distribute.Strategy) -> None:
    """UsageError for `--xla` with more than one replica; one device (a GPU or the CPU) compiles.

    Under MirroredStrategy a jit-compiled replica step holds the gradient all-reduce: over logical
    CPUs it cannot compile (the variables live on other devices), on GPUs TensorFlow takes its
    merge-call-free path, which upstream reports crash; across workers XLA cannot all-reduce at
    all. Keras' own `jit_compile="auto"` turns XLA off under every tf.distribute strategy for
    the same reasons, so we refuse it instead of letting a many-GPU job fail or hang later.
    """
    replicas = strategy.num_replicas_in_sync
    if xla and replicas > 1:
        raise UsageError(
            f"Received: xla=True with {replicas} replicas ({type(strategy).__name__}); XLA compiles the step of "
            "one device only (TensorFlow cannot compile the all-reduce of several GPUs or workers): use --no-xla, "
            "or one device (--strategy one-device)"
        )


def deterministic_kernels(deterministic: bool) -> bool:
    """Turns on TensorFlow's op determinism for a `--deterministic` run on GPUs; returns whether it did.

    A deterministic data order is not enough on a GPU: cuDNN's algorithm choice and atomic-add
    reductions (bias and BN gradients, the softmax cross-entropy) vary between runs, so a resumed
    run would not equal an uninterrupted one. `enable_op_determinism` picks deterministic kernels
    (slower). It is process-wide and cannot be undone, so a CPU-only process, whose kernels here
    need no such switch (resume is tested to 1e-5), is left as it is.
    """
    if not (deterministic and tf.config.list_logical_devices("GPU")):
        return False
    tf.config.experimental.enable_op_determinism()
    return True


# ----------------------------------------------------------------------------- multi-worker


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """This process's place in the cluster: ``task_type`` ("chief" or "worker"), ``task_id``,
    ``num_workers`` (chief included) and ``is_chief`` (the "chief" task, else worker 0), the one
    process that writes the run directory."""

    task_type: str
    task_id: int
    num_workers: int
    is_chief: bool


def worker_info() -> WorkerInfo:
    """Reads and checks ``TF_CONFIG`` (``{"cluster": {"chief": [...], "worker": ["host:port", ...]},
    "task": {"type": "worker", "index": 0}}``); UsageError with one clear line when it is missing
    or malformed. Chief election follows TensorFlow's `multi_worker_util.is_chief`."""
    raw = os.environ.get("TF_CONFIG")
    example = (
        'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    if not raw:
        raise UsageError(
            f"--strategy multi-worker needs TF_CONFIG describing the cluster ({example}); "
            "scripts/launch_workers.py sets it for local workers"
        )
    try:
        config = json.loads(raw)
    except ValueError as error:
        raise UsageError(f"TF_CONFIG is not valid JSON ({error}); {example}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not (isinstance(cluster, dict) and isinstance(task, dict)):
        raise UsageError(f"TF_CONFIG needs a 'cluster' and a 'task' mapping; {example}")
    workers = {job: cluster.get(job) or [] for job in ("chief", "worker")}
    if not all(isinstance(v, list) and all(isinstance(a, str) and ":" in a for a in v) for v in workers.values()):
        raise UsageError(f"TF_CONFIG cluster jobs must be lists of 'host:port' strings; received {cluster!r}")
    if len(workers["chief"]) > 1 or not workers["chief"] + workers["worker"]:
        raise UsageError(f"TF_CONFIG needs at most one chief and at least one chief or worker; received {cluster!r}")
    task_type, task_id = task.get("type"), task.get("index", 0)
    if (
        task_type not in ("chief", "worker")
        or not isinstance(task_id, int)
        or not 0 <= task_id < len(workers.get(task_type, []))
    ):
        raise UsageError(f"TF_CONFIG task {task!r} is not a chief or worker of the cluster {cluster!r}")
    is_chief = task_type == "chief" or (not workers["chief"] and task_id == 0)
    return WorkerInfo(task_type, task_id, len(workers["chief"]) + len(workers["worker"]), is_chief)


def worker_timeout() -> float:
    """Seconds to wait for peers (`WORKER_TIMEOUT_ENV`, default `DEFAULT_WORKER_TIMEOUT`)."""
    raw = os.environ.get(WORKER_TIMEOUT_ENV, str(DEFAULT_WORKER_TIMEOUT))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"Received: {WORKER_TIMEOUT_ENV}={raw!r}; expected a number of seconds > 0")
    return value


def communication_options(*, gpus) -> tf.distribute.experimental.CommunicationOptions:
    """The collectives of a multi-worker run: NCCL when this worker has GPUs, else RING.

    AUTO means RING in TF 2.21's collective executor: gradients would go GPU -> host -> gRPC ->
    host -> GPU every step (about 100 MB for ResNet-50), where NCCL reduces on the GPUs and
    across hosts (NVIDIA's and Model Garden's multi-worker setting). No `timeout_seconds`:
    TensorFlow documents it as a debugging aid that starts one thread per collective, which a
    long run at GPU step rates would exhaust; a lost peer is found by the coordination service's
    heartbeats instead (`tf_compat.configure_coordination_service`).
    """
    implementation = tf.distribute.experimental.CommunicationImplementation
    return tf.distribute.experimental.CommunicationOptions(
        implementation=implementation.NCCL if gpus else implementation.RING
    )


def _multi_worker_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy from TF_CONFIG with bounded waits on peers.

    Two waits are bounded by `worker_timeout()`: cluster start-up (the coordination service's
    registration of every task) and peer liveness (coordination-service heartbeats, at most 30 s;
    in TF 2.21 MWMS turns its own Python "check health" thread off when the coordination service
    runs). A collective whose peer died fails when the heartbeat does. Built once per process.
    """
    if _MULTI_WORKER:
        return _MULTI_WORKER[0]
    info = worker_info()
    timeout = worker_timeout()
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    # What MWMS configures itself, plus the timeouts: its own call leaves them at 0 ("wait for ever").
    tf_compat.configure_coordination_service(resolver.cluster_spec(), int(timeout * 1000))
    # Not `poll_for_error_from_service_at_startup`: with the service-to-client connection MWMS uses,
    # TF 2.21 aborts every collective with "Should not use error polling from service" (measured).
    options = communication_options(gpus=tf.config.list_physical_devices("GPU"))
    # Backstop: the start-up calls block in C++ and cannot be interrupted from Python. Should
    # TensorFlow's own registration timeout not fire, end the process with the same one line.
    watchdog = threading.Timer(timeout + _WATCHDOG_MARGIN_S, _give_up_waiting, args=(info, timeout))
    watchdog.daemon = True
    watchdog.start()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    except RuntimeError as error:  # the context was initialised before the strategy
        raise UsageError(
            f"cannot start multi-worker training: {str(error).splitlines()[0]}; "
            "create the strategy before any other TensorFlow op"
        ) from error
    except tf.errors.OpError as error:  # registration barrier timed out, or a peer refused us
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise TrainingFailure(_unreachable_message(info, timeout, f"{type(error).__name__}: {first}")) from None
    finally:
        watchdog.cancel()
    _MULTI_WORKER.append(strategy)
    return strategy


_WATCHDOG_MARGIN_S = 30.0


def _unreachable_message(info: WorkerInfo, timeout: float, detail: str) -> str:
    return (
        f"worker {info.task_type}:{info.task_id} could not reach all {info.num_workers} workers of TF_CONFIG "
        f"within {timeout:g} s ({detail}); start every worker with the same cluster, check that each "
        f"host:port is reachable, or raise {WORKER_TIMEOUT_ENV}"
    )


def _give_up_waiting(info: WorkerInfo, timeout: float) -> None:
    """Watchdog: prints the CLI's one error line and exits 1 (the blocked call cannot be unwound)."""
    print(f"Error: {_unreachable_message(info, timeout, 'no answer at start-up')}", file=sys.stderr, flush=True)
    os._exit(1)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless `strategy` is multi-worker and this process is not its chief."""
    extended = strategy.extended
    return bool(getattr(extended, "should_checkpoint", True)) if _is_multi_worker(strategy) else True


def _is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def input_options(strategy: tf.distribute.Strategy) -> tf.distribute.InputOptions:
    """One input pipeline per worker (PER_WORKER, tf.distribute's default), whatever the strategy.

    `distribute_datasets_from_function` calls the dataset function once per worker and each local
    replica dequeues one per-replica batch of it per step, in turn: with L replicas, replica l gets
    batches l, L + l, 2L + l, ... (`data.training_stream` lays out its replicas' shards so). One
    pipeline per worker has one autotuner, one thread pool and one prefetch buffer; one per replica
    (PER_REPLICA) would multiply them by the GPUs and leave them to compete for the host's cores.
    """
    del strategy  # the same for every strategy; the argument keeps call sites strategy-aware
    return tf.distribute.InputOptions(experimental_replication_mode=tf.distribute.InputReplicationMode.PER_WORKER)


# Host threads that each local GPU keeps busy (kernel launches and copies, and the step's own
# runtime thread), as TF Model Garden's GPU thread set-up reserves them (2 + 1 per GPU).
_THREADS_PER_GPU = 3


def input_threads(*, cpus: int | None = None, gpus: int | None = None) -> int:
    """The size of the input pipeline's private thread pool (tf.data `private_threadpool_size`).

    A private pool keeps decoding and augmentation off the inter-op pool that runs the training
    step, so neither starves the other. With local GPUs the host's cores (those this process may
    run on) minus 3 per GPU go to the pipeline, at least 2; on a CPU-only host every core, since
    the step and the pipeline share them anyway. `cpus` and `gpus` default to this host's.
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if gpus is None:
        gpus = len(tf.config.list_logical_devices("GPU"))
    return max(2, cpus - _THREADS_PER_GPU * gpus) if gpus else max(1, cpus)


# ----------------------------------------------------------------------------- the same loop on every worker
# Every worker runs the same loop and so calls the same collectives in the same order; only the
# chief writes the run directory, the others write the same files to scratch (RunDir.worker_scratch).

# What a lost, killed or unreachable peer raises out of a collective or the coordination service.
_PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "AbortedError", "CancelledError", "InternalError")


def agreed_checkpoint(strategy, manager, run_dir, resuming: bool) -> str | None:
    """The checkpoint every worker restores: the chief's latest, its epoch all-reduced from replica 0
    (the chief), so workers never read a run directory the chief is still preparing."""
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
    return str(run_dir.checkpoint_dir / f"ckpt-{epoch}") if epoch else None


def replica_statistics_sync(strategy, *models) -> Callable[[], None]:
    """A function that sets every replica's copy of the BatchNorm moving statistics to their mean.

    Keras 3 BN moving statistics are MirroredVariables with aggregation NONE: each replica updates
    its own copy from its own batches and a save keeps one copy, so workers would end an epoch
    with different weights. Averaging before validation and checkpoints keeps all workers (and a
    single process with the same replicas) identical, as Keras 2's ON_READ/MEAN variables did.
    The weight average's statistics (`hooks.WeightAverage`, per replica too) are averaged alike:
    pass every model whose statistics the replicas update (None entries are skipped).
    """
    variables = [
        v for model in models if model is not None for v in model.non_trainable_variables if "float" in str(v.dtype)
    ]
    if strategy.num_replicas_in_sync == 1 or not variables:
        return lambda: None

    def replica_fn():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables])
        for variable, mean in zip(variables, means):
            variable.assign(mean)

    sync = tf.function(lambda: strategy.run(replica_fn), autograph=False)
    return peer_guard(sync, strategy)


def peer_guard(function: Callable, strategy) -> Callable:
    """`function` with the errors of a lost peer turned into one TrainingFailure line (exit 1)."""
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


def any_worker(strategy) -> Callable[[bool], bool]:
    """agree(flag) -> whether any replica's worker passed True: one small all-reduce that every
    worker runs at the same point of the loop, so all of them act on a signal (SIGTERM) that
    reached only some. Lost peers fail as in `peer_guard`."""

    @tf.function(autograph=False)
    def count(flag):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(flag,)), axis=None)

    guarded = peer_guard(count, strategy)
    return lambda flag: int(guarded(tf.constant(1 if flag else 0, tf.int32))) > 0
