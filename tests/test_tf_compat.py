"""Every private or legacy TensorFlow/Keras API the package uses (resnet_keras.core.tf_compat) still works.

When a TensorFlow or Keras upgrade moves one of them, the test named after it fails here, before
a user meets the failure in a multi-worker start-up, a benchmark or a weights download.
"""

import ast
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from resnet_keras.core import tf_compat

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "resnet_keras"
PRIVATE_PREFIXES = ("tensorflow.python", "tensorflow.tsl", "tensorflow.compiler", "keras.src")


def test_onednn_enabled_reports_a_boolean():
    # conftest imports resnet_keras before TensorFlow, which turns oneDNN on.
    assert tf_compat.onednn_enabled() is True


def test_coordination_service_apis_exist():
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    spec = tf.train.ClusterSpec({"chief": ["localhost:1"], "worker": ["localhost:2"]})
    assert multi_worker_util.coordination_leader(spec) == "/job:chief/replica:0/task:0"
    assert coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=2).num_tasks == 2
    assert callable(context.context().configure_coordination_service)


def test_fused_batch_norm_matches_the_moments():
    x = tf.random.stateless_normal([4, 5, 5, 3], [1, 2])
    y, mean, variance = tf_compat.fused_batch_norm_training(x, tf.ones([3]), tf.zeros([3]), 1e-5)
    moments_mean, moments_var = tf.nn.moments(x, axes=[0, 1, 2])
    np.testing.assert_allclose(mean, moments_mean, atol=1e-5)
    n = 4 * 5 * 5
    np.testing.assert_allclose(variance, moments_var * n / (n - 1), rtol=1e-4)  # the kernel's is unbiased
    np.testing.assert_allclose(y, (x - moments_mean) / tf.sqrt(moments_var + 1e-5), atol=1e-4)


def test_clear_graph_seed_lets_a_global_seed_of_zero_meet_stateless_seeds():
    tf.random.set_seed(0)

    @tf.function
    def draw():
        tf_compat.clear_graph_seed()
        return tf.random.stateless_uniform([2], tf.constant([0, 0], tf.int64))

    assert draw().shape == (2,)


def test_xplane_proto_parses_an_empty_space():
    space = tf_compat.xplane_proto().XSpace()
    space.ParseFromString(b"")
    assert list(space.planes) == []


def test_keras_applications_hashes_cover_the_resnets():
    hashes = tf_compat.keras_applications_hashes()
    assert {"resnet50", "resnet101", "resnet152", "resnet50v2"} <= set(hashes)
    assert all(len(pair) == 2 and all(len(h) == 32 for h in pair) for pair in hashes.values())


def test_keras_home_matches_keras(monkeypatch, tmp_path):
    import keras

    monkeypatch.delenv("KERAS_HOME", raising=False)
    from keras.src.backend.config import keras_home

    assert tf_compat.keras_home() == keras_home() or keras.config.backend() != "tensorflow"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert tf_compat.keras_home() == str(tmp_path)


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "tf_compat.py"))
def test_no_other_module_uses_private_apis(module):
    tree = ast.parse((PACKAGE / module).read_text())
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            used.append(node.module)
        elif isinstance(node, ast.Import):
            used += [alias.name for alias in node.names]
        elif isinstance(node, ast.Attribute) and node.attr == "v1":
            used.append("tf.compat.v1")
    private = [name for name in used if name.startswith(PRIVATE_PREFIXES) or name == "tf.compat.v1"]
    assert not private, f"{module} uses {private}; put such uses in resnet_keras/tf_compat.py"


def test_checkpoint_reader_reads_a_checkpoint_by_its_prefix(tmp_path):
    import tensorflow as tf

    from resnet_keras.core import tf_compat

    prefix = tf.train.Checkpoint(v=tf.Variable(3.0)).save(str(tmp_path / "ckpt"))
    assert tf_compat.checkpoint_reader(prefix).get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE") == 3.0


def test_weights_h5_bytes_is_the_file_save_weights_writes(tmp_path):
    import numpy as np

    from resnet_keras.config.schema import ModelConfig
    from resnet_keras.core import tf_compat
    from resnet_keras.zoo.models import build_model

    config = ModelConfig(depth=8, width=0.25, image_size=16, num_classes=3)
    model, copy = build_model(config), build_model(config)
    path = tmp_path / "w.weights.h5"
    path.write_bytes(tf_compat.weights_h5_bytes(model))
    copy.load_weights(str(path))  # what `load_model(weights="best")` and fine-tuning read
    for ours, theirs in zip(model.weights, copy.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    model.save_weights(str(tmp_path / "keras.weights.h5"))
    assert abs(path.stat().st_size - (tmp_path / "keras.weights.h5").stat().st_size) < 4096
