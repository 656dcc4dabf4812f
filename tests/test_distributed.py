"""The multi-GPU path of the training step, simulated: replicas are logical CPU devices.

Each test that needs two replicas runs in a fresh process (`split_cpu` must run before
TensorFlow initialises its devices). MirroredStrategy's merge-call-free path (XLA on GPUs only)
is not reachable: `--xla` is refused with more than one replica (`distribute.check_xla`).
Simulated the way TensorFlow's own tests do (`extended._use_merge_call = lambda: False`), Keras
3's LossScaleOptimizer fails there at trace time (its update of `iterations` inside a `cond`
needs a merge call), another reason for the refusal.
"""

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


def run_replicas(body: str, timeout: float = 240) -> str:
    """Runs `body` after `split_cpu(2)` in a fresh Python; returns stdout (fails on error or hang)."""
    script = "from resnet_keras.training.distribute import split_cpu\nsplit_cpu(2)\n" + textwrap.dedent(body)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the replicas hung (no result within {timeout} s)")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# A tiny float16 network trained by the project's step, where only replica 1's half of the global
# batch overflows float16 (1e6 > 65504): its gradients are Inf/NaN, replica 0's are finite.
OVERFLOW = """
import numpy as np, keras, tensorflow as tf
from resnet_keras.training.loss_scale import with_loss_scaling
from resnet_keras.training.trainer import make_train_step

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
keras.mixed_precision.set_global_policy("mixed_float16")
keras.utils.set_random_seed(0)
with strategy.scope():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, dtype="float32")])
    optimizer = with_loss_scaling(keras.optimizers.SGD(0.1), "float16")
    optimizer.build(model.trainable_variables)
step = make_train_step(model, optimizer, strategy, num_classes=3, global_batch=4, label_smoothing=0.0,
                       loss_scaling=True, xla=False)

def batches(scale_second_half):
    images = np.ones((4, 4, 4, 3), np.float32)
    images[2:] *= scale_second_half
    ds = tf.data.Dataset.from_tensors((images, np.array([0, 1, 2, 0], np.int32))).repeat()
    return iter(strategy.experimental_distribute_dataset(ds))

before = [w.copy() for w in model.get_weights()]
scale = float(optimizer.dynamic_scale.numpy())
step(batches(1e6))
after = model.get_weights()
print("finite", all(np.isfinite(w).all() for w in after))
print("unchanged", all(np.array_equal(a, b) for a, b in zip(before, after)))
print("scale", float(optimizer.dynamic_scale.numpy()) / scale)
print("iterations", int(optimizer.iterations.numpy()))
step(batches(1.0))
print("trains", not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())))
"""


@pytest.mark.slow
def test_float16_overflow_on_one_replica_skips_the_step_on_every_replica():
    out = run_replicas(OVERFLOW)
    assert "finite True" in out, out  # replica 1's Inf was not summed into the weights
    assert "unchanged True" in out, out  # both replicas skipped the update
    assert "scale 0.5" in out, out  # the loss scale halved once
    assert "iterations 0" in out, out
    assert "trains True" in out, out  # and the next, finite, step applies


VALIDATION = """
import numpy as np, keras, tensorflow as tf
from resnet_keras.training.trainer import make_validation

class Seen(keras.layers.Layer):
    # Records the largest batch each replica's copy of the model saw (aggregation NONE: per replica).
    def build(self, shape):
        self.largest = self.add_weight(shape=(), initializer="zeros", trainable=False, aggregation="none")
    def call(self, x):
        self.largest.assign(tf.maximum(self.largest, tf.cast(tf.shape(x)[0], "float32")))
        return x

strategies = {
    "two": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()),
    "one": tf.distribute.OneDeviceStrategy("/cpu:0"),
}
rng = np.random.default_rng(0)
images, labels = rng.normal(size=(37, 5)).astype("float32"), rng.integers(0, 3, 37).astype("int32")
results = {}
for name, strategy in strategies.items():
    keras.utils.set_random_seed(0)
    with strategy.scope():
        seen = Seen()
        model = keras.Sequential([keras.Input((5,)), seen, keras.layers.Dense(3)])
    shard = lambda ctx: tf.data.Dataset.from_tensor_slices((images, labels)).shard(
        ctx.num_input_pipelines, ctx.input_pipeline_id).batch(ctx.get_per_replica_batch_size(8))
    data = strategy.distribute_datasets_from_function(shard)
    results[name] = make_validation(model, strategy, data, 3)()
    print(name, "largest", [float(v) for v in strategy.experimental_local_results(seen.largest.value)])
logits = model(images).numpy()
shifted = logits - logits.max(-1, keepdims=True)
loss = float(np.mean(np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(37), labels]))
accuracy = float(np.mean(logits.argmax(-1) == labels))
print("expected", round(loss, 5), round(accuracy, 5))
for name, (l, a) in results.items():
    print(name, round(l, 5), round(a, 5))
"""


@pytest.mark.slow
def test_validation_runs_per_replica_batches_and_counts_every_example_once():
    out = run_replicas(VALIDATION)
    lines = dict(
        line.split(" ", 1) for line in out.strip().splitlines() if not line.startswith(("one largest", "two largest"))
    )
    assert lines["one"] == lines["two"] == lines["expected"], out  # 37 examples, a partial batch, exact
    assert "two largest [4.0, 4.0]" in out, out  # each replica holds half the global batch of 8
    assert "one largest [8.0]" in out, out


WEIGHT_AVERAGE = """
import numpy as np, keras, tensorflow as tf
from resnet_keras.config.schema import ModelConfig
from resnet_keras.training.distribute import replica_statistics_sync
from resnet_keras.training.hooks import WeightAverage
from resnet_keras.zoo.models import build_model
from resnet_keras.training.trainer import make_train_step

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
config = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=3)
keras.utils.set_random_seed(0)
with strategy.scope():
    model, average = build_model(config), build_model(config)
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
ema = WeightAverage(model, average, decay=0.5, step_counter=optimizer.iterations)
ema.copy()
step = make_train_step(model, optimizer, strategy, num_classes=3, global_batch=8, label_smoothing=0.0,
                       loss_scaling=False, xla=False, after_update=ema.replica_update)
rng = np.random.default_rng(0)
images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
images[4:] += 200.0  # replica 1's images differ: its BatchNorm statistics do too
ds = tf.data.Dataset.from_tensors((images, np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32))).repeat()
def copies(model, path):  # each replica's value of the model's variable at `path`
    variable = next(v for v in model.weights if v.path == path)
    return [x.numpy() for x in strategy.experimental_local_results(variable.value)]

name = next(v.path for v in model.non_trainable_variables if "moving_mean" in v.path)
start = copies(average, name)
step(iter(strategy.experimental_distribute_dataset(ds)))
trained, averaged = copies(model, name), copies(average, name)
# Each replica's average follows its own replica's statistics; d = min(decay, (1 + t) / (10 + t)), t = 1.
d = min(0.5, 2.0 / 11.0)
print("own", all(np.allclose(averaged[r], d * start[r] + (1 - d) * trained[r], atol=1e-5) for r in range(2)))
print("differ", not np.allclose(averaged[0], averaged[1]))
replica_statistics_sync(strategy, model, average)()
synced = copies(average, name)
mean = (averaged[0] + averaged[1]) / 2
print("synced", np.allclose(synced[0], synced[1]) and np.allclose(synced[0], mean, atol=1e-5))
kernel = copies(average, next(v.path for v in average.trainable_variables if "kernel" in v.path))
print("kernels equal", np.array_equal(kernel[0], kernel[1]))
"""


@pytest.mark.slow
def test_weight_average_updates_in_the_replica_context_each_replica_its_own_copy():
    out = run_replicas(WEIGHT_AVERAGE)
    assert "own True" in out, out  # not replica 0's statistics copied to every replica
    assert "differ True" in out, out
    assert "synced True" in out, out  # averaged over replicas before validation and saves
    assert "kernels equal True" in out, out  # the trained weights are mirrored: so is their average


DROP_PATH = """
import numpy as np, keras, tensorflow as tf
from resnet_keras.zoo.blocks import DropPath, Dropout

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
keras.utils.set_random_seed(0)
with strategy.scope():
    layers = [DropPath(0.5), Dropout(0.5)]
for layer in layers:
    masks = strategy.run(tf.function(lambda: layer(tf.ones([64, 1, 1, 1]), training=True) > 0))
    a, b = [m.numpy().ravel() for m in strategy.experimental_local_results(masks)]
    print(type(layer).__name__, "kept", a.mean().round(2), b.mean().round(2), "same", np.array_equal(a, b))
"""


@pytest.mark.slow
def test_drop_path_and_dropout_draw_one_random_stream_per_replica():
    out = run_replicas(DROP_PATH)
    for layer in ("DropPath", "Dropout"):
        line = next(line for line in out.splitlines() if line.startswith(layer))
        assert "same False" in line, out  # each replica drops its own examples
        kept = [float(x) for x in line.split("kept ")[1].split(" same")[0].split()]
        assert all(0.25 < k < 0.75 for k in kept), out


# ----------------------------------------------------------------------------- no replicas needed


def test_multi_worker_collectives_use_nccl_on_gpus_and_no_per_collective_timeout():
    import tensorflow as tf

    from resnet_keras.training.distribute import communication_options

    implementation = tf.distribute.experimental.CommunicationImplementation
    on_gpus = communication_options(gpus=["/physical_device:GPU:0"])
    assert on_gpus.implementation == implementation.NCCL
    assert communication_options(gpus=[]).implementation == implementation.RING
    # timeout_seconds starts one thread per collective (TensorFlow: "only for debugging").
    assert on_gpus.timeout_seconds is None


class _Strategy:
    def __init__(self, replicas):
        self.num_replicas_in_sync = replicas


@pytest.mark.parametrize("replicas", [2, 8])
def test_xla_is_refused_with_more_than_one_replica(replicas):
    from resnet_keras.core.errors import UsageError
    from resnet_keras.training.distribute import check_xla

    check_xla(True, _Strategy(1))  # one GPU or the CPU compiles
    check_xla(False, _Strategy(replicas))
    with pytest.raises(UsageError, match=rf"xla=True with {replicas} replicas.*--no-xla"):
        check_xla(True, _Strategy(replicas))


def test_deterministic_runs_turn_on_op_determinism_only_where_gpus_need_it(monkeypatch):
    import tensorflow as tf

    from resnet_keras.training.distribute import deterministic_kernels

    calls = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism", lambda: calls.append(1))
    assert deterministic_kernels(True) is False and not calls  # this machine: CPU only
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert deterministic_kernels(False) is False and not calls
    assert deterministic_kernels(True) is True and calls == [1]


def test_fused_batch_norm_runs_in_the_compute_dtype_under_mixed_precision():
    """The fused kernel gets the half-precision activations themselves (no float32 copy)."""
    import tensorflow as tf

    from resnet_keras.zoo.blocks import FusedBatchNormalization

    for policy, dtype in (("mixed_float16", tf.float16), ("mixed_bfloat16", tf.bfloat16), ("float32", tf.float32)):
        layer = FusedBatchNormalization(dtype=policy)
        x = tf.ones([2, 4, 4, 8], dtype)
        graph = tf.function(lambda x, layer=layer: layer(x, training=True)).get_concrete_function(x).graph
        fused = [op for op in graph.get_operations() if op.type == "FusedBatchNormV3"]
        assert len(fused) == 1, policy
        assert fused[0].get_attr("T") == dtype, policy
        assert fused[0].inputs[0].dtype == dtype, policy
        assert layer(x, training=True).dtype == dtype
