"""A/B of the batch norm in our training step: Keras BatchNormalization vs blocks.FusedBatchNormalization.

Builds the same preset twice (each BN), then times `train.make_train_step` of both in one process,
one step each in turn, and prints one JSON line per mode with fused/keras images/s (> 1: fused faster).

    python scripts/ab_batch_norm.py resnet20 --batch-size 128 --steps 10 --modes train,infer
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from resnet_keras import ModelConfig  # noqa: E402
from resnet_keras.bench.benchmark import BenchmarkConfig, TrainStepRunner, alternate, data_config_for  # noqa: E402
from resnet_keras.zoo import blocks


def keras_batch_norm(x, *, zero_gamma=False, name):
    return layers.BatchNormalization(
        momentum=blocks.BN_MOMENTUM,
        epsilon=blocks.BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--xla", action="store_true")
    parser.add_argument("--modes", default="train")
    args = parser.parse_args()
    config = ModelConfig.preset(args.preset)
    bench = BenchmarkConfig(batch_size=args.batch_size, xla=args.xla, steps=args.steps)
    _, synthetic = data_config_for(bench, config.num_classes, args.batch_size)
    fused = blocks.batch_norm
    blocks.batch_norm = keras_batch_norm
    try:
        keras_bn = TrainStepRunner(config, bench, args.batch_size, synthetic)
    finally:
        blocks.batch_norm = fused
    fused_bn = TrainStepRunner(config, bench, args.batch_size, synthetic)
    keras_bn.name, fused_bn.name = "keras_bn", "fused_bn"
    load = os.getloadavg()
    for mode in args.modes.split(","):
        times = alternate([keras_bn, fused_bn], mode, args.steps, 2)
        slow, fast = np.median(times["keras_bn"]), np.median(times["fused_bn"])
        paired = np.median([k / f for k, f in zip(times["keras_bn"], times["fused_bn"])])
        print(
            json.dumps(
                dict(
                    preset=args.preset,
                    mode=mode,
                    batch_size=args.batch_size,
                    xla=args.xla,
                    keras_bn_images_per_sec=round(args.batch_size / slow, 2),
                    fused_images_per_sec=round(args.batch_size / fast, 2),
                    fused_over_keras=round(slow / fast, 3),
                    paired=round(float(paired), 3),
                    load_avg_before=load,
                    load_avg_after=os.getloadavg(),
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
