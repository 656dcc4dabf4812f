"""Training-step images/s of CIFAR networks and precisions, paired in one process (the first arm is the anchor).

Each arm builds `resnet-keras train`'s step (`trainer.make_train_step` with the run's optimizer from
`train.make_optimizer`) on a fixed synthetic batch; the arms then run one step each in turn for
`rounds` rounds, so load from elsewhere hits all of them alike. Prints one JSON line per arm with
its median images/s and its ratio to the first arm. Arms are JSON: name -> options among depth,
width, se, variant, shortcut, batch, precision ("float32", "mixed_bfloat16", ...), xla.

    python scripts/step_throughput.py '{"fp32": {}, "bf16": {"precision": "mixed_bfloat16"}, "b64": {"batch": 64}}'
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import resnet_keras  # noqa: F401  sets TF_ENABLE_ONEDNN_OPTS before TensorFlow loads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arms", help="JSON object: arm name -> options")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from resnet_keras.config.schema import ModelConfig, TrainConfig
    from resnet_keras.training.train import make_optimizer
    from resnet_keras.training.trainer import make_train_step
    from resnet_keras.zoo.models import build_model

    runs = {}
    for name, arm in json.loads(args.arms).items():
        n = arm.get("batch", 128)
        keras.mixed_precision.set_global_policy(arm.get("precision", "float32"))
        keras.utils.set_random_seed(0)
        config = ModelConfig(
            family="cifar",
            depth=arm.get("depth", 20),
            width=arm.get("width", 1.0),
            variant=arm.get("variant", "v1"),
            shortcut=arm.get("shortcut", "A"),
            se_ratio=arm.get("se", 0.0),
            num_classes=10,
            weight_decay=5e-4,
        )
        train_config = TrainConfig(recipe="short", family="cifar", epochs=8, batch_size=n)
        model = build_model(config)
        optimizer = make_optimizer(train_config, train_config.learning_rate, model.trainable_variables)
        optimizer.build(model.trainable_variables)
        images = tf.constant(np.random.default_rng(0).uniform(0, 255, (n, 32, 32, 3)).astype("float32"))
        labels = tf.constant(np.arange(n) % 10, tf.int32)
        iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
        step = make_train_step(
            model,
            optimizer,
            tf.distribute.get_strategy(),
            num_classes=10,
            global_batch=n,
            label_smoothing=train_config.label_smoothing,
            loss_scaling=False,
            xla=arm.get("xla", False),
        )

        def run(step=step, iterator=iterator):
            [float(v) for v in step(iterator)]  # the host reads the sums every step, as `train` does

        for _ in range(3):  # trace and warm up
            run()
        runs[name] = (run, n, model.count_params())
        keras.mixed_precision.set_global_policy("float32")
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (run, _, _) in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    anchor = None
    for name, (_, n, params) in runs.items():
        images_per_second = n / float(np.median(times[name]))
        anchor = anchor or images_per_second
        print(
            json.dumps(
                dict(
                    arm=name,
                    params=params,
                    images_per_second=round(images_per_second, 1),
                    ratio=round(images_per_second / anchor, 3),
                )
            )
        )
    print(json.dumps(dict(load_average=[round(v, 2) for v in os.getloadavg()])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
