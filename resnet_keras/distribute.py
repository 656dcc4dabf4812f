"""Choosing and configuring the `tf.distribute` strategy that training runs under.

The caller owns the strategy (house style 8): model code never touches `tf.distribute`.
One custom training loop serves every strategy here, because Keras 3 `model.fit` fails
under MultiWorkerMirroredStrategy upstream (keras-team/keras#20585); see `train.py`.

* ``"auto"``: MirroredStrategy over the local GPUs when there are two or more, else
  OneDeviceStrategy on ``GPU:0`` or ``CPU:0``.
* ``"one-device"``: OneDeviceStrategy on ``GPU:0`` when present, else ``CPU:0``.
* ``"mirrored"``: MirroredStrategy over the local GPUs, or over every logical CPU on a
  CPU-only machine (see `split_cpu`).
"""

from __future__ import annotations

import tensorflow as tf

from resnet_keras.errors import ConfigError, UsageError

STRATEGIES = ("auto", "one-device", "mirrored")


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
            raise UsageError(f"cannot split the CPU into {n} logical devices: TensorFlow is already "
                             f"initialised with {have} ({error}); call split_cpu first") from error
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def make_strategy(name: str = "auto", *, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """Builds the named strategy (see the module docstring); `devices` overrides the device list
    for "mirrored" (e.g. ``["/cpu:0", "/cpu:1"]``) or picks the device for "one-device"."""
    if name not in STRATEGIES:
        raise ConfigError(f"Received: strategy={name!r}; expected one of {', '.join(STRATEGIES)}.")
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
        raise UsageError(f"Received: batch_size={batch_size}; the global batch must be divisible by the "
                         f"{replicas} replicas of the strategy (e.g. {replicas * max(1, batch_size // replicas)}).")
    return batch_size // replicas
