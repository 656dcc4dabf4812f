"""What each training component costs per step: paired, alternating training steps in one process.

Builds one training step per arm (the step of `resnet-keras train`: `trainer.make_train_step` with the
run's optimizer from `train.make_optimizer`, plus the EMA hook's update where the arm has one) on the
same synthetic batch, runs them in turn for `--rounds` rounds, and prints per arm the median step time
and the median of its per-round ratio to the baseline (robust to load that changes during the run).
Then it times the batch augmentations (`augment.mix_batch`) alone: they run in tf.data beside the step.

    python scripts/component_cost.py --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import resnet_keras  # noqa: F401  sets TF_ENABLE_ONEDNN_OPTS before TensorFlow loads

ARMS = {
    "baseline": ({}, {}),
    "se 1/16": ({"se_ratio": 1 / 16}, {}),
    "drop path 0.05": ({"drop_path": 0.05}, {}),
    "ema 0.999": ({}, {"ema_decay": 0.999}),
    "adamw": ({}, {"optimizer": "adamw", "weight_decay": 0.05, "learning_rate": 1e-3}),
    "lamb": ({}, {"optimizer": "lamb", "weight_decay": 0.02, "learning_rate": 1e-3}),
    "clip 1.0": ({}, {"clip_norm": 1.0}),
}
AUGMENTATIONS = {
    "ta_wide": {"auto_augment": "ta_wide"},
    "mixup 0.2 + cutmix 1.0": {"mixup": 0.2, "cutmix": 1.0},
    "random erasing 0.1": {"random_erasing": 0.1},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from resnet_keras.config.schema import ModelConfig, TrainConfig
    from resnet_keras.data import augment
    from resnet_keras.training.hooks import WeightAverage
    from resnet_keras.training.train import make_optimizer
    from resnet_keras.training.trainer import make_train_step
    from resnet_keras.zoo.models import build_model

    base = ModelConfig.preset(args.preset)
    size, n = base.image_size, args.batch_size
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32"))
    labels = tf.constant(np.arange(n) % base.num_classes, tf.int32)
    strategy = tf.distribute.get_strategy()
    steps = {}
    for name, (model_options, train_options) in ARMS.items():
        keras.utils.set_random_seed(0)
        config = ModelConfig.preset(args.preset, weight_decay=5e-4, **model_options)
        train_config = TrainConfig(recipe="short", family=config.family, epochs=8, batch_size=n, **train_options)
        model = build_model(config)
        optimizer = make_optimizer(train_config, train_config.learning_rate, model.trainable_variables)
        optimizer.build(model.trainable_variables)
        iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
        step = make_train_step(
            model,
            optimizer,
            strategy,
            num_classes=config.num_classes,
            global_batch=n,
            label_smoothing=train_config.label_smoothing,
            loss_scaling=False,
            xla=False,
            loss=train_config.loss,
            clip_norm=train_config.clip_norm,
        )
        update = (
            WeightAverage(model, build_model(config), train_config.ema_decay, optimizer.iterations).update
            if train_config.ema_decay
            else None
        )

        def run(step=step, iterator=iterator, update=update):
            [float(v) for v in step(iterator)]  # the host reads the loss every step, as `train` does
            if update is not None:
                update()

        for _ in range(3):  # trace and warm up
            run()
        steps[name] = run
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, run in steps.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    baseline = np.array(times["baseline"])
    report = {}
    for name, seconds in times.items():
        seconds = np.array(seconds)
        report[name] = dict(
            median_ms=round(1000 * float(np.median(seconds)), 1),
            images_per_second=round(n / float(np.median(seconds)), 1),
            paired_ratio=round(float(np.median(seconds / baseline)), 3),
        )
    for name, options in AUGMENTATIONS.items():
        settings = {**dict(mixup=0.0, cutmix=0.0, random_erasing=0.0, auto_augment="none"), **options}
        mix = tf.function(
            lambda x, y, key, settings=settings: augment.mix_batch(
                x, y, key, num_classes=base.num_classes, fill=base.input_mean, **settings
            )
        )
        mix(images, labels, tf.constant([0, 0], tf.int64))
        started = time.perf_counter()
        for i in range(20):
            mix(images, labels, tf.constant([0, i], tf.int64))
        seconds = (time.perf_counter() - started) / 20
        report[f"input pipeline: {name}"] = dict(
            ms_per_batch=round(1000 * seconds, 1), images_per_second=round(n / seconds)
        )
    report["load_average"] = [round(v, 2) for v in os.getloadavg()]
    report["settings"] = dict(preset=args.preset, batch_size=n, rounds=args.rounds)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
