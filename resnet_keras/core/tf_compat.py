"""Every use of a private or legacy TensorFlow / Keras API, in one place, each with its reason.

A TensorFlow or Keras upgrade may move or remove any of these without notice; each function
here has a test in tests/test_tf_compat.py that fails loudly, naming the API, when it does.
Nothing else in the package imports ``tensorflow.python``, ``tensorflow.tsl``, ``keras.src`` or
``tf.compat.v1``.
"""

from __future__ import annotations

import os


def onednn_enabled() -> bool | None:
    """Whether TensorFlow's oneDNN CPU kernels are on in this process (None: cannot tell).

    No public API reports it; benchmarks record it next to their figures because it changes CPU
    training speed 2-3x. Private: ``tensorflow.python.util._pywrap_util_port.IsMklEnabled``.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def configure_coordination_service(cluster_spec, timeout_ms: int) -> None:
    """Configures the coordination service of a MultiWorkerMirroredStrategy with bounded waits.

    The strategy configures it itself but leaves the registration and heartbeat timeouts at 0
    ("wait for ever"), so a missing worker hangs the others; there is no public knob. This
    repeats what ``collective_all_reduce_strategy.py`` does, with timeouts, and asks start-up to
    wait at a barrier for every task. Private: ``tensorflow.python.eager.context``,
    ``tensorflow.python.distribute.multi_worker_util``, ``tensorflow.compiler.xla.tsl``'s
    ``coordination_config_pb2``.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        cluster_register_timeout_in_ms=timeout_ms,
        heartbeat_timeout_in_ms=min(timeout_ms, 30_000),
        shutdown_barrier_timeout_in_ms=timeout_ms,
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in ("chief", "worker")
            if job in cluster_spec.jobs
        ],
    )
    # Connect() waits for every task to register, at most cluster_register_timeout; without the
    # barrier a missing peer leaves the others waiting for device propagation (an hour).
    context.context().coordination_service.cluster_register_with_barrier = True


def fused_batch_norm_training(x, gamma, beta, epsilon: float):
    """Training-mode batch norm in TensorFlow's single fused kernel (FusedBatchNormV3), NHWC.

    Keras 3 builds it from about ten separate ops; the fused kernel is 1.05-1.15x faster for a
    whole ResNet-20 step here. TF2 exposes it only as the TF1 symbol ``tf.compat.v1.nn.fused_batch_norm``.
    Returns (y, batch mean, unbiased batch variance).
    """
    import tensorflow as tf

    return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon, data_format="NHWC", is_training=True)


def clear_graph_seed() -> None:
    """Clears the graph-level random seed of the graph being built (``tf.compat.v1.set_random_seed(None)``).

    Inside a tf.data function's graph, a global seed of 0 (``keras.utils.set_random_seed(0)``)
    meets a stateless op's tensor seed in TensorFlow's ``seeds == (0, 0)`` check and fails; the
    per-epoch streams are keyed by their own seeds and must not depend on it anyway.
    """
    import tensorflow as tf

    tf.compat.v1.set_random_seed(None)


def xplane_proto():
    """The profiler's XSpace protobuf module, to read the op times of a trace (no public reader)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    return xplane_pb2


def keras_applications_hashes() -> dict[str, tuple[str, str]]:
    """keras.applications' ResNet weight-file hashes ({name: (top, notop)}), to check a download.

    Only in ``keras.src.applications.resnet.WEIGHTS_HASHES``; an empty dict when it moved (the
    download then goes unchecked rather than failing).
    """
    try:
        from keras.src.applications.resnet import WEIGHTS_HASHES
    except ImportError:
        return {}
    return dict(WEIGHTS_HASHES)


def keras_home() -> str:
    """Keras' cache root, computed as ``keras.src.backend.config`` does, without importing Keras:
    ``$KERAS_HOME``, else ``~/.keras`` (``/tmp/.keras`` when home is not writable)."""
    home = os.environ.get("KERAS_HOME")
    if home:
        return home
    base = os.path.expanduser("~")
    return os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")


def checkpoint_reader(path: str):
    """A reader of the checkpoint at `path` (``tf.compat.v1.train.NewCheckpointReader``).

    `tf.train.load_checkpoint` first asks whether `path` is a directory, and `ram://` answers by
    string prefix (True for ``ckpt-20`` beside ``ckpt-20.index``); the TF1 reader takes the
    prefix as it is, on every file system.
    """
    import tensorflow as tf

    return tf.compat.v1.train.NewCheckpointReader(path)


def weights_h5_bytes(model) -> bytes:
    """The bytes of `model.save_weights("x.weights.h5")`, rendered in memory.

    A `.weights.h5` written straight to a full disk fails inside libhdf5 as raw HDF5 text, or
    crashes the process; rendered in memory, the file is written by `files.write_atomic`, whose
    writes fail cleanly. `save_weights` takes only a file name. Private: Keras'
    ``saving_lib.H5IOStore`` (which accepts an ``io.BytesIO``) and ``saving_lib._save_state``,
    what ``save_weights_only`` calls.
    """
    import io

    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    try:
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    finally:
        store.close()
    return buffer.getvalue()
